"""SCST and MIXER-style REINFORCE: the losses on hand-computed tensors (padding, terminal masking),
the rollout workers' greedy baseline against the env, the packed learner against the padded
equations, and a seconds-long run of every registered REINFORCE algorithm on in-process Ray."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from run_checks import check_bleu, steps_of

from envs.pairs import toy_pairs
from envs.seqpred import SeqPredConfig, SeqPredEnv
from envs.vector import SeqPredVectorEnv
from rayseq.algorithms.erac import ERACConfig, policy_log_probs, step_masks
from rayseq.algorithms.mle import mle_loss
from rayseq.algorithms.reinforce import (
    MIXERConfig,
    REINFORCEConfig,
    SCSTConfig,
    baseline_mse,
    reinforce_baseline_loss,
    returns_to_go,
    scst_loss,
    sequence_return,
)
from rayseq.config import ConfigError, build_run_config
from rayseq.decoding import mask_logits
from rayseq.models.base import BOS
from rayseq.models.seq2seq import Seq2Seq, Seq2SeqConfig
from rayseq.registry import ACTOR_CRITIC, ALGORITHMS, get_algorithm
from rayseq.rollout import RolloutSampler, collate

REINFORCE_ALGOS = sorted(a for a, e in ALGORITHMS.items() if issubclass(e.config_cls, REINFORCEConfig))


# ============================================================================ hand-computed losses


def _two_sequences():
    """Row 0: 2 tokens then a chosen eos (steps t = 0, 1, 2); row 1: 2 tokens, capped (steps t = 0, 1).
    Entries outside the steps hold garbage (9, 7, 100, −inf) that must never matter."""
    mask, done = step_masks(torch.tensor([2, 2]), torch.tensor([False, True]), width=4)
    rewards = torch.tensor([[1.0, 2.0, 0.0, 9.0], [0.5, 0.25, 7.0, 7.0]])
    logp = torch.tensor([[-1.0, -2.0, -0.5, -math.inf], [-0.1, -0.2, -math.inf, -3.0]], requires_grad=True)
    baseline = torch.tensor([[1.0, 0.5, 0.25, 100.0], [0.5, 1.0, 100.0, 100.0]], requires_grad=True)
    return mask, done, rewards, logp, baseline


def test_masks_returns_and_returns_to_go_stop_at_the_terminal_step() -> None:
    mask, done, rewards, _, _ = _two_sequences()
    assert mask.tolist() == [[True, True, True, False], [True, True, False, False]]
    assert done.tolist() == [[False, False, True, False], [False, True, False, False]]
    torch.testing.assert_close(sequence_return(rewards, mask), torch.tensor([3.0, 0.75]))
    torch.testing.assert_close(returns_to_go(rewards, mask), torch.tensor([[3.0, 2.0, 0.0, 0.0], [0.75, 0.25, 0.0, 0.0]]))


def test_scst_loss_value_and_gradient_by_hand() -> None:
    mask, _, rewards, logp, _ = _two_sequences()
    greedy = torch.tensor([1.0, 2.0])  # advantages R − R(ŷ): 3 − 1 = 2, 0.75 − 2 = −1.25
    loss = scst_loss(logp, rewards, greedy, mask)
    # −(2·(−1 − 2 − 0.5) + (−1.25)·(−0.1 − 0.2)) / 2
    assert math.isclose(float(loss.detach()), 3.3125, rel_tol=1e-6)
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, torch.tensor([[-1.0, -1.0, -1.0, 0.0], [0.625, 0.625, 0.0, 0.0]]))
    # the average is over num_seqs when given (packed rows)
    assert math.isclose(float(scst_loss(logp, rewards, greedy, mask, num_seqs=4).detach()), 3.3125 / 2, rel_tol=1e-6)


def test_scst_loss_refuses_a_missing_greedy_baseline_and_bad_shapes() -> None:
    mask, _, rewards, logp, _ = _two_sequences()
    with pytest.raises(ValueError, match="greedy_reward has NaN"):
        scst_loss(logp, rewards, torch.tensor([1.0, float("nan")]), mask)
    with pytest.raises(ValueError, match=r"greedy_reward \(3,\) must be \[N\]"):
        scst_loss(logp, rewards, torch.zeros(3), mask)
    with pytest.raises(ValueError, match="must both be"):
        scst_loss(logp[:, :3], rewards, torch.zeros(2), mask)


def test_reinforce_with_baseline_value_and_gradient_by_hand() -> None:
    mask, _, rewards, logp, baseline = _two_sequences()
    g = returns_to_go(rewards, mask)
    loss = reinforce_baseline_loss(logp, g, baseline, mask)
    # advantages G − b: row 0 (2, 1.5, −0.25), row 1 (0.25, −0.75)
    # −(2·−1 + 1.5·−2 + −0.25·−0.5 + 0.25·−0.1 + −0.75·−0.2) / 2
    assert math.isclose(float(loss.detach()), 2.375, rel_tol=1e-6)
    grad_logp, grad_b = torch.autograd.grad(loss, [logp, baseline], allow_unused=True)
    torch.testing.assert_close(grad_logp, torch.tensor([[-1.0, -0.75, 0.125, 0.0], [-0.125, 0.375, 0.0, 0.0]]))
    assert grad_b is None  # the REINFORCE term never trains the baseline


def test_baseline_mse_value_and_gradient_by_hand() -> None:
    mask, _, rewards, _, baseline = _two_sequences()
    g = returns_to_go(rewards, mask).requires_grad_()
    loss = baseline_mse(baseline, g, mask)
    # ((1−3)² + (0.5−2)² + (0.25−0)² + (0.5−0.75)² + (1−0.25)²) / 2
    assert math.isclose(float(loss.detach()), 6.9375 / 2, rel_tol=1e-6)
    grad_b, grad_g = torch.autograd.grad(loss, [baseline, g], allow_unused=True)
    torch.testing.assert_close(grad_b, torch.tensor([[-2.0, -1.5, 0.25, 0.0], [-0.25, 0.75, 0.0, 0.0]]))
    assert grad_g is None  # the target is a constant


# ============================================================================ configs


def test_configs_map_onto_the_runtime_stages() -> None:
    scst = build_run_config("scst", SCSTConfig, "cpu", "toy").algo_config
    assert isinstance(scst, SCSTConfig) and scst.critic_pretrain_epochs == 0.0  # no critic stage
    mixer = build_run_config("mixer", MIXERConfig, "cpu", "toy", ["algo.baseline_pretrain_epochs=0.5"]).algo_config
    assert mixer.critic_pretrain_epochs == 0.5
    assert not any(f.name in ("tau", "beta", "lambda_var") for f in dataclasses.fields(MIXERConfig))
    # every ERACConfig field the runtime may read exists on both, except the critic's own and Eq. 20's
    critic_only = {"tau", "critic_tau", "beta", "lambda_var", "critic_lr", "critic_pretrain_lr",
                   "critic_pretrain_adam_betas", "normalize_logpi_l2", "actor_support", "critic_init", "critic_warm_start",
                   "critic_valid_every", "target_temperature", "entropy_horizon", "target_entropy", "tau_lr", "tau_anneal_updates",
                   "critic_valid_sentences", "critic_lr_decay", "critic_max_decays", "fresh_joint_optimizers"}
    for name in {f.name for f in dataclasses.fields(ERACConfig)} - critic_only:
        assert hasattr(ERACConfig(), name) and hasattr(scst, name) and hasattr(mixer, name), name


@pytest.mark.parametrize("algo,override,expect", [
    ("scst", "algo.lambda_mle=-1", "lambda_mle"),
    ("scst", "algo.actor_lr=0", "actor_lr"),
    ("mixer", "algo.baseline_lr=0", "baseline_lr"),
    ("mixer", "algo.baseline_pretrain_epochs=-1", "baseline_pretrain_epochs"),
    ("scst", "algo.tau=0.1", "unknown key 'algo.tau'"),
])
def test_bad_reinforce_settings_are_one_clear_error(algo: str, override: str, expect: str) -> None:
    with pytest.raises(ConfigError, match=expect):
        build_run_config(algo, get_algorithm(algo).config_cls, "cpu", "toy", [override])


def test_every_actor_critic_kind_algorithm_has_a_smoke_test() -> None:
    """AC/ERAC configs run test_actor_critic's smoke test, REINFORCE configs the one here."""
    for name, entry in ALGORITHMS.items():
        if entry.kind == ACTOR_CRITIC:
            assert issubclass(entry.config_cls, (ERACConfig, REINFORCEConfig)), name


