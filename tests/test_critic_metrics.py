"""Critic-quality metrics (rayseq.algorithms.critic_metrics) against hand-computed tensors and the
exact oracle of envs/oracle.py, and the scorer (rayseq.evaluation.critic) end to end on the toy task."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from envs.oracle import OracleMDP, enumerate_sequences, soft_q_optimal, soft_q_policy
from rayseq.algorithms.critic_metrics import (
    average_ranks,
    boltzmann_entropy,
    early_eos_pull,
    eos_margin,
    mc_rank_correlation,
    soft_returns,
    spearman_corr,
    td_error_per_token,
    topk_accuracy,
)
from rayseq.algorithms.erac import reference_horizon, sharpen_log_probs, soft_value, step_masks
from rayseq.algorithms.vaml import soft_max_value
from rayseq.evaluation.critic import CRITIC_METRICS, score_critic, score_qnet
from rayseq.metrics import (
    CRITIC_EOS_MARGIN,
    CRITIC_EOS_MARGIN_POSITIVE,
    CRITIC_EARLY_EOS_PULL,
    CRITIC_EARLY_EOS_PULL_POSITIVE,
    CRITIC_MC_RANK_CORR,
    CRITIC_TARGET_ENTROPY,
    CRITIC_TOP1_ACC,
    CRITIC_TOP5_ACC,
    CRITIC_VALID_TD,
)
from rayseq.models.base import BOS, EOS, PAD, UNK

D = torch.float64
NAN = float("nan")

# ============================================================================ hand-computed


def test_td_error_per_token_hand_computed() -> None:
    # row 0: 3 steps, terminal at t = 2; row 1: one step (terminal), padding holds NaN
    q_taken = torch.tensor([[1.0, 2.0, 3.0], [2.0, NAN, NAN]], dtype=D)
    rewards = torch.tensor([[0.5, 0.5, 1.0], [1.0, NAN, NAN]], dtype=D)
    values = torch.tensor([[9.0, 1.0, 2.0], [7.0, NAN, NAN]], dtype=D)  # V(s_t); V(s_0) never read
    done = torch.tensor([[False, False, True], [True, False, False]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    # targets 0.5 + 1, 0.5 + 2, 1 (terminal) | 1 → errors² 0.25, 0.25, 4 | 1
    got = td_error_per_token(q_taken, rewards, values, done, mask)
    assert math.isclose(float(got), (0.25 + 0.25 + 4.0 + 1.0) / 4, rel_tol=1e-12)
    assert math.isnan(float(td_error_per_token(q_taken, rewards, values, done, torch.zeros_like(mask))))
    with pytest.raises(ValueError, match="must share"):
        td_error_per_token(q_taken[:, :2], rewards, values, done, mask)


def test_topk_accuracy_hand_computed() -> None:
    q = torch.tensor(
        [
            [[9.0, 1, 3, 2], [0, 5, 4, 4], [0, 1, 1, 1]],  # y = 2 best | 2 behind 1 and tied with 3 | 3 tied
            [[0.0, 0, 7, 1], [0, 0, 0, 0], [0, 0, 0, 0]],  # y = 2 best | masked | masked
        ],
        dtype=D,
    )  # [2, 3, 4]
    y = torch.tensor([[2, 2, 3], [2, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    ex = (0,)  # token 0 has the highest Q at (0, 0) but is never ranked
    assert float(topk_accuracy(q, y, mask, 1, ex)) == 0.5
    assert float(topk_accuracy(q, y, mask, 2, ex)) == 0.5  # ties count against y: 2 rivals each
    assert float(topk_accuracy(q, y, mask, 3, ex)) == 1.0
    assert float(topk_accuracy(q, y, mask, 1, ())) == 0.25  # now token 0 beats y at (0, 0)
    with pytest.raises(ValueError, match=r"reference tokens \[0\]"):
        topk_accuracy(q, y, torch.ones_like(mask), 1, ex)
    with pytest.raises(ValueError, match="k=0"):
        topk_accuracy(q, y, mask, 0, ex)


def test_average_ranks_and_spearman_hand_computed() -> None:
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1, 3, 2])), [3.5, 1, 3.5, 2])
    assert math.isclose(spearman_corr([1, 2, 3], [1, 3, 2]), 0.5, rel_tol=1e-12)  # 1 − 6·2/(3·8)
    # ties: ranks x = [1, 2.5, 2.5, 4], y = [1, 2, 3, 4] → ρ = 4.5 / √(4.5 · 5) = √0.9
    assert math.isclose(spearman_corr([1, 2, 2, 3], [1, 2, 3, 4]), math.sqrt(0.9), rel_tol=1e-12)
    assert spearman_corr([1, 2, 3], [10, 20, 30]) == 1.0
    assert spearman_corr([1, 2, 3], [3, 2, 1]) == -1.0
    assert math.isnan(spearman_corr([1, 1, 1], [1, 2, 3]))  # constant: undefined
    assert math.isnan(spearman_corr([1.0], [2.0]))
    with pytest.raises(ValueError, match="paired"):
        spearman_corr([1, 2], [1, 2, 3])
    from scipy import stats as scipy_stats  # required through ray[rllib]
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 40).astype(float), rng.integers(0, 7, 40).astype(float)  # many ties
    assert math.isclose(spearman_corr(x, y), float(scipy_stats.spearmanr(x, y).statistic), rel_tol=1e-12)


def test_soft_returns_and_mc_rank_correlation_hand_computed() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 5.0]], dtype=D)
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -2.0, float("-inf")]], dtype=D)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    # τ = 0.5: r − τ log π = [1.5, 3, 4.5]; G_t = r_t + Σ_{k>t}(r_k − τ log π_k)
    g = soft_returns(rewards, logp, mask, 0.5)
    torch.testing.assert_close(g, torch.tensor([[1 + 3 + 4.5, 2 + 4.5, 3], [1 + 3, 2, 0]], dtype=D))
    torch.testing.assert_close(soft_returns(rewards, logp, mask, 0.0), torch.tensor([[6.0, 5, 3], [3, 2, 0]], dtype=D))
    q = torch.tensor([[9.0, 6.0, 2.0], [5.0, 1.0, 100.0]], dtype=D)  # same order as g on the valid steps
    assert mc_rank_correlation(q, g, mask) == 1.0
    assert mc_rank_correlation(-q, g, mask) == -1.0
    with pytest.raises(ValueError, match="τ=-1"):
        soft_returns(rewards, logp, mask, -1.0)


def test_boltzmann_entropy_hand_computed() -> None:
    # state A: three allowed tokens with equal Q (token 3 excluded) → log 3 at any τ, and at τ = 0
    # state B: Q = [0, τ·ln 3, −1000τ] → p = [1/4, 3/4, 0] → H(1/4, 3/4); at τ = 0 the argmax is unique
    h_b = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    for tau in (1.0, 0.3):
        q = torch.tensor([[[0.0, 0.0, 0.0, 50.0], [0.0, tau * math.log(3), -1000 * tau, 50.0]]], dtype=D)
        mask = torch.ones(1, 2, dtype=torch.bool)
        got = boltzmann_entropy(q, tau, mask, exclude=(3,))
        assert math.isclose(float(got), (math.log(3) + h_b) / 2, rel_tol=1e-12)
    assert math.isclose(float(boltzmann_entropy(q, 0.0, mask, exclude=(3,))), math.log(3) / 2, rel_tol=1e-12)
    assert math.isclose(float(boltzmann_entropy(q, 0.3, torch.tensor([[False, True]]), exclude=(3,))), h_b, rel_tol=1e-12)
    assert float(boltzmann_entropy(q, 0.0, torch.tensor([[False, True]]), exclude=(3,))) == 0.0
    # top_k = 2 (VAML's cut P_Q): state B keeps its two best tokens (the same H), state A two of
    # its three equal ones (log 2); the excluded token 3 never counts, though its Q is the largest
    cut = boltzmann_entropy(q, 0.3, mask, exclude=(3,), top_k=2)
    assert math.isclose(float(cut), (math.log(2) + h_b) / 2, rel_tol=1e-12)
    assert float(boltzmann_entropy(q, 0.3, mask, exclude=(3,), top_k=3)) == float(boltzmann_entropy(q, 0.3, mask, exclude=(3,)))
    with pytest.raises(ValueError, match="top_k=-1"):
        boltzmann_entropy(q, 0.3, mask, exclude=(3,), top_k=-1)


def test_eos_margin_hand_computed() -> None:
    q = torch.zeros(2, 3, 5, dtype=D)  # eos = 3, token 0 excluded
    q[0, 0] = torch.tensor([0.0, 0, 0, 99, 0])  # t = 0 < |y*| = 1: not scored
    q[0, 1] = torch.tensor([99.0, 1, 2, 5, 4])  # 5 − 4 = 1 (token 0 ignored)
    q[0, 2] = torch.tensor([0.0, 1, 7, 5, 4])  # 5 − 7 = −2
    q[1, 2] = torch.tensor([0.0, 0, 0, 99, 0])  # masked
    mask = torch.tensor([[True, True, True], [True, True, False]])
    ref_len = torch.tensor([1, 2])
    got = eos_margin(q, ref_len, mask, eos=3, exclude=(0,))
    assert float(got.mean) == -0.5 and float(got.positive) == 0.5 and int(got.count) == 2
    none = eos_margin(q, torch.tensor([3, 3]), mask, eos=3, exclude=(0,))
    assert int(none.count) == 0 and math.isnan(float(none.mean)) and math.isnan(float(none.positive))
    with pytest.raises(ValueError, match="eos=0"):
        eos_margin(q, ref_len, mask, eos=0, exclude=(0,))


def test_early_eos_pull_hand_computed() -> None:
    """Q(s, eos) − Σ_w π(w|s) Q(s, w) on the (last 2, then last 1) states shorter than |y*| (π
    renormalised without the excluded token 0, which has the largest logit here)."""
    q = torch.zeros(2, 3, 5, dtype=D)  # eos = 3, token 0 excluded
    logp = torch.zeros(2, 3, 5, dtype=D)  # uniform over the allowed tokens unless set
    logp[..., 0] = 10.0
    q[0, 0] = torch.tensor([99.0, 1, 2, 5, 4])  # t = 0 < 2: 5 − (1 + 2 + 5 + 4) / 4 = 2
    q[0, 1] = torch.tensor([0.0, 2, 0, 1, 6])  # t = 1 < 2, π = ½ on tokens 1 and 4: 1 − 4 = −3
    logp[0, 1] = torch.log(torch.tensor([1.0, 0.5, 0.0, 0.0, 0.5], dtype=D))
    q[0, 2] = torch.tensor([0.0, 0, 0, 99, 0])  # t = 2 = |y*|: not scored
    q[1, 0] = torch.tensor([0.0, 1, 1, 1, 1])  # t = 0 < 1: pull 0, not positive
    q[1, 1] = torch.tensor([0.0, 0, 0, 99, 0])  # masked
    mask = torch.tensor([[True, True, True], [True, False, False]])
    got = early_eos_pull(q, logp, torch.tensor([2, 1]), mask, eos=3, exclude=(0,))
    assert float(got.mean) == pytest.approx(-1 / 3) and float(got.positive) == pytest.approx(1 / 3) and int(got.count) == 3
    last = early_eos_pull(q, logp, torch.tensor([2, 1]), mask, eos=3, exclude=(0,), window=1)  # t = |y*| − 1 only
    assert float(last.mean) == -1.5 and float(last.positive) == 0.0 and int(last.count) == 2
    none = early_eos_pull(q, logp, torch.tensor([0, 0]), mask, eos=3, exclude=(0,))
    assert int(none.count) == 0 and math.isnan(float(none.mean))
    with pytest.raises(ValueError, match="must both be"):
        early_eos_pull(q, logp[:, :2], torch.tensor([2, 1]), mask, eos=3, exclude=(0,))


# ============================================================================ exact oracle

ORACLE_V = 8  # token ids 0..7; actions are 3..7 (7 never occurs in the reference)
ORACLE_EXC = (PAD, UNK, BOS)  # not actions of the oracle MDP
ORACLE_ACTIONS = (EOS, 4, 5, 6, 7)


def _q_row(mdp: OracleMDP, q_s: np.ndarray) -> torch.Tensor:
    """An oracle Q array over ``mdp.actions`` as a ``[V]`` row over token ids (0 at non-actions)."""
    row = torch.zeros(ORACLE_V, dtype=D)
    row[torch.tensor(mdp.actions)] = torch.as_tensor(q_s, dtype=D)
    return row


def _reference_prefixes(mdp: OracleMDP, table: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q ``[1, |y*| + 1, V]`` on the reference prefixes, their next tokens and mask."""
    ref = mdp.ref
    q = torch.stack([_q_row(mdp, table[ref[:t]]) for t in range(len(ref) + 1)]).unsqueeze(0)
    nxt = torch.tensor([list(ref) + [EOS]])
    return q, nxt, torch.ones_like(nxt, dtype=torch.bool)


