"""Swap-ins: RLlib's own PPO / APPO / SAC with the project's actor as policy.

Module unit tests (heads' shapes, the policy never reads ``ref``, SAC's outputs are finite), the
missing-API check, the metrics of one iteration, and a seconds-long smoke run of every registered
swap-in on the toy task on in-process Ray.
"""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from run_checks import check_bleu

from envs.pairs import toy_pairs
from envs.seqpred import SeqPredConfig, SeqPredEnv
from rayseq.config import build_run_config
from rayseq.models.seq2seq import Seq2SeqConfig
from rayseq.registry import ALGORITHMS, SWAPIN, get_algorithm

SWAPINS = sorted(a for a, e in ALGORITHMS.items() if e.kind == SWAPIN)


def test_ppo_appo_sac_are_registered_swapins() -> None:
    assert {"ppo", "appo", "sac"} <= set(SWAPINS)


def _obs_batch(n: int = 5, seed: int = 0) -> tuple[dict[str, torch.Tensor], int]:
    """A batch of real observations: n episodes of the toy env, a few tokens into each."""
    pairs = toy_pairs(num_pairs=20, seed=seed)
    env = SeqPredEnv(pairs, SeqPredConfig(max_len=8))
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        obs, _ = env.reset(seed=seed + i)
        for _ in range(int(rng.integers(0, 3))):
            obs, _, done, _, _ = env.step(int(rng.integers(4, pairs.tgt_vocab_size)))
            if done:
                break
        rows.append(obs)
    batch = {k: torch.as_tensor(np.stack([r[k] for r in rows])) for k in rows[0]}
    return batch, pairs.tgt_vocab_size


def _module(cls, vocab: int, **kw):
    mc = dataclasses.asdict(Seq2SeqConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, emb_dim=12, enc_hidden=6,
                                          dec_hidden=12, dropout=0.0))
    torch.manual_seed(0)
    return cls(observation_space=None, action_space=None, model_config={**mc, "head_hidden": 7}, **kw)


def test_ppo_module_logits_and_value_shapes() -> None:
    from ray.rllib.core.columns import Columns

    from rayseq.runtime.swapin_module import SeqPPOModule

    obs, v = _obs_batch()
    m = _module(SeqPPOModule, v)
    out = m.forward_train({Columns.OBS: obs})
    logits = out[Columns.ACTION_DIST_INPUTS]
    assert logits.shape == (5, v)
    assert torch.isinf(logits[:, :3][:, [0, 2]]).all()  # <pad>, <bos> never actions
    values = m.compute_values({Columns.OBS: obs})
    assert values.shape == (5,)
    assert torch.allclose(values, m.compute_values({Columns.OBS: obs}, embeddings=out[Columns.EMBEDDINGS]))
    # the value head reads the detached decoder state: its loss gives the actor no gradient
    m.compute_values({Columns.OBS: obs}, embeddings=out[Columns.EMBEDDINGS]).sum().backward()
    assert all(p.grad is None for p in m.actor.parameters())
    assert all(p.grad is not None for p in m.value_head.parameters())


@pytest.mark.parametrize("cls_name", ["SeqPPOModule", "SeqAPPOModule", "SeqSACModule"])
def test_policy_never_reads_the_reference(cls_name: str) -> None:
    from ray.rllib.core.columns import Columns

    import rayseq.runtime.swapin_module as sm

    obs, v = _obs_batch()
    m = _module(getattr(sm, cls_name), v)
    other = dict(obs)
    other["ref"] = torch.randint(4, v, obs["ref"].shape)
    other["ref_len"] = torch.ones_like(obs["ref_len"])
    for fwd in (m.forward_exploration, m.forward_inference):
        a, b = fwd({Columns.OBS: obs}), fwd({Columns.OBS: other})
        assert torch.equal(a[Columns.ACTION_DIST_INPUTS], b[Columns.ACTION_DIST_INPUTS])
    # ... while the prefix does matter
    changed = dict(obs)
    changed["prefix"] = obs["prefix"].clone()
    changed["prefix"][:, 0] = 4
    changed["prefix_len"] = torch.clamp(obs["prefix_len"], min=1)
    c = m.forward_inference({Columns.OBS: changed})[Columns.ACTION_DIST_INPUTS]
    assert not torch.equal(c, m.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS])


