"""Exact oracle of the token-level RAML / entropy-regularised MDP of Dai, Xie & Hovy (2018), §2–3.

For a small vocabulary and a short maximum length the MDP M_R of Corollary 1 can be enumerated
completely. This module does so and gives, exactly (no sampling, no learning):

* ``soft_q_optimal`` — Q_R of Proposition 1 by backward recursion (Eq. 7/8 ≡ Eq. 13–15),
  which is the optimal soft Q* of M_R (Eq. 10–11); τ = 0 gives the hard Bellman optimum.
* ``soft_q_policy`` — the soft Q^π of a fixed policy (Eq. 9 with α = τ, γ = 1), the quantity a
  critic trained against a frozen actor converges to.
* ``raml_target`` — the sequence-level target P_R of Eq. (1), computed from whole-sentence BLEU,
  independently of the token rewards, so that Proposition 1 (Eq. 5) can be checked numerically with
  ``sequence_prob``.

The MDP (as the project's environment implements it): a state is a prefix — a tuple of non-eos
token ids; an action is any token of ``actions`` (which contains eos). Emitting eos terminates with
reward 0 (Eq. 4: R(ŷ) := R(ŷ + eos), so the eos increment of Eq. 6 is 0). Emitting a non-eos w
appends it with reward r = scale · (R(prefix + w) − R(prefix)) (Eq. 13). A prefix of length
``max_len`` is terminal (eos is forced, with no further choice). γ = 1.

Q tables are ``dict[prefix, np.ndarray [A]]`` over every non-terminal prefix (length < max_len),
the array aligned with ``mdp.actions``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from envs.rewards import (
    SCALES,
    SMOOTH_METHODS,
    prefix_bleu,
    prefix_bleu_batch,
    reward_scale,
    sentence_bleu,
)

EOS = 3
BOS = 2

Prefix = tuple[int, ...]
QTable = dict[Prefix, np.ndarray]
Policy = Callable[[Prefix], np.ndarray]


@dataclass(frozen=True)
class OracleMDP:
    """The deterministic MDP M_R of Corollary 1 for one reference y*, small enough to enumerate."""

    ref: tuple[int, ...]
    """The reference y* (token ids, without bos/eos)."""
    actions: tuple[int, ...]
    """The action space A = W: token ids, eos included; Q arrays follow this order."""
    max_len: int
    """T: a prefix of this many tokens is terminal (eos forced)."""
    eos: int = EOS
    """The end-of-sequence id."""
    smooth: str = "plus1"
    """BLEU smoothing of the pay-off R (see ``envs.rewards``)."""
    scale: str | None = "ref_len"
    """Reward scale: "ref_len" multiplies R by |y*| (the official reward), None leaves BLEU in [0, 1]."""
    _bleu: dict[Prefix, float] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)
    _sentence: dict[Prefix, float] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ref", tuple(int(t) for t in self.ref))
        object.__setattr__(self, "actions", tuple(int(a) for a in self.actions))
        if not self.ref:
            raise ValueError("OracleMDP needs a non-empty reference y*")
        if self.eos in self.ref or BOS in self.ref:
            raise ValueError(f"the reference {self.ref} must not contain bos ({BOS}) or eos ({self.eos})")
        if self.eos not in self.actions:
            raise ValueError(f"actions {self.actions} must include eos ({self.eos}) so that an episode can end")
        if len(set(self.actions)) != len(self.actions):
            raise ValueError(f"actions {self.actions} contain a repeated token id")
        if self.max_len < 1:
            raise ValueError(f"max_len={self.max_len} must be at least 1")
        if self.smooth not in SMOOTH_METHODS:
            raise ValueError(f"smooth={self.smooth!r} is not a BLEU smoothing method; use one of {SMOOTH_METHODS}")
        if self.scale not in SCALES:
            raise ValueError(f"scale={self.scale!r} is not a reward scaling; use one of {SCALES}")
        self._bleu[()] = 0.0  # R(empty) = 0

    # ----------------------------------------------------------------------------------------- #
    # Structure
    @property
    def words(self) -> tuple[int, ...]:
        """The non-eos actions, in the order of ``actions``."""
        return tuple(a for a in self.actions if a != self.eos)

    @property
    def eos_index(self) -> int:
        """Position of eos in ``actions`` (and in every Q array)."""
        return self.actions.index(self.eos)

    @property
    def reward_scale(self) -> float:
        """|y*| for scale="ref_len", 1 for None."""
        return reward_scale(len(self.ref), self.ref, self.scale)

    def is_terminal(self, prefix: Prefix) -> bool:
        """A prefix of length T = max_len ends the episode (eos forced)."""
        return len(prefix) >= self.max_len

    def states(self) -> list[Prefix]:
        """Every non-terminal prefix (length 0..max_len-1 over the non-eos actions), shortest first."""
        return [s for n in range(self.max_len) for s in itertools.product(self.words, repeat=n)]

    # ----------------------------------------------------------------------------------------- #
    # Pay-off and rewards
    def precompute(self) -> None:
        """Fill the prefix-BLEU cache for every prefix of length ≤ max_len in one batched call."""
        k = len(self.words)
        if len(self._bleu) == sum(k**n for n in range(self.max_len + 1)):
            return
        leaves = list(itertools.product(self.words, repeat=self.max_len))
        ref = np.asarray(self.ref, dtype=np.int64)
        values = prefix_bleu_batch(leaves, [ref] * len(leaves), self.smooth)
        for leaf, vals in zip(leaves, values):
            for t in range(1, len(leaf) + 1):
                self._bleu[leaf[:t]] = float(vals[t - 1])

    def bleu(self, prefix: Prefix) -> float:
        """Unscaled BLEU of a partial sequence, R(ŷ) = R(ŷ + eos) (Eq. 4); cached with its prefixes."""
        prefix = tuple(prefix)
        hit = self._bleu.get(prefix)
        if hit is not None:
            return hit
        vals = prefix_bleu(prefix, self.ref, self.smooth)
        for t in range(1, len(prefix) + 1):
            self._bleu[prefix[:t]] = float(vals[t - 1])
        return self._bleu[prefix]

    def reward(self, prefix: Prefix, w: int) -> float:
        """Incremental pay-off r(ŷ, w) = R(ŷ + w) − R(ŷ), times the scale (Eq. 13); 0 for eos (Eq. 4, 6).

        The same arithmetic as ``envs.rewards.bleu_increments``: (BLEU_t − BLEU_{t−1}) · scale.
        """
        if w == self.eos:
            return 0.0
        if w not in self.actions:
            raise ValueError(f"token {w} is not an action of this MDP; actions are {self.actions}")
        if self.is_terminal(prefix):
            raise ValueError(f"prefix {prefix} has length {len(prefix)} = max_len: it is terminal, no action")
        prefix = tuple(prefix)
        return (self.bleu(prefix + (w,)) - self.bleu(prefix)) * self.reward_scale

    def rewards(self, prefix: Prefix) -> np.ndarray:
        """r(ŷ, w) for every action w, aligned with ``actions`` (Eq. 13). # [A]"""
        return np.array([self.reward(prefix, a) for a in self.actions], dtype=np.float64)

    def sentence_reward(self, seq: Prefix) -> float:
        """Sequence-level pay-off R(y; y*) = scale · sentence BLEU(y) of a complete y (Eq. 1's R).

        Computed from the whole sentence with ``sentence_bleu`` (not from the token increments);
        a trailing eos is dropped; the empty sequence scores 0. Cached.
        """
        body = _strip_eos(tuple(seq), self.eos)
        hit = self._sentence.get(body)
        if hit is None:
            hit = self.reward_scale * sentence_bleu(body, self.ref, self.smooth)
            self._sentence[body] = hit
        return hit