def _episodes(mdp: OracleMDP) -> dict:
    """Every complete sequence of ``mdp`` in the ERAC step layout (capped = length max_len)."""
    bodies = [tuple(t for t in y if t != EOS) for y in enumerate_sequences(mdp)]
    n, width = len(bodies), mdp.max_len + 1
    lengths = torch.tensor([len(b) for b in bodies])
    capped = lengths == mdp.max_len  # no eos step: the last token is terminal
    mask, done = step_masks(lengths, capped, width)
    actions = torch.full((n, width), PAD, dtype=torch.long)
    rewards = torch.zeros(n, width, dtype=D)
    states: list[list[tuple[int, ...] | None]] = []
    for i, b in enumerate(bodies):
        row: list[tuple[int, ...] | None] = []
        for t in range(width):
            if mask[i, t]:
                a = b[t] if t < len(b) else EOS
                actions[i, t] = a
                rewards[i, t] = mdp.reward(b[:t], a)
                row.append(b[:t])
            else:
                row.append(None)
        states.append(row)
    return dict(n=n, width=width, mask=mask, done=done, actions=actions, rewards=rewards, states=states)


def _q_tensor(mdp: OracleMDP, table: dict, ep: dict) -> torch.Tensor:
    """Q ``[N, T, V]`` of a table at every step of ``ep`` (0 where no step)."""
    q = torch.zeros(ep["n"], ep["width"], ORACLE_V, dtype=D)
    for i, row in enumerate(ep["states"]):
        for t, s in enumerate(row):
            if s is not None:
                q[i, t] = _q_row(mdp, table[s])
    return q


