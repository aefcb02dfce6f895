"""The sequence-prediction MDP of the paper's Corollary 1, as a Gymnasium environment.

One episode = one (source, reference) pair. The state is the source plus the prefix generated so
far; an action is the next target token; the reward of a non-eos token is the BLEU increment
r_t = scale * (R(y_1..t) - R(y_1..t-1)) (Eq. 13, with R of a prefix as if eos followed, Eq. 4);
emitting eos earns 0 and ends the episode, and so does reaching the length cap (eos is forced
there: a true terminal state, not a truncation). gamma = 1.

Observation (a ``Dict`` of fixed-shape arrays, padded with ``<pad>`` = 0):

* ``src`` [S], ``src_len`` — the source (token ids; float features for captioning);
* ``prefix`` [T], ``prefix_len`` — the target prefix generated so far (no bos);
* ``ref`` [R], ``ref_len`` — the reference y*. **Privileged information**: the paper's critic
  and VAML's Q-net read it; an actor (policy) must not, or it would be trained on the answer.

``info["bleu"]`` at the end of an episode is its sentence BLEU, so with the default scaling the
rewards of an episode sum to ``ref_len * info["bleu"]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.pairs import PairData
from envs.rewards import SCALES, SMOOTH_METHODS, BleuTracker

EOS = 3


@dataclass(frozen=True)
class SeqPredConfig:
    """How episodes are built from pairs."""

    max_len: int = 50
    """Hard cap on the generated length T (eos is forced when the prefix reaches it)."""
    len_slack: int = 10
    """Per-episode cap = min(|y*| + len_slack, max_len), the official code's rule."""
    smooth: str = "plus1"
    """BLEU smoothing of the reward (``envs.rewards.SMOOTH_METHODS``)."""
    scale: str | None = "ref_len"
    """Reward scale: ``"ref_len"`` multiplies by |y*| (the official code), None leaves BLEU in [0, 1]."""
    eos: int = EOS
    """Token id that ends an episode."""

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ValueError(f"max_len must be >= 1; got {self.max_len}")
        if self.len_slack < 0:
            raise ValueError(f"len_slack must be >= 0; got {self.len_slack}")
        if self.smooth not in SMOOTH_METHODS:
            raise ValueError(f"smooth={self.smooth!r}; use one of {SMOOTH_METHODS}")
        if self.scale not in SCALES:
            raise ValueError(f"scale={self.scale!r}; use one of {SCALES}")


def observation_space(pairs: PairData, cfg: SeqPredConfig) -> spaces.Dict:
    """The fixed-shape observation space of one environment."""
    big = np.iinfo(np.int64).max
    if pairs.features:
        dim = len(pairs.src[0])
        src = spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)
    else:
        src = spaces.Box(0, pairs.src_vocab_size - 1, shape=(pairs.max_src_len,), dtype=np.int64)
    v = pairs.tgt_vocab_size - 1
    return spaces.Dict(
        {
            "src": src,
            "src_len": spaces.Box(0, big if pairs.features else pairs.max_src_len, shape=(), dtype=np.int64),
            "prefix": spaces.Box(0, v, shape=(cfg.max_len,), dtype=np.int64),
            "prefix_len": spaces.Box(0, cfg.max_len, shape=(), dtype=np.int64),
            "ref": spaces.Box(0, v, shape=(pairs.max_ref_len,), dtype=np.int64),
            "ref_len": spaces.Box(0, pairs.max_ref_len, shape=(), dtype=np.int64),
        }
    )


class EpisodeOrder:
    """Which pair each new episode uses: the pairs in a fresh random order every epoch."""

    def __init__(self, num_pairs: int, rng: np.random.Generator) -> None:
        self.num_pairs = num_pairs
        self.rng = rng
        self._perm = np.zeros(0, dtype=np.int64)
        self._next = 0

    def next(self) -> int:
        if self._next >= len(self._perm):
            self._perm = self.rng.permutation(self.num_pairs)
            self._next = 0
        self._next += 1
        return int(self._perm[self._next - 1])