def _strip_eos(seq: Prefix, eos: int) -> Prefix:
    return seq[:-1] if seq and seq[-1] == eos else seq


def _check_tau(tau: float, *, positive: bool = False) -> None:
    if not np.isfinite(tau) or tau < 0 or (positive and tau == 0):
        need = "> 0" if positive else ">= 0"
        raise ValueError(f"temperature tau={tau} must be finite and {need}")


# --------------------------------------------------------------------------------------------- #
# Soft value and Boltzmann policy
def soft_v(q: np.ndarray, tau: float) -> np.ndarray | float:
    """V_R(ŷ) = τ · log Σ_w exp(Q_R(ŷ, w)/τ) over the last axis (Eq. 14 ≡ Eq. 10); max_w Q for τ = 0."""
    _check_tau(tau)
    q = np.asarray(q, dtype=np.float64)
    m = q.max(axis=-1)
    if tau == 0:
        return m if m.ndim else float(m)
    v = m + tau * np.log(np.exp((q - m[..., None]) / tau).sum(axis=-1))
    return v if v.ndim else float(v)


def boltzmann_policy(q: np.ndarray, tau: float) -> np.ndarray:
    """P_QR(w | ŷ) = softmax_w(Q_R(ŷ, w)/τ) over the last axis (Eq. 3 ≡ Eq. 12).

    τ = 0 is the limit: uniform over the maximisers of Q.
    """
    _check_tau(tau)
    q = np.asarray(q, dtype=np.float64)
    m = q.max(axis=-1, keepdims=True)
    if tau == 0:
        e = (q == m).astype(np.float64)
    else:
        e = np.exp((q - m) / tau)
    return e / e.sum(axis=-1, keepdims=True)


