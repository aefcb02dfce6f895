"""VAML (§4.1): the losses on hand-computed tensors, terminal masking in a padded batch, the packed
learner rows against the padded equations, the corrupted references, and a toy run through RLlib."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rayseq.algorithms.erac import step_masks
from rayseq.algorithms.supervised_rows import qnet_episodes, vaml_actor_rows
from rayseq.algorithms.vaml import (
    VAMLConfig,
    corrupt_references,
    qnet_token_targets,
    soft_max_value,
    soft_q_loss,
    soft_q_target,
    token_mix,
    vaml_actor_loss,
)
from rayseq.rollout import collate


def test_soft_max_value_is_tau_logsumexp_over_allowed_tokens() -> None:
    q = torch.tensor([[9.0, 9.0, 1.0, 2.0]])  # tokens 0, 1 excluded
    tau = 0.5
    expect = tau * math.log(math.exp(1.0 / tau) + math.exp(2.0 / tau))
    assert math.isclose(float(soft_max_value(q, tau, exclude=(0, 1))[0]), expect, rel_tol=1e-6)
    # τ → 0 gives the hard max
    assert math.isclose(float(soft_max_value(q, 1e-4, exclude=(0, 1))[0]), 2.0, abs_tol=1e-3)
    with pytest.raises(ValueError, match="τ"):
        soft_max_value(q, 0.0)


def test_soft_q_target_masks_terminals_of_every_sequence_and_keeps_the_gradient() -> None:
    """Two sequences of different length in one padded batch: neither bootstraps past its eos
    (the official code did for all but the longest)."""
    lengths = torch.tensor([2, 0])  # tokens before eos
    mask, done = step_masks(lengths, torch.tensor([False, False]), 3)
    rewards = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    values = torch.tensor([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]], requires_grad=True)
    target = soft_q_target(rewards, values, done, mask)
    # row 0: Q̂_0 = 1 + V_1 = 21, Q̂_1 = 2 + V_2 = 32, Q̂_2 = 0 (eos: terminal); row 1: eos at t=0 → 0
    assert target.tolist() == [[21.0, 32.0, 0.0], [0.0, 0.0, 0.0]]
    target.sum().backward()
    assert values.grad.tolist() == [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]  # gradient flows through V


def test_soft_q_loss_hand_computed() -> None:
    q_taken = torch.tensor([[1.0, 2.0, 7.0], [0.5, 9.0, 9.0]])
    target = torch.tensor([[0.0, 4.0, 0.0], [1.5, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = soft_q_loss(q_taken, target, mask)
    assert math.isclose(float(out.loss), (1.0 + 4.0 + 1.0) / 2, rel_tol=1e-6)  # Σ_t (Q − Q̂)² / N
    assert int(out.num_tokens) == 3


def test_qnet_targets_and_actor_loss_hand_computed() -> None:
    q = torch.tensor([[[0.0, 0.0, 1.0, 0.0]]])  # [1, 1, V]; token 0 excluded
    p = qnet_token_targets(q, tau=1.0, exclude=(0,))
    z = math.e + 2
    torch.testing.assert_close(p, torch.tensor([[[0.0, 1 / z, math.e / z, 1 / z]]]))
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])  # π uniform: log π = −log 4
    p2 = torch.cat([p, p], dim=1)  # [1, 2, V]
    targets = torch.tensor([[2, 0]])  # second step is padding
    w = torch.tensor([[0.5, 0.5]])
    for m, expect in ((1.0, 0.5 * math.log(4)), (0.0, 0.5 * math.log(4))):
        out = vaml_actor_loss(logits, targets, p2, torch.full((1, 2), m), w, num_sources=1)
        assert math.isclose(float(out.loss), expect, rel_tol=1e-6)
    # a non-uniform π separates the CE and NLL terms
    logits = torch.tensor([[[0.0, 0.0, 2.0, 0.0], [5.0, 5.0, 5.0, 5.0]]])
    logp = torch.log_softmax(logits[0, 0], -1)
    ce, nll = float(-(p[0, 0] * logp).sum()), float(-logp[2])
    out = vaml_actor_loss(logits, targets, p2, torch.tensor([[0.25, 0.25]]), torch.tensor([[2.0, 2.0]]), num_sources=2)
    assert math.isclose(float(out.loss), 0.25 * ce + 0.75 * nll, rel_tol=1e-5)
    assert math.isclose(float(out.ce), ce, rel_tol=1e-5) and math.isclose(float(out.nll), nll, rel_tol=1e-5)


def test_token_mix_modes() -> None:
    g = torch.Generator().manual_seed(0)
    m = token_mix((200, 50), 0.2, "bernoulli", g)
    assert set(m.unique().tolist()) <= {0.0, 1.0} and abs(float(m.mean()) - 0.2) < 0.02
    assert torch.equal(token_mix((2, 3), 0.2, "expected"), torch.full((2, 3), 0.2))
    with pytest.raises(ValueError, match="mode"):
        token_mix((1,), 0.2, "coin")


def test_corrupt_references_rate_and_specials() -> None:
    rng = np.random.default_rng(0)
    ref = np.arange(4, 104)
    out = corrupt_references(ref, 1000, 50, 0.2, rng, n_specials=4)
    assert len(out) == 51 and np.array_equal(out[0], ref)
    changed = np.mean([np.mean(c != ref) for c in out[1:]])
    assert 0.17 < changed < 0.23  # ≈ 0.2 (a replacement rarely equals the original)
    assert all(c.min() >= 4 and len(c) == len(ref) for c in out)


def test_qnet_episodes_rewards_sum_to_scaled_bleu() -> None:
    from envs.rewards import sentence_bleu

    rng = np.random.default_rng(1)
    v = VAMLConfig(num_corruptions=3)
    eps = qnet_episodes([np.array([5, 6])], [np.array([7, 8, 9, 10])], v, 20, rng)
    assert len(eps) == 4 and not any(e.capped for e in eps)
    for e in eps:
        assert e.rewards[-1] == 0.0  # the eos step earns 0
        assert math.isclose(float(e.rewards.sum()), 4 * sentence_bleu(e.tokens, [np.array([7, 8, 9, 10])]), rel_tol=1e-5)


def test_bad_vaml_settings_are_clear_errors() -> None:
    for kwargs, word in (({"tau": 0.0}, "tau"), ({"corrupt_prob": 1.5}, "corrupt_prob"), ({"mix_mode": "x"}, "mix_mode"),
                         ({"qnet_target_beta": 0.0}, "qnet_target_beta")):
        with pytest.raises(ValueError, match=word):
            VAMLConfig(**kwargs)


def _module(stage: str, target: bool = False):
    from gymnasium import spaces

    from rayseq.runtime.vaml import VAMLRLModule

    torch.manual_seed(0)
    cfg = {"src_vocab_size": 12, "tgt_vocab_size": 14, "emb_dim": 8, "enc_hidden": 4, "dec_hidden": 8, "dropout": 0.0,
           "qnet_target": target}
    module = VAMLRLModule(observation_space=spaces.Discrete(2), action_space=spaces.Discrete(14), model_config=cfg)
    module.stage = stage
    return module


@pytest.mark.parametrize("target", [False, True])
def test_packed_qnet_loss_and_gradients_equal_the_padded_equation(target: bool) -> None:
    from rayseq.runtime.vaml import packed_vaml_losses

    module = _module("qnet", target)
    if target:
        with torch.no_grad():
            for p in module.target_qnet.parameters():
                p.add_(0.05)
    v = VAMLConfig(tau=0.4, num_corruptions=2, qnet_target_beta=0.1 if target else None)
    rng = np.random.default_rng(0)
    eps = qnet_episodes([np.array([4, 5])] * 3, [np.array([4, 5, 6]), np.array([7]), np.array([8, 9, 10, 11, 12])], v, 14, rng)
    b = {k: torch.as_tensor(a) for k, a in collate(eps).items()}
    loss, parts = packed_vaml_losses(module.forward_train(b), b, v, "qnet")
    grads = torch.autograd.grad(loss, list(module.qnet.parameters()))

    q = module.qnet(b["ref"], b["ref_len"], b["tgt_in"])  # [N, T, V]
    mask, done = step_masks(b["lengths"], b["capped"], q.size(1))
    v_net = q if not target else module.target_qnet(b["ref"], b["ref_len"], b["tgt_in"]).detach()
    tgt = soft_q_target(b["rewards"], soft_max_value(v_net, v.tau, v.exclude_tokens), done, mask)
    expect = soft_q_loss(q.gather(-1, b["actions"].unsqueeze(-1)).squeeze(-1), tgt, mask).loss
    assert math.isclose(float(loss.detach()), float(expect.detach()), rel_tol=1e-5)
    for g, r in zip(grads, torch.autograd.grad(expect, list(module.qnet.parameters()))):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("pq_tau", "pq_topk"), [(None, 0), (0.1, 0), (None, 3)])
def test_packed_actor_loss_equals_the_padded_equation_and_leaves_the_qnet_frozen(pq_tau: float | None, pq_topk: int) -> None:
    """Eq. (17) at P_Q = softmax(Q/τ) with τ = ``tau`` (the paper) or the sharper ``pq_tau``, over the
    whole vocabulary or the Q-net's ``pq_topk`` best tokens."""
    from rayseq.runtime.vaml import packed_vaml_losses

    module = _module("actor")
    v = VAMLConfig(num_samples=2, mix_mode="expected", mix_prob=0.3, pq_tau=pq_tau, pq_topk=pq_topk)
    rows = vaml_actor_rows([np.array([4, 5, 6]), np.array([7, 8])], [np.array([4, 5, 6, 7]), np.array([9, 10])], v, 14,
                           np.random.default_rng(0))
    b = {k: torch.as_tensor(a) for k, a in rows.items()}
    loss, parts = packed_vaml_losses(module.forward_train(b), b, v, "actor")
    loss.backward()
    assert all(p.grad is None for p in module.qnet.parameters())

    logits = module.actor(b["src"], b["src_len"], b["tgt_in"])
    q = module.qnet(b["ref"], b["ref_len"], b["tgt_in"]).detach()
    w = b["weight"][:, None].expand(b["tgt_out"].shape)
    expect = vaml_actor_loss(logits, b["tgt_out"], qnet_token_targets(q, pq_tau or 0.4, v.exclude_tokens, pq_topk),
                             torch.full(b["tgt_out"].shape, 0.3), w, num_sources=2)
    assert math.isclose(float(loss.detach()), float(expect.loss.detach()), rel_tol=1e-5)
    if pq_tau is not None or pq_topk:  # the target really is another one than the full P_Q at τ = 0.4
        other = vaml_actor_loss(logits, b["tgt_out"], qnet_token_targets(q, 0.4, v.exclude_tokens),
                                torch.full(b["tgt_out"].shape, 0.3), w, num_sources=2)
        assert not math.isclose(float(loss.detach()), float(other.loss.detach()), rel_tol=1e-5)
    assert math.isclose(parts["loss/vaml_ce"], float(expect.ce), rel_tol=1e-5)