class EpisodeBuffers:
    """Observation arrays and reward state of N episodes, shared by the single and vector envs."""

    def __init__(self, pairs: PairData, cfg: SeqPredConfig, n: int) -> None:
        self.pairs, self.cfg = pairs, cfg
        dtype = np.float32 if pairs.features else np.int64
        width = len(pairs.src[0]) if pairs.features else pairs.max_src_len
        self.src = np.zeros((n, width), dtype=dtype)
        self.src_len = np.zeros(n, dtype=np.int64)
        self.prefix = np.zeros((n, cfg.max_len), dtype=np.int64)
        self.prefix_len = np.zeros(n, dtype=np.int64)
        self.ref = np.zeros((n, pairs.max_ref_len), dtype=np.int64)
        self.ref_len = np.zeros(n, dtype=np.int64)
        self.cap = np.zeros(n, dtype=np.int64)
        self.scale = np.ones(n, dtype=np.float64)
        self.index = np.zeros(n, dtype=np.int64)
        self.tracker = BleuTracker(n, pairs.max_ref_len, cfg.smooth)

    def load(self, slot: int, index: int) -> None:
        """Start an episode on pair ``index`` in ``slot``."""
        if not 0 <= index < len(self.pairs):
            raise IndexError(f"pair index {index} outside [0, {len(self.pairs)})")
        src, ref = self.pairs.src[index], self.pairs.ref[index]
        self.src[slot] = 0
        self.src[slot, : len(src)] = src
        self.src_len[slot] = len(src)
        self.prefix[slot] = 0
        self.prefix_len[slot] = 0
        self.ref[slot] = 0
        self.ref[slot, : len(ref)] = ref
        self.ref_len[slot] = len(ref)
        self.cap[slot] = min(len(ref) + self.cfg.len_slack, self.cfg.max_len)
        self.scale[slot] = float(len(ref)) if self.cfg.scale == "ref_len" else 1.0
        self.index[slot] = index
        self.tracker.reset(np.array([slot]), [ref])

    def advance(self, slots: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply ``tokens`` in ``slots``; returns (rewards, terminated), both [len(slots)]."""
        slots = np.asarray(slots, dtype=np.int64)
        tokens = np.asarray(tokens, dtype=np.int64)
        rewards = np.zeros(len(slots))
        eos = tokens == self.cfg.eos
        grow, tok = slots[~eos], tokens[~eos]
        self.prefix[grow, self.prefix_len[grow]] = tok
        self.prefix_len[grow] += 1
        before = self.tracker.bleu[grow].copy()
        after = self.tracker.append(grow, tok)
        rewards[~eos] = (after - before) * self.scale[grow]
        terminated = eos.copy()
        terminated[~eos] = self.prefix_len[grow] >= self.cap[grow]
        return rewards, terminated

    def obs(self, slots: slice | np.ndarray) -> dict[str, np.ndarray]:
        """Copies of the observation arrays of ``slots``."""
        return {
            "src": self.src[slots].copy(),
            "src_len": self.src_len[slots].copy(),
            "prefix": self.prefix[slots].copy(),
            "prefix_len": self.prefix_len[slots].copy(),
            "ref": self.ref[slots].copy(),
            "ref_len": self.ref_len[slots].copy(),
        }


class SeqPredEnv(gym.Env):
    """One sequence-prediction episode at a time (Corollary 1's deterministic MDP M_R).

    ``reset(options={"index": i})`` starts an episode on pair i; otherwise pairs are visited in a
    random order per epoch drawn from the env's seeded ``np_random``.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, pairs: PairData, config: SeqPredConfig | None = None, render_mode: str | None = None) -> None:
        self.pairs = pairs
        self.config = config or SeqPredConfig()
        self.render_mode = render_mode
        self.observation_space = observation_space(pairs, self.config)
        self.action_space = spaces.Discrete(pairs.tgt_vocab_size)
        self._buf = EpisodeBuffers(pairs, self.config, 1)
        self._order: EpisodeOrder | None = None
        self._done = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self._order is None or seed is not None:
            self._order = EpisodeOrder(len(self.pairs), self.np_random)
        index = (options or {}).get("index")
        self._buf.load(0, self._order.next() if index is None else int(index))
        self._done = False
        return self._obs(), {"index": int(self._buf.index[0])}

    def step(self, action):
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        a = int(action)
        if not 0 <= a < self.pairs.tgt_vocab_size:
            raise ValueError(f"action {a} outside the target vocabulary [0, {self.pairs.tgt_vocab_size})")
        rewards, terminated = self._buf.advance(np.array([0]), np.array([a]))
        self._done = bool(terminated[0])
        info: dict[str, Any] = {}
        if self._done:
            info = {"bleu": float(self._buf.tracker.bleu[0]), "length": int(self._buf.prefix_len[0])}
        return self._obs(), float(rewards[0]), self._done, False, info

    def _obs(self) -> dict[str, np.ndarray]:
        return {k: v.reshape(v.shape[1:]) for k, v in self._buf.obs(slice(0, 1)).items()}

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        b = self._buf
        return (
            f"src={b.src[0, : b.src_len[0]].tolist()} prefix={b.prefix[0, : b.prefix_len[0]].tolist()} "
            f"ref={b.ref[0, : b.ref_len[0]].tolist()} bleu={b.tracker.bleu[0]:.4f}"
        )