def policy_of(q_table: QTable, tau: float) -> Policy:
    """The Boltzmann policy P_QR of a Q table (Eq. 3) as a callable prefix -> [A] probabilities."""
    probs = {s: boltzmann_policy(q, tau) for s, q in q_table.items()}
    return lambda prefix: probs[tuple(prefix)]


def uniform_policy(mdp: OracleMDP) -> Policy:
    """π(w | ŷ) = 1/|A| at every non-terminal prefix."""
    p = np.full(len(mdp.actions), 1.0 / len(mdp.actions))
    return lambda prefix: p


# --------------------------------------------------------------------------------------------- #
# Backward recursions
def soft_q_optimal(mdp: OracleMDP, tau: float) -> QTable:
    """Q_R of Proposition 1 for every non-terminal prefix, by backward recursion.

    Eq. (8) for the last step (prefix length max_len − 1, a non-eos w ends the episode) and for eos
    (Q_R(ŷ, eos) = R(ŷ + eos) − R(ŷ) = 0); Eq. (7) ≡ Eq. (15) otherwise:
    Q_R(ŷ, w) = r(ŷ, w) + V_R(ŷ + w) with r of Eq. (13) and V_R of Eq. (14).
    τ = 0 gives the standard (hard) Bellman optimality, V = max_w Q.
    """
    _check_tau(tau)
    return _backward_q(mdp, lambda s, q: soft_v(q, tau))


def soft_q_policy(mdp: OracleMDP, tau: float, policy: Policy, horizon: int | None = None) -> QTable:
    """Soft Q^π of a fixed policy π (Eq. 9 with α = τ, γ = 1), for every non-terminal prefix.

    Q^π(s, a) = r(s, a) + V^π(s'), V^π(s) = Σ_a π(a|s) (Q^π(s, a) − τ log π(a|s)) with 0 · log 0 = 0,
    V^π = 0 at terminal states (after eos, or at length max_len). ``horizon`` (None: no limit):
    the entropy bonus counts only at prefixes of at most that many tokens (τ = 0 past it).
    """
    _check_tau(tau)
    if horizon is not None and horizon < 0:
        raise ValueError(f"horizon={horizon} must be >= 0 tokens (or None)")

    def value(s: Prefix, q: np.ndarray) -> float:
        pi = _check_policy(np.asarray(policy(s), dtype=np.float64), s, len(mdp.actions))
        return soft_v_policy(q, pi, tau if horizon is None or len(s) <= horizon else 0.0)

    return _backward_q(mdp, value)


