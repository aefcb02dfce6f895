"""The training drivers (``rayseq.drivers``): the stopping rules, collapse detection, the MLE stage
RL runs start from, resuming mid-stage, and the NaN stop of every loop, on the toy task.

Runs are cut short the way a kill would (a test exception raised right after the driver logged a
chunk's records, before its checkpoint) and resumed with ``train(cfg, resume=True)``; the counts
and the logged steps must be those of an uninterrupted run. NaNs are put into the learner's real
records (the algorithm's ``pop_train_log``, or the swap-in driver's mapping of RLlib's result).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from run_checks import check_bleu, check_steps, steps_of

from rayseq.actor_io import CRITIC_FILE, load_actor, load_critic_file
from rayseq.config import build_run_config
from rayseq.data.tasks import load_task
from rayseq.drivers.stage import Run, check_finite, collapsed
from rayseq.errors import TrainingError
from rayseq.evaluation.score import validate_actor, validation_bleu
from rayseq.metrics import (
    BLEU_VALID,
    CRITIC_VALID_TD,
    LR,
    LR_CRITIC,
    QNET_VALID_TD,
    read_metrics,
)
from rayseq.registry import get_algorithm
from rayseq.run_dir import CHECKPOINT_DIR, TRAINER_STATE, read_results, read_stages

# ============================================================================ the stopping rules (pure)


def test_collapsed_means_more_than_margin_below_the_start() -> None:
    assert not collapsed(20.0, 15.0, 5.0)  # exactly margin points below: not yet
    assert collapsed(20.0, 14.99, 5.0)
    assert not collapsed(20.0, 30.0, 5.0)
    assert collapsed(20.0, 19.99, 0.0)  # margin 0: any drop
    assert not collapsed(20.0, 20.0, 0.0)
    assert not collapsed(0.0, 0.0, 0.0)  # an actor at BLEU 0 cannot fall below its start


def test_check_finite_stops_at_the_first_non_finite_float(tmp_path: Path) -> None:
    fine = [{"step": 1, "loss/actor": 2.5, "stage": "joint", "n": 3, "flag": True, "none": None},
            {"step": 2, "loss/actor": -1e300, "entropy": 0.0}]
    check_finite(fine, "joint stage", tmp_path, "a smaller lr")
    check_finite([], "joint stage", tmp_path, "a smaller lr")
    for bad in (float("nan"), float("inf"), float("-inf")):
        records = [{"step": 4, "loss/actor": 1.0}, {"step": 5, "loss/actor": 1.0, "entropy": bad},
                   {"step": 6, "loss/critic_td": float("nan")}]
        with pytest.raises(TrainingError) as err:
            check_finite(records, "critic stage", tmp_path / "run", "algo.critic_lr=1e-5")
        msg = str(err.value)
        assert msg.startswith(f"entropy is {bad} at update 5 (critic stage); training stopped."), msg
        assert f"Last good checkpoint: {tmp_path / 'run' / CHECKPOINT_DIR}" in msg
        assert f"--resume {tmp_path / 'run'} and algo.critic_lr=1e-5" in msg


# ============================================================================ on in-process Ray

EPOCH_PAIRS = 3000
"""Training pairs of the toy task (updates per epoch = 3000 / batch size)."""


@pytest.fixture(scope="module")
def mle_run(tmp_path_factory, ray_session) -> Path:
    """A three-epoch MLE actor on the toy task (valid BLEU > 0 on the first 40 sentences)."""
    from rayseq.train import train

    out = tmp_path_factory.mktemp("mle") / "run"
    results = train(_config("mle", out, "epochs=3"))
    assert results[BLEU_VALID] > 0.0, "the start actor must score above 0 for the collapse test"
    return out


def _config(algo: str, out: Path, *overrides: str, **cli):
    """Toy run with fast validation (greedy, 40 sentences) and every update logged."""
    base = ["valid_max_sentences=40", "valid_beam=1", "log_every=1"]
    return build_run_config(algo, get_algorithm(algo).config_cls, "cpu", "toy", [*base, *overrides], out=str(out), **cli)


def _erac(out: Path, mle_run: Path | None, *overrides: str, **cli):
    """ERAC at 100 sources per update (30 per epoch), one rollout worker, no early stop unless asked."""
    base = ["batch_size=100", "algo.critic_valid_sentences=20", "algo.critic_max_decays=10", "algo.max_lr_decays=10",
            "algo.collapse_margin=100"]
    if mle_run is not None:
        base.append(f"algo.actor_init={mle_run}")
    return _config("erac", out, *base, *overrides, **{"num_rollout_workers": 1, "envs_per_worker": 8, **cli})


def _ppo(out: Path, mle_run: Path | None, *overrides: str):
    base = ["algo.lr=1e-3", "algo.train_batch_size=64", "algo.minibatch_size=32", "algo.valid_every_iters=1"]
    if mle_run is not None:
        base.append(f"algo.actor_init={mle_run}")
    return _config("ppo", out, *base, *overrides, num_rollout_workers=0, envs_per_worker=8)


def _vaml(out: Path, *overrides: str):
    """VAML: Q-net passes of 6 updates (500 references, 1 corrupted copy each), actor epochs of
    6 updates (500 references, no RAML samples)."""
    base = ["batch_size=500", "algo.qnet_batch_size=500", "algo.num_corruptions=1", "algo.num_samples=0",
            "algo.qnet_valid_sentences=20"]
    return _config("vaml", out, *base, *overrides)


def _trainer_state(run: Path) -> dict:
    return json.loads((run / CHECKPOINT_DIR / TRAINER_STATE).read_text())


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = load_actor(a).model.state_dict(), load_actor(b).model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Killed(Exception):
    """Stands for the process being killed (raised by these tests, never by rayseq)."""


def _kill_after_logging(monkeypatch: pytest.MonkeyPatch, where: str, nth: int = 1) -> None:
    """The run dies right after its ``nth`` ``Run.log_records(..., where, ...)``: that chunk's
    records are in metrics.jsonl, its checkpoint is not written."""
    real = Run.log_records
    calls: list[str] = []

    def log_then_die(self, records, at, hint, epoch_of=None):
        real(self, records, at, hint, epoch_of)
        if at == where:
            calls.append(at)
            if len(calls) == nth:
                raise Killed(f"killed after logging {where} #{nth}")

    monkeypatch.setattr(Run, "log_records", log_then_die)


def _poison_learner_log(monkeypatch: pytest.MonkeyPatch, cls: type, key: str, when) -> None:
    """``cls.pop_train_log`` (the real one) with ``key`` = NaN in the first record where ``when(record)``."""
    real = cls.pop_train_log
    done: list[int] = []

    def pop(self):
        records = real(self)
        for rec in records:
            if not done and when(rec):
                rec[key] = float("nan")
                done.append(rec["step"])
        return records

    monkeypatch.setattr(cls, "pop_train_log", pop)


# ----------------------------------------------------------------------------- collapse


@pytest.mark.ray
def test_collapse_stops_joint_training_at_the_first_check_and_keeps_the_start_actor(tmp_path, mle_run):
    """collapse_margin 0 and an actor lr that wrecks the actor: the first validation is below the
    start, joint training stops there (2 of 6 updates), the best actor is the start actor."""
    from rayseq.train import train

    run = tmp_path / "collapse"
    cfg = _erac(run, mle_run, "algo.critic_pretrain_epochs=0", "algo.joint_epochs=0.2", "algo.valid_every=2",
                "algo.actor_lr=1.0", "algo.collapse_margin=0")
    results = train(cfg)
    start = results["start_bleu_valid"]
    logged = [(r["step"], r[BLEU_VALID]) for r in read_metrics(run) if BLEU_VALID in r]
    assert logged[0] == (0, start) and start > 0.0
    assert len(logged) == 2 and logged[1][0] == 2 and logged[1][1] < start  # one check, below the start
    assert results["collapsed"] is True
    assert results["joint_updates"] == 2 and results["updates"] == 2  # of 0.2 × 3000 / 100 = 6
    assert results["best_step"] == 0 and results[BLEU_VALID] == start
    assert load_actor(run / "actor_best.pt").meta["step"] == 0
    assert _same_weights(run / "actor_best.pt", mle_run / "actor_best.pt")
    assert not _same_weights(run / "actor_latest.pt", mle_run / "actor_best.pt")
    assert _trainer_state(run)["collapsed"] is True
    check_bleu(run, results, cfg)

    # a collapsed run stays stopped when resumed, even with more joint epochs
    again = train(_erac(run, mle_run, "algo.critic_pretrain_epochs=0", "algo.joint_epochs=0.4", "algo.valid_every=2",
                        "algo.actor_lr=1.0", "algo.collapse_margin=0"), resume=True)
    assert again["collapsed"] is True and again["joint_updates"] == 2 and again["best_step"] == 0
    assert steps_of(read_metrics(run), BLEU_VALID) == [0, 2]


# ----------------------------------------------------------------------------- the MLE stage


def _check_mle_stage(run: Path, results: dict, cfg) -> None:
    """RUN_DIR/mle is an MLE run of its own with the run's task, model, seed and epochs, and the
    run started from its best actor."""
    mle_dir = run / "mle"
    mle = read_results(mle_dir)
    assert mle is not None and mle["algo"] == "mle" and mle["epochs"] == cfg.epochs == 1
    assert mle["updates"] == EPOCH_PAIRS // 50  # the toy preset's batch of 50: 60 updates
    info = json.loads((mle_dir / "run.json").read_text())
    assert info["task"] == "toy" and info["seed"] == cfg.seed
    assert info["model"] == json.loads((run / "run.json").read_text())["model"]
    assert results["mle"]["source"] == "mle stage"
    assert results["mle"]["actor"] == str(mle_dir / "actor_best.pt")
    assert results["mle"]["test"] == mle["test"] and results["mle"][BLEU_VALID] == mle[BLEU_VALID]
    assert read_stages(run)["mle"] == results["mle"]
    # the RL stage started from that actor: its start validation is that actor's
    start = validate_actor(load_actor(mle_dir / "actor_best.pt").model, load_task("toy"), "valid",
                           cfg.valid_max_sentences, cfg.valid_beam, cfg.max_decode_len).bleu
    assert results["start_bleu_valid"] == start
    assert next(r[BLEU_VALID] for r in read_metrics(run) if BLEU_VALID in r) == start


@pytest.mark.ray
def test_actor_critic_run_trains_its_own_mle_stage(tmp_path, ray_session):
    from rayseq.train import train

    run = tmp_path / "erac"
    cfg = _erac(run, None, "epochs=1", "algo.critic_pretrain_epochs=0", "algo.joint_epochs=0.1", "algo.valid_every=3")
    results = train(cfg)
    _check_mle_stage(run, results, cfg)
    assert results["joint_updates"] == 3 and results["updates"] == 3
    check_bleu(run, results, cfg)


@pytest.mark.ray
def test_swapin_run_trains_its_own_mle_stage(tmp_path, ray_session):
    from rayseq.train import train

    run = tmp_path / "ppo"
    cfg = _ppo(run, None, "epochs=1", "algo.iterations=1")
    results = train(cfg)
    _check_mle_stage(run, results, cfg)
    assert results["iterations"] == 1
    check_bleu(run, results, cfg)


@pytest.mark.ray
def test_actor_init_file_alone_is_scored_on_the_test_split(tmp_path, mle_run):
    """An actor file without its run (no run.json, no results.json): the run scores it itself."""
    from rayseq.train import train

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(mle_run / "actor_best.pt", alone / "start.pt")
    run = tmp_path / "erac"
    cfg = _erac(run, None, f"algo.actor_init={alone / 'start.pt'}", "algo.critic_pretrain_epochs=0", "algo.joint_epochs=0")
    results = train(cfg)
    loaded = load_actor(alone / "start.pt")
    bleu = validation_bleu(loaded.model, load_task("toy"), "test", None, cfg.valid_beam, cfg.max_decode_len)
    assert results["mle"]["source"] == "actor_init" and results["mle"]["actor"] == str(alone / "start.pt")
    assert results["mle"]["test"] == {"split": "toy/test", "bleu": bleu}
    assert results["mle"][BLEU_VALID] == loaded.meta[BLEU_VALID]
    assert sorted(p.name for p in alone.iterdir()) == ["start.pt"]  # nothing written next to it
    # no joint updates: the run's best actor is the start actor, and `rayseq eval` agrees with the stage
    assert results["updates"] == 0 and _same_weights(run / "actor_best.pt", alone / "start.pt")
    assert results["test"]["bleu"] == bleu
    check_bleu(run, results, cfg)


@pytest.mark.ray
def test_actor_critic_samples_in_the_driver_without_rollout_workers(tmp_path, mle_run):
    """``num_rollout_workers=0`` means "sample in the driver" (RunConfig): the run must train and checkpoint."""
    from rayseq.train import train

    run = tmp_path / "local"
    cfg = _erac(run, mle_run, "algo.critic_pretrain_epochs=0.1", "algo.critic_valid_every=3", "algo.joint_epochs=0.1",
                "algo.valid_every=3", num_rollout_workers=0)
    results = train(cfg)
    assert results["critic_updates"] == 3 and results["joint_updates"] == 3
    check_bleu(run, results, cfg)


# ----------------------------------------------------------------------------- the lr schedule


@pytest.mark.ray
def test_supervised_lr_halves_after_a_non_improving_epoch_then_stops(tmp_path, mle_run):
    """MLE continued from a good actor (its BLEU is epoch 0) at an lr that wrecks it: epoch 1 is
    below the start → lr × 0.5; epoch 2 too, with max_decays = 1 made → stop. The best is the start.
    (The actor file alone, so that algo.lr applies: from an MLE run dir the lr would start where
    that run's schedule stopped.)"""
    from rayseq.train import train

    start = tmp_path / "start" / "actor.pt"
    start.parent.mkdir()
    shutil.copy(mle_run / "actor_best.pt", start)
    run = tmp_path / "mle"
    cfg = _config("mle", run, f"algo.actor_init={start}", "algo.lr=1000", "algo.max_decays=1", "epochs=5",
                  "batch_size=500")
    results = train(cfg)
    recs = [r for r in read_metrics(run) if BLEU_VALID in r]
    assert [r["epoch"] for r in recs] == [0, 1, 2]
    assert recs[1][BLEU_VALID] < recs[0][BLEU_VALID] and recs[2][BLEU_VALID] < recs[0][BLEU_VALID]
    assert [r[LR] for r in recs] == [1000.0, 500.0, 500.0]
    assert results["epochs"] == 2 and results["updates"] == 12 and results["best_epoch"] == 0
    schedule = _trainer_state(run)["schedule"]
    assert schedule["lr"] == 500.0 and schedule["num_decays"] == 1 and schedule["stopped"] is True
    assert schedule["history"] == [r[BLEU_VALID] for r in recs] and schedule["best"] == recs[0][BLEU_VALID]
    assert _same_weights(run / "actor_best.pt", start)
    check_bleu(run, results, cfg)


@pytest.mark.ray
def test_mle_continued_for_the_rl_stage_budget_validates_mid_epoch_and_resumes(tmp_path, mle_run, monkeypatch):
    """"MLE continued" for the RL stage's budget: algo.budget_epochs=0.5 of 6 updates an epoch (batch
    500) = 3 updates, validated every 2 (algo.valid_every_updates): checks at updates 0, 2, 3. Killed after the
    first chunk was logged (before its checkpoint), the resumed run redoes that chunk and ends at
    update 3, mid-epoch."""
    from rayseq.train import train

    overrides = (f"algo.actor_init={mle_run}", "algo.budget_epochs=0.5", "algo.valid_every_updates=2", "epochs=4", "batch_size=500")
    whole = tmp_path / "whole"
    results = train(_config("mle", whole, *overrides))
    check_steps(whole, BLEU_VALID, [0, 2, 3])
    assert [r["epoch"] for r in read_metrics(whole) if BLEU_VALID in r] == [0, pytest.approx(2 / 6), 0.5]
    assert results["updates"] == 3 and results["epochs"] == 0.5

    run = tmp_path / "killed"
    cfg = _config("mle", run, *overrides)
    _kill_after_logging(monkeypatch, "epoch 1")
    with pytest.raises(Killed):
        train(cfg)
    monkeypatch.undo()
    resumed = train(cfg, resume=True)
    check_steps(run, BLEU_VALID, [0, 2, 3])
    assert resumed["updates"] == 3 and resumed["epochs"] == 0.5
    check_steps(run, "loss/actor", [1, 2, 3])  # chunk 1 redone, logged once
    check_bleu(run, resumed, cfg)


@pytest.mark.ray
def test_a_finished_run_resumed_with_a_larger_budget_is_extended(tmp_path, mle_run):
    """MLE continued for 3 updates (algo.budget_epochs=0.5 of 6 an epoch), finished, then resumed with
    budget 1: it trains updates 4-6 and validates at 6, with the same losses as the run of budget 1 from
    the start (no dropout; validations at the same steps, so the same lr) — the extension of a protocol
    rerun with a larger ``--finetune-epochs``."""
    from rayseq.train import train

    common = (f"algo.actor_init={mle_run}", "algo.valid_every_updates=3", "epochs=4", "batch_size=500", "model.dropout=0.0")
    whole = tmp_path / "whole"
    train(_config("mle", whole, *common, "algo.budget_epochs=1"))
    run = tmp_path / "run"
    assert train(_config("mle", run, *common, "algo.budget_epochs=0.5"))["updates"] == 3
    cfg = _config("mle", run, *common, "algo.budget_epochs=1")
    longer = train(cfg, resume=True)
    assert longer["updates"] == 6 and longer["epochs"] == 1
    check_steps(run, BLEU_VALID, [0, 3, 6])
    check_steps(run, "loss/actor", range(1, 7))
    losses = [[r["loss/actor"] for r in read_metrics(d) if "loss/actor" in r] for d in (run, whole)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert [r[BLEU_VALID] for r in read_metrics(run) if BLEU_VALID in r] == [
        r[BLEU_VALID] for r in read_metrics(whole) if BLEU_VALID in r]
    check_bleu(run, longer, cfg)


# ----------------------------------------------------------------------------- resuming mid-stage


@pytest.mark.ray
def test_resume_mid_critic_stage(tmp_path, mle_run, monkeypatch):
    """Killed in critic pretraining (checks every 2 of 6 updates) after updates 3-4 were logged:
    the resumed run redoes them once, finishes the stage and the joint stage."""
    from rayseq.train import train

    run = tmp_path / "critic"
    cfg = _erac(run, mle_run, "algo.critic_pretrain_epochs=0.2", "algo.critic_valid_every=2", "algo.joint_epochs=0.1",
                "algo.valid_every=3")
    _kill_after_logging(monkeypatch, "critic stage", nth=2)
    with pytest.raises(Killed):
        train(cfg)
    assert _trainer_state(run)["critic_updates"] == 2 and max(steps_of(read_metrics(run), "step")) == 4
    monkeypatch.undo()
    results = train(cfg, resume=True)
    assert (results["critic_updates"], results["joint_updates"], results["updates"]) == (6, 3, 9)
    assert results["critic"]["updates"] == 6 and results["critic"]["stopped_on_plateau"] is False
    check_steps(run, "loss/critic_td", range(1, 10))  # the critic trains in both stages
    check_steps(run, "loss/actor", [7, 8, 9])
    check_steps(run, LR_CRITIC, [2, 4, 6])  # the held-out checks of critic pretraining
    check_steps(run, BLEU_VALID, [6, 9])
    # the best critic is the one with the lowest held-out TD of those checks
    checks = [r for r in read_metrics(run) if LR_CRITIC in r]
    best = [r for r in checks if r[CRITIC_VALID_TD] == min(c[CRITIC_VALID_TD] for c in checks)][-1]  # ties: the later
    meta = load_critic_file(run / CRITIC_FILE)["meta"]
    assert meta[CRITIC_VALID_TD] == best[CRITIC_VALID_TD] and meta["critic_updates"] == best["step"]
    assert results["critic"]["best"] == meta
    check_bleu(run, results, cfg)


@pytest.mark.ray
@pytest.mark.parametrize("nth", [2, 1])
def test_resume_mid_joint_stage(tmp_path, mle_run, monkeypatch, nth):
    """Killed in joint training (validation every 2 of 6 updates) after chunk ``nth`` was logged
    (nth = 1: before the stage's first checkpoint)."""
    from rayseq.train import train

    run = tmp_path / "joint"
    cfg = _erac(run, mle_run, "algo.critic_pretrain_epochs=0", "algo.joint_epochs=0.2", "algo.valid_every=2")
    _kill_after_logging(monkeypatch, "joint stage", nth=nth)
    with pytest.raises(Killed):
        train(cfg)
    assert _trainer_state(run)["joint_updates"] == 2 * (nth - 1)
    monkeypatch.undo()
    results = train(cfg, resume=True)
    assert (results["critic_updates"], results["joint_updates"], results["updates"]) == (0, 6, 6)
    check_steps(run, "loss/actor", range(1, 7))
    check_steps(run, BLEU_VALID, [0, 2, 4, 6])  # the start of joint training, then every 2 updates
    assert results["start_bleu_valid"] == read_stages(run)["joint_start"][BLEU_VALID]
    check_bleu(run, results, cfg)


def _tau_across_a_kill(run: Path, mle_run: Path, monkeypatch, *settings: str) -> list[dict]:
    """6 joint updates of ERAC with ``settings``, validated every 2, killed after the second
    validation (checkpoint at 2 updates) and resumed; the metric records that carry τ, checked to
    be one per update."""
    from rayseq.metrics import TAU
    from rayseq.train import train

    cfg = _erac(run, mle_run, "algo.critic_pretrain_epochs=0", "algo.joint_epochs=0.2", "algo.valid_every=2", *settings)
    _kill_after_logging(monkeypatch, "joint stage", nth=2)
    with pytest.raises(Killed):
        train(cfg)
    assert _trainer_state(run)["joint_updates"] == 2
    monkeypatch.undo()
    train(cfg, resume=True)
    recs = [r for r in read_metrics(run) if TAU in r]
    assert [r["step"] for r in recs] == list(range(1, 7))
    return recs


@pytest.mark.ray
def test_automatic_temperature_follows_its_equation_across_a_resume(tmp_path, mle_run, monkeypatch):
    """``algo.target_entropy`` (SAC's automatic temperature): after every joint update τ takes one
    ``temperature_step`` from the previous τ with that update's policy entropy — from ``algo.tau`` at
    the start, and across a kill after 4 updates (checkpoint at 2), from the τ the checkpoint kept.
    The target is above any policy's entropy here, so τ grows at every update."""
    from rayseq.algorithms.erac import temperature_step
    from rayseq.metrics import ENTROPY, TAU

    run = tmp_path / "auto"
    recs = _tau_across_a_kill(run, mle_run, monkeypatch, "algo.target_entropy=20", "algo.tau_lr=0.01")
    tau = 0.045
    for r in recs:
        tau = temperature_step(tau, r[ENTROPY], 20.0, 0.01)
        assert r[TAU] == pytest.approx(tau, rel=1e-12), r["step"]
    assert all(b[TAU] > a[TAU] for a, b in zip(recs, recs[1:]))
    assert _trainer_state(run)["tau"] == pytest.approx(recs[-1][TAU], rel=1e-12)


@pytest.mark.ray
def test_tau_anneal_falls_linearly_to_zero_across_a_resume(tmp_path, mle_run, monkeypatch):
    """``algo.tau_anneal_updates=4``: joint update u (0-based) trains with τ = 0.045 · max(0, 1 − u/4),
    so AC's τ = 0 from the fifth update on — also across a kill after 4 updates (checkpoint at 2),
    where the resumed run counts its joint updates from the checkpoint's."""
    from rayseq.metrics import TAU

    run = tmp_path / "anneal"
    recs = _tau_across_a_kill(run, mle_run, monkeypatch, "algo.tau_anneal_updates=4")
    assert [r[TAU] for r in recs] == pytest.approx([0.045, 0.03375, 0.0225, 0.01125, 0.0, 0.0], abs=1e-15)
    assert _trainer_state(run)["tau"] == 0.0


@pytest.mark.ray
def test_resume_mid_vaml_qnet_stage(tmp_path, ray_session, monkeypatch):
    """Killed in the Q-net stage (2 passes of 6 updates) after pass 2 was logged: the resumed run
    redoes pass 2 once, finishes the stage (12 updates) and the actor epoch (6 updates)."""
    from rayseq.actor_io import QNET_FILE
    from rayseq.train import train

    run = tmp_path / "vaml"
    cfg = _vaml(run, "algo.qnet_epochs=2", "epochs=1")
    _kill_after_logging(monkeypatch, "Q-net stage", nth=2)
    with pytest.raises(Killed):
        train(cfg)
    assert _trainer_state(run)["qnet"]["updates"] == 6 and max(steps_of(read_metrics(run), "step")) == 12
    monkeypatch.undo()
    results = train(cfg, resume=True)
    assert results["qnet"]["source"] == "trained" and Path(results["qnet"]["path"]) == run / QNET_FILE
    assert results["epochs"] == 1 and results["updates"] == 18
    check_steps(run, "loss/critic_td", range(1, 13))
    check_steps(run, "loss/actor", range(13, 19))
    check_steps(run, QNET_VALID_TD, [6, 12])  # the held-out checks after each pass, once each
    check_steps(run, BLEU_VALID, [18])
    check_bleu(run, results, cfg)


@pytest.mark.ray
def test_resume_mid_vaml_actor_stage(tmp_path, ray_session, monkeypatch):
    """Killed in step 2 (actor epochs of 6 updates) after epoch 2 was logged, before its checkpoint:
    the resumed run keeps the Q-net (no update of step 1 again), redoes epoch 2 once and ends."""
    from rayseq.train import train

    run = tmp_path / "vaml"
    cfg = _vaml(run, "algo.qnet_epochs=1", "epochs=2")
    _kill_after_logging(monkeypatch, "epoch 2")
    with pytest.raises(Killed):
        train(cfg)
    assert _trainer_state(run)["epoch"] == 1
    monkeypatch.undo()
    results = train(cfg, resume=True)
    assert results["epochs"] == 2 and results["updates"] == 18 and results["qnet"]["updates"] == 6
    check_steps(run, "loss/critic_td", range(1, 7))
    check_steps(run, "loss/actor", range(7, 19))
    check_steps(run, BLEU_VALID, [12, 18])
    check_bleu(run, results, cfg)


@pytest.mark.ray
@pytest.mark.parametrize("killed_at", ["iteration 3", "iteration 1"])
def test_resume_mid_swapin_run(tmp_path, mle_run, monkeypatch, killed_at):
    """PPO, 4 iterations validated every 2: killed after an iteration's record was logged, before
    its validation (iteration 1: before the run's first checkpoint)."""
    from rayseq.train import train

    run = tmp_path / "ppo"
    cfg = _ppo(run, mle_run, "algo.iterations=4", "algo.valid_every_iters=2")
    _kill_after_logging(monkeypatch, killed_at)
    with pytest.raises(Killed):
        train(cfg)
    monkeypatch.undo()
    results = train(cfg, resume=True)
    assert results["iterations"] == 4
    check_steps(run, "loss/actor", [1, 2, 3, 4])
    check_steps(run, BLEU_VALID, [0, 2, 4])
    check_swapin_best(run, results)
    check_bleu(run, results, cfg)


def check_swapin_best(run: Path, results: dict) -> None:
    """The best of a swap-in run: the highest of the validations logged, the start included, at the
    first iteration it was reached."""
    logged = [(r["step"], r[BLEU_VALID]) for r in read_metrics(run) if BLEU_VALID in r]
    best = max(b for _, b in logged)
    assert results[BLEU_VALID] == best and results["start_bleu_valid"] == logged[0][1]
    assert results["best_step"] == min(s for s, b in logged if b == best)
    assert load_actor(run / "actor_best.pt").meta["step"] == results["best_step"]


# ----------------------------------------------------------------------------- the NaN stop of each loop


def _check_nan_stop(err: pytest.ExceptionInfo, run: Path, start: str) -> None:
    msg = str(err.value)
    assert msg.startswith(start), msg
    assert f"Last good checkpoint: {run / CHECKPOINT_DIR}; resume it with --resume {run}" in msg
    assert (run / CHECKPOINT_DIR / TRAINER_STATE).is_file() and read_results(run) is None


@pytest.mark.ray
def test_nan_stops_the_supervised_loop_at_its_checkpoint(tmp_path, ray_session, monkeypatch):
    from rayseq.runtime.supervised import SupervisedSeqAlgorithm
    from rayseq.train import train

    run = tmp_path / "mle"
    cfg = _config("mle", run, "batch_size=500", "epochs=3")
    _poison_learner_log(monkeypatch, SupervisedSeqAlgorithm, "loss/actor", lambda r: r["step"] > 6)
    with pytest.raises(TrainingError) as err:
        train(cfg)
    _check_nan_stop(err, run, "loss/actor is nan at update 7 (epoch 2)")
    assert "algo.lr" in str(err.value)
    assert _trainer_state(run)["epoch"] == 1 and max(steps_of(read_metrics(run), "step")) == 6  # nothing after it
    monkeypatch.undo()
    results = train(cfg, resume=True)  # the named checkpoint does resume
    assert results["epochs"] == 3 and results["updates"] == 18
    check_steps(run, "loss/actor", range(1, 19))


@pytest.mark.ray
def test_nan_stops_the_vaml_qnet_loop(tmp_path, ray_session, monkeypatch):
    from rayseq.runtime.vaml import VAMLAlgorithm
    from rayseq.train import train

    run = tmp_path / "vaml"
    _poison_learner_log(monkeypatch, VAMLAlgorithm, "loss/critic_td", lambda r: r["step"] > 6)
    with pytest.raises(TrainingError) as err:
        train(_vaml(run, "algo.qnet_epochs=2", "epochs=1"))
    _check_nan_stop(err, run, "loss/critic_td is nan at update 7 (Q-net stage)")
    assert "algo.qnet_lr" in str(err.value)
    assert _trainer_state(run)["qnet"]["updates"] == 6


@pytest.mark.ray
def test_nan_stops_the_actor_critic_loop(tmp_path, mle_run, monkeypatch):
    from rayseq.runtime.actor_critic import ActorCriticAlgorithm
    from rayseq.train import train

    run = tmp_path / "erac"
    cfg = _erac(run, mle_run, "algo.critic_pretrain_epochs=0.1", "algo.critic_valid_every=3", "algo.joint_epochs=0.2",
                "algo.valid_every=2")
    _poison_learner_log(monkeypatch, ActorCriticAlgorithm, "loss/actor",
                        lambda r: r.get("stage") == "joint" and r["step"] > 5)
    with pytest.raises(TrainingError) as err:
        train(cfg)
    _check_nan_stop(err, run, "loss/actor is nan at update 6 (joint stage)")
    assert "algo.actor_lr" in str(err.value)
    state = _trainer_state(run)
    assert (state["step"], state["critic_updates"], state["joint_updates"]) == (5, 3, 2)


@pytest.mark.ray
def test_nan_stops_the_swapin_loop(tmp_path, mle_run, monkeypatch):
    from rayseq.drivers import swapin
    from rayseq.train import train

    real = swapin.iteration_record
    calls: list[int] = []

    def record(result, seconds):
        rec = real(result, seconds)
        calls.append(1)
        if len(calls) == 2:
            rec["loss/actor"] = math.nan
        return rec

    monkeypatch.setattr(swapin, "iteration_record", record)
    run = tmp_path / "ppo"
    with pytest.raises(TrainingError) as err:
        train(_ppo(run, mle_run, "algo.iterations=3"))
    _check_nan_stop(err, run, "loss/actor is nan at update 2 (iteration 2)")
    assert "algo.lr" in str(err.value)
    assert _trainer_state(run)["iteration"] == 1


# ----------------------------------------------------------------------------- RAML / VAML fine-tuned from an MLE actor


@pytest.mark.ray
def test_raml_from_an_mle_actor_for_a_budget(tmp_path, mle_run):
    """RAML fine-tuned from the MLE actor (the ``vaml`` protocol's row): algo.budget_epochs=0.5 of 6
    updates an epoch = 3 updates, validated every 2; the start actor's validation counts as epoch 0."""
    from rayseq.train import train

    run = tmp_path / "raml"
    cfg = _config("raml", run, f"algo.actor_init={mle_run}", "algo.budget_epochs=0.5", "algo.valid_every_updates=2",
                  "epochs=4", "batch_size=500", "algo.num_samples=1")
    results = train(cfg)
    check_steps(run, BLEU_VALID, [0, 2, 3])
    recs = [r for r in read_metrics(run) if BLEU_VALID in r]
    start = validation_bleu(load_actor(mle_run / "actor_best.pt").model, load_task("toy"), max_sentences=cfg.valid_max_sentences,
                            beam=cfg.valid_beam, max_len=cfg.max_decode_len)
    assert recs[0][BLEU_VALID] == pytest.approx(start)  # epoch 0 is the MLE actor itself
    assert results["updates"] == 3 and results["epochs"] == 0.5
    check_steps(run, "loss/actor", [1, 2, 3])
    check_bleu(run, results, cfg)


@pytest.mark.ray
def test_vaml_qnet_only_then_vaml_from_an_mle_actor_with_that_qnet(tmp_path, mle_run):
    """The shared Q-net of the ``vaml`` protocol: ``algo.qnet_only`` trains step 1 (6 updates), trains no
    actor and tests the start actor; a VAML run from the MLE actor with ``algo.qnet_init`` = that run
    makes no Q-net update and spends its whole budget (3 updates) on the actor."""
    from rayseq.actor_io import QNET_FILE
    from rayseq.train import train

    qrun = tmp_path / "qnet"
    qcfg = _vaml(qrun, "algo.qnet_epochs=1", "algo.qnet_only=true", f"algo.actor_init={mle_run}")
    q = train(qcfg)
    assert q["qnet"]["source"] == "trained" and q["qnet"]["updates"] == 6 and q["updates"] == 6 and q["epochs"] == 0
    check_steps(qrun, "loss/critic_td", range(1, 7))
    check_steps(qrun, "loss/actor", [])
    check_steps(qrun, BLEU_VALID, [6])  # the start actor, validated once
    assert _same_weights(qrun / "actor_best.pt", mle_run / "actor_best.pt")
    check_bleu(qrun, q, qcfg)

    run = tmp_path / "vaml"
    cfg = _vaml(run, f"algo.qnet_init={qrun}", f"algo.actor_init={mle_run}", "algo.budget_epochs=0.5",
                "algo.valid_every_updates=2", "epochs=4")
    results = train(cfg)
    assert results["qnet"]["source"] == f"qnet_init {qrun}" and Path(results["qnet"]["path"]) == run / QNET_FILE
    copied, original = load_critic_file(run / QNET_FILE, fmt="rayseq-qnet/1"), load_critic_file(qrun / QNET_FILE, fmt="rayseq-qnet/1")
    assert all(torch.equal(copied["state_dict"][k], original["state_dict"][k]) for k in original["state_dict"])
    assert results["qnet"][QNET_VALID_TD] == pytest.approx(load_critic_file(qrun / QNET_FILE, fmt="rayseq-qnet/1")["meta"][QNET_VALID_TD])
    check_steps(run, "loss/critic_td", [])
    check_steps(run, "loss/actor", [1, 2, 3])
    check_steps(run, BLEU_VALID, [0, 2, 3])
    assert results["updates"] == 3 and results["epochs"] == 0.5
    check_bleu(run, results, cfg)