def _shuffled(table: dict, seed: int = 0) -> dict:
    """A deliberately wrong Q: each state's values permuted over the actions."""
    rng = np.random.default_rng(seed)
    return {s: rng.permutation(q) for s, q in table.items()}


def test_oracle_optimal_q_top1_and_eos_margin_at_tau_0() -> None:
    """τ = 0: the hard Q* on a reference prefix y*_1..t is largest for y*_{t+1}, exactly.

    Why: BLEU+1 ≤ 1 with equality only for y* itself (h = |y*|, every n-gram matched), and with
    max_len ≥ |y*| only y*_{t+1} keeps y* reachable, so Q*(s, y*_{t+1}) = |y*|·(1 − BLEU(s)) beats
    every other token strictly (eos: 0 < that, since BLEU(s) < 1 for a short prefix by the
    brevity penalty). After the whole y* every token lowers BLEU (more n-grams, no new matches)
    while eos earns 0, so the eos margin is positive.
    """
    for ref in ((4, 5, 6, 4), (4, 5, 6), (5, 5, 4)):
        mdp = OracleMDP(ref=ref, actions=ORACLE_ACTIONS, max_len=5)
        q, nxt, mask = _reference_prefixes(mdp, soft_q_optimal(mdp, 0.0))
        assert float(topk_accuracy(q, nxt, mask, 1, ORACLE_EXC)) == 1.0
        em = eos_margin(q, torch.tensor([len(ref)]), mask, EOS, ORACLE_EXC)
        assert int(em.count) == 1 and float(em.positive) == 1.0 and float(em.mean) > 0
        wrong, _, _ = _reference_prefixes(mdp, _shuffled(soft_q_optimal(mdp, 0.0)))
        assert float(topk_accuracy(wrong, nxt, mask, 1, ORACLE_EXC)) < 1.0