def _backward_q(mdp: OracleMDP, value: Callable[[Prefix, np.ndarray], float]) -> QTable:
    """Q(s, a) = r(s, a) + V(s + a) for every non-terminal prefix, longest first (γ = 1).

    ``value(s, q)`` gives V(s) from Q(s, ·). V = 0 after eos and at length max_len (the last
    step keeps Eq. 8: Q = r).
    """
    mdp.precompute()
    q_table: QTable = {}
    v: dict[Prefix, float] = {}
    for s in reversed(mdp.states()):
        q = mdp.rewards(s)  # [A]
        if len(s) + 1 < mdp.max_len:  # Eq. (7)/(15); the last step keeps Eq. (8)
            for i, a in enumerate(mdp.actions):
                if a != mdp.eos:
                    q[i] += v[s + (a,)]
        q_table[s] = q
        v[s] = value(s, q)
    return q_table


def soft_v_policy(q: np.ndarray, pi: np.ndarray, tau: float) -> float:
    """V^π(s) = E_{a~π}[Q^π(s, a)] + τ · H(π(·|s)) (Eq. 9, α = τ), with 0 · log 0 = 0."""
    pos = pi > 0
    return float(np.sum(pi[pos] * (q[pos] - tau * np.log(pi[pos]))))


def _check_policy(pi: np.ndarray, prefix: Prefix, n_actions: int) -> np.ndarray:
    if pi.shape != (n_actions,):
        raise ValueError(f"policy({prefix}) returned shape {pi.shape}; expected ({n_actions},), one per action")
    if (pi < 0).any() or abs(pi.sum() - 1.0) > 1e-9:
        raise ValueError(f"policy({prefix}) = {pi} is not a probability distribution (non-negative, sum 1)")
    return pi


# --------------------------------------------------------------------------------------------- #
# Sequence level
def iter_sequences(mdp: OracleMDP) -> Iterator[Prefix]:
    """Every complete sequence: a prefix of length < max_len followed by eos, or a length-max_len prefix."""
    for s in mdp.states():
        yield s + (mdp.eos,)
    yield from itertools.product(mdp.words, repeat=mdp.max_len)


def enumerate_sequences(mdp: OracleMDP) -> list[Prefix]:
    """The support Y of Eq. (1): complete sequences ending in eos, or of length max_len (implicit eos)."""
    return list(iter_sequences(mdp))


def raml_target(mdp: OracleMDP, tau: float) -> dict[Prefix, float]:
    """P_R(y) = exp(R(y)/τ) / Σ_y' exp(R(y')/τ) over ``enumerate_sequences`` (Eq. 1).

    R(y) = scale · sentence BLEU(y) (``OracleMDP.sentence_reward``), independent of the token rewards.
    """
    _check_tau(tau, positive=True)
    seqs = enumerate_sequences(mdp)
    r = np.array([mdp.sentence_reward(y) for y in seqs])  # [N]
    logits = r / tau
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return dict(zip(seqs, p.tolist()))


def sequence_log_prob(q_table: QTable, tau: float, seq: Prefix, mdp: OracleMDP) -> float:
    """log Π_t P_QR(y_t | y_<t) (the left side of Eq. 5); the forced eos at max_len has probability 1."""
    seq = tuple(seq)
    body = _strip_eos(seq, mdp.eos)
    if mdp.eos in body:
        raise ValueError(f"sequence {seq} has eos before its end")
    if len(body) > mdp.max_len:
        raise ValueError(f"sequence {seq} is longer than max_len={mdp.max_len}")
    ended = len(body) < len(seq)
    if not ended and len(body) < mdp.max_len:
        raise ValueError(f"sequence {seq} is incomplete: it neither ends in eos nor has length max_len")
    steps = list(body) + ([mdp.eos] if len(body) < mdp.max_len else [])
    total = 0.0
    with np.errstate(divide="ignore"):
        for t, w in enumerate(steps):
            log_p = np.log(boltzmann_policy(q_table[body[:t]], tau))
            total += float(log_p[mdp.actions.index(w)])
    return total


def sequence_prob(q_table: QTable, tau: float, seq: Prefix, mdp: OracleMDP) -> float:
    """Π_t P_QR(y_t | y_<t) (the left side of Eq. 5); the forced eos at max_len has probability 1."""
    return float(np.exp(sequence_log_prob(q_table, tau, seq, mdp)))