# ============================================================================ greedy baseline


def _actor(pairs, dropout: float = 0.0) -> Seq2Seq:
    torch.manual_seed(0)
    return Seq2Seq(Seq2SeqConfig(src_vocab_size=pairs.src_vocab_size, tgt_vocab_size=pairs.tgt_vocab_size,
                                 emb_dim=12, enc_hidden=6, dec_hidden=12, dropout=dropout))


@torch.no_grad()
def _greedy_through_env(actor: Seq2Seq, env: SeqPredEnv, index: int) -> float:
    """Argmax decoding stepped through the single env, one token at a time: Σ_t r_t."""
    obs, _ = env.reset(options={"index": index})
    n = int(obs["src_len"])
    enc = actor.encode(torch.as_tensor(obs["src"][None, :n]), torch.tensor([n]))
    state, token, total, done = actor.init_state(enc), torch.tensor([BOS]), 0.0, False
    while not done:
        logits, state = actor.step(enc, state, token)
        token = mask_logits(logits).argmax(-1)
        _, reward, done, _, _ = env.step(int(token))
        total += reward
    return total


def test_greedy_baseline_equals_the_env_reward_of_the_argmax_decode() -> None:
    torch.set_num_threads(1)
    pairs = toy_pairs(num_pairs=40, max_len=7, seed=2)
    cfg = SeqPredConfig(max_len=6, len_slack=1)  # tight caps: some greedy decodes are capped
    actor = _actor(pairs, dropout=0.3)
    sampler = RolloutSampler(actor, SeqPredVectorEnv(pairs, 5, cfg), seed=0, train_mode=True)
    sampler.greedy_baseline = True
    episodes = sampler.collect(12, on_policy=True) + sampler.collect(6)
    assert actor.training  # the sampler's mode is restored after the (eval-mode) greedy decode
    env = SeqPredEnv(pairs, cfg)
    actor.eval()
    expect = [_greedy_through_env(actor, env, e.index) for e in episodes]
    got = [e.greedy_reward for e in episodes]
    np.testing.assert_allclose(got, expect, atol=1e-5)
    assert len(set(np.round(expect, 4))) > 1  # not all equal (e.g. all 0)
    batch = collate(episodes)
    np.testing.assert_allclose(batch["greedy_reward"], expect, atol=1e-5)
    sampler.greedy_baseline = False
    assert np.isnan(collate(sampler.collect(3, on_policy=True))["greedy_reward"]).all()