@pytest.mark.ray
def test_vaml_toy_run_writes_the_qnet_and_resumes(tmp_path, ray_session) -> None:
    """Both steps on the toy task; ``qnet.pt`` reused by a second run through algo.qnet_init."""
    from rayseq.config import build_run_config
    from rayseq.errors import TrainingError
    from rayseq.train import train

    def cfg(out, *extra):
        return build_run_config("vaml", VAMLConfig, "cpu", "toy", ["epochs=1", "algo.qnet_epochs=1.0", *extra], out=str(out))

    res = train(cfg(tmp_path / "a"))
    assert res["qnet"]["done"] and res["qnet"]["updates"] == 60  # 3000 refs / 50
    assert math.isfinite(res["qnet"]["qnet/valid_td"]) and (tmp_path / "a" / "qnet.pt").is_file()
    records = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/critic_td" in r for r in records) and any("loss/actor" in r for r in records)
    assert any("qnet/greedy_bleu" in r for r in records)

    res2 = train(cfg(tmp_path / "b", f"algo.qnet_init={tmp_path / 'a'}", "algo.pq_topk=2"))
    assert res2["qnet"]["source"].startswith("qnet_init")
    assert math.isclose(res2["qnet"]["qnet/valid_td"], res["qnet"]["qnet/valid_td"], rel_tol=1e-4)
    # step 2's target cut to the Q-net's 2 best tokens: its logged entropy is that target's, and
    # `rayseq eval RUN --critic` scores the same target
    from rayseq.evaluation.critic import score_run_critic
    from rayseq.metrics import CRITIC_TARGET_ENTROPY

    cut = res2["qnet"][CRITIC_TARGET_ENTROPY]
    assert 0.0 <= cut <= math.log(2) + 1e-6 < res["qnet"][CRITIC_TARGET_ENTROPY]
    scored = score_run_critic(tmp_path / "b", n_sentences=200)
    assert math.isclose(scored[CRITIC_TARGET_ENTROPY], cut, rel_tol=1e-5)

    with pytest.raises(TrainingError, match="qnet_init"):
        train(cfg(tmp_path / "c", f"algo.qnet_init={tmp_path / 'nowhere'}"))