def test_appo_target_network_is_a_lagged_actor_copy() -> None:
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.apis import TARGET_NETWORK_ACTION_DIST_INPUTS

    from rayseq.runtime.swapin_module import SeqAPPOModule

    obs, v = _obs_batch()
    m = _module(SeqAPPOModule, v)
    m.make_target_networks()
    old = m.forward_target({Columns.OBS: obs})[TARGET_NETWORK_ACTION_DIST_INPUTS]
    assert old.shape == (5, v)
    torch.testing.assert_close(old, m.forward_train({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS].detach())
    assert m.get_target_network_pairs() == [(m.actor, m._old_actor)]


def test_sac_module_q_heads_and_finite_loss_inputs() -> None:
    from ray.rllib.core.columns import Columns

    from rayseq.runtime.swapin_module import (
        ACTION_LOG_PROBS,
        ACTION_LOG_PROBS_NEXT,
        ACTION_PROBS,
        ACTION_PROBS_NEXT,
        QF_PREDS,
        QF_TARGET_NEXT,
        QF_TWIN_PREDS,
        SeqSACModule,
    )

    obs, v = _obs_batch()
    nxt, _ = _obs_batch(seed=1)
    m = _module(SeqSACModule, v)
    m.make_target_networks()
    out = m.forward_train({Columns.OBS: obs, Columns.NEXT_OBS: nxt})
    for key in (QF_PREDS, QF_TWIN_PREDS, QF_TARGET_NEXT, ACTION_PROBS, ACTION_LOG_PROBS, ACTION_PROBS_NEXT, ACTION_LOG_PROBS_NEXT):
        assert out[key].shape == (5, v), key
        assert torch.isfinite(out[key]).all(), key
    assert torch.allclose(out[ACTION_PROBS].sum(-1), torch.ones(5))
    assert (out[ACTION_PROBS][:, [0, 2]] == 0).all()  # banned tokens: probability 0, log-prob set to 0
    assert m.compute_q_values({Columns.OBS: obs}).shape == (5, v)
    # the learner's optimisers find the parameters by these names; the policy's are the actor's
    assert [p for p in m.pi_encoder.parameters()] == [p for p in m.actor.parameters()]
    assert not list(m.pi.parameters())
    # Q-loss gradients stay in the Q heads (they read the detached decoder state)
    out[QF_PREDS].sum().backward()
    assert all(p.grad is None for p in m.actor.parameters())


def test_inference_only_modules_hold_the_actor_alone() -> None:
    from rayseq.runtime.swapin_module import SeqAPPOModule, SeqSACModule

    _, v = _obs_batch()
    for cls in (SeqAPPOModule, SeqSACModule):
        m = _module(cls, v, inference_only=True)
        assert {k.split(".")[0] for k in m.state_dict()} == {"actor"}, cls.__name__


def test_every_swapin_module_has_the_apis_its_learner_requires() -> None:
    from rayseq.runtime.swapin_algorithm import MODULES
    from rayseq.runtime.swapin_module import missing_apis

    for name in SWAPINS:
        entry = get_algorithm(name)
        learner = entry.algorithm_cls().get_default_config().get_default_learner_class()
        assert learner.rl_module_required_apis(), name
        assert missing_apis(learner, MODULES[entry.config_cls]) == [], name


def test_a_module_missing_an_api_is_one_clear_error() -> None:
    from ray.rllib.algorithms.appo.torch.appo_torch_learner import APPOTorchLearner
    from ray.rllib.algorithms.sac.torch.sac_torch_learner import SACTorchLearner

    from rayseq.runtime.swapin_module import SeqPPOModule, check_module_apis

    with pytest.raises(ValueError, match=r"'appo'.*APPOTorchLearner.*SeqPPOModule does not implement .*TargetNetworkAPI"):
        check_module_apis("appo", APPOTorchLearner, SeqPPOModule)
    with pytest.raises(ValueError, match=r"QNetAPI.*TargetNetworkAPI"):
        check_module_apis("sac", SACTorchLearner, SeqPPOModule)


def test_iteration_record_maps_rllib_results_to_shared_names() -> None:
    from rayseq.drivers.swapin import iteration_record

    ppo = {"learners": {"default_policy": {"policy_loss": 0.1, "vf_loss": 2.0, "entropy": 1.5}},
           "env_runners": {"num_env_steps_sampled": 300, "episode_return_mean": 4.0, "num_env_steps_sampled_lifetime": 900}}
    rec = iteration_record(ppo, 2.0)
    assert rec == {"loss/actor": 0.1, "loss/value": 2.0, "entropy": 1.5, "throughput/tokens_per_s": 150.0,
                   "sample/return": 4.0, "tokens/total": 900.0}
    # SAC: entropy from its temperature loss −log α·(−H + H_target)
    log_alpha, h, target = math.log(0.05), 1.2, -1.0
    sac = {"learners": {"default_policy": {"policy_loss": -0.3, "qf_loss": 0.5, "alpha_loss": -log_alpha * (-h + target),
                                           "log_alpha_value": log_alpha, "target_entropy": target}}, "env_runners": {}}
    rec = iteration_record(sac, 1.0)
    assert rec["loss/critic_td"] == 0.5 and rec["entropy"] == pytest.approx(h)


@pytest.mark.parametrize("override", ["algo.iterations=0", "algo.minibatch_size=5000", "algo.gamma=0"])
def test_bad_swapin_settings_are_one_clear_error(override: str) -> None:
    from rayseq.config import ConfigError

    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[1]):
        build_run_config("ppo", get_algorithm("ppo").config_cls, "cpu", "toy", [override])