# ============================================================================ packed learner


def _module_and_batch(heads: str, seed: int = 0):
    from rayseq.runtime.ac_learner import ActorCriticRLModule

    torch.manual_seed(seed)
    pairs = toy_pairs(num_pairs=40, seed=seed)
    mc = dataclasses.asdict(Seq2SeqConfig(src_vocab_size=pairs.src_vocab_size, tgt_vocab_size=pairs.tgt_vocab_size,
                                          emb_dim=12, enc_hidden=6, dec_hidden=12, dropout=0.0))
    module = ActorCriticRLModule(observation_space=None, action_space=None, model_config={**mc, "heads": heads})
    if heads == "baseline":
        with torch.no_grad():
            module.baseline.bias.fill_(0.3)
    sampler = RolloutSampler(module.actor, SeqPredVectorEnv(pairs, 6, SeqPredConfig(max_len=6, len_slack=1)), seed=seed)
    sampler.greedy_baseline = True
    batch = {k: torch.as_tensor(v) for k, v in collate(sampler.collect(12, on_policy=True)).items()}
    assert bool(batch["capped"].any()) and not bool(batch["capped"].all())
    return module, batch


@pytest.mark.parametrize("objective", ["scst", "mixer"])
def test_packed_learner_losses_and_gradients_equal_the_padded_equations(objective: str) -> None:
    from rayseq.runtime.ac_learner import module_heads, packed_reinforce_losses

    cfg = (SCSTConfig if objective == "scst" else MIXERConfig)(lambda_mle=0.1)
    module, b = _module_and_batch(module_heads(objective))
    assert not hasattr(module, "critic")
    params = [p for p in module.parameters() if p.requires_grad]
    total, parts = packed_reinforce_losses(module.forward_train(b), b, cfg, objective, joint=True)
    grads = torch.autograd.grad(total, params, allow_unused=True)

    mask, _ = step_masks(b["lengths"], b["capped"], b["tgt_in"].size(1))
    enc = module.actor.encode(b["src"], b["src_len"])
    hidden = module.actor.decode_hidden(enc, b["tgt_in"])  # [N, T, Hd]
    logp = policy_log_probs(module.actor.out(hidden)).gather(-1, b["actions"].unsqueeze(-1)).squeeze(-1)  # [N, T]
    if objective == "scst":
        rl = scst_loss(logp, b["rewards"], b["greedy_reward"], mask)
        other = torch.zeros(())
    else:
        baseline = module.baseline(hidden.detach()).squeeze(-1)  # [N, T]
        g = returns_to_go(b["rewards"], mask)
        rl = reinforce_baseline_loss(logp, g, baseline, mask)
        other = baseline_mse(baseline, g, mask)
        assert math.isclose(parts["loss/baseline"], float(other), rel_tol=1e-5)
    mle = mle_loss(module.actor(b["src"], b["src_len"], b["ref_in"]), b["ref_out"]).loss
    expect = rl + 0.1 * mle + other
    assert math.isclose(float(total), float(expect), rel_tol=1e-5)
    assert math.isclose(parts["loss/actor_objective"], float(rl), rel_tol=1e-5)
    ref_grads = torch.autograd.grad(expect, params, allow_unused=True)
    for p, g_, r in zip(params, grads, ref_grads):
        if r is None:
            assert g_ is None or not g_.any()
        else:
            torch.testing.assert_close(g_, r, rtol=1e-4, atol=1e-6)


