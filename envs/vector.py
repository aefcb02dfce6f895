"""A native batched version of ``SeqPredEnv``: N episodes stepped together in numpy.

Sub-environment i behaves exactly like a ``SeqPredEnv`` seeded with ``seed + i``: same pairs in
the same order, same observations and rewards. Autoreset follows gymnasium's default
``NEXT_STEP`` mode: the step after a sub-episode terminates resets it (its action is ignored,
its reward is 0) and returns the first observation of the next episode. Rewards come from one
batched ``BleuTracker`` (incremental n-gram counts, O(|y*|) per token), never from re-scoring.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.pairs import PairData
from envs.seqpred import EpisodeBuffers, EpisodeOrder, SeqPredConfig, observation_space


class SeqPredVectorEnv(VectorEnv):
    """``num_envs`` sequence-prediction episodes stepped as one batch."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, pairs: PairData, num_envs: int, config: SeqPredConfig | None = None) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1; got {num_envs}")
        self.pairs = pairs
        self.config = config or SeqPredConfig()
        self.num_envs = num_envs
        self.single_observation_space = observation_space(pairs, self.config)
        self.single_action_space = spaces.Discrete(pairs.tgt_vocab_size)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._buf = EpisodeBuffers(pairs, self.config, num_envs)
        self._orders: list[EpisodeOrder] | None = None
        self._autoreset = np.zeros(num_envs, dtype=bool)

    def _seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        if seed is None or isinstance(seed, (int, np.integer)):
            return [None if seed is None else int(seed) + i for i in range(self.num_envs)]
        if len(seed) != self.num_envs:
            raise ValueError(f"got {len(seed)} seeds for {self.num_envs} environments")
        return list(seed)

    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None):
        """Reset every sub-env, or those in ``options["reset_mask"]``."""
        options = options or {}
        mask = np.asarray(options.get("reset_mask", np.ones(self.num_envs, dtype=bool)), dtype=bool)
        if self._orders is None or seed is not None:
            orders = self._orders or [None] * self.num_envs
            for i, s in enumerate(self._seeds(seed)):
                if self._orders is None or (s is not None and mask[i]):
                    orders[i] = EpisodeOrder(len(self.pairs), seeding.np_random(s)[0])
            self._orders = orders
        for i in np.flatnonzero(mask):
            self._buf.load(int(i), self._orders[i].next())
        self._autoreset[mask] = False
        return self.observations(), {"index": self._buf.index.copy(), "_index": mask.copy()}

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        restart = self._autoreset.copy()
        for i in np.flatnonzero(restart):
            self._buf.load(int(i), self._orders[i].next())
        active = np.flatnonzero(~restart)
        if active.size:
            bad = (actions[active] < 0) | (actions[active] >= self.pairs.tgt_vocab_size)
            if bad.any():
                raise ValueError(
                    f"action {int(actions[active][bad][0])} outside the target vocabulary [0, {self.pairs.tgt_vocab_size})"
                )
            rewards[active], terminated[active] = self._buf.advance(active, actions[active])
        self._autoreset = terminated
        infos: dict[str, Any] = {}
        if terminated.any():
            infos = {
                "bleu": np.where(terminated, self._buf.tracker.bleu, 0.0),
                "_bleu": terminated.copy(),
                "length": np.where(terminated, self._buf.prefix_len, 0),
                "_length": terminated.copy(),
            }
        truncated = np.zeros(self.num_envs, dtype=bool)
        return self.observations(), rewards, terminated, truncated, infos

    def step_rows(self, rows, actions) -> tuple[np.ndarray, np.ndarray]:
        """Advance only sub-environments ``rows`` by ``actions``; returns (rewards, terminated).

        A non-gymnasium extension for on-policy "waves": a sampler that starts a set of episodes
        with ``reset(options={"reset_mask": ...})`` and steps each row until it ends, with no
        autoreset (the others stay untouched). A finished row must be reset before it is stepped
        again. Read the observations with :meth:`observations`.
        """
        rows = np.asarray(rows, dtype=np.int64)
        actions = np.asarray(actions, dtype=np.int64).reshape(rows.shape)
        if rows.size and self._autoreset[rows].any():
            raise RuntimeError(
                f"step_rows: row {int(rows[self._autoreset[rows]][0])} has finished its episode; reset it first."
            )
        bad = (actions < 0) | (actions >= self.pairs.tgt_vocab_size)
        if bad.any():
            raise ValueError(f"action {int(actions[bad][0])} outside the target vocabulary [0, {self.pairs.tgt_vocab_size})")
        rewards, terminated = self._buf.advance(rows, actions)
        self._autoreset[rows] = terminated
        return rewards, terminated

    def observations(self) -> dict[str, np.ndarray]:
        """Copies of the current observations of every sub-environment."""
        return self._buf.obs(slice(None))