@pytest.mark.ray
def test_qnet_reads_the_redis_replay_of_an_erac_run(tmp_path, ray_session) -> None:
    """Step 1's optional off-policy data: the trajectories an ERAC job left in its Redis replay."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _cluster_redis import LocalRedis

    from rayseq.algorithms.erac import ERACConfig
    from rayseq.config import build_run_config, to_dict
    from rayseq.data.tasks import load_task
    from rayseq.errors import TrainingError
    from rayseq.run_dir import prepare_run_dir
    from rayseq.runtime.vaml import packed_vaml_losses
    from rayseq.runtime.builders import build_actor_critic_algorithm
    from rayseq.drivers.vaml import open_run_replay

    server = LocalRedis()
    try:
        run = tmp_path / "erac"
        cfg = build_run_config("erac", ERACConfig, "cpu", "toy", [f"algo.replay_backend={server.url}", "batch_size=10",
                               "algo.replay_capacity=40"], out=str(run), num_rollout_workers=1, envs_per_worker=8)
        prepare_run_dir(cfg.out, to_dict(cfg), False)
        algo = build_actor_critic_algorithm(cfg, load_task("toy"))
        try:
            algo.set_stage("joint")
            algo.updates_per_iteration = 2
            algo.train()
        finally:
            algo.stop()
        replay = open_run_replay(str(run))
        assert len(replay) >= 20
        episodes = replay.sample(6)
        v = VAMLConfig(num_corruptions=1)
        mixed = qnet_episodes([np.array([4])] * 2, [np.array(e.ref) for e in episodes[:2]], v, 20, np.random.default_rng(0))
        mixed += episodes
        b = {k: torch.as_tensor(a) for k, a in collate(mixed).items()}
        module = _module("qnet")
        module.qnet = type(module.qnet)(type(module.qnet.cfg)(vocab_size=20, emb_dim=8, enc_hidden=4, dec_hidden=8))
        loss, _ = packed_vaml_losses(module.forward_train(b), b, v, "qnet")
        assert torch.isfinite(loss)

        memory_run = tmp_path / "erac-mem"
        cfg2 = build_run_config("erac", ERACConfig, "cpu", "toy", [], out=str(memory_run))
        prepare_run_dir(cfg2.out, to_dict(cfg2), False)
        with pytest.raises(TrainingError, match="replay_backend=redis"):
            open_run_replay(str(memory_run))
    finally:
        server.stop()


def test_every_qnet_selection_rule_names_a_held_out_figure() -> None:
    from rayseq.algorithms.vaml import QNET_SELECT
    from rayseq.metrics import QNET_GREEDY_BLEU, QNET_VALID_TD

    assert QNET_SELECT == {"valid_td": QNET_VALID_TD, "greedy_bleu": QNET_GREEDY_BLEU}
    with pytest.raises(ValueError, match="qnet_select='bleu'"):
        VAMLConfig(qnet_select="bleu")
    with pytest.raises(ValueError, match="pq_tau=0.0"):
        VAMLConfig(pq_tau=0.0)
    with pytest.raises(ValueError, match="pq_topk=-1"):
        VAMLConfig(pq_topk=-1)


def test_qnet_targets_cut_to_the_top_k_tokens_and_renormalised() -> None:
    """P_Q with ``top_k``: softmax(Q/τ) over the k best allowed tokens, hand-computed; the excluded
    token stays out even where its Q is the largest, and k ≥ the allowed tokens is the full P_Q."""
    q = torch.tensor([[9.0, 0.0, 2.0, 1.0, -1.0], [9.0, 3.0, 2.5, 0.0, 5.0]], dtype=torch.float64)  # token 0 excluded
    p = qnet_token_targets(q, tau=0.5, exclude=(0,), top_k=2)
    z0, z1 = math.exp(4) + math.exp(2), math.exp(6) + math.exp(10)
    expect = torch.tensor([[0.0, 0.0, math.exp(4) / z0, math.exp(2) / z0, 0.0],
                           [0.0, math.exp(6) / z1, 0.0, 0.0, math.exp(10) / z1]], dtype=torch.float64)
    torch.testing.assert_close(p, expect)
    for k in (0, 4, 7):
        torch.testing.assert_close(qnet_token_targets(q, 0.5, (0,), top_k=k), qnet_token_targets(q, 0.5, (0,)))


def test_runs_share_a_qnet_only_when_its_step_1_settings_agree() -> None:
    """Every ``qnet_*`` setting but the reuse switches decides the shared Q-net; step 2's do not."""
    from dataclasses import fields

    from rayseq.experiments.spec import QNET_FIELDS

    step1 = {f.name for f in fields(VAMLConfig) if f.name.startswith("qnet_")} - {"qnet_init", "qnet_only"}
    assert step1 <= QNET_FIELDS
    assert not {"pq_tau", "pq_topk", "mix_prob", "mix_mode", "num_samples", "raml_tau"} & QNET_FIELDS