def test_mixer_baseline_pretraining_trains_the_baseline_alone() -> None:
    from rayseq.runtime.ac_learner import packed_reinforce_losses

    module, b = _module_and_batch("baseline", seed=1)
    module.stage = "critic"
    total, parts = packed_reinforce_losses(module.forward_train(b), b, MIXERConfig(), "mixer", joint=False)
    total.backward()
    assert all(p.grad is None for p in module.actor.parameters())
    assert module.baseline.weight.grad is not None and module.baseline.weight.grad.abs().sum() > 0
    assert "loss/actor" not in parts and parts["loss/baseline"] > 0


def test_scst_module_has_no_pretraining_stage() -> None:
    from rayseq.runtime.ac_learner import ActorCriticRLModule

    mc = dataclasses.asdict(Seq2SeqConfig(src_vocab_size=10, tgt_vocab_size=10, emb_dim=8, enc_hidden=4, dec_hidden=8))
    module = ActorCriticRLModule(observation_space=None, action_space=None, model_config={**mc, "heads": "none"})
    assert module.get_non_inference_attributes() == []
    assert {n.split(".")[0] for n, _ in module.named_parameters()} == {"actor"}
    with pytest.raises(ValueError, match="heads='bogus'"):
        ActorCriticRLModule(observation_space=None, action_space=None, model_config={**mc, "heads": "bogus"})


# ============================================================================ on in-process Ray


@pytest.fixture(scope="module")
def mle_run(tmp_path_factory, ray_session):
    """A one-epoch MLE actor on the toy task (the MLE stage the REINFORCE runs start from)."""
    from rayseq.algorithms.mle import MLEConfig
    from rayseq.train import train

    out = tmp_path_factory.mktemp("mle") / "run"
    train(build_run_config("mle", MLEConfig, "cpu", "toy", ["epochs=1"], out=str(out)))
    return out


@pytest.mark.ray
@pytest.mark.parametrize("algo", REINFORCE_ALGOS)
def test_smoke_every_registered_reinforce_algorithm(algo, tmp_path, mle_run):
    """Seconds-long pipeline with 2 rollout workers: (baseline stage,) REINFORCE stage, files, metrics."""
    from rayseq.train import train

    run = tmp_path / algo
    overrides = [f"algo.actor_init={mle_run}", "algo.joint_epochs=0.04", "algo.valid_every=4", "log_every=2",
                 "valid_max_sentences=40", "batch_size=20"]
    if algo == "mixer":
        overrides.append("algo.baseline_pretrain_epochs=0.03")
    cfg = build_run_config(algo, get_algorithm(algo).config_cls, "cpu", "toy", overrides, out=str(run),
                           num_rollout_workers=2, envs_per_worker=8)
    results = train(cfg)
    for name in ("run.json", "stages.json", "metrics.jsonl", "actor_best.pt", "curve.png", "results.json", "checkpoint"):
        assert (run / name).exists(), name
    # joint: 0.04 × 3000 pairs / 20 = 6 updates; MIXER's baseline: 0.03 × 3000 / 20 = 4.5 → 5; SCST has no pretraining
    pre = 5 if algo == "mixer" else 0
    assert (results["critic_updates"], results["joint_updates"], results["updates"]) == (pre, 6, pre + 6)
    check_bleu(run, results, cfg)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps_of(recs, "bleu/valid") == [pre, pre + 4, pre + 6]  # the start, every 4 updates, the end
    assert not any("loss/critic_td" in r for r in recs)
    actor = [r["loss/actor"] for r in recs if "loss/actor" in r]
    base = [r["reward/baseline"] for r in recs if "reward/baseline" in r]
    assert actor and base and all(np.isfinite(actor + base))
    if algo == "mixer":
        mse = [r["loss/baseline"] for r in recs if "loss/baseline" in r]
        assert mse and all(np.isfinite(mse))
    else:  # the greedy decode of the MLE actor scores about what its samples score
        assert all(0.0 <= v <= 100.0 for v in base)
    assert all(r["policy_lag"] == 0.0 for r in recs if "policy_lag" in r)
