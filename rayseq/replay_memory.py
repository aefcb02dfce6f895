"""The in-memory replay buffer of sampled episodes for the actor-critic learner.

A FIFO of :class:`rayseq.rollout.Episode` with a fixed ``capacity`` (the oldest episodes are
dropped first) and uniform sampling. The learner draws ``replay_ratio`` × as many episodes as the
workers add (the updates-per-sample ratio): with ``capacity`` = one batch and ratio 1 it is the
paper's on-policy schedule (each sample used once, right after it was drawn); larger values reuse
samples (off-policy, older weights). Plain numpy; no ray.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from rayseq.rollout import Episode


@dataclass
class ReplayStats:
    """What the buffer holds and has seen."""

    size: int
    capacity: int
    added: int
    sampled: int
    dropped: int


class ReplayBuffer:
    """FIFO episode store with uniform sampling (see module doc)."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"ReplayBuffer: capacity={capacity!r} must be an int >= 1 (episodes).")
        self.capacity = capacity
        self._items: deque[Episode] = deque(maxlen=capacity)
        self._rng = np.random.default_rng(seed)
        self.added = 0
        self.sampled = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, episodes: Iterable[Episode]) -> None:
        """Append episodes; beyond ``capacity`` the oldest are dropped."""
        for e in episodes:
            if len(self._items) == self.capacity:
                self.dropped += 1
            self._items.append(e)
            self.added += 1

    def sample(self, n: int, fresh_first: int = 0) -> list[Episode]:
        """``n`` episodes drawn uniformly without replacement (with replacement if n > size).

        ``fresh_first`` > 0 returns the newest ``min(fresh_first, n)`` episodes first and fills
        the rest uniformly from the older ones (each new sample used at least once).
        """
        if n < 1:
            raise ValueError(f"ReplayBuffer.sample: n={n} must be >= 1.")
        size = len(self._items)
        if size == 0:
            raise ValueError("ReplayBuffer.sample: the buffer is empty; add episodes first.")
        k = min(fresh_first, n, size)
        picked = list(range(size - k, size))
        rest = n - k
        if rest:
            pool = size - k
            if pool == 0:
                extra = self._rng.integers(0, size, size=rest)
            else:
                extra = self._rng.choice(pool, size=rest, replace=rest > pool)
            picked.extend(int(i) for i in extra)
        self.sampled += n
        return [self._items[i] for i in picked]

    def stats(self) -> ReplayStats:
        return ReplayStats(len(self._items), self.capacity, self.added, self.sampled, self.dropped)

    def state_dict(self) -> dict:
        """Counters and RNG (the stored episodes are not checkpointed: they refill in seconds)."""
        return {"added": self.added, "sampled": self.sampled, "dropped": self.dropped, "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.added, self.sampled, self.dropped = int(state["added"]), int(state["sampled"]), int(state["dropped"])
        self._rng.bit_generator.state = state["rng"]