def test_oracle_soft_optimal_q_prefers_continuing_for_large_tau() -> None:
    """τ > 0 is not exactly the same: Q*(y*, w) = r + V*(y* + w) and the soft V* of a prefix with
    continuations left counts their entropy (τ log of a sum over futures), while eos ends with 0.
    For y* = (4, 5, 6), max_len = 5, the exact Q* keeps the 3 word steps right at every τ here but
    ranks a word above eos after y* once τ ≥ 1: top-1 = 3/4 and a negative eos margin."""
    mdp = OracleMDP(ref=(4, 5, 6), actions=ORACLE_ACTIONS, max_len=5)
    for tau, top1, positive in ((0.1, 1.0, 1.0), (0.5, 1.0, 1.0), (1.0, 0.75, 0.0), (2.0, 0.75, 0.0)):
        q, nxt, mask = _reference_prefixes(mdp, soft_q_optimal(mdp, tau))
        assert float(topk_accuracy(q, nxt, mask, 1, ORACLE_EXC)) == top1
        assert float(eos_margin(q, torch.tensor([3]), mask, EOS, ORACLE_EXC).positive) == positive


@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_oracle_exact_q_has_zero_td_error_against_its_own_backup(tau: float) -> None:
    mdp = OracleMDP(ref=(4, 5, 6, 4), actions=ORACLE_ACTIONS, max_len=4)
    ep = _episodes(mdp)
    args = (ep["rewards"], ep["done"], ep["mask"])

    def td(q: torch.Tensor, values: torch.Tensor) -> float:
        taken = q.gather(-1, ep["actions"].unsqueeze(-1)).squeeze(-1)
        return float(td_error_per_token(taken, args[0], values, args[1], args[2]))

    # optimal soft Q* with VAML's value V = τ log Σ exp(Q/τ) (Eq. 10 / 16)
    q_opt = _q_tensor(mdp, soft_q_optimal(mdp, tau), ep)
    assert td(q_opt, soft_max_value(q_opt, tau, ORACLE_EXC)) < 1e-24
    q_bad = _q_tensor(mdp, _shuffled(soft_q_optimal(mdp, tau)), ep)
    assert td(q_bad, soft_max_value(q_bad, tau, ORACLE_EXC)) > 1e-2
    # Q^π of a fixed policy with ERAC's value V = Σ π (Q − τ log π) (Eq. 9 / 19)
    pi, logp = _random_policy(mdp, seed=1)
    q_pi = _q_tensor(mdp, soft_q_policy(mdp, tau, lambda s: pi[s]), ep)
    assert td(q_pi, soft_value(q_pi, _logp_tensor(mdp, logp, ep), tau, ep["mask"], ORACLE_EXC)) < 1e-24
    assert td(q_opt, soft_value(q_opt, _logp_tensor(mdp, logp, ep), tau, ep["mask"], ORACLE_EXC)) > 1e-4


