"""Critic pretraining and VAML's Q-net stage trained like the authors': held-out checks, lr × decay
on a plateau, the best network kept and restored; fresh optimisers for joint training; the shared
pretrained critic (``algo.critic_init``); "MLE continued" (``algo.actor_init`` for MLE).

Toy task, in-process Ray; each run takes seconds.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rayseq.actor_io import CRITIC_FILE, load_actor, load_critic_file
from rayseq.config import build_run_config
from rayseq.data.tasks import load_task
from rayseq.metrics import CRITIC_TOP1_ACC, CRITIC_VALID_TD, LR_CRITIC, LR_QNET, QNET_GREEDY_BLEU, QNET_VALID_TD
from rayseq.registry import get_algorithm


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def mle_run(tmp_path_factory, ray_session):
    from rayseq.train import train

    out = tmp_path_factory.mktemp("mle") / "run"
    train(build_run_config("mle", get_algorithm("mle").config_cls, "cpu", "toy", ["epochs=1"], out=str(out)))
    return out


def _ac(algo, out, mle_run, *overrides):
    base = [f"algo.actor_init={mle_run}", "algo.critic_pretrain_epochs=0.2", "algo.critic_valid_every=5",
            "algo.critic_valid_sentences=40", "algo.joint_epochs=0.04", "algo.valid_every=3", "log_every=2",
            "valid_max_sentences=40", "batch_size=20"]
    return build_run_config(algo, get_algorithm(algo).config_cls, "cpu", "toy", [*base, *overrides], out=str(out),
                            num_rollout_workers=1, envs_per_worker=8)


@pytest.mark.ray
def test_critic_pretraining_keeps_the_best_critic_decays_on_plateau_and_starts_joint_from_it(tmp_path, mle_run):
    from rayseq.train import train

    run = tmp_path / "erac"
    # a large critic lr: some held-out checks get worse, so the lr decays; at most 2 decays
    results = train(_ac("erac", run, mle_run, "algo.critic_pretrain_lr=0.05", "algo.critic_max_decays=2"))
    checks = [r for r in _records(run) if CRITIC_VALID_TD in r and "critic/best_valid_td" in r]
    td = [r[CRITIC_VALID_TD] for r in checks]
    assert len(checks) >= 2 and all(np.isfinite(td))
    # the running best, and the lr halving after every check that did not improve on it, until 2 decays
    # were made: the next miss stops the stage at that check with the lr unchanged
    best, lr, decays = float("inf"), 0.05, 0
    for i, r in enumerate(checks):
        improved = r[CRITIC_VALID_TD] <= best
        best = min(best, r[CRITIC_VALID_TD])
        if not improved and decays == 2:
            assert i == len(checks) - 1, "the stage went on after the miss that should have stopped it"
        elif not improved:
            lr, decays = lr * 0.5, decays + 1
        assert r["critic/best_valid_td"] == pytest.approx(best)
        assert r[LR_CRITIC] == pytest.approx(lr)
    # the stage stopped at the cap or after the 3rd non-improvement (2 decays allowed)
    misses = sum(1 for i, r in enumerate(checks) if r[CRITIC_VALID_TD] > min(td[:i] or [np.inf]))
    assert results["critic_updates"] == 30 or misses == 3
    # critic_best.pt holds the best check, and joint training started from exactly that critic
    saved = load_critic_file(run / CRITIC_FILE)
    assert saved["meta"][CRITIC_VALID_TD] == pytest.approx(min(td))
    assert results["critic"]["best"][CRITIC_VALID_TD] == pytest.approx(min(td))
    start = results["joint_start"]
    assert start[CRITIC_VALID_TD] == pytest.approx(min(td), rel=1e-5)  # scored again: the same critic, same samples
    assert 0.0 <= start[CRITIC_TOP1_ACC] <= 1.0


@pytest.mark.ray
def test_joint_training_starts_with_fresh_optimisers_unless_told_not_to(mle_run, ray_session):
    from rayseq.runtime.builders import build_actor_critic_algorithm

    for fresh in (True, False):
        cfg = _ac("erac", "unused", mle_run, f"algo.fresh_joint_optimizers={fresh}")
        algo = build_actor_critic_algorithm(cfg, load_task("toy"))
        try:
            algo.set_stage("critic")
            algo.updates_per_iteration = 2
            algo.train()
            sizes = lambda: algo.learner_group.foreach_learner(  # noqa: E731
                lambda learner: {name: len(opt.state) for name, opt in learner.get_optimizers_for_module("default_policy")})
            before = next(iter(sizes())).get()
            critic = next(k for k in before if k.endswith("critic"))
            actor = next(k for k in before if k.endswith("actor"))
            assert before[critic] > 0 and before[actor] == 0, before  # the actor is frozen in pretraining
            algo.set_stage("joint")
            if cfg.algo_config.fresh_joint_optimizers:
                algo.reset_optimizers()
            after = next(iter(sizes())).get()
            assert after[critic] == (0 if fresh else before[critic])
        finally:
            algo.stop()


@pytest.mark.ray
def test_a_shared_pretrained_critic_skips_pretraining(tmp_path, mle_run):
    from rayseq.train import train

    first = tmp_path / "first"
    train(_ac("erac", first, mle_run))
    second = tmp_path / "second"
    results = train(_ac("erac", second, mle_run, f"algo.critic_init={first}"))
    assert results["critic_updates"] == 0 and results["critic"]["source"].startswith("critic_init")
    best = load_critic_file(first / CRITIC_FILE)["meta"][CRITIC_VALID_TD]
    assert results["joint_start"][CRITIC_VALID_TD] == pytest.approx(best, rel=1e-5)
    # `rayseq eval RUN --critic` of the second run scores the critic it started from
    from rayseq.data.errors import DataError
    from rayseq.evaluation.critic import score_run_critic

    assert not (second / CRITIC_FILE).exists()
    scored = score_run_critic(second)
    assert scored["file"] == str(first / CRITIC_FILE) and scored["kind"] == "critic"
    assert math.isfinite(scored[CRITIC_VALID_TD])
    moved = tmp_path / "moved"
    first.rename(moved)  # the critic it started from is gone: a clear error naming the setting
    with pytest.raises(DataError, match="algo.critic_init"):
        score_run_critic(second)


@pytest.mark.ray
def test_critic_pretraining_warm_started_from_a_critic_or_a_qnet(tmp_path, mle_run):
    from rayseq.data.errors import DataError
    from rayseq.train import train

    first = tmp_path / "first"
    train(_ac("erac", first, mle_run))
    best = load_critic_file(first / CRITIC_FILE)["meta"][CRITIC_VALID_TD]
    # from a pretrained critic: scored before the first update, it is that critic (same held-out samples)
    warm = tmp_path / "warm"
    results = train(_ac("erac", warm, mle_run, f"algo.critic_warm_start={first / CRITIC_FILE}"))
    start = [r for r in _records(warm) if CRITIC_VALID_TD in r][0]
    assert start["step"] == 0 and "critic/best_valid_td" not in start
    assert start[CRITIC_VALID_TD] == pytest.approx(best, rel=1e-5)
    assert results["critic_updates"] > 0  # and then it is pretrained as configured
    # from a VAML run's Q-net (its run dir): the same shape, its own format
    vaml = tmp_path / "vaml"
    train(build_run_config("vaml", get_algorithm("vaml").config_cls, "cpu", "toy",
                           ["algo.qnet_only=true", "algo.qnet_epochs=0.5", "algo.qnet_valid_sentences=20",
                            "valid_max_sentences=20"], out=str(vaml)))
    from_q = tmp_path / "from_qnet"
    results = train(_ac("erac", from_q, mle_run, f"algo.critic_warm_start={vaml}"))
    assert [r for r in _records(from_q) if CRITIC_VALID_TD in r][0]["step"] == 0
    assert np.isfinite(results["joint_start"][CRITIC_VALID_TD])
    # a directory holding neither file: one error naming the setting, and no run left behind
    bad = tmp_path / "bad"
    with pytest.raises(DataError, match="algo.critic_warm_start=.*neither critic_best.pt nor qnet.pt"):
        train(_ac("erac", bad, mle_run, f"algo.critic_warm_start={tmp_path}"))
    assert not bad.exists()


@pytest.mark.ray
def test_mle_continued_starts_from_the_actor_and_never_ends_below_it(tmp_path, mle_run):
    from rayseq.train import train

    run = tmp_path / "continued"
    results = train(build_run_config("mle", get_algorithm("mle").config_cls, "cpu", "toy",
                                     [f"algo.actor_init={mle_run}", "epochs=1"], out=str(run)))
    start = load_actor(mle_run / "actor_best.pt")
    recs = [r for r in _records(run) if "bleu/valid" in r]
    assert recs[0]["step"] == 0 and recs[0]["bleu/valid"] == pytest.approx(start.meta["bleu/valid"])
    assert results["bleu/valid"] == max(r["bleu/valid"] for r in recs) >= recs[0]["bleu/valid"]
    trainer = json.loads((mle_run / "checkpoint" / "trainer_state.json").read_text())
    assert recs[0]["lr"] == trainer["schedule"]["lr"]  # the lr where the MLE run left off


@pytest.mark.ray
@pytest.mark.parametrize("select", ["valid_td", "greedy_bleu"])
def test_qnet_stage_keeps_the_best_qnet_and_decays_on_plateau(tmp_path, ray_session, select):
    """The best Q-net by ``algo.qnet_select`` is kept and step 2 uses it; the lr decays after a pass
    that did not improve that figure (replayed from the log)."""
    from rayseq.actor_io import QNET_FILE
    from rayseq.algorithms.vaml import QNET_SELECT
    from rayseq.train import train

    run = tmp_path / "vaml"
    cfg = build_run_config("vaml", get_algorithm("vaml").config_cls, "cpu", "toy",
                           ["epochs=1", "algo.qnet_epochs=4", "algo.qnet_lr=0.05", "algo.qnet_max_decays=1",
                            "algo.qnet_valid_sentences=50", f"algo.qnet_select={select}"], out=str(run))
    results = train(cfg)
    key = QNET_SELECT[select]
    sign = -1.0 if select == "greedy_bleu" else 1.0  # compare as "lower is better"
    checks = [r for r in _records(run) if QNET_VALID_TD in r]
    assert len(checks) >= 2
    best, lr, best_record = float("inf"), 0.05, None
    for r in checks:
        if sign * r[key] <= best:
            best, best_record = sign * r[key], r
        else:
            lr *= 0.5
        assert r[LR_QNET] == pytest.approx(lr)
    saved = load_critic_file(run / QNET_FILE, fmt="rayseq-qnet/1")
    for name in (QNET_VALID_TD, QNET_GREEDY_BLEU):  # the kept Q-net is the selected pass's, by both figures
        assert saved["meta"][name] == pytest.approx(best_record[name])
        assert results["qnet"][name] == pytest.approx(best_record[name])
    assert CRITIC_TOP1_ACC in results["qnet"]


@pytest.mark.ray
def test_a_zero_critic_lr_freezes_the_critic_in_joint_training(tmp_path, mle_run):
    """``algo.critic_lr=0``: joint training leaves the critic it started from as it was, while the actor moves."""
    import pickle

    from rayseq.train import train

    first = tmp_path / "first"
    train(_ac("erac", first, mle_run))
    frozen = tmp_path / "frozen"
    results = train(_ac("erac", frozen, mle_run, f"algo.critic_init={first}", "algo.critic_lr=0"))
    assert results["updates"] > 0
    module = frozen / "checkpoint" / "learner_group" / "learner" / "rl_module" / "default_policy" / "module_state.pkl"
    state = pickle.loads(module.read_bytes())
    start = load_critic_file(first / CRITIC_FILE)["state_dict"]
    for name, value in start.items():
        np.testing.assert_array_equal(np.asarray(state[f"critic.{name}"]), np.asarray(value), err_msg=name)
    before = load_actor(mle_run / "actor_best.pt").model.state_dict()
    moved = [k for k, v in load_actor(frozen / "actor_latest.pt").model.state_dict().items() if not torch.equal(v, before[k])]
    assert moved  # the actor did train
    with pytest.raises(ValueError, match="critic_lr = -1"):
        get_algorithm("erac").config_cls(critic_lr=-1.0)
