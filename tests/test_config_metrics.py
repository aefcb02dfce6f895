"""Tests for the run config (presets, overrides, files, errors), metrics logging and run directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rayseq.algorithms.mle import MLEConfig
from rayseq.algorithms.raml import RAMLConfig
from rayseq.config import (
    PRESETS,
    SHARED_FIELDS,
    ConfigError,
    ModelConfig,
    RunConfig,
    apply_overrides,
    build_run_config,
    from_dict,
    field_defaults,
    to_dict,
    valid_keys,
)
from rayseq.data.tasks import TASKS
from rayseq.metrics import (
    BLEU_TEST,
    BLEU_VALID,
    EPOCH_TIME_S,
    LOSS_ACTOR,
    LOSS_MLE,
    LR,
    METRIC_NAMES,
    MetricsWriter,
    plot_learning_curve,
    read_metrics,
)
from rayseq.run_dir import (
    RunDirError,
    atomic_write_bytes,
    atomic_write_json,
    prepare_run_dir,
    read_run_json,
    write_results,
)

ALGOS = {"mle": MLEConfig, "raml": RAMLConfig}
TASK_NAMES = ("multi30k", "iwslt14", "toy")


def _build(*overrides: str, algo: str = "mle", preset: str = "cpu", task: str = "multi30k", **kw) -> RunConfig:
    return build_run_config(algo, ALGOS[algo], preset, task, list(overrides), **kw)


def _config_error(*overrides: str, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        _build(*overrides, **kw)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def _no_temp_files(folder: Path) -> None:
    leftovers = [p.name for p in folder.rglob("*.tmp")]
    assert not leftovers, leftovers


# ----------------------------------------------------------------------------- presets


def test_config_modules_do_not_import_ray() -> None:
    code = (
        "import sys, rayseq.config, rayseq.metrics, rayseq.run_dir; "
        "bad = [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]; "
        "assert not bad, bad"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})


def test_tasks_cover_the_data_registry() -> None:
    assert set(TASK_NAMES) <= set(TASKS)


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("task", TASK_NAMES)
@pytest.mark.parametrize("algo", list(ALGOS))
def test_every_preset_builds_a_valid_config(preset: str, task: str, algo: str) -> None:
    cfg = _build(algo=algo, preset=preset, task=task)
    assert (cfg.algo, cfg.task, cfg.preset) == (algo, task, preset)
    assert isinstance(cfg.algo_config, ALGOS[algo])
    for run_name, algo_name in SHARED_FIELDS.items():
        if hasattr(cfg.algo_config, algo_name):
            assert getattr(cfg.algo_config, algo_name) == getattr(cfg, run_name)
    cfg.seq2seq_config(src_vocab_size=100, tgt_vocab_size=120)  # a buildable actor
    assert cfg.out == f"runs/{algo}-{task}-{preset}-seed{cfg.seed}"
    assert json.loads(json.dumps(to_dict(cfg))) == to_dict(cfg)


def test_paper_preset_is_the_official_setting() -> None:
    mle = _build(preset="paper", task="iwslt14")
    assert (mle.batch_size, mle.epochs, mle.valid_beam, mle.max_decode_len) == (50, 30, 5, 100)
    assert mle.valid_max_sentences is None
    assert (mle.algo_config.lr, mle.algo_config.lr_decay, mle.algo_config.max_decays) == (0.6, 0.5, 6)
    assert mle.model == ModelConfig(emb_dim=256, enc_hidden=128, dec_hidden=256, dropout=0.3)
    raml = _build(algo="raml", preset="paper", task="iwslt14")
    assert raml.batch_size == raml.algo_config.batch_size == 42


def test_cpu_preset_sizes() -> None:
    cfg = _build(preset="cpu", task="multi30k")
    assert (cfg.epochs, cfg.valid_max_sentences, cfg.valid_beam, cfg.batch_size) == (10, 500, 5, 50)
    assert cfg.model == ModelConfig()  # the paper's actor
    toy = _build(preset="cpu", task="toy")
    assert (toy.model.emb_dim, toy.model.enc_hidden, toy.model.dec_hidden) == (32, 32, 64)
    assert toy.epochs <= 5


def test_num_gpus_auto() -> None:
    import torch

    cfg = _build()
    assert cfg.num_gpus_per_learner is None
    assert cfg.resolved_num_gpus_per_learner() == (1.0 if torch.cuda.is_available() else 0.0)
    assert _build("num_gpus_per_learner=0.5").resolved_num_gpus_per_learner() == 0.5


# ----------------------------------------------------------------------------- overrides


def test_override_types_and_nesting() -> None:
    cfg = _build(
        "algo.lr=0.3",
        "model.dropout=0.2",
        "epochs=5",
        "model.input_feeding=true",
        "valid_max_sentences=none",
        "data_dir=/data/x",
        "num_gpus_per_learner=1",
        algo="raml",
    )
    assert cfg.algo_config.lr == 0.3 and isinstance(cfg.algo_config.lr, float)
    assert cfg.model.dropout == 0.2
    assert cfg.epochs == 5 and cfg.algo_config.max_epochs == 5  # mirrored
    assert cfg.model.input_feeding is True
    assert cfg.valid_max_sentences is None
    assert cfg.data_dir == "/data/x"
    assert cfg.num_gpus_per_learner == 1.0 and isinstance(cfg.num_gpus_per_learner, float)
    assert _build("model.input_feeding=False").model.input_feeding is False
    assert _build("algo.sampler=payoff", algo="raml").algo_config.sampler == "payoff"
    assert _build("batch_size=7").algo_config.batch_size == 7
    assert _build("valid_beam=1").algo_config.beam_size == 1


def test_precedence_preset_file_cli_override(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 4\nseed: 11\nalgo:\n  lr: 0.25\nmodel: {dropout: 0.1}\nlog_every: 7\n")
    cfg = build_run_config("mle", MLEConfig, "cpu", "multi30k", ["seed=13"], str(path), seed=12, log_every=None)
    assert cfg.epochs == 4 and cfg.algo_config.lr == 0.25 and cfg.model.dropout == 0.1  # file beats preset
    assert cfg.log_every == 7  # None option = not given
    assert cfg.seed == 13 and cfg.algo_config.seed == 13  # override beats option beats file
    assert build_run_config("mle", MLEConfig, "cpu", "multi30k", [], str(path), seed=12).seed == 12


def test_yaml_file_dotted_keys_none_and_bool(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("algo.lr: 0.5\nvalid_max_sentences: null\nmodel:\n  input_feeding: true\ntask: multi30k\n")
    cfg = build_run_config("mle", MLEConfig, "cpu", "multi30k", [], path)
    assert cfg.algo_config.lr == 0.5 and cfg.valid_max_sentences is None and cfg.model.input_feeding
    (tmp_path / "empty.yaml").write_text("")
    assert build_run_config("mle", MLEConfig, "cpu", "toy", [], tmp_path / "empty.yaml").task == "toy"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("algo.lrr=0.3", ["'algo.lrr'", "did you mean 'algo.lr'", "valid algo keys"]),
        ("lr=0.3", ["'lr'", "'algo.lr'"]),
        ("model.hiden=3", ["'model.hiden'", "valid model keys"]),
        ("epoch=3", ["'epoch'", "'epochs'"]),
        ("epochs=ten", ["'epochs'", "'ten'", "int"]),
        ("algo.lr=fast", ["'algo.lr'", "'fast'", "float"]),
        ("model.input_feeding=maybe", ["'model.input_feeding'", "'maybe'", "bool"]),
        ("epochs=none", ["'epochs'", "'none'"]),
        ("epochs=0", ["epochs=0", ">= 1", "override 'epochs=0'"]),
        ("batch_size=-2", ["batch_size", ">= 1"]),
        ("valid_beam=0", ["valid_beam", ">= 1"]),
        ("valid_max_sentences=0", ["valid_max_sentences", ">= 1"]),
        ("num_learners=-1", ["num_learners", ">= 0"]),
        ("num_gpus_per_learner=-1", ["num_gpus_per_learner", ">= 0"]),
        ("algo.lr=-1", ["lr", "-1", "algo.lr from override"]),
        ("algo.lr_decay=1.5", ["lr_decay", "1.5"]),
        ("model.dropout=1.5", ["dropout", "1.5", "model.dropout"]),
        ("model.dec_hidden=100", ["dec_hidden", "model.dec_hidden from override"]),
        ("algo.batch_size=3", ["algo.batch_size", "batch_size=3 instead"]),
        ("algo.max_epochs=3", ["algo.max_epochs", "epochs=3 instead"]),
        ("task=toy", ["task", "'toy'"]),
        ("algo=raml", ["algo", "'raml'"]),
        ("epochs", ["'epochs'", "key=value"]),
        ("=3", ["'=3'", "key=value"]),
    ],
)
def test_override_errors_are_one_line_and_name_the_key(override: str, expected: list[str]) -> None:
    msg = _config_error(override)
    for part in expected:
        assert part in msg, (part, msg)


def test_literal_error_lists_choices() -> None:
    msg = _config_error("algo.sampler=beam", algo="raml")
    assert "'algo.sampler'" in msg and "'ngram'" in msg and "'payoff'" in msg


def test_unknown_preset_and_task() -> None:
    assert "did you mean 'cpu'" in _config_error(preset="cpux")
    msg = _config_error(task="multi31k")
    assert "'multi31k'" in msg and "multi30k" in msg


@pytest.mark.parametrize(
    "text, expected",
    [
        ("epochs: [1, 2\n", ["invalid YAML", "line"]),
        ("- 1\n- 2\n", ["expected a mapping", "list"]),
        ("epochs: ten\n", ["'epochs'", "'ten'"]),
        ("epochs: 2.5\n", ["'epochs'", "2.5"]),
        ("algo:\n  lrr: 0.1\n", ["'algo.lrr'", "did you mean 'algo.lr'"]),
        ("task: toy\n", ["task", "'toy'"]),
        ("epochs:\n", ["'epochs'", "None"]),
    ],
)
def test_config_file_errors(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    msg = _config_error(config_file=str(path))
    assert str(path) in msg
    for part in expected:
        assert part in msg, (part, msg)


def test_missing_config_file(tmp_path: Path) -> None:
    msg = _config_error(config_file=str(tmp_path / "nope.yaml"))
    assert "nope.yaml" in msg and "not found" in msg


def test_valid_keys_hide_mirrored_fields() -> None:
    keys = valid_keys(MLEConfig)
    assert "algo.lr" in keys and "model.dropout" in keys and "epochs" in keys
    assert "algo.batch_size" not in keys and "algo.max_epochs" not in keys and "algo" not in keys


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("algo", list(ALGOS))
def test_to_dict_from_dict_round_trip(algo: str) -> None:
    cfg = _build("algo.lr=0.3", "model.input_feeding=true", "num_gpus_per_learner=0.5", "seed=7", algo=algo)
    d = json.loads(json.dumps(to_dict(cfg)))
    assert d["task"] == "multi30k" and d["algo"] == algo and "data_dir" in d  # what actor_io reads
    back = from_dict(d, ALGOS[algo])
    assert back == cfg
    assert to_dict(back) == d


def test_from_dict_errors() -> None:
    d = to_dict(_build())
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        from_dict({**d, "bogus": 1}, MLEConfig, source="x/run.json")
    with pytest.raises(ConfigError, match="x/run.json"):
        from_dict({**d, "epochs": "many"}, MLEConfig, source="x/run.json")
    bad = json.loads(json.dumps(d))
    bad["algo_config"]["max_epochs"] = 99
    with pytest.raises(ConfigError, match="algo.max_epochs=99 differs from epochs=10"):
        from_dict(bad, MLEConfig)
    with pytest.raises(ConfigError, match="missing key 'task'"):
        from_dict({k: v for k, v in d.items() if k != "task"}, MLEConfig)


def test_apply_overrides_for_resume() -> None:
    cfg = _build()
    longer = apply_overrides(cfg, ["epochs=20"], out="runs/elsewhere")
    assert longer.epochs == 20 and longer.algo_config.max_epochs == 20 and longer.out == "runs/elsewhere"
    assert longer.algo_config.lr == cfg.algo_config.lr and longer.model == cfg.model


def test_run_config_checks_mirrored_fields() -> None:
    with pytest.raises(ConfigError, match="RunConfig.batch_size=50 but MLEConfig.batch_size=10"):
        RunConfig(algo="mle", task="toy", preset="cpu", algo_config=MLEConfig(batch_size=10), batch_size=50,
                  epochs=30)


# ----------------------------------------------------------------------------- metrics


def test_metric_names_are_shared_constants() -> None:
    for name in ("loss/actor", "loss/critic_td", "loss/mle", "entropy", "bleu/valid", "bleu/test",
                 "throughput/tokens_per_s", "policy_lag", "lr", "grad_norm", "time/epoch_s"):
        assert name in METRIC_NAMES


def test_metrics_writer_jsonl_and_tensorboard(tmp_path: Path) -> None:
    import numpy as np
    import torch

    with MetricsWriter(tmp_path) as w:
        w.log(10, 0.5, {LOSS_MLE: torch.tensor(2.5), LR: 0.6})
        w.log(20, 1, {LOSS_MLE: np.float32(2.0), BLEU_VALID: 12.5, EPOCH_TIME_S: 3})
        # flushed at once: readable while the writer is open
        assert len(read_metrics(tmp_path / "metrics.jsonl")) == 2
        with pytest.raises(ValueError, match="reserved"):
            w.log(30, 1, {"step": 1})
    w.close()  # idempotent
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [10, 20]
    assert records[0][LOSS_MLE] == 2.5 and records[1][BLEU_VALID] == 12.5
    assert all({"step", "epoch", "time_s"} <= set(r) for r in records)
    assert records[0]["time_s"] <= records[1]["time_s"]
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_metrics_writer_resume(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        for step in (1, 2, 3):
            w.log(step, 0, {LOSS_ACTOR: 1.0}, time_s=10.0 * step)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "ep')  # a write cut off by a crash
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    with MetricsWriter(tmp_path, tensorboard=False, resume_from_step=2) as w:
        rec = w.log(3, 0, {LOSS_ACTOR: 0.5})
    assert rec["time_s"] >= 20.0  # the time axis continues
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    _no_temp_files(tmp_path)


def test_read_metrics_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(path)


def test_plot_learning_curve(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path, tensorboard=False) as w:
        for step in range(1, 31):
            w.log(step, step / 10, {LOSS_ACTOR: 3.0 / step, LOSS_MLE: 2.0 / step}, time_s=step * 6.0)
            if step % 10 == 0:
                w.log(step, step // 10, {BLEU_VALID: float(step)}, time_s=step * 6.0)
        w.log(30, 3, {BLEU_TEST: 29.0})
    out = plot_learning_curve(tmp_path / "metrics.jsonl", tmp_path / "curve.png", title="mle toy")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000
    # no data yet: still a PNG
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    assert plot_learning_curve(empty, empty / "c.png").stat().st_size > 0
    _no_temp_files(tmp_path)


# ----------------------------------------------------------------------------- run directory


def test_prepare_run_dir_new_conflict_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _build(out=str(out), task="toy")
    d = to_dict(cfg)
    assert prepare_run_dir(out, d, resume=False) == out
    assert read_run_json(out) == d
    assert from_dict(read_run_json(out), MLEConfig) == cfg
    # the same config again, before the run logged anything: fine
    prepare_run_dir(out, d, resume=False)
    # a different config: refused, naming the key
    other = to_dict(apply_overrides(cfg, ["algo.lr=0.1"]))
    with pytest.raises(RunDirError) as info:
        prepare_run_dir(out, other, resume=False)
    msg = str(info.value)
    assert "\n" not in msg and "algo_config.lr" in msg and "--out" in msg and "--resume" in msg
    with pytest.raises(RunDirError, match="cannot resume"):
        prepare_run_dir(out, other, resume=True)
    # once the run has progress, a fresh start over it is refused
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RunDirError, match="--resume"):
        prepare_run_dir(out, d, resume=False)
    # resume with more epochs and another out path: allowed, run.json updated
    longer = to_dict(apply_overrides(cfg, ["epochs=7"], out=str(tmp_path / "moved")))
    prepare_run_dir(out, longer, resume=True)
    assert read_run_json(out)["epochs"] == 7
    _no_temp_files(out)


def test_resume_a_run_written_before_a_setting_existed(tmp_path: Path) -> None:
    """A run.json without a later-added field resumes when the field is at its default (what the
    older rayseq did), and is refused, naming the field, when it is not."""
    import json

    from rayseq.algorithms.vaml import VAMLConfig

    out = tmp_path / "run"
    cfg = build_run_config("vaml", VAMLConfig, "cpu", "toy", [], out=str(out))
    old = to_dict(cfg)
    del old["algo_config"]["pq_tau"], old["algo_config"]["qnet_select"]  # as an older rayseq wrote it
    out.mkdir()
    (out / "run.json").write_text(json.dumps(old))
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RunDirError, match="pq_tau"):  # without the defaults: two new keys
        prepare_run_dir(out, to_dict(cfg), resume=True)
    prepare_run_dir(out, to_dict(cfg), resume=True, defaults=field_defaults(cfg))
    assert read_run_json(out)["algo_config"]["qnet_select"] == "valid_td"
    (out / "run.json").write_text(json.dumps(old))
    sharper = build_run_config("vaml", VAMLConfig, "cpu", "toy", ["algo.pq_tau=0.2"], out=str(out))
    with pytest.raises(RunDirError, match=r"algo_config.pq_tau: \(absent\) → 0.2"):
        prepare_run_dir(out, to_dict(sharper), resume=True, defaults=field_defaults(sharper))


def test_a_larger_budget_extends_the_same_run_only() -> None:
    """``budget_grows``: the same run with more epochs or a larger ``algo.budget_epochs`` (whichever
    binds) is an extension; a smaller or equal budget, any other changed setting, or a run without an
    update budget (actor-critic) is not."""
    from rayseq.algorithms.erac import ERACConfig
    from rayseq.run_dir import budget_grows, run_budget

    def raml(*overrides: str, out: str = "/runs/a") -> dict:
        return to_dict(build_run_config("raml", RAMLConfig, "cpu", "toy", ["epochs=1", "algo.budget_epochs=0.5", *overrides], out=out))

    base = raml()
    assert run_budget(base) == 0.5 and run_budget(raml("algo.budget_epochs=0")) == 1.0  # 0: the epochs bind
    assert budget_grows(base, raml("algo.budget_epochs=1"))
    assert budget_grows(base, raml("epochs=2", "algo.budget_epochs=2", out="/runs/b"))  # where it is written may change
    assert not budget_grows(base, raml("epochs=3"))  # the budget still binds at 0.5
    assert not budget_grows(raml("algo.budget_epochs=1"), base)  # shorter
    assert not budget_grows(base, raml("algo.budget_epochs=1", "algo.lr=0.1"))  # another run
    erac = to_dict(build_run_config("erac", ERACConfig, "cpu", "toy", []))
    assert run_budget(erac) is None and not budget_grows(erac, to_dict(build_run_config("erac", ERACConfig, "cpu", "toy", ["epochs=9"])))


def test_resume_without_run_json(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="no run to resume"):
        prepare_run_dir(tmp_path / "nothing", to_dict(_build(task="toy")), resume=True)
    assert not (tmp_path / "nothing").exists()


def test_corrupt_run_json(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(RunDirError, match="run.json is not valid JSON"):
        prepare_run_dir(tmp_path, to_dict(_build(task="toy")), resume=False)


def test_out_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        prepare_run_dir(tmp_path / "f", {"task": "toy"}, resume=False)


def test_atomic_writes_leave_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    atomic_write_json(path, {"x": 1})
    atomic_write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    with pytest.raises(TypeError):
        atomic_write_json(path, {"x": object()})  # not JSON: the old file stays
    assert json.loads(path.read_text()) == {"x": 2}
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(RunDirError, match="does not exist"):
        atomic_write_bytes(tmp_path / "missing" / "c.bin", b"")
    results = write_results(tmp_path, {BLEU_TEST: 35.1, "best_epoch": 9})
    assert json.loads(results.read_text()) == {BLEU_TEST: 35.1, "best_epoch": 9}
    _no_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "results.json"]


def test_plot_comparison_draws_every_run_and_names_missing_metrics(tmp_path) -> None:
    from rayseq.metrics import MetricsWriter, plot_comparison

    for name, slope in (("a", 1.0), ("b", -1.0)):
        run = tmp_path / name
        run.mkdir()
        with MetricsWriter(run) as w:
            for step in range(1, 6):
                w.log(step, step / 5, {"bleu/valid": 30 + slope * step, "entropy": 1.0})
    out = plot_comparison({"A": tmp_path / "a", "B": tmp_path / "b"}, tmp_path / "cmp.png",
                          metrics=("bleu/valid", "entropy", "loss/critic_td"))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no runs"):
        plot_comparison({}, tmp_path / "x.png")