@pytest.mark.parametrize("temperature", [0.5, 0.2])
def test_a_sharpened_target_evaluates_the_sharpened_policy(temperature: float) -> None:
    """``algo.target_temperature``: with V̄ = Σ π_T (Q − τ log π_T), π_T ∝ π^(1/T), the exact Q of π_T
    (brute force, ``envs.oracle``) is the fixed point, not the Q of π."""
    tau = 0.1
    mdp = OracleMDP(ref=(4, 5, 6, 4), actions=ORACLE_ACTIONS, max_len=4)
    ep = _episodes(mdp)
    pi, logp = _random_policy(mdp, seed=2)
    sharp = {s: p ** (1 / temperature) / (p ** (1 / temperature)).sum() for s, p in pi.items()}
    logp_t = sharpen_log_probs(_logp_tensor(mdp, logp, ep), temperature)

    def td(q_table: dict) -> float:
        q = _q_tensor(mdp, q_table, ep)
        taken = q.gather(-1, ep["actions"].unsqueeze(-1)).squeeze(-1)
        values = soft_value(q, logp_t, tau, ep["mask"], ORACLE_EXC)
        return float(td_error_per_token(taken, ep["rewards"], values, ep["done"], ep["mask"]))

    assert td(soft_q_policy(mdp, tau, lambda s: sharp[s])) < 1e-24
    assert td(soft_q_policy(mdp, tau, lambda s: pi[s])) > 1e-4


