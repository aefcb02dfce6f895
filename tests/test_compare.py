"""``rayseq compare`` / ``rayseq reproduce`` without Ray: the trials an experiment expands to, their
resources, the Table-1-style summary, divergence and the paper tables' rendering, the CLI's checks.
The experiments themselves run on real Ray Tune in tests/test_tune_experiments.py."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from rayseq.cli import build_parser, main
from rayseq.data.tasks import load_task
from rayseq.experiments import Arm, ExperimentConfig, diverged, render_table, summarize
from rayseq.experiments.report import compare_title
from rayseq.experiments.resources import trial_bundles
from rayseq.experiments.runner import error_text
from rayseq.experiments.spec import trial_specs
from rayseq.experiments.trial import outcome


def _rec(label, seed, bleu, **kw):
    return {"algo": label, "label": label, "seed": seed, "status": "ok", "test_bleu": bleu, "valid_bleu": bleu,
            "wall_time_s": 60.0, "run_dir": "x", **kw}


def test_summary_statistics_and_errors():
    recs = [_rec("mle", s, b) for s, b in ((1, 10.0), (2, 20.0))]
    row = summarize(["mle"], recs)[0]
    assert row["test_bleu"] == {"mean": 15.0, "std": pytest.approx(7.0710678), "min": 10.0, "max": 20.0}
    assert "15.00 ± 7.07" in render_table("t", [row], recs)
    with pytest.raises(ValueError, match="registered"):
        ExperimentConfig.for_algos("toy", ["nope"])
    with pytest.raises(ValueError, match="not a registered algorithm"):
        ExperimentConfig.for_algos("toy", ["mle"], overrides=["eracc:algo.tau=0.1"])
    with pytest.raises(ValueError, match="twice"):
        ExperimentConfig.for_algos("toy", ["mle", "mle"])
    with pytest.raises(ValueError, match="max-concurrent"):
        ExperimentConfig.for_algos("toy", ["mle"], max_concurrent=0)
    ExperimentConfig.for_algos("toy", ["mle"], overrides=["erac:algo.tau=0.1"])  # for a run not in this comparison: ignored


def test_trials_mle_phase_first_and_rl_runs_start_from_its_best_actors(tmp_path):
    cfg = ExperimentConfig(task="toy", arms=[Arm("raml"), Arm("erac", "tau=0.1", ("algo.tau=0.1",)), Arm("mle")], seeds=2,
                           out=str(tmp_path), overrides=["epochs=1", "algo.tau=0.5", "erac:algo.beta=0.2"])
    phases = trial_specs(cfg)
    assert [s.key for s in phases["mle"]] == ["mle-seed1234", "mle-seed1235"]
    assert [s.key for s in phases["main"]] == ["raml-seed1234", "raml-seed1235", "erac-tau0.1-seed1234", "erac-tau0.1-seed1235"]
    mle, raml, erac = phases["mle"][0], phases["main"][0], phases["main"][2]
    assert mle.overrides == ["epochs=1", "seed=1234"]  # algo.tau is not an MLE key: left out
    assert raml.actor_init is None and raml.overrides == ["epochs=1", "algo.tau=0.5", "seed=1234"]
    assert erac.label == "erac (tau=0.1)" and erac.run_dir == str(tmp_path / "erac-tau0.1-seed1234")
    assert erac.actor_init == str(tmp_path / "mle-seed1234" / "actor_best.pt") and erac.mle_run_dir == mle.run_dir
    # the arm's own setting comes after the shared one, the actor after everything
    assert erac.overrides == ["epochs=1", "algo.tau=0.5", "algo.beta=0.2", "algo.tau=0.1", "seed=1234",
                              f"algo.actor_init={erac.actor_init}"]
    assert list(trial_specs(ExperimentConfig.for_algos("toy", ["raml"], out=str(tmp_path)))) == ["main"]


def test_shared_mle_runs_one_mle_that_every_seed_starts_from(tmp_path):
    cfg = ExperimentConfig(task="toy", arms=[Arm("mle"), Arm("mle", "continued", ("algo.budget_epochs=0.5",), from_mle=True), Arm("erac")],
                           seeds=3, out=str(tmp_path), shared_mle=True)
    phases = trial_specs(cfg)
    assert [s.key for s in phases["mle"]] == ["mle-seed1234"]
    actor = str(tmp_path / "mle-seed1234" / "actor_best.pt")
    assert [s.key for s in phases["main"]] == [f"{a}-seed{s}" for a in ("mle-continued", "erac") for s in (1234, 1235, 1236)]
    assert {s.actor_init for s in phases["main"]} == {actor}
    assert [s.seed for s in phases["main"]][:3] == [1234, 1235, 1236]  # the RL stage's own seed differs


def test_shared_critic_pretrains_each_distinct_critic_once(tmp_path):
    """AC and ERAC w/o future entropy train the same τ = 0 critic, ERAC and its Eq. 20 variant the same
    τ > 0 one; a τ arm changes the critic target, a joint-only setting (actor_lr, τ's anneal) does not."""
    arms = [Arm("ac"), Arm("erac"), Arm("erac-eq20"), Arm("erac-nofutent"), Arm("erac", "tau=0.1", ("algo.tau=0.1",)),
            Arm("erac", "lr", ("algo.actor_lr=1e-5",)), Arm("erac", "anneal", ("algo.tau_anneal_updates=10",)),
            Arm("mle", "continued", ("algo.budget_epochs=0.5",), from_mle=True)]
    cfg = ExperimentConfig(task="toy", arms=arms, seeds=2, out=str(tmp_path), shared_mle=True, shared_critic=True)
    phases = trial_specs(cfg)
    assert list(phases) == ["mle", "critic", "main"]
    critics = phases["critic"]
    assert [c.key for c in critics] == ["critic-ac-seed1234", "critic-erac-seed1234", "critic-erac-tau0.1-seed1234"]
    assert all(c.overrides[-2:] == [f"algo.actor_init={tmp_path / 'mle-seed1234' / 'actor_best.pt'}", "algo.joint_epochs=0"]
               for c in critics)
    init = {s.key: next((o for o in s.overrides if o.startswith("algo.critic_init=")), None) for s in phases["main"]}
    by_critic = {c.key: f"algo.critic_init={c.run_dir}" for c in critics}
    for seed in (1234, 1235):
        assert init[f"ac-seed{seed}"] == init[f"erac-nofutent-seed{seed}"] == by_critic["critic-ac-seed1234"]
        assert init[f"erac-seed{seed}"] == init[f"erac-eq20-seed{seed}"] == init[f"erac-lr-seed{seed}"] \
            == init[f"erac-anneal-seed{seed}"] == by_critic["critic-erac-seed1234"]
        assert init[f"erac-tau0.1-seed{seed}"] == by_critic["critic-erac-tau0.1-seed1234"]
        assert init[f"mle-continued-seed{seed}"] is None
    with pytest.raises(ValueError, match="needs --shared-mle"):
        ExperimentConfig(task="toy", arms=arms, out=str(tmp_path), shared_critic=True)


def test_ac_protocol_gives_mle_continued_the_rl_stage_budget(tmp_path):
    """``reproduce ac``: "MLE continued" trains for ERAC's joint epochs (a fraction: an update budget)
    and validates as often, under the experiment's preset and settings."""
    from rayseq.experiments.paper import PAPER_EXPERIMENTS, Grid, rl_stage_budget

    cfg = ExperimentConfig(task="multi30k", arms=[Arm("mle")], preset="quick", out=str(tmp_path))
    assert rl_stage_budget(cfg) == (0.2, 58)
    cfg = ExperimentConfig(task="multi30k", arms=[Arm("mle")], preset="quick", out=str(tmp_path),
                           overrides=["erac:algo.joint_epochs=0.5", "algo.valid_every=29"])
    assert rl_stage_budget(cfg) == (0.5, 29)
    arms = PAPER_EXPERIMENTS["ac"].arms(Grid(continued_epochs=0.5, continued_valid_every=29))
    assert [a.label for a in arms] == ["mle", "mle (continued)", "ac", "erac", "erac (horizon=reference)", "erac-eq20", "erac-nofutent"]
    assert arms[4].overrides == ("algo.entropy_horizon=reference",)
    assert arms[1].overrides == ("epochs=1", "algo.budget_epochs=0.5", "algo.valid_every_updates=29")
    assert PAPER_EXPERIMENTS["ac"].arms(Grid(continued_epochs=2.0, continued_valid_every=0))[1].overrides == \
        ("epochs=2", "algo.budget_epochs=2")


def test_vaml_protocol_fine_tunes_mle_raml_and_vaml_from_one_mle_actor_with_one_qnet(tmp_path):
    """``reproduce vaml --shared-mle --shared-qnet``: MLE continued, RAML and VAML start from the one MLE
    actor with the same epochs, validated ``finetune_checks`` times an epoch at each one's own batch size;
    one Q-net run (step 1 only) serves every seed's VAML. In table 1, RAML and VAML still train from scratch."""
    from rayseq.experiments.paper import PAPER_EXPERIMENTS, Grid, finetune_intervals

    exp = PAPER_EXPERIMENTS["vaml"]
    cfg = ExperimentConfig(task="toy", arms=exp.arms(Grid()), seeds=2, out=str(tmp_path), shared_mle=True,
                           shared_qnet=True, overrides=["batch_size=100"])
    n_train = len(load_task("toy").split("train"))
    grid = Grid(finetune_epochs=0.5, finetune_checks=3)
    every = dict(finetune_intervals(cfg, grid))
    assert every == {a: math.ceil(math.ceil(n_train / 100) / 3) for a in ("mle", "raml", "vaml")}
    cfg = ExperimentConfig(task="toy", arms=exp.arms(replace(grid, finetune_valid_every=tuple(every.items()))), seeds=2,
                           out=str(tmp_path), shared_mle=True, shared_qnet=True, overrides=["batch_size=100"])
    assert cfg.labels == ["mle", "mle (continued)", "raml (from mle)", "vaml (from mle)"]
    phases = trial_specs(cfg)
    assert list(phases) == ["mle", "main"]  # the Q-net needs no actor: it trains beside the MLE run
    actor = str(tmp_path / "mle-seed1234" / "actor_best.pt")
    assert [q.key for q in phases["mle"]] == ["mle-seed1234", "qnet-vaml-seed1234"]
    qnet = phases["mle"][1]
    assert qnet.overrides[-1] == "algo.qnet_only=true" and qnet.actor_init is None
    assert not any(o.startswith("algo.actor_init=") for o in qnet.overrides)
    main = {s.key: s for s in phases["main"]}
    assert list(main) == [f"{a}-seed{s}" for a in ("mle-continued", "raml-from-mle", "vaml-from-mle") for s in (1234, 1235)]
    for key, spec in main.items():
        algo = spec.algo
        assert spec.actor_init == actor
        assert ["epochs=1", "algo.budget_epochs=0.5", f"algo.valid_every_updates={every[algo]}"] == \
            [o for o in spec.overrides if o.split("=")[0] in ("epochs", "algo.budget_epochs", "algo.valid_every_updates")]
        assert (f"algo.qnet_init={qnet.run_dir}" in spec.overrides) == (algo == "vaml")
    table1 = trial_specs(ExperimentConfig(task="toy", arms=PAPER_EXPERIMENTS["table1"].arms(Grid()), out=str(tmp_path)))
    assert {s.key: s.actor_init is None for s in table1["main"] if s.algo in ("raml", "vaml")} == \
        {"raml-seed1234": True, "vaml-seed1234": True}


def test_trial_resources_come_from_the_run_config():
    from rayseq.algorithms.erac import ERACConfig
    from rayseq.algorithms.mle import MLEConfig
    from rayseq.algorithms.vaml import VAMLConfig
    from rayseq.config import build_run_config

    mle = build_run_config("mle", MLEConfig, "cpu", "toy", [], num_rollout_workers=4)
    assert trial_bundles(mle, 0.0) == [{"CPU": 1.0}]  # no rollout workers for a supervised algorithm
    assert trial_bundles(mle, 0.25) == [{"CPU": 1.0, "GPU": 0.25}]  # its learner lives in the driver: a quarter GPU
    vaml = build_run_config("vaml", VAMLConfig, "cpu", "toy", [], num_rollout_workers=2)
    assert trial_bundles(vaml, 0.0) == [{"CPU": 1.0}]  # VAML trains on dataset batches too: no workers reserved
    erac = build_run_config("erac", ERACConfig, "cpu", "toy", ["learner_resource=gpu_learner"], num_learners=2,
                            num_rollout_workers=3)
    assert trial_bundles(erac, 0.5, {"node_a": 1.0}) == [
        {"CPU": 1.0, "node_a": 1.0}, {"GPU": 0.5, "gpu_learner": 0.001}, {"GPU": 0.5, "gpu_learner": 0.001},
        {"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}]
    assert trial_bundles(erac, 0.0)[1] == {"CPU": 1.0, "gpu_learner": 0.001}  # a CPU learner takes a CPU


def test_captioning_runs_read_back_with_cider_and_the_surrogate_label():
    """A finished captioning run (the fields ``rayseq train --task coco`` writes) gives a CIDEr-D column
    and the surrogate warning; a translation-only table has neither."""
    results = {"bleu/valid": 14.4, "wall_time_s": 120.0,
               "test": {"bleu": 13.36, "bleu_4": 13.36, "cider_d": 0.396, "features": "surrogate"}}
    recs = [{"algo": "mle", "label": "mle", "seed": 1, "run_dir": "x", **outcome(results)},
            {"algo": "raml", "label": "raml", "seed": 1, "run_dir": "y", "status": "failed", "error": "not run"}]
    assert recs[0]["status"] == "ok" and recs[0]["surrogate"] and recs[0]["test_cider_d"] == 0.396
    md = render_table(compare_title("coco", ["mle", "raml"], 1, "cpu"), summarize(["mle", "raml"], recs), recs)
    assert md.startswith("# coco: mle, raml (1 seed, preset cpu)")
    assert "test CIDEr-D mean ± std" in md and "| 0.396 ± 0.000 |" in md
    assert "Surrogate image features" in md
    header, sep, mle_row, raml_row = md.splitlines()[2:6]
    assert header.count("|") == sep.count("|") == mle_row.count("|") == raml_row.count("|")
    rec = _rec("mle", 1, 10.0)
    md_mt = render_table("t", summarize(["mle"], [rec]), [rec])
    assert "CIDEr" not in md_mt and "Surrogate" not in md_mt


def test_divergence_and_error_text():
    assert diverged(_rec("erac", 1, 30.0, collapsed=True)) and not diverged(_rec("erac", 1, 30.0))
    assert diverged(_rec("erac", 1, float("nan")))
    assert diverged({"status": "failed", "error": "TrainingError: loss/critic_td is nan at update 7 (joint stage)"})
    assert not diverged({"status": "failed", "error": "ConfigError: bad value"})

    class Wrapper(Exception):
        def __init__(self, cause):
            super().__init__("Traceback (most recent call last):\n  File x\nValueError: wrapped")
            self.cause = cause

    assert error_text(Wrapper(ValueError("schedule='async'   needs\nworkers"))) == "ValueError: schedule='async' needs workers"
    assert error_text(RuntimeError("Traceback (most recent call last):\n  File x\nKeyError: 'k'")) == "KeyError: 'k'"


def test_paper_tables_render_with_divergence_marks(tmp_path):
    from rayseq.experiments.paper import PAPER_EXPERIMENTS, Grid

    exp = PAPER_EXPERIMENTS["table3"]
    grid = Grid(betas=(0.01, 1.0), lambda_vars=(0.0, 0.001))
    arms = exp.arms(grid)
    assert [a.overrides for a in arms[:2]] == [("algo.beta=0.01", "algo.lambda_var=0"), ("algo.beta=0.01", "algo.lambda_var=0.001")]
    labels = [a.label for a in arms]
    records = [_rec(label, 1, 30.0 + i, collapsed=(i == 3)) for i, label in enumerate(labels)]
    cfg = ExperimentConfig(task="toy", arms=arms, out=str(tmp_path))
    report = {"title": exp.title, "task": "toy", "preset": "cpu", "seeds": 1, "hardware": "1 node, 2 CPUs, no GPU",
              "grid": {"betas": [0.01, 1.0], "lambda_vars": [0.0, 0.001]}, "rows": summarize(labels, records), "runs": records,
              "mle_reference": {"ok": 1, "valid_bleu": {"mean": 29.0, "std": 0.0}, "test_bleu": {"mean": 28.5, "std": 0.0}},
              "experiment": "table3"}
    md = exp.render(cfg, report)
    assert "| β \\ λ_var | 0 | 0.001 |" in md and "| 0.01 | 30.00 | 31.00 |" in md and "| 1 | 32.00 | 33.00 † |" in md
    assert "MLE reference" in md and "validation BLEU 29.00" in md and "hardware: 1 node, 2 CPUs, no GPU" in md
    assert exp.plot(cfg, report, tmp_path / "table3.png").stat().st_size > 1000

    fig1 = PAPER_EXPERIMENTS["fig1"]
    arms = fig1.arms(Grid(taus=(0.0, 0.1)))
    records = [_rec(a.label, 1, b, collapsed=b < 1) for a, b in zip(arms, (25.0, 0.5))]
    report.update(experiment="fig1", title=fig1.title, grid={"taus": [0.0, 0.1]}, rows=summarize([a.label for a in arms], records),
                  runs=records)
    md = fig1.render(ExperimentConfig(task="toy", arms=arms, out=str(tmp_path)), report)
    assert "| 0 | 25.00 | 25.00 | 1/1 |" in md and "| 0.1 | 0.50 † | 0.50 † | 1/1 |" in md
    assert fig1.plot(cfg, report, tmp_path / "fig1.png").stat().st_size > 1000
    assert not math.isnan(report["rows"][0]["valid_bleu"]["mean"])


def test_cli_parses_compare_and_reproduce(capsys):
    args = build_parser().parse_args(["reproduce", "table3", "--task", "toy", "--betas", "0.01,1", "--max-concurrent", "2",
                                      "--trial-resource", "node_a=1", "--set", "epochs=1"])
    assert args.experiment == "table3" and args.betas == (0.01, 1.0) and args.max_concurrent == 2 and args.seeds is None
    args = build_parser().parse_args(["compare", "--task", "toy", "--algos", "mle,raml", "--retry-errored"])
    assert args.retry_errored and args.seeds == 1
    assert main(["reproduce", "table1", "--task", "toy", "--taus", "0.1"]) == 2
    assert "--taus is for fig1 only" in capsys.readouterr().err
    assert main(["compare", "--task", "toy", "--algos", "mle", "--trial-resource", "node_a"]) == 2
    assert "NAME=AMOUNT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reproduce", "table2", "--task", "toy"])
    json.dumps(vars(build_parser().parse_args(["reproduce", "fig1", "--task", "toy", "--taus", "0,0.1"])))


def test_plot_titles_name_the_dagger_only_when_a_run_diverged():
    from rayseq.experiments.paper import DAGGER, _figure, _suptitle

    report = {"title": "t", "task": "toy", "preset": "cpu", "hardware": "1 node",
              "rows": [{"algo": "erac", "diverged": 0}, {"algo": "ac", "diverged": 0}]}
    for rows_diverged, want in ((0, False), (1, True)):
        report["rows"][1]["diverged"] = rows_diverged
        fig = _figure()
        _suptitle(fig, report)
        assert (f"{DAGGER} diverged" in fig._suptitle.get_text()) is want
