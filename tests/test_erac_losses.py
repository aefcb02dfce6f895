"""Tests for the ERAC / AC losses (Eq. 9, 18–20), the critic network, Polyak averaging, and an
exact-oracle check of the TD target and the actor objective against Proposition 1."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from envs.oracle import (
    OracleMDP,
    boltzmann_policy,
    enumerate_sequences,
    soft_q_optimal,
    soft_q_policy,
)
from envs.rewards import bleu_increments, sentence_bleu
from rayseq.algorithms.erac import (
    VARIANTS,
    ERACConfig,
    actor_objective,
    annealed_tau,
    capped_at,
    critic_loss,
    entropy,
    erac_actor_loss,
    gather_actions,
    policy_log_probs,
    sharpen_log_probs,
    temperature_step,
    soft_td_target,
    soft_value,
    step_masks,
    token_rewards,
)
from rayseq.algorithms.mle import mle_loss
from rayseq.decoding import sample, teacher_forcing_io
from rayseq.models.base import BOS, EOS, PAD
from rayseq.models.critic import (
    Critic,
    CriticConfig,
    make_target,
    polyak_update,
    wrap_reference,
)
from rayseq.models.seq2seq import Seq2Seq, Seq2SeqConfig

D = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest and does not fight other jobs for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

EXC = (PAD, BOS)  # ids 0 and 2 are never actions; V = 5 → allowed {1, 3, 4}
ALLOWED = [1, 3, 4]


def _logits_for(probs: list[float], v: int = 5, banned_value: float = 7.0) -> torch.Tensor:
    """A logit row [V] whose masked softmax puts ``probs`` on ALLOWED (banned entries arbitrary)."""
    row = torch.full((v,), banned_value, dtype=D)
    row[ALLOWED] = torch.log(torch.tensor(probs, dtype=D))
    return row


# ============================================================================ steps, masks


def test_step_masks_eos_cap_and_padding() -> None:
    # row 0: 2 tokens then a chosen eos; row 1: 2 tokens, capped (eos forced); row 2: eos at once.
    lengths = torch.tensor([2, 2, 0])
    capped = torch.tensor([False, True, False])
    mask, done = step_masks(lengths, capped, width=3)
    assert mask.tolist() == [[True, True, True], [True, True, False], [True, False, False]]
    assert done.tolist() == [[False, False, True], [False, True, False], [True, False, False]]
    with pytest.raises(ValueError, match="width"):
        step_masks(torch.tensor([3]), torch.tensor([False]), width=3)


def test_capped_at_matches_the_decoding_convention() -> None:
    # rayseq.decoding: max_len decoder steps, eos forced at step max_len → L = max_len - 1 tokens.
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(src_vocab_size=6, tgt_vocab_size=6, emb_dim=4, enc_hidden=2, dec_hidden=4)
    model = Seq2Seq(cfg).eval()
    src = torch.tensor([[4, 5], [5, 4]])
    tokens, lengths, _ = sample(model, src, torch.tensor([2, 2]), max_len=3, num_samples=8)
    capped = capped_at(lengths, 3)
    assert bool((capped == (lengths == 2)).all())
    assert int(lengths.max()) <= 2


def test_token_rewards_are_scaled_bleu_increments_and_zero_at_eos() -> None:
    ref = (4, 5, 6, 7)
    tokens = torch.tensor([[4, 5, 9], [6, 0, 0], [0, 0, 0]])
    lengths = torch.tensor([3, 1, 0])
    r = token_rewards(tokens, lengths, [ref] * 3, width=4)
    assert r.shape == (3, 4)
    for i, n in enumerate(lengths.tolist()):
        expect = bleu_increments(tokens[i, :n].tolist(), ref) if n else np.zeros(0)
        np.testing.assert_allclose(r[i, :n].numpy(), expect, rtol=1e-6, atol=1e-7)
        assert bool((r[i, n:] == 0).all())  # the eos step and padding earn 0
    # The official scaling: the rewards of a sequence sum to |y*| · BLEU(y).
    assert math.isclose(float(r[0].sum()), 4 * sentence_bleu([4, 5, 9], ref), rel_tol=1e-6)


# ============================================================================ soft value (Eq. 9)


def test_soft_value_hand_computed_and_banned_tokens_contribute_nothing() -> None:
    tau = 0.5
    probs = [0.2, 0.3, 0.5]
    logp = policy_log_probs(_logits_for(probs).view(1, 1, 5), EXC)  # [1, 1, 5]
    q = torch.tensor([1e6, 1.0, float("nan"), -2.0, 4.0], dtype=D).view(1, 1, 5)  # garbage at 0, 2
    v = soft_value(q, logp, tau)
    expect = sum(p * (qq - tau * math.log(p)) for p, qq in zip(probs, [1.0, -2.0, 4.0]))
    assert v.shape == (1, 1)
    assert math.isclose(float(v), expect, rel_tol=1e-12)
    # τ = 0 is the AC value Σ π Q̄ (Bahdanau et al. 2016).
    ac = 0.2 * 1.0 + 0.3 * -2.0 + 0.5 * 4.0
    assert math.isclose(float(soft_value(q, logp, 0.0)), ac, rel_tol=1e-12)
    # Masked states give 0.
    assert float(soft_value(q, logp, tau, mask=torch.tensor([[False]]))) == 0.0


# ============================================================================ TD target (Eq. 19)


def test_soft_td_target_terminal_after_eos_and_after_the_length_cap() -> None:
    lengths = torch.tensor([2, 2, 0])
    capped = torch.tensor([False, True, False])
    mask, done = step_masks(lengths, capped, width=3)
    r = torch.tensor([[1.0, 2.0, 0.0], [1.0, 2.0, 5.0], [0.0, 9.0, 9.0]], dtype=D)
    nan = float("nan")
    # V̄(s_t); entries that must never be read hold NaN: s_0 is never a next state, s_L of a
    # capped sequence is terminal, the empty row's later states do not exist.
    v = torch.tensor([[nan, 10.0, 20.0], [nan, 10.0, nan], [nan, nan, nan]], dtype=D)
    target = soft_td_target(r, v, done, mask)
    expect = torch.tensor([[1.0 + 10.0, 2.0 + 20.0, 0.0], [1.0 + 10.0, 2.0, 0.0], [0.0, 0.0, 0.0]], dtype=D)
    assert torch.equal(target, expect)
    assert not target.requires_grad


def test_soft_td_target_ignores_padding() -> None:
    lengths = torch.tensor([1, 3])
    mask, done = step_masks(lengths, torch.tensor([False, False]), width=4)
    gen = torch.Generator().manual_seed(1)
    r = torch.randn(2, 4, generator=gen, dtype=D)
    v = torch.randn(2, 4, generator=gen, dtype=D)
    base = soft_td_target(r, v, done, mask)
    r2, v2 = r.clone(), v.clone()
    r2[~mask] = 123.0
    v2[0, 2:] = -77.0  # V̄ after row 0's eos (t = 1) is never read
    assert torch.equal(soft_td_target(r2, v2, done, mask), base)


def test_tau_zero_target_is_the_ac_target() -> None:
    # Q̂_t = r_t + Σ_w π(w|s_{t+1}) Q̄(s_{t+1}, w) (Bahdanau et al. 2016) when τ = 0.
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 3, 5, generator=gen, dtype=D)
    q_bar = torch.randn(1, 3, 5, generator=gen, dtype=D)
    r = torch.tensor([[0.5, -0.25, 0.0]], dtype=D)
    mask, done = step_masks(torch.tensor([2]), torch.tensor([False]), width=3)
    logp = policy_log_probs(logits, EXC)
    target = soft_td_target(r, soft_value(q_bar, logp, 0.0, mask), done, mask)
    pi = logp.exp()
    ac = [
        0.5 + float((pi[0, 1] * q_bar[0, 1]).sum()),
        -0.25 + float((pi[0, 2] * q_bar[0, 2]).sum()),
        0.0,
    ]
    np.testing.assert_allclose(target[0].numpy(), ac, rtol=1e-12)


# ============================================================================ critic loss (Eq. 18)


def _critic_case(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    mask, _ = step_masks(torch.tensor([2, 0]), torch.tensor([False, False]), width=3)
    q_all = torch.randn(2, 3, 5, generator=gen, dtype=D)
    actions = torch.tensor([[3, 4, EOS], [EOS, PAD, PAD]])
    target = torch.randn(2, 3, generator=gen, dtype=D)
    return q_all, actions, target, mask


def test_critic_loss_hand_computed_td_and_variance() -> None:
    q_all = torch.zeros(1, 3, 5, dtype=D)
    q_all[0, 0, ALLOWED] = torch.tensor([1.0, 2.0, 6.0], dtype=D)  # mean 3, unbiased var 7
    q_all[0, 0, [0, 2]] = 1000.0  # banned tokens: not part of the variance
    q_all[0, 1, ALLOWED] = torch.tensor([0.0, 0.0, 3.0], dtype=D)  # var 3
    mask = torch.tensor([[True, True, False]])
    q_taken = torch.tensor([[2.0, 3.0, 50.0]], dtype=D)
    target = torch.tensor([[1.0, 5.0, -50.0]], dtype=D)
    out = critic_loss(q_taken, target, q_all, mask, lambda_var=0.01, exclude=EXC)
    td = 0.5 * ((2.0 - 1.0) ** 2 + (3.0 - 5.0) ** 2)
    assert math.isclose(float(out.td), td, rel_tol=1e-12)
    assert math.isclose(float(out.var), 7.0 + 3.0, rel_tol=1e-12)
    assert math.isclose(float(out.loss), td + 0.01 * 10.0, rel_tol=1e-12)
    assert int(out.num_tokens) == 2
    # Batch mean over sequences: two identical rows give the same loss.
    out2 = critic_loss(
        q_taken.repeat(2, 1), target.repeat(2, 1), q_all.repeat(2, 1, 1), mask.repeat(2, 1), 0.01, EXC
    )
    assert math.isclose(float(out2.loss), float(out.loss), rel_tol=1e-12)


def test_critic_loss_padding_changes_nothing_including_gradients() -> None:
    gen = torch.Generator().manual_seed(3)
    q_all, actions, target, mask = _critic_case(gen)

    def run(q: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = q.clone().requires_grad_(True)
        out = critic_loss(gather_actions(q, actions), tgt, q, mask, lambda_var=0.1, exclude=EXC)
        out.loss.backward()
        return out.loss.detach(), q.grad

    loss1, grad1 = run(q_all, target)
    q2, t2 = q_all.clone(), target.clone()
    q2[~mask] = 1e4
    t2[~mask] = float("nan")
    loss2, grad2 = run(q2, t2)
    assert torch.equal(loss1, loss2)
    assert torch.equal(grad1, grad2)
    assert bool((grad1[~mask] == 0).all())
    assert bool((grad1[..., list(EXC)] == 0).all())  # banned tokens' Q never trained


def test_critic_loss_gives_no_gradient_to_the_target() -> None:
    gen = torch.Generator().manual_seed(4)
    q_all, actions, _, mask = _critic_case(gen)
    q_all.requires_grad_(True)
    target_net_q = torch.randn(2, 3, 5, generator=gen, dtype=D, requires_grad=True)  # Q̄
    logp = policy_log_probs(torch.randn(2, 3, 5, generator=gen, dtype=D), EXC)
    _, done = step_masks(torch.tensor([2, 0]), torch.tensor([False, False]), width=3)
    r = torch.randn(2, 3, generator=gen, dtype=D)
    target = soft_td_target(r, soft_value(target_net_q, logp, 0.5, mask), done, mask)
    raw_target = target.clone().requires_grad_(True)  # even a target that requires grad
    out = critic_loss(gather_actions(q_all, actions), raw_target, q_all, mask, 0.001, EXC)
    out.loss.backward()
    assert target_net_q.grad is None
    assert raw_target.grad is None
    # ∂/∂Q(s_t, a_t) of the TD part is (Q − Q̂) / N (the official −sg[Q̂ − Q]·Q gradient).
    q_all.grad = None
    out = critic_loss(gather_actions(q_all, actions), target, q_all, mask, 0.0, EXC)
    out.loss.backward()
    err = (gather_actions(q_all, actions) - target).detach()
    got = gather_actions(q_all.grad, actions)
    np.testing.assert_allclose(got[mask].numpy(), (err[mask] / 2).numpy(), rtol=1e-12)


# ============================================================================ actor (Eq. 20)


def test_actor_objective_hand_computed() -> None:
    tau = 0.3
    probs = [0.2, 0.3, 0.5]
    logits = _logits_for(probs).view(1, 1, 5)
    q = torch.tensor([float("nan"), 1.0, 1e9, -2.0, 4.0], dtype=D).view(1, 1, 5)
    loss = actor_objective(logits, q, torch.tensor([[True]]), tau, exclude=EXC)
    expect = -sum(p * (qq - tau * math.log(p)) for p, qq in zip(probs, [1.0, -2.0, 4.0]))
    assert math.isclose(float(loss), expect, rel_tol=1e-12)


def test_actor_objective_gradient_is_the_analytic_form_and_eq20() -> None:
    gen = torch.Generator().manual_seed(5)
    tau = 0.4
    n, t, v = 2, 3, 5
    logits = torch.randn(n, t, v, generator=gen, dtype=D, requires_grad=True)
    q = torch.randn(n, t, v, generator=gen, dtype=D)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    actor_objective(logits, q, mask, tau, exclude=EXC).backward()
    # Analytic: ∂/∂z_j = −(1/N) π_j (A_j − Σ_w π_w A_w), A = Q − τ log π, on allowed tokens.
    logp = policy_log_probs(logits.detach(), EXC)
    pi = logp.exp()
    a = torch.where(pi > 0, q - tau * torch.where(pi > 0, logp, 0.0), 0.0)
    analytic = -pi * (a - (pi * a).sum(-1, keepdim=True)) / n
    analytic = analytic * mask.unsqueeze(-1)
    torch.testing.assert_close(logits.grad, analytic, rtol=1e-10, atol=1e-12)
    assert bool((logits.grad[..., list(EXC)] == 0).all())
    # Eq. (20): the gradient of −(Σ_w π Q + τ H(π)) with Q fixed.
    logits2 = logits.detach().clone().requires_grad_(True)
    lp = policy_log_probs(logits2, EXC)[..., ALLOWED]  # π is 0 elsewhere
    p = lp.exp()
    h = -(p * lp).sum(-1)
    eq20 = -(((p * q[..., ALLOWED]).sum(-1) + tau * h) * mask).sum() / n
    eq20.backward()
    torch.testing.assert_close(logits.grad, logits2.grad, rtol=1e-10, atol=1e-12)


def test_actor_objective_gradient_flows_only_through_pi() -> None:
    logits = torch.zeros(1, 1, 5, dtype=D, requires_grad=True)
    q = torch.ones(1, 1, 5, dtype=D, requires_grad=True)
    actor_objective(logits, q, torch.tensor([[True]]), 0.1, exclude=EXC).backward()
    assert q.grad is None


def test_actor_objective_padding_changes_nothing_including_gradients() -> None:
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=D)
    q = torch.randn(2, 3, 5, generator=gen, dtype=D)
    mask = torch.tensor([[True, False, False], [True, True, True]])

    def run(lg: torch.Tensor, qq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lg = lg.clone().requires_grad_(True)
        loss = actor_objective(lg, qq, mask, 0.2, normalize_logpi_l2=True, exclude=EXC)
        loss.backward()
        return loss.detach(), lg.grad

    l1, g1 = run(logits, q)
    lg2, q2 = logits.clone(), q.clone()
    lg2[~mask] = float("inf")
    q2[~mask] = float("nan")
    l2, g2 = run(lg2, q2)
    assert torch.equal(l1, l2) and torch.equal(g1, g2)
    assert bool((g1[~mask] == 0).all())


def test_tau_zero_actor_is_ac_and_banned_tokens_are_excluded() -> None:
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(1, 2, 5, generator=gen, dtype=D)
    q = torch.randn(1, 2, 5, generator=gen, dtype=D)
    mask = torch.ones(1, 2, dtype=torch.bool)
    pi = policy_log_probs(logits, EXC).exp()
    ac = -(pi * q).sum()
    assert math.isclose(float(actor_objective(logits, q, mask, 0.0, exclude=EXC)), float(ac), rel_tol=1e-12)
    assert float(pi[..., list(EXC)].sum()) == 0.0
    # Q and logits of banned tokens do not matter.
    q2, lg2 = q.clone(), logits.clone()
    q2[..., list(EXC)] = 1e6
    lg2[..., list(EXC)] = 50.0
    for tau in (0.0, 0.3):
        a = actor_objective(logits, q, mask, tau, exclude=EXC)
        b = actor_objective(lg2, q2, mask, tau, exclude=EXC)
        assert math.isclose(float(a), float(b), rel_tol=1e-12)


def test_l2_option_changes_only_the_entropy_term() -> None:
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=D)
    q = torch.randn(2, 3, 5, generator=gen, dtype=D)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    tau = 0.5
    plain = actor_objective(logits, q, mask, tau, exclude=EXC)
    l2 = actor_objective(logits, q, mask, tau, normalize_logpi_l2=True, exclude=EXC)
    # τ = 0: identical.
    assert float(actor_objective(logits, q, mask, 0.0, normalize_logpi_l2=True, exclude=EXC)) == float(
        actor_objective(logits, q, mask, 0.0, exclude=EXC)
    )
    # The Q part is the same; the entropy part is τ Σ π log π / (1e-8 + ‖log π‖₂) instead of τ Σ π log π.
    logp = policy_log_probs(logits, EXC)
    pi = logp.exp()
    lp = logp[..., ALLOWED]
    norm = lp.norm(dim=-1, keepdim=True)
    q_part = -((pi * torch.where(pi > 0, q, 0.0)).sum(-1) * mask).sum() / 2
    ent_plain = (tau * (pi[..., ALLOWED] * lp).sum(-1) * mask).sum() / 2
    ent_l2 = (tau * (pi[..., ALLOWED] * lp / (1e-8 + norm)).sum(-1) * mask).sum() / 2
    assert math.isclose(float(plain), float(q_part + ent_plain), rel_tol=1e-12)
    assert math.isclose(float(l2), float(q_part + ent_l2), rel_tol=1e-12)
    assert abs(float(ent_l2)) < abs(float(ent_plain))  # it shrinks the entropy term


def test_erac_actor_loss_adds_lambda_mle_times_mle() -> None:
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 3, 5, generator=gen, dtype=D)
    q = torch.randn(2, 3, 5, generator=gen, dtype=D)
    mask = torch.ones(2, 3, dtype=torch.bool)
    mle_logits = torch.randn(2, 4, 5, generator=gen, dtype=D)
    mle_targets = torch.tensor([[4, 1, EOS, PAD], [3, 4, 4, EOS]])
    out = erac_actor_loss(logits, q, mask, 0.2, 0.1, mle_logits, mle_targets, exclude=EXC)
    obj = actor_objective(logits, q, mask, 0.2, exclude=EXC)
    mle = mle_loss(mle_logits, mle_targets).loss
    assert math.isclose(float(out.loss), float(obj + 0.1 * mle), rel_tol=1e-12)
    assert math.isclose(float(out.mle), float(mle), rel_tol=1e-12)
    with pytest.raises(ValueError, match="λ_mle"):
        erac_actor_loss(logits, q, mask, 0.2, 0.1, exclude=EXC)


def test_entropy_metric() -> None:
    logp = policy_log_probs(torch.zeros(1, 2, 5, dtype=D), EXC)  # uniform over 3 allowed tokens
    assert math.isclose(float(entropy(logp)), math.log(3), rel_tol=1e-12)
    logp2 = logp.clone()
    logp2[0, 1] = policy_log_probs(_logits_for([1.0 - 2e-12, 1e-12, 1e-12]), EXC)
    assert math.isclose(float(entropy(logp2, torch.tensor([[True, False]]))), math.log(3), rel_tol=1e-12)


# ============================================================================ config


def test_config_defaults_variants_and_validation() -> None:
    cfg = ERACConfig()
    assert (cfg.tau, cfg.beta, cfg.lambda_var, cfg.lambda_mle) == (0.045, 0.001, 0.001, 0.1)
    assert cfg.target_tau == 0.045 and cfg.adam_betas == (0.0, 0.999)
    assert cfg.exclude_tokens == (PAD, BOS) and cfg.normalize_logpi_l2 is True  # the official actor term
    assert ERACConfig.variant("erac-eq20").normalize_logpi_l2 is False  # Eq. (20) as printed
    ac = ERACConfig.ac()
    assert ac.tau == 0.0 and ac.target_tau == 0.0
    nf = ERACConfig.nofutent()
    assert nf.tau == 0.045 and nf.target_tau == 0.0
    assert set(VARIANTS) == {"erac", "ac", "erac-nofutent", "erac-eq20"}
    assert ERACConfig.variant("erac", tau=0.04).tau == 0.04
    with pytest.raises(ValueError, match="τ"):
        ERACConfig(tau=-0.1)
    with pytest.raises(ValueError, match="critic_tau"):
        ERACConfig(critic_tau=-1.0)
    for beta in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="β"):
            ERACConfig(beta=beta)
    with pytest.raises(ValueError, match="λ_var"):
        ERACConfig(lambda_var=-1.0)
    with pytest.raises(ValueError, match="eos"):
        ERACConfig(exclude_tokens=(PAD, EOS))
    with pytest.raises(ValueError, match="nofutent"):
        ERACConfig.nofutent(tau=0.0)
    with pytest.raises(ValueError, match="unknown"):
        ERACConfig.variant("sac")
    # Sample length: min(|y*| + slack, 50) decoder steps.
    assert cfg.max_len(torch.tensor([3, 45])).tolist() == [13, 50]
    assert cfg.max_len(torch.tensor([3]), pretrain=True).tolist() == [8]


# ============================================================================ critic network, Polyak


def _tiny_critic() -> Critic:
    torch.manual_seed(0)
    return Critic(CriticConfig(vocab_size=9, emb_dim=6, enc_hidden=3, dec_hidden=6))


def test_critic_reads_bos_ref_eos_and_outputs_q_for_every_token() -> None:
    critic = _tiny_critic()
    assert critic.net.cfg.attention == "mlp" and critic.net.cfg.dropout == 0.0
    ref = torch.tensor([[4, 5, 6], [7, 8, 0]])
    ref_len = torch.tensor([3, 2])
    src, src_len = wrap_reference(ref, ref_len)
    assert src.tolist() == [[BOS, 4, 5, 6, EOS], [BOS, 7, 8, EOS, PAD]]
    assert src_len.tolist() == [5, 4]
    tgt_in = torch.tensor([[BOS, 4, 5], [BOS, 6, PAD]])
    q = critic(ref, ref_len, tgt_in)
    assert q.shape == (2, 3, 9)
    torch.testing.assert_close(q, critic.net(src, src_len, tgt_in))  # raw output layer, unsquashed
    ref2 = ref.clone()
    ref2[1, 2] = 5  # padding of the reference does not matter
    torch.testing.assert_close(critic(ref2, ref_len, tgt_in), q)
    like = CriticConfig.like_actor(Seq2SeqConfig(src_vocab_size=11, tgt_vocab_size=9))
    shape = (like.vocab_size, like.emb_dim, like.enc_hidden, like.dec_hidden, like.dropout)
    assert shape == (9, 256, 128, 256, 0.0)


def test_polyak_update_and_frozen_target() -> None:
    critic = _tiny_critic()
    target = make_target(critic)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in critic.parameters())
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with torch.no_grad():
        for p in critic.parameters():
            p.add_(1.0)  # the copy does not share storage
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k])
    polyak_update(target, critic, 0.25)
    src = critic.state_dict()
    for k, v in target.state_dict().items():
        torch.testing.assert_close(v, 0.75 * before[k] + 0.25 * src[k])
    polyak_update(target, critic, 1.0)
    for k, v in target.state_dict().items():
        assert torch.equal(v, src[k])
    for beta in (0.0, -0.1, 1.01):
        with pytest.raises(ValueError, match="β"):
            polyak_update(target, critic, beta)
    with pytest.raises(ValueError, match="differ"):
        polyak_update(target, nn.Linear(2, 2), 0.5)


# ============================================================================ oracle check


class _Table(nn.Module):
    """A tabular Q (critic) or logits (actor): one row per state, one column per token id."""

    def __init__(self, rows: int, cols: int) -> None:
        super().__init__()
        self.q = nn.Parameter(torch.zeros(rows, cols, dtype=D))


def _oracle_setup() -> dict:
    """Every complete sequence of the tiny MDP in the ERAC step layout."""
    mdp = OracleMDP(ref=(4, 5, 6), actions=(EOS, 4, 5, 6), max_len=3, scale="ref_len")
    states = mdp.states()  # 13 non-terminal prefixes
    sid = {s: i for i, s in enumerate(states)}
    dummy = len(states)  # row for terminal states / padding (never trained, never read)
    bodies = [tuple(t for t in y if t != EOS) for y in enumerate_sequences(mdp)]  # 40 sequences
    n = len(bodies)
    lengths = torch.tensor([len(b) for b in bodies])
    tokens = torch.zeros(n, mdp.max_len, dtype=torch.long)
    for i, b in enumerate(bodies):
        tokens[i, : len(b)] = torch.tensor(b, dtype=torch.long)
    capped = capped_at(lengths, mdp.max_len + 1)  # decoder steps = max_len tokens + eos
    tgt_in, tgt_out = teacher_forcing_io(tokens, lengths)
    width = tgt_in.size(1)
    mask, done = step_masks(lengths, capped, width)
    sids = torch.full((n, width), dummy, dtype=torch.long)
    for i, b in enumerate(bodies):
        for t in range(width):
            if mask[i, t]:
                sids[i, t] = sid[b[:t]]
    rewards = token_rewards(tokens, lengths, [mdp.ref] * n, width).to(D)
    # The rewards agree with the oracle MDP's r(s, a).
    for i, b in enumerate(bodies):
        for t in range(width):
            if mask[i, t]:
                a = int(tgt_out[i, t])
                assert math.isclose(float(rewards[i, t]), mdp.reward(b[:t], a), rel_tol=1e-5, abs_tol=1e-6)
    return dict(
        mdp=mdp, states=states, sid=sid, rows=dummy + 1, actions=torch.tensor(mdp.actions),
        sids=sids, acts=tgt_out, mask=mask, done=done, rewards=rewards,
    )


def _seq_probs(env: dict, logpi: torch.Tensor) -> torch.Tensor:
    """Probability of each enumerated sequence under the tabular policy log π ``[rows, V]``."""
    lp = gather_actions(logpi[env["sids"]], env["acts"])  # [n, T]
    return torch.where(env["mask"], lp, 0.0).sum(1).exp()


ORACLE_V = 7  # token ids 0..6; actions are 3..6
ORACLE_EXC = (PAD, 1, BOS)  # <unk> is not an action of this MDP either
ORACLE_TAU = 0.5


def test_oracle_critic_converges_to_soft_q_of_a_fixed_policy() -> None:
    """TD learning with Eq. (19)'s target and Eq. (18)'s loss on on-policy samples → Q^π (Eq. 9)."""
    start = time.perf_counter()
    env = _oracle_setup()
    mdp, states, sid, acts = env["mdp"], env["states"], env["sid"], env["actions"]
    gen = torch.Generator().manual_seed(0)
    logpi = policy_log_probs(torch.randn(env["rows"], ORACLE_V, generator=gen, dtype=D) * 0.7, ORACLE_EXC)
    pi_of = {s: logpi[sid[s], acts].exp().numpy() for s in states}
    q_true = soft_q_policy(mdp, ORACLE_TAU, lambda s: pi_of[s] / pi_of[s].sum())
    probs = _seq_probs(env, logpi)
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-12)

    critic = _Table(env["rows"], ORACLE_V)
    target = make_target(critic)
    steps = 400
    opt = torch.optim.Adam(critic.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-4)
    visited: set[int] = set()
    for _ in range(steps):
        idx = torch.multinomial(probs, 256, replacement=True, generator=gen)  # y ~ π
        s, m = env["sids"][idx], env["mask"][idx]
        visited.update(s[m].tolist())
        q_all = critic.q[s]  # [N, T, V]
        with torch.no_grad():
            v_bar = soft_value(target.q[s], logpi[s], ORACLE_TAU, m)  # [N, T]
        q_hat = soft_td_target(env["rewards"][idx], v_bar, env["done"][idx], m)
        out = critic_loss(gather_actions(q_all, env["acts"][idx]), q_hat, q_all, m, 0.0, ORACLE_EXC)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sched.step()
        polyak_update(target, critic, 0.1)

    assert len(visited) == len(states)
    err = np.concatenate([critic.q.detach()[sid[s], acts].numpy() - q_true[s] for s in states])
    rmse = float(np.sqrt(np.mean(err**2)))
    # The check discriminates: Q^π without the entropy (τ = 0) is far from the soft Q^π.
    q_hard = soft_q_policy(mdp, 0.0, lambda s: pi_of[s] / pi_of[s].sum())
    gap = float(np.sqrt(np.mean(np.concatenate([q_hard[s] - q_true[s] for s in states]) ** 2)))
    print(f"\noracle critic: RMSE vs soft_q_policy = {rmse:.2e} over {len(states)} states × "
          f"{len(acts)} actions (τ=0 Q^π is {gap:.3f} away); {time.perf_counter() - start:.1f}s")
    assert rmse < 0.05
    assert gap > 0.2


def test_oracle_actor_approaches_the_boltzmann_policy_of_soft_q_star() -> None:
    """Eq. (20) with the critic fixed at the exact soft Q* → π* = softmax(Q*/τ) (Prop. 1, Eq. 12)."""
    start = time.perf_counter()
    env = _oracle_setup()
    mdp, states, sid, acts = env["mdp"], env["states"], env["sid"], env["actions"]
    q_star = soft_q_optimal(mdp, ORACLE_TAU)
    q_table = torch.full((env["rows"], ORACLE_V), 100.0, dtype=D)  # banned tokens: huge, ignored
    for s in states:
        q_table[sid[s], acts] = torch.tensor(q_star[s], dtype=D)
    pi_star = {s: boltzmann_policy(q_star[s], ORACLE_TAU) for s in states}

    actor = _Table(env["rows"], ORACLE_V)  # zero logits: uniform over the 4 actions

    def mean_kl() -> float:
        lp = policy_log_probs(actor.q.detach(), ORACLE_EXC)
        return float(np.mean([
            np.sum(pi_star[s] * (np.log(pi_star[s]) - lp[sid[s], acts].numpy())) for s in states
        ]))

    gen = torch.Generator().manual_seed(1)
    kl_before = mean_kl()
    opt = torch.optim.Adam(actor.parameters(), lr=0.1)
    for _ in range(300):
        with torch.no_grad():
            probs = _seq_probs(env, policy_log_probs(actor.q, ORACLE_EXC))
        idx = torch.multinomial(probs, 128, replacement=True, generator=gen)  # states from π_θ
        s = env["sids"][idx]
        out = erac_actor_loss(
            actor.q[s], q_table[s], env["mask"][idx], ORACLE_TAU, lambda_mle=0.0, exclude=ORACLE_EXC
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    kl_after = mean_kl()
    print(f"\noracle actor: mean KL(π*‖π) over {len(states)} states {kl_before:.4f} → {kl_after:.2e} "
          f"({kl_before / kl_after:.0f}× lower); {time.perf_counter() - start:.1f}s")
    assert kl_after * 5 < kl_before
    assert kl_after < 1e-3


def test_actor_support_moves_mass_only_among_the_k_most_likely_tokens():
    """actor_support = k: the gradient on a logit outside the k most likely tokens is 0; inside it is
    −π_j (A_j − Ā_K)/N with Ā_K the π-weighted mean of A = Q − τ log π over the k; k = V is Eq. 20."""
    from rayseq.algorithms.erac import actor_objective

    torch.manual_seed(0)
    n, t, v, k, tau = 2, 3, 7, 3, 0.3
    logits = torch.randn(n, t, v, dtype=torch.float64)
    q = torch.randn(n, t, v, dtype=torch.float64) * 2
    mask = torch.ones(n, t, dtype=torch.bool)
    x = logits.clone().requires_grad_(True)
    actor_objective(x, q, mask, tau, exclude=(), support=k).backward()
    p = torch.softmax(logits, -1)
    a = q - tau * torch.log_softmax(logits, -1)
    top = logits.topk(k, dim=-1).indices
    inside = torch.zeros(n, t, v, dtype=torch.bool).scatter_(-1, top, True)
    a_bar = (p * a * inside).sum(-1, keepdim=True) / (p * inside).sum(-1, keepdim=True)
    expected = torch.where(inside, -p * (a - a_bar) / n, torch.zeros_like(p))
    torch.testing.assert_close(x.grad, expected)
    assert x.grad[~inside].abs().max() < 1e-15
    full, every = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    actor_objective(full, q, mask, tau, exclude=()).backward()
    actor_objective(every, q, mask, tau, exclude=(), support=v).backward()
    torch.testing.assert_close(every.grad, full.grad)


def test_sharpen_log_probs_is_the_renormalised_power_of_the_policy() -> None:
    """log π_T = log(π^(1/T) / Σ π^(1/T)); T = 1 is π itself; excluded tokens stay −inf; T ≤ 0 refused."""
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0, 0.5]], dtype=torch.float64)
    logp = policy_log_probs(logits, exclude=(0,))
    assert sharpen_log_probs(logp, 1.0) is logp
    p2 = logp.exp() ** 2
    torch.testing.assert_close(sharpen_log_probs(logp, 0.5).exp(), p2 / p2.sum())
    assert sharpen_log_probs(logp, 0.5)[0, 0] == float("-inf")
    assert int(sharpen_log_probs(logp, 1e-3).exp().argmax()) == 2 and float(sharpen_log_probs(logp, 1e-3).exp().max()) > 0.999
    with pytest.raises(ValueError, match="temperature=0"):
        sharpen_log_probs(logp, 0)
    with pytest.raises(ValueError, match="target_temperature"):
        ERACConfig(target_temperature=0.0)


def test_temperature_step_moves_tau_toward_the_target_entropy() -> None:
    """log τ ← log τ + lr (H̄ − H): up below the target, down above it, unchanged at it, clipped."""
    assert temperature_step(0.1, 1.0, 2.0, 0.5) == pytest.approx(0.1 * math.exp(0.5))
    assert temperature_step(0.1, 3.0, 2.0, 0.5) == pytest.approx(0.1 * math.exp(-0.5))
    assert temperature_step(0.1, 2.0, 2.0, 0.5) == pytest.approx(0.1)
    assert temperature_step(5.0, 0.0, 100.0, 1.0) == 10.0 and temperature_step(1e-6, 100.0, 0.0, 1.0) == 1e-6
    with pytest.raises(ValueError, match="finite entropy"):
        temperature_step(0.1, float("nan"), 2.0, 0.5)
    with pytest.raises(ValueError, match="target_entropy needs"):
        ERACConfig(tau=0.0, target_entropy=1.0)


def test_annealed_tau_is_linear_to_zero_then_zero() -> None:
    """τ · max(0, 1 − u/N): τ at u = 0, half at N/2, 0 at N and after; N = 0 keeps τ; bad settings are errors."""
    assert [annealed_tau(0.04, u, 4) for u in (0, 1, 2, 4, 9)] == pytest.approx([0.04, 0.03, 0.02, 0.0, 0.0])
    assert annealed_tau(0.04, 1000, 0) == 0.04
    with pytest.raises(ValueError, match="joint_updates >= 0"):
        annealed_tau(0.04, -1, 4)
    with pytest.raises(ValueError, match="tau_anneal_updates"):
        ERACConfig(tau_anneal_updates=-1)
    with pytest.raises(ValueError, match="use one"):
        ERACConfig(tau_anneal_updates=10, target_entropy=1.0)