def test_entropy_horizon_reference_is_the_fixed_point_of_the_horizon_q() -> None:
    """``algo.entropy_horizon=reference``: with τ·H counted only at prefixes of at most |y*| tokens
    (``reference_horizon``), the exact Q^π of that horizon (brute force, ``envs.oracle``) has zero
    TD error, the full-horizon Q^π does not, and the Monte-Carlo soft return with the same horizon
    averages to it exactly."""
    tau = 0.3
    mdp = OracleMDP(ref=(4, 5), actions=ORACLE_ACTIONS, max_len=4)  # states of 3 tokens lie past |y*| = 2
    ep = _episodes(mdp)
    pi, logp = _random_policy(mdp, seed=4)
    horizon = reference_horizon(torch.full((ep["n"],), len(mdp.ref)), ep["width"])  # [N, T]
    assert horizon[0].tolist() == [True, True, True, False, False]
    logp_t = _logp_tensor(mdp, logp, ep)

    def td(q_table: dict, entropy_mask: torch.Tensor | None) -> float:
        q = _q_tensor(mdp, q_table, ep)
        taken = q.gather(-1, ep["actions"].unsqueeze(-1)).squeeze(-1)
        values = soft_value(q, logp_t, tau, ep["mask"], ORACLE_EXC, entropy_mask)
        return float(td_error_per_token(taken, ep["rewards"], values, ep["done"], ep["mask"]))

    q_h = soft_q_policy(mdp, tau, lambda s: pi[s], horizon=len(mdp.ref))
    q_all = soft_q_policy(mdp, tau, lambda s: pi[s])
    assert td(q_h, horizon) < 1e-24 and td(q_all, None) < 1e-24
    assert td(q_all, horizon) > 1e-4 and td(q_h, None) > 1e-4
    # a longer continuation earns less bonus with the horizon: Q(s, w) of a non-eos token only falls
    col = {a: j for j, a in enumerate(mdp.actions)}
    assert all(q_h[s][col[a]] <= q_all[s][col[a]] + 1e-12 for s in q_h for a in mdp.actions)
    assert any(q_h[s][col[a]] < q_all[s][col[a]] - 1e-3 for s in q_h for a in mdp.actions if a != EOS)
    # E[G_t | s_t, a_t] with the same horizon is Q^π of the horizon
    expected_g = _expected_returns(mdp, ep, logp, lambda lp: soft_returns(ep["rewards"], lp, ep["mask"], tau, horizon))
    np.testing.assert_allclose([expected_g[k] for k in sorted(expected_g)], [q_h[s][col[a]] for s, a in sorted(expected_g)],
                               rtol=0, atol=1e-10)


def _expected_returns(mdp: OracleMDP, ep: dict, logp: dict, returns) -> dict:
    """E_π[G_t | s_t, a_t] over every sequence of ``ep`` weighted by its probability under π
    (``logp``), for the returns ``returns(logp_taken [N, T]) -> G [N, T]``; keyed by (s, a)."""
    col = {a: j for j, a in enumerate(mdp.actions)}
    lp_taken = torch.zeros(ep["n"], ep["width"], dtype=D)
    for i, row in enumerate(ep["states"]):
        for t, s in enumerate(row):
            if s is not None:
                lp_taken[i, t] = float(logp[s][col[int(ep["actions"][i, t])]])
    prob = torch.where(ep["mask"], lp_taken, 0.0).sum(1).exp()  # [N] P(y) under π
    assert math.isclose(float(prob.sum()), 1.0, rel_tol=1e-12)
    g = returns(lp_taken)  # [N, T]
    num: dict = {}
    den: dict = {}
    for i, row in enumerate(ep["states"]):
        for t, s in enumerate(row):
            if s is not None:
                key = (s, int(ep["actions"][i, t]))
                num[key] = num.get(key, 0.0) + float(prob[i] * g[i, t])
                den[key] = den.get(key, 0.0) + float(prob[i])
    return {k: num[k] / den[k] for k in num}


def test_entropy_horizon_is_checked() -> None:
    from rayseq.algorithms.erac import ERACConfig

    with pytest.raises(ValueError, match="entropy_horizon = 'ref'"):
        ERACConfig(entropy_horizon="ref")
    with pytest.raises(ValueError, match="entropy_mask"):
        soft_value(torch.zeros(2, 3, 5), torch.zeros(2, 3, 5), 0.1, None, (), torch.ones(2, 4, dtype=torch.bool))


