"""AC / ERAC on the runtime: the packed learner equals the padded equations; every registered
actor-critic algorithm runs end to end with 2 rollout workers on in-process Ray; async schedule;
resume skips finished stages; clear errors."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from run_checks import check_bleu, steps_of

from envs.pairs import toy_pairs
from envs.seqpred import SeqPredConfig
from envs.vector import SeqPredVectorEnv
from rayseq.algorithms.erac import (
    ERACConfig,
    critic_loss,
    erac_actor_loss,
    gather_actions,
    policy_log_probs,
    reference_horizon,
    sharpen_log_probs,
    soft_td_target,
    soft_value,
    step_masks,
)
from rayseq.config import ConfigError, build_run_config
from rayseq.models.seq2seq import Seq2SeqConfig
from rayseq.registry import ACTOR_CRITIC, ALGORITHMS, get_algorithm
from rayseq.rollout import RolloutSampler, collate

AC_ALGOS = sorted(a for a, e in ALGORITHMS.items() if e.kind == ACTOR_CRITIC and issubclass(e.config_cls, ERACConfig))
"""Actor-critic algorithms with a critic (SCST / MIXER: tests/test_reinforce.py)."""


def _module_and_batch(seed: int = 0, len_slack: int = 1):
    from rayseq.runtime.ac_learner import ActorCriticRLModule

    torch.manual_seed(seed)
    pairs = toy_pairs(num_pairs=40, seed=seed)
    mc = dataclasses.asdict(Seq2SeqConfig(src_vocab_size=pairs.src_vocab_size, tgt_vocab_size=pairs.tgt_vocab_size,
                                          emb_dim=12, enc_hidden=6, dec_hidden=12, dropout=0.0))
    module = ActorCriticRLModule(observation_space=None, action_space=None, model_config=mc)
    # a target critic that differs from the critic, so that Q̄ ≠ Q matters
    with torch.no_grad():
        for p in module.target_critic.parameters():
            p.add_(0.05 * torch.randn_like(p))
    env = SeqPredVectorEnv(pairs, 6, SeqPredConfig(max_len=6, len_slack=len_slack))
    episodes = RolloutSampler(module.actor, env, seed=seed).collect(12, on_policy=True)
    batch = {k: torch.as_tensor(v) for k, v in collate(episodes).items()}
    return module, batch


@pytest.mark.parametrize("variant,temperature,horizon", [
    ("erac", 1.0, "all"), ("ac", 1.0, "all"), ("erac-nofutent", 1.0, "all"), ("erac", 0.5, "all"), ("erac", 1.0, "reference"),
])
def test_packed_learner_losses_and_gradients_equal_the_padded_equations(variant: str, temperature: float, horizon: str) -> None:
    """The learner's one-pass packed computation == Eq. 18-20 on padded [N, T, V] tensors (with the
    critic target's policy sharpened: ``algo.target_temperature``; with the entropy bonus only at
    prefixes of at most |y*| tokens: ``algo.entropy_horizon=reference``)."""
    from rayseq.runtime.ac_learner import packed_losses

    erac = ERACConfig.variant(variant, lambda_var=0.01, normalize_logpi_l2=variant == "erac", target_temperature=temperature,
                              entropy_horizon=horizon)
    module, b = _module_and_batch(len_slack=3 if horizon == "reference" else 1)
    assert bool(b["capped"].any()) and not bool(b["capped"].all())
    if horizon == "reference":
        width = b["tgt_in"].size(1)
        past = ~reference_horizon(b["ref_len"], width) & step_masks(b["lengths"], b["capped"], width)[0]
        assert bool(past.any())  # some sampled states lie past the reference length
    module.stage = "joint"
    total, parts = packed_losses(module.forward_train(b), b, erac, joint=True)
    total_value = float(total.detach())
    grads = torch.autograd.grad(total, [*module.actor.parameters(), *module.critic.parameters()])

    # the reference: full padded passes and the equations as written
    mask, done = step_masks(b["lengths"], b["capped"], b["tgt_in"].size(1))
    logits = module.actor(b["src"], b["src_len"], b["tgt_in"])
    q = module.critic(b["ref"], b["ref_len"], b["tgt_in"])
    with torch.no_grad():
        q_bar = module.target_critic(b["ref"], b["ref_len"], b["tgt_in"])
    logp = sharpen_log_probs(policy_log_probs(logits.detach()), temperature)
    entropy_mask = reference_horizon(b["ref_len"], b["tgt_in"].size(1)) if horizon == "reference" else None
    target = soft_td_target(b["rewards"], soft_value(q_bar, logp, erac.target_tau, mask, entropy_mask=entropy_mask), done, mask)
    closs = critic_loss(gather_actions(q, b["actions"]), target, q, mask, erac.lambda_var)
    mle_logits = module.actor(b["src"], b["src_len"], b["ref_in"])
    aloss = erac_actor_loss(logits, q.detach(), mask, erac.tau, erac.lambda_mle, mle_logits, b["ref_out"],
                            erac.normalize_logpi_l2)
    expect = closs.loss + aloss.loss
    assert math.isclose(total_value, float(expect.detach()), rel_tol=1e-5)
    assert math.isclose(parts["loss/critic_td"], float(closs.td.detach()), rel_tol=1e-5)
    assert math.isclose(parts["loss/mle"], float(aloss.mle.detach()), rel_tol=1e-5)
    ref_grads = torch.autograd.grad(expect, [*module.actor.parameters(), *module.critic.parameters()])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_critic_stage_gives_the_actor_no_gradient() -> None:
    from rayseq.runtime.ac_learner import packed_losses

    module, b = _module_and_batch(1)
    module.stage = "critic"
    total, parts = packed_losses(module.forward_train(b), b, ERACConfig(), joint=False)
    total.backward()
    assert all(p.grad is None for p in module.actor.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.critic.parameters())
    assert all(p.grad is None for p in module.target_critic.parameters())
    assert "loss/actor" not in parts


def test_inference_only_module_has_the_actor_alone() -> None:
    from gymnasium import spaces
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rayseq.runtime.ac_learner import ActorCriticRLModule

    mc = dataclasses.asdict(Seq2SeqConfig(src_vocab_size=10, tgt_vocab_size=10, emb_dim=8, enc_hidden=4, dec_hidden=8))
    sp = {"observation_space": spaces.Box(0, 9, (3,)), "action_space": spaces.Discrete(10)}
    full = RLModuleSpec(module_class=ActorCriticRLModule, model_config=mc, **sp).build()
    light = RLModuleSpec(module_class=ActorCriticRLModule, model_config=mc, inference_only=True, **sp).build()
    assert not hasattr(light, "critic")
    state = full.get_state(inference_only=True)
    assert state and all(k.startswith("actor.") for k in state)
    light.set_state(state)


# ============================================================================ configuration errors


@pytest.mark.parametrize("override,expect", [
    ("algo.tau=-0.1", "tau"),
    ("algo.beta=0", "beta"),
    ("algo.beta=1.5", "beta"),
    ("algo.replay_ratio=0", "replay_ratio"),
    ("algo.schedule=later", "schedule"),
])
def test_bad_actor_critic_settings_are_one_clear_error(override: str, expect: str) -> None:
    with pytest.raises(ConfigError, match=expect):
        build_run_config("erac", ERACConfig, "cpu", "toy", [override])


def test_ac_keeps_tau_zero_and_nofutent_keeps_critic_tau_zero() -> None:
    assert build_run_config("ac", get_algorithm("ac").config_cls, "cpu", "toy").algo_config.tau == 0.0
    nf = build_run_config("erac-nofutent", get_algorithm("erac-nofutent").config_cls, "cpu", "toy").algo_config
    assert nf.tau > 0 and nf.target_tau == 0.0
    with pytest.raises(ConfigError, match="AC needs τ = 0"):
        build_run_config("ac", get_algorithm("ac").config_cls, "cpu", "toy", ["algo.tau=0.1"])


def test_nan_loss_stops_training_with_the_step_term_and_checkpoint(tmp_path) -> None:
    from rayseq.errors import TrainingError
    from rayseq.drivers.stage import check_finite

    check_finite([{"step": 3, "loss/critic_td": 1.0}], "joint stage", tmp_path, "a smaller lr")
    with pytest.raises(TrainingError, match=r"loss/critic_td is nan at update 7 \(joint stage\).*checkpoint.*smaller lr"):
        check_finite([{"step": 7, "loss/critic_td": float("nan")}], "joint stage", tmp_path, "a smaller lr")


# ============================================================================ on in-process Ray


@pytest.fixture(scope="module")
def mle_run(tmp_path_factory, ray_session):
    """A one-epoch MLE actor on the toy task (the MLE stage the RL runs start from)."""
    from rayseq.algorithms.mle import MLEConfig
    from rayseq.train import train

    out = tmp_path_factory.mktemp("mle") / "run"
    train(build_run_config("mle", MLEConfig, "cpu", "toy", ["epochs=1"], out=str(out)))
    return out


def _ac_config(algo, out, mle_run, *overrides, **cli):
    base = [f"algo.actor_init={mle_run}", "algo.critic_pretrain_epochs=0.15", "algo.joint_epochs=0.2",
            "algo.valid_every=5", "log_every=2", "valid_max_sentences=40", "batch_size=20"]
    cli = {"num_rollout_workers": 2, "envs_per_worker": 8, **cli}
    return build_run_config(algo, get_algorithm(algo).config_cls, "cpu", "toy", [*base, *overrides], out=str(out), **cli)


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.ray
@pytest.mark.parametrize("algo", AC_ALGOS)
def test_smoke_every_registered_actor_critic_algorithm(algo, tmp_path, mle_run):
    """Seconds-long pipeline with 2 rollout workers: critic stage, joint stage, files, metrics."""
    from rayseq.train import train

    run = tmp_path / algo
    cfg = _ac_config(algo, run, mle_run)
    results = train(cfg)
    for name in ("run.json", "stages.json", "metrics.jsonl", "actor_best.pt", "curve.png", "results.json", "checkpoint"):
        assert (run / name).exists(), name
    # critic: 0.15 × 3000 pairs / 20 = 22.5 → 23 updates, one held-out check (every 150 = an epoch);
    # joint: 0.2 × 3000 / 20 = 30 updates, validated every 5 (the 1-epoch MLE actor cannot collapse)
    assert (results["critic_updates"], results["joint_updates"], results["updates"]) == (23, 30, 53)
    assert results["collapsed"] is False
    assert results["mle"]["source"] == "actor_init"
    assert results["mle"]["test"] == json.loads((mle_run / "results.json").read_text())["test"]
    check_bleu(run, results, cfg)
    recs = _records(run)
    assert steps_of(recs, "bleu/valid") == [23, 28, 33, 38, 43, 48, 53]  # the start, then every 5 updates
    assert steps_of(recs, "loss/critic_td") == list(range(2, 54, 2))  # log_every = 2
    td = [r["loss/critic_td"] for r in recs if "loss/critic_td" in r]
    assert td and all(np.isfinite(td))
    assert any("loss/actor" in r for r in recs) and any("bleu/valid" in r for r in recs)
    lags = [r["policy_lag"] for r in recs if "policy_lag" in r]
    assert lags and all(v == 0.0 for v in lags)  # the sync schedule samples every batch on-policy
    assert all(r["sample/tokens_per_s"] > 0 for r in recs if "sample/tokens_per_s" in r)


@pytest.mark.ray
def test_async_schedule_trains_from_replay_with_logged_policy_lag(tmp_path, mle_run):
    from rayseq.train import train

    run = tmp_path / "async"
    results = train(_ac_config("erac", run, mle_run, "algo.schedule=async", "algo.replay_capacity=200",
                               "algo.replay_ratio=2.0", "algo.weights_sync_every=2"))
    assert (results["critic_updates"], results["joint_updates"]) == (23, 30)  # as the sync schedule's
    lags = [r["policy_lag"] for r in _records(run) if "policy_lag" in r]
    assert lags and all(v >= 0 for v in lags) and max(lags) > 0  # workers ran ahead of the learner


@pytest.mark.ray
def test_remote_learner_layout(tmp_path, mle_run):
    """The learner in its own Ray actor (``--num-learners 1``), as on a cluster."""
    from rayseq.train import train

    cfg = _ac_config("erac", tmp_path / "remote", mle_run, "algo.joint_epochs=0.1", num_rollout_workers=1, num_learners=1)
    results = train(cfg)
    assert (results["critic_updates"], results["joint_updates"]) == (23, 15)  # 0.1 × 3000 / 20 = 15 joint updates
    check_bleu(tmp_path / "remote", results, cfg)


@pytest.mark.ray
def test_resume_skips_finished_stages(tmp_path, mle_run):
    from rayseq.train import train

    run = tmp_path / "resume"
    first = train(_ac_config("erac", run, mle_run, "algo.joint_epochs=0"))
    assert (first["critic_updates"], first["joint_updates"], first["updates"]) == (23, 0, 23)
    cfg = _ac_config("erac", run, mle_run, "algo.joint_epochs=0.2")
    second = train(cfg, resume=True)
    assert second["critic_updates"] == 23  # not pretrained again
    assert (second["joint_updates"], second["updates"]) == (30, 53)
    assert second["critic"] == first["critic"]
    recs = _records(run)
    assert steps_of(recs, "lr/critic") == [23]  # the critic stage's one held-out check, logged once
    assert steps_of(recs, "bleu/valid") == [23, 28, 33, 38, 43, 48, 53]  # the start of joint training once


@pytest.mark.ray
def test_actor_init_that_does_not_fit_is_one_clear_error(tmp_path, mle_run):
    from rayseq.errors import TrainingError
    from rayseq.train import train

    cfg = _ac_config("erac", tmp_path / "bad", mle_run, "model.emb_dim=16")
    with pytest.raises(TrainingError, match="does not fit this run.*emb_dim"):
        train(cfg)
