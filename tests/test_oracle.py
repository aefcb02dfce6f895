"""The exact oracle of envs/oracle.py against Proposition 1, Eq. (8), Eq. (9) and brute-force enumeration."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from envs.oracle import (
    OracleMDP,
    boltzmann_policy,
    enumerate_sequences,
    policy_of,
    raml_target,
    sequence_log_prob,
    sequence_prob,
    soft_q_optimal,
    soft_q_policy,
    soft_v,
    soft_v_policy,
    uniform_policy,
)
from envs.rewards import bleu_increments

EOS = 3
TAUS = (0.1, 0.5, 1.0, 2.0)
REFS = (
    (4, 5, 6, 4),  # a repeated token
    (5, 5, 5),  # only repeats
    (4, 6, 5, 7, 4, 6),  # longer than max_len: the brevity penalty never vanishes
)
# (actions incl. eos, max_len); 9 and 8 never occur in any reference.
VOCABS = (
    ((3, 4, 5), 5),
    ((4, 3, 5, 9), 5),  # eos not first
    ((3, 4, 6, 5, 8), 4),
)
SMOOTHS = ("plus1", "exp")
SCALES = ("ref_len", None)

CASES = [
    pytest.param(ref, actions, max_len, smooth, scale, id=f"ref{ref}-A{actions}-T{max_len}-{smooth}-{scale}")
    for ref, (actions, max_len), smooth, scale in itertools.product(REFS, VOCABS, SMOOTHS, SCALES)
]


def small_mdp(smooth: str = "plus1", scale: str | None = "ref_len") -> OracleMDP:
    return OracleMDP(ref=(4, 5, 6, 4), actions=(3, 4, 5, 9), max_len=4, smooth=smooth, scale=scale)


def states_of(mdp: OracleMDP) -> list[tuple[int, ...]]:
    return [s for n in range(mdp.max_len) for s in itertools.product(mdp.words, repeat=n)]


# ------------------------------------------------------------------------------------------------ #
# Proposition 1 (Eq. 5): the token-level P_QR marginalises to the sequence-level P_R of Eq. (1)
@pytest.mark.parametrize("ref, actions, max_len, smooth, scale", CASES)
def test_proposition1_marginal_match(ref, actions, max_len, smooth, scale):
    mdp = OracleMDP(ref=ref, actions=actions, max_len=max_len, smooth=smooth, scale=scale)
    seqs = enumerate_sequences(mdp)
    for tau in TAUS:
        q = soft_q_optimal(mdp, tau)
        target = raml_target(mdp, tau)
        assert set(target) == set(seqs)
        p_q = np.array([sequence_prob(q, tau, y, mdp) for y in seqs])
        p_r = np.array([target[y] for y in seqs])
        assert math.isclose(p_q.sum(), 1.0, abs_tol=1e-9)
        assert math.isclose(p_r.sum(), 1.0, abs_tol=1e-9)
        np.testing.assert_allclose(p_q, p_r, rtol=0, atol=1e-9)
        # and in log space, where the small probabilities are visible too
        log_q = np.array([sequence_log_prob(q, tau, y, mdp) for y in seqs])
        np.testing.assert_allclose(log_q, np.log(p_r), rtol=1e-9, atol=1e-9)
        # V_R(root) = τ log Z (the normaliser of Eq. 1)
        r = np.array([mdp.sentence_reward(y) for y in seqs])
        log_z = np.log(np.exp((r - r.max()) / tau).sum()) + r.max() / tau
        assert math.isclose(soft_v(q[()], tau), tau * log_z, rel_tol=1e-10, abs_tol=1e-10)


def test_enumerated_sequences_are_the_complete_ones():
    mdp = OracleMDP(ref=(4, 5), actions=(3, 4, 5, 9), max_len=3)
    seqs = enumerate_sequences(mdp)
    k = len(mdp.words)
    assert len(seqs) == len(set(seqs)) == sum(k**n for n in range(mdp.max_len)) + k**mdp.max_len
    for y in seqs:
        body = y[:-1] if y[-1:] == (EOS,) else y
        assert EOS not in body
        assert (y[-1:] == (EOS,) and len(body) < mdp.max_len) or len(body) == mdp.max_len
    assert (EOS,) in seqs and (4, 5, EOS) in seqs and (9, 9, 9) in seqs and (9, 9, 9, EOS) not in seqs
    # an explicit forced eos after max_len is accepted and has probability 1
    q = soft_q_optimal(mdp, 0.5)
    assert sequence_prob(q, 0.5, (4, 5, 9), mdp) == pytest.approx(sequence_prob(q, 0.5, (4, 5, 9, EOS), mdp))


# ------------------------------------------------------------------------------------------------ #
# Rewards: the oracle's r is the environment's bleu_increments, and telescopes to the sentence R
@pytest.mark.parametrize("smooth", SMOOTHS)
@pytest.mark.parametrize("scale", SCALES)
def test_rewards_are_bleu_increments(smooth, scale):
    mdp = small_mdp(smooth, scale)
    for y in itertools.product(mdp.words, repeat=mdp.max_len):
        r = [mdp.reward(y[:t], y[t]) for t in range(len(y))]
        expected = bleu_increments(y, mdp.ref, smooth=smooth, scale=scale)
        np.testing.assert_array_equal(r, expected)
        assert math.isclose(sum(r), mdp.sentence_reward(y), rel_tol=1e-12, abs_tol=1e-12)
    assert mdp.reward((4, 5), EOS) == 0.0
    assert mdp.reward_scale == (4.0 if scale == "ref_len" else 1.0)


def test_exp_sentence_reward_matches_sacrebleu():
    import sacrebleu  # a required dependency
    mdp = small_mdp("exp", None)
    metric = sacrebleu.metrics.BLEU(tokenize="none", smooth_method="exp", effective_order=True)
    ref = " ".join(map(str, mdp.ref))
    for y in [(4,), (4, 5), (5, 6, 4), (4, 5, 6, 4), (9, 9, 4), (6, 4, 5, 9)]:
        expected = metric.sentence_score(" ".join(map(str, y)), [ref]).score / 100
        assert mdp.sentence_reward(y + (EOS,)) == pytest.approx(expected, abs=1e-12)
    assert mdp.sentence_reward((EOS,)) == 0.0


# ------------------------------------------------------------------------------------------------ #
# Eq. (6)/(8) terminal conditions and the Eq. (15) recursion
@pytest.mark.parametrize("tau", (0.0,) + TAUS)
@pytest.mark.parametrize("scale", SCALES)
def test_terminal_condition_and_recursion(tau, scale):
    mdp = small_mdp("plus1", scale)
    q = soft_q_optimal(mdp, tau)
    assert set(q) == set(states_of(mdp))
    e = mdp.eos_index
    for s, qs in q.items():
        assert qs.shape == (len(mdp.actions),)
        assert qs[e] == 0.0  # Eq. (8) for eos: R(ŷ + eos) − R(ŷ) = 0
        if len(s) == mdp.max_len - 1:
            np.testing.assert_array_equal(qs, mdp.rewards(s))  # Eq. (8) at the last step
        else:
            for i, w in enumerate(mdp.actions):
                if w != EOS:  # Eq. (15): Q = r + V_R(ŷ + w)
                    expected = mdp.reward(s, w) + soft_v(q[s + (w,)], tau)
                    assert qs[i] == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------------------ #
# Eq. (9): soft Q of a fixed policy
@pytest.mark.parametrize("tau", (0.0,) + TAUS)
@pytest.mark.parametrize("smooth", SMOOTHS)
def test_optimal_policy_is_a_fixed_point(tau, smooth):
    mdp = small_mdp(smooth)
    q_star = soft_q_optimal(mdp, tau)
    q_pi = soft_q_policy(mdp, tau, policy_of(q_star, tau))
    assert set(q_pi) == set(q_star)
    for s in q_star:
        np.testing.assert_allclose(q_pi[s], q_star[s], rtol=0, atol=1e-9)


def brute_force_values(mdp: OracleMDP, tau: float, policy, prefix: tuple[int, ...]) -> float:
    """E_π[Σ r] + τ E_π[Σ_t H(π(·|s_t))] from `prefix` on, by enumerating every completion.

    The return of a completion y is R(y) − R(prefix), from whole-sentence BLEU (no increments).
    """
    total = 0.0
    stack = [(prefix, 1.0, 0.0)]  # (state, probability of reaching it, entropy collected so far)
    while stack:
        s, p, h = stack.pop()
        if len(s) == mdp.max_len:  # forced eos
            total += p * (mdp.sentence_reward(s) - mdp.sentence_reward(prefix) + tau * h)
            continue
        pi = np.asarray(policy(s))
        pos = pi > 0
        h_s = h - float(np.sum(pi[pos] * np.log(pi[pos])))
        for i, w in enumerate(mdp.actions):
            if pi[i] == 0:
                continue
            if w == EOS:
                total += p * pi[i] * (mdp.sentence_reward(s) - mdp.sentence_reward(prefix) + tau * h_s)
            else:
                stack.append((s + (w,), p * pi[i], h_s))
    return total


def random_policy(mdp: OracleMDP, seed: int):
    """A fixed random policy; some actions get probability exactly 0 (exercises 0 · log 0 = 0)."""
    rng = np.random.default_rng(seed)
    table = {}
    for s in states_of(mdp):
        p = rng.dirichlet(np.ones(len(mdp.actions)))
        p[rng.random(len(p)) < 0.3] = 0.0
        if p.sum() == 0:
            p[mdp.eos_index] = 1.0
        table[s] = p / p.sum()
    return lambda s: table[tuple(s)]


@pytest.mark.parametrize("tau", (0.0, 0.1, 1.0))
@pytest.mark.parametrize("which", ("uniform", "random"))
@pytest.mark.parametrize("scale", SCALES)
def test_soft_q_policy_matches_enumeration(tau, which, scale):
    mdp = small_mdp("plus1", scale)
    policy = uniform_policy(mdp) if which == "uniform" else random_policy(mdp, seed=7)
    q = soft_q_policy(mdp, tau, policy)
    for s in states_of(mdp):
        v_table = soft_v_policy(q[s], np.asarray(policy(s)), tau)
        assert v_table == pytest.approx(brute_force_values(mdp, tau, policy, s), abs=1e-10)
    if which == "uniform":  # at the root, spelled out: every visited state has entropy log|A|
        seqs = enumerate_sequences(mdp)
        n_a = len(mdp.actions)
        ev = 0.0
        for y in seqs:
            n_choices = len(y)  # forced eos (no eos token in y) is no choice
            ev += n_a**-n_choices * (mdp.sentence_reward(y) + tau * n_choices * math.log(n_a))
        assert soft_v_policy(q[()], policy(()), tau) == pytest.approx(ev, abs=1e-10)


# ------------------------------------------------------------------------------------------------ #
# τ = 0 is the hard Bellman optimum, and the soft Q tends to it as τ → 0
def brute_force_hard_q(mdp: OracleMDP) -> dict[tuple[int, ...], np.ndarray]:
    """Q_0(s, w) = max over complete y extending s + w of R(y) − R(s), from whole-sentence BLEU."""
    best: dict[tuple[int, ...], float] = {}
    for y in enumerate_sequences(mdp):
        body = y[:-1] if y[-1:] == (EOS,) else y
        r = mdp.sentence_reward(y)
        for t in range(len(body) + 1):
            best[body[:t]] = max(best.get(body[:t], -np.inf), r)
    out = {}
    for s in states_of(mdp):
        out[s] = np.array([0.0 if w == EOS else best[s + (w,)] - mdp.sentence_reward(s) for w in mdp.actions])
    return out


@pytest.mark.parametrize("smooth", SMOOTHS)
def test_tau_zero_is_hard_bellman_and_the_limit(smooth):
    mdp = small_mdp(smooth)
    q0 = soft_q_optimal(mdp, 0.0)
    hard = brute_force_hard_q(mdp)
    for s in hard:
        np.testing.assert_allclose(q0[s], hard[s], rtol=0, atol=1e-12)
    # the greedy policy is optimal: its Q is the hard Q
    q_greedy = soft_q_policy(mdp, 0.0, policy_of(q0, 0.0))
    for s in hard:
        np.testing.assert_allclose(q_greedy[s], hard[s], rtol=0, atol=1e-12)
    # 0 ≤ Q_τ − Q_0 ≤ (steps left) · τ log|A|, since max ≤ τ·logsumexp(·/τ) ≤ max + τ log|A|
    log_a = math.log(len(mdp.actions))
    gaps = []
    for tau in (1e-1, 1e-2, 1e-3, 1e-4):
        q_tau = soft_q_optimal(mdp, tau)
        gap = 0.0
        for s in hard:
            d = q_tau[s] - q0[s]
            assert (d >= -1e-12).all()
            assert (d <= (mdp.max_len - 1 - len(s)) * tau * log_a + 1e-12).all()
            gap = max(gap, float(np.abs(d).max()))
        gaps.append(gap)
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-3


# ------------------------------------------------------------------------------------------------ #
# Building blocks and errors
def test_soft_v_and_boltzmann_are_stable():
    q = np.array([1000.0, 999.0, -5.0])
    assert soft_v(q, 0.01) == pytest.approx(1000.0 + 0.01 * math.log1p(math.exp(-100.0)), abs=1e-12)
    assert soft_v(q, 0.0) == 1000.0
    assert soft_v(np.zeros(4), 1.0) == pytest.approx(math.log(4.0))
    p = boltzmann_policy(q, 0.01)
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0) and p[0] > 0.999
    np.testing.assert_array_equal(boltzmann_policy(np.array([1.0, 2.0, 2.0]), 0.0), [0.0, 0.5, 0.5])
    batch = np.array([[0.0, 1.0], [2.0, 2.0]])
    np.testing.assert_allclose(soft_v(batch, 1.0), [math.log(1 + math.e), 2.0 + math.log(2.0)])


def test_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="eos"):
        OracleMDP(ref=(4, 5), actions=(4, 5), max_len=3)
    with pytest.raises(ValueError, match="smooth"):
        OracleMDP(ref=(4, 5), actions=(3, 4), max_len=3, smooth="bogus")
    with pytest.raises(ValueError, match="scale"):
        OracleMDP(ref=(4, 5), actions=(3, 4), max_len=3, scale="bogus")
    mdp = small_mdp()
    q = soft_q_optimal(mdp, 1.0)
    with pytest.raises(ValueError, match="incomplete"):
        sequence_prob(q, 1.0, (4, 5), mdp)
    with pytest.raises(ValueError, match="tau"):
        raml_target(mdp, 0.0)
    with pytest.raises(ValueError, match="tau"):
        soft_q_optimal(mdp, -1.0)
    with pytest.raises(ValueError, match="probability distribution"):
        soft_q_policy(mdp, 1.0, lambda s: np.full(len(mdp.actions), 0.5))
    with pytest.raises(ValueError, match="terminal"):
        mdp.reward((4, 4, 4, 4), 5)


def test_enumeration_covers_every_state():
    mdp = OracleMDP(ref=(4, 5, 6, 4, 7), actions=(3, 4, 5, 6, 9), max_len=6)
    q = soft_q_optimal(mdp, 0.5)
    qp = soft_q_policy(mdp, 0.5, uniform_policy(mdp))
    assert len(q) == len(qp) == sum(4**n for n in range(6))