def _random_policy(mdp: OracleMDP, seed: int) -> tuple[dict, dict]:
    """A fixed stochastic policy over ``mdp.actions`` at every state, and its log."""
    rng = np.random.default_rng(seed)
    pi = {}
    for s in mdp.states():
        p = rng.random(len(mdp.actions)) + 0.1
        pi[s] = p / p.sum()
    return pi, {s: np.log(p) for s, p in pi.items()}


def _logp_tensor(mdp: OracleMDP, logp: dict, ep: dict) -> torch.Tensor:
    """log π ``[N, T, V]``: −inf at non-actions, 0 where no step."""
    out = torch.zeros(ep["n"], ep["width"], ORACLE_V, dtype=D)
    for i, row in enumerate(ep["states"]):
        for t, s in enumerate(row):
            if s is not None:
                out[i, t] = float("-inf")
                out[i, t, torch.tensor(mdp.actions)] = torch.as_tensor(logp[s], dtype=D)
    return out


@pytest.mark.parametrize("tau", [0.0, 0.5])
def test_oracle_q_pi_ranks_like_the_exact_expected_soft_return(tau: float) -> None:
    """Enumerating every sequence with its probability under π, E[G_t | s_t, a_t] of
    :func:`soft_returns` equals soft_q_policy's Q^π(s, a) exactly, so Spearman ρ = 1; a shuffled
    Q scores less. Values are rounded to 9 decimals before ranking so that ties (e.g. every
    Q(s, eos) = 0) are not broken by rounding error."""
    mdp = OracleMDP(ref=(4, 5, 6, 4), actions=ORACLE_ACTIONS, max_len=4)
    ep = _episodes(mdp)
    pi, logp = _random_policy(mdp, seed=2)
    col = {a: j for j, a in enumerate(mdp.actions)}
    by_key = _expected_returns(mdp, ep, logp, lambda lp: soft_returns(ep["rewards"], lp, ep["mask"], tau))
    table = soft_q_policy(mdp, tau, lambda s: pi[s])
    keys = sorted(by_key)
    expected_g = np.array([by_key[k] for k in keys])
    q_pi = np.array([table[s][col[a]] for s, a in keys])
    np.testing.assert_allclose(expected_g, q_pi, rtol=0, atol=1e-10)  # E[G | s, a] = Q^π(s, a)
    as_steps = lambda x: torch.as_tensor(np.round(x, 9)).unsqueeze(0)  # noqa: E731 [1, K]
    every = torch.ones(1, len(keys), dtype=torch.bool)
    assert mc_rank_correlation(as_steps(q_pi), as_steps(expected_g), every) == 1.0
    wrong = _shuffled(table, seed=3)
    q_wrong = np.array([wrong[s][col[a]] for s, a in keys])
    assert mc_rank_correlation(as_steps(q_wrong), as_steps(expected_g), every) < 0.9


# ============================================================================ end to end


@pytest.fixture(scope="module")
def toy_models():
    from rayseq.data.tasks import load_task
    from rayseq.models.critic import Critic, CriticConfig
    from rayseq.models.seq2seq import Seq2Seq, Seq2SeqConfig

    task = load_task("toy")
    v_src, v_tgt = len(task.src_vocab), len(task.tgt_vocab)
    torch.manual_seed(0)
    actor = Seq2Seq(Seq2SeqConfig(v_src, v_tgt, emb_dim=16, enc_hidden=8, dec_hidden=16, dropout=0.0))
    critic = Critic(CriticConfig(v_tgt, emb_dim=16, enc_hidden=8, dec_hidden=16))
    return task.split("valid"), actor, critic