# ============================================================================ on in-process Ray


@pytest.fixture(scope="module")
def mle_run(tmp_path_factory, ray_session):
    """A one-epoch MLE actor on the toy task (the start of every swap-in run here)."""
    from rayseq.algorithms.mle import MLEConfig
    from rayseq.train import train

    out = tmp_path_factory.mktemp("mle") / "run"
    train(build_run_config("mle", MLEConfig, "cpu", "toy", ["epochs=1", "valid_max_sentences=40", "valid_beam=1"], out=str(out)))
    return out


_SMOKE = {
    "ppo": ["algo.minibatch_size=32"],
    "appo": ["algo.rollout_fragment_length=8"],
    "sac": ["algo.actor_lr=1e-3", "algo.actor_warmup=0", "algo.learning_starts=50", "algo.rollout_fragment_length=8"],
}
"""Per-algorithm settings of the smoke runs (only keys the algorithm's config has)."""


@pytest.mark.ray
@pytest.mark.parametrize("algo", SWAPINS)
def test_smoke_every_registered_swapin(algo, tmp_path, mle_run):
    """Seconds-long run of RLlib's algorithm from the MLE actor: files, results, metrics, weights moved."""
    from rayseq.actor_io import load_actor
    from rayseq.drivers.swapin import SAMPLE_RETURN, SAMPLED_TOKENS
    from rayseq.metrics import METRIC_NAMES, read_metrics
    from rayseq.train import train

    run = tmp_path / algo
    cfg = build_run_config(
        algo, get_algorithm(algo).config_cls, "cpu", "toy",
        [f"algo.actor_init={mle_run}", "algo.iterations=3", "algo.valid_every_iters=3", "valid_max_sentences=40", "valid_beam=1",
         "algo.lr=1e-3", "algo.train_batch_size=64", *_SMOKE[algo]],
        out=str(run), num_rollout_workers=0 if algo != "appo" else 1, envs_per_worker=8,
    )
    results = train(cfg)
    for name in ("run.json", "metrics.jsonl", "actor_best.pt", "actor_latest.pt", "curve.png", "results.json", "checkpoint"):
        assert (run / name).exists(), name
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk["algo"] == algo and on_disk["iterations"] == 3
    assert on_disk["mle"]["source"] == "actor_init" and results["test"] == on_disk["test"]
    check_bleu(run, results, cfg)
    # the best is the highest of the validations logged (the MLE actor's at iteration 0 included),
    # at the first iteration that reached it, and actor_best.pt is the actor of that iteration
    logged = [(r["step"], r["bleu/valid"]) for r in read_metrics(run) if "bleu/valid" in r]
    assert [s for s, _ in logged] == [0, 3]
    best = max(b for _, b in logged)
    assert on_disk["start_bleu_valid"] == logged[0][1] and on_disk["bleu/valid"] == best
    assert on_disk["best_step"] == min(s for s, b in logged if b == best)
    assert load_actor(run / "actor_best.pt").meta["step"] == on_disk["best_step"]
    best_file = mle_run / "actor_best.pt" if on_disk["best_step"] == 0 else run / "actor_latest.pt"
    assert all(torch.equal(v, load_actor(best_file).model.state_dict()[k])
               for k, v in load_actor(run / "actor_best.pt").model.state_dict().items())

    mle = load_actor(mle_run / "actor_best.pt").model.state_dict()
    latest = load_actor(run / "actor_latest.pt").model.state_dict()
    assert any(not torch.equal(mle[k], latest[k]) for k in mle), "RLlib's updates did not change the actor"

    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    names = {k for r in recs for k in r} - {"step", "epoch", "time_s"}
    critic = "loss/critic_td" if algo == "sac" else "loss/value"
    assert {"loss/actor", critic, "entropy", "throughput/tokens_per_s", "bleu/valid", "bleu/test"} <= names
    assert names <= set(METRIC_NAMES) | {SAMPLE_RETURN, SAMPLED_TOKENS}
    losses = [r[k] for r in recs for k in ("loss/actor", critic, "entropy") if k in r]
    assert losses and all(np.isfinite(losses))