def test_score_critic_end_to_end_on_toy(toy_models) -> None:
    split, actor, critic = toy_models
    kwargs = dict(n_sentences=12, batch_size=5, len_slack=3, max_len=10, samples_per_source=2, seed=7)
    critic.train()
    actor.eval()
    out = score_critic(critic, actor, split, 0.045, **kwargs)
    assert critic.training and not actor.training  # modes restored
    assert set(out) == set(CRITIC_METRICS)
    assert all(isinstance(x, float) and math.isfinite(x) for x in out.values()), out
    for key in (CRITIC_TOP1_ACC, CRITIC_TOP5_ACC, CRITIC_EOS_MARGIN_POSITIVE):
        assert 0.0 <= out[key] <= 1.0
    assert out[CRITIC_TOP1_ACC] <= out[CRITIC_TOP5_ACC]
    assert abs(out[CRITIC_MC_RANK_CORR]) <= 1.0 and out[CRITIC_VALID_TD] >= 0.0
    v = critic.vocab_size
    assert 0.0 <= out[CRITIC_TARGET_ENTROPY] <= math.log(v - 2) + 1e-6
    assert score_critic(critic, actor, split, 0.045, **kwargs) == out  # same seed, same numbers
    qnet = score_qnet(critic, split, 0.045, n_sentences=12, batch_size=5)
    assert set(qnet) == set(CRITIC_METRICS) - {CRITIC_VALID_TD, CRITIC_MC_RANK_CORR, CRITIC_EARLY_EOS_PULL,
                                               CRITIC_EARLY_EOS_PULL_POSITIVE}  # the ones that need an actor
    for key in (CRITIC_TOP1_ACC, CRITIC_TOP5_ACC, CRITIC_EOS_MARGIN, CRITIC_EOS_MARGIN_POSITIVE):
        assert math.isclose(qnet[key], out[key], rel_tol=1e-6, abs_tol=1e-9)  # same reference prefixes


def test_score_critic_exact_on_a_state_independent_critic(toy_models) -> None:
    """A critic whose output layer ignores its input (Q(s, w) = c_w) has known scores."""
    import copy

    split, actor, critic = toy_models
    const = copy.deepcopy(critic)
    v = const.vocab_size
    c = torch.linspace(-1.0, 1.0, v)
    c[EOS] = 3.0  # the argmax; next best allowed token: c[v - 1] = 1
    with torch.no_grad():
        const.net.out.weight.zero_()
        const.net.out.bias.copy_(c)
    n, tau = 12, 0.5
    out = score_critic(const, actor, split, tau, n_sentences=n, batch_size=5, len_slack=3, max_len=10)
    refs = split.tgt[:n]
    # top-1: only the eos after each reference is the argmax
    assert math.isclose(out[CRITIC_TOP1_ACC], n / sum(len(y) + 1 for y in refs), rel_tol=1e-6)
    assert math.isclose(out[CRITIC_EOS_MARGIN], 3.0 - 1.0, rel_tol=1e-6)
    assert out[CRITIC_EOS_MARGIN_POSITIVE] == 1.0
    # eos has the largest Q everywhere, so it is above the policy's mean Q at every state (π(eos) < 1)
    assert 0.0 < out[CRITIC_EARLY_EOS_PULL] < 3.0 - (-1.0) and out[CRITIC_EARLY_EOS_PULL_POSITIVE] == 1.0
    allowed = torch.ones(v, dtype=torch.bool)
    allowed[[PAD, BOS]] = False
    p = torch.softmax(c[allowed].double() / tau, -1)
    assert math.isclose(out[CRITIC_TARGET_ENTROPY], float(-(p * p.log()).sum()), rel_tol=1e-5)
    # top-5: eos and the 4 largest other tokens (the last ids) are the 5 best
    top5 = set(range(v - 4, v)) | {EOS}
    hits = sum(int(t) in top5 for y in refs for t in list(y) + [EOS])
    assert math.isclose(out[CRITIC_TOP5_ACC], hits / sum(len(y) + 1 for y in refs), rel_tol=1e-6)


def test_scorers_reject_bad_arguments(toy_models) -> None:
    split, actor, critic = toy_models
    with pytest.raises(ValueError, match="n_sentences=0"):
        score_critic(critic, actor, split, 0.1, n_sentences=0)
    with pytest.raises(ValueError, match="tau=-0.1"):
        score_critic(critic, actor, split, -0.1)
    with pytest.raises(TypeError, match="pass a split"):
        score_qnet(critic, [1, 2, 3], 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 sources but 1 references"):
        score_qnet(critic, ([np.array([4])] * 2, [np.array([4])]), 0.1)


def test_average_ranks_sorted_reversed_and_constant() -> None:
    x = np.arange(6, dtype=float)
    np.testing.assert_array_equal(average_ranks(x), x + 1)
    np.testing.assert_array_equal(average_ranks(x[::-1]), (x + 1)[::-1])
    np.testing.assert_array_equal(average_ranks(np.zeros(4)), [2.5] * 4)
