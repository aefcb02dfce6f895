"""Sampling translations from the actor by stepping the sequence-prediction vector env.

:class:`RolloutSampler` is what a rollout worker runs: it steps a native
:class:`envs.vector.SeqPredVectorEnv` of M sub-environments with actions drawn from the actor,
**incrementally**: each source is encoded once when its episode starts, and the decoder state
(LSTM h/c, last attentional output) is carried from token to token, so a step costs one decoder
step for the M rows together — never a re-run over the prefix. When a sub-episode ends, that row
alone is reset (``reset_mask``), its new source encoded and written into the row of the batched
encoder memory, and sampling continues: all M rows stay busy, there is no tail of a "wave".

Rewards come from the environment (BLEU increments, Eq. 13, ×|y*| by default); the env also
enforces the per-episode length cap min(|y*| + slack, max_len) (the last token of a capped episode
is terminal; no eos is emitted). What comes out, one :class:`Episode` per finished episode, keeps
everything the learner needs: source, reference, sampled tokens, rewards, behaviour log-probs and
the version of the weights that sampled it.

:func:`collate` pads a list of episodes into the learner's columns (the step layout of
``rayseq.algorithms.erac``). Plain torch/numpy; no ray.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from envs.vector import SeqPredVectorEnv
from rayseq.algorithms.erac import policy_log_probs, token_rewards
from rayseq.decoding import BANNED_TOKENS, greedy, sample_categorical
from rayseq.models.base import BOS, EOS, PAD
from rayseq.models.seq2seq import DecState, EncoderOut, Seq2Seq


@dataclass
class Episode:
    """One sampled translation y_1 … y_L (eos excluded) of source x against reference y*."""

    src: np.ndarray
    """Source token ids ``[S]`` (float features ``[D]`` for captioning)."""
    ref: np.ndarray
    """Reference y* ``[R]``, no bos/eos."""
    tokens: np.ndarray
    """Sampled tokens ``[L]``, no bos/eos."""
    rewards: np.ndarray
    """``[L + 1]`` float32: r_t of the action taken in state y_1..t (t = L: the eos step, 0)."""
    logp: np.ndarray
    """``[L + 1]`` float32: behaviour log π(a_t | s_t); t = L is log π(eos) (0 when capped)."""
    capped: bool
    """The episode hit the length cap: its last token is terminal, no eos was chosen."""
    version: int
    """Weights version that started the episode (the learner's update counter when pushed)."""
    index: int
    """Pair index in the training data."""
    greedy_reward: float | None = None
    """Σ_t r_t of the greedy (argmax) decode of the same source (the SCST baseline), when the
    sampler decodes it (``RolloutSampler.greedy_baseline``); else None."""

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def bleu_scaled(self) -> float:
        """Σ_t r_t: the episode's sentence BLEU × the reward scale."""
        return float(self.rewards.sum())


class RolloutSampler:
    """Samples episodes from ``actor`` on ``env`` with carried decoder state (see module doc)."""

    def __init__(
        self,
        actor: Seq2Seq,
        env: SeqPredVectorEnv,
        *,
        seed: int = 0,
        temperature: float = 1.0,
        banned: Sequence[int] = BANNED_TOKENS,
        device: str | torch.device = "cpu",
        train_mode: bool = False,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"RolloutSampler: temperature={temperature} must be > 0.")
        self.actor = actor
        self.env = env
        self.temperature = float(temperature)
        self.train_mode = bool(train_mode)
        """Sample with the actor in train mode (dropout on), as the official code does."""
        self.restart_batch = max(1, env.num_envs // 8)
        """Continuous mode: finished rows wait until this many can start together (one encoder
        call for all of them); their decoder rows idle meanwhile."""
        self._idle = np.zeros(env.num_envs, dtype=bool)
        self.banned = tuple(banned)
        self.device = torch.device(device)
        self.version = 0
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self._seed = int(seed)
        self._started = False
        m, cap = env.num_envs, env.config.max_len
        self._tokens = np.zeros((m, cap + 1), dtype=np.int64)  # sampled tokens per row
        self._rewards = np.zeros((m, cap + 1), dtype=np.float32)
        self._logp = np.zeros((m, cap + 1), dtype=np.float32)
        self._pos = np.zeros(m, dtype=np.int64)  # actions taken in the current episode
        self._version = np.zeros(m, dtype=np.int64)
        self._obs: dict[str, np.ndarray] = {}
        self._enc: EncoderOut | None = None
        self._state: DecState | None = None
        self._last = torch.full((m,), BOS, dtype=torch.long, device=self.device)
        self.tokens_sampled = 0
        self.greedy_baseline = False
        """Also decode every collected episode's source greedily (:meth:`greedy_rewards`) and
        store its reward in ``Episode.greedy_reward`` (SCST)."""

    # ------------------------------------------------------------------ weights

    def set_weights(self, state_dict: dict, version: int) -> None:
        """Load the actor's weights; episodes started from now on carry ``version``.

        Episodes already running continue from their decoder state with the new weights (their
        recorded log-probs are those of the actions actually drawn).
        """
        self.actor.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()})
        self.version = int(version)

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def collect(self, num_episodes: int, on_policy: bool = False) -> list[Episode]:
        """``num_episodes`` (or a few more) finished episodes.

        ``on_policy=False`` (continuous): step all M rows, each row restarting as soon as its
        episode ends, until ``num_episodes`` have finished; episodes still running are kept for
        the next call (they may then finish under newer weights: their version is the one they
        started with). ``on_policy=True`` (waves): start exactly ``num_episodes`` fresh episodes
        (in waves of at most M) with the current weights and run each to its end; nothing is
        carried over, so every episode is sampled by one version of the weights.
        """
        if num_episodes < 1:
            raise ValueError(f"collect: num_episodes={num_episodes} must be >= 1.")
        self.actor.train(self.train_mode)
        if on_policy:
            out: list[Episode] = []
            while len(out) < num_episodes:
                out.extend(self._wave(min(self.env.num_envs, num_episodes - len(out))))
            return self._attach_greedy(out)
        m = self.env.num_envs
        if not self._started:
            obs, _ = self.env.reset(seed=self._seed)
            self._obs = obs
            self._start_rows(np.arange(m))
            self._idle = np.zeros(m, dtype=bool)
            self._started = True
        out: list[Episode] = []
        while len(out) < num_episodes:
            active = np.flatnonzero(~self._idle)
            # one decoder step for all M rows (idle rows' results are ignored: cheaper than
            # gathering the active rows' encoder memory every step)
            logits, state = self.actor.step(self._enc, self._state, self._last)  # [M, V]
            actions, chosen = self._draw(logits)  # [M], [M]
            self._state, self._last = state, actions
            terminated = self._advance(active, actions.cpu().numpy()[active], chosen.float().cpu().numpy()[active])
            done = active[terminated]
            if done.size:
                self._obs = self.env.observations()
                for i in done:
                    out.append(self._finish(int(i)))
                self._idle[done] = True
            # restart finished rows in batches (one encoder call for several new sources)
            n_idle = int(self._idle.sum())
            if n_idle and (n_idle >= self.restart_batch or n_idle == m or len(out) >= num_episodes):
                rows = np.flatnonzero(self._idle)
                obs, _ = self.env.reset(options={"reset_mask": self._idle.copy()})
                self._obs = obs
                self._start_rows(rows)
                self._idle[rows] = False
        return self._attach_greedy(out)

    def _attach_greedy(self, episodes: list[Episode]) -> list[Episode]:
        if self.greedy_baseline and episodes:
            for e, r in zip(episodes, self.greedy_rewards(episodes)):
                e.greedy_reward = float(r)
        return episodes

    @torch.no_grad()
    def greedy_rewards(self, episodes: Sequence[Episode]) -> np.ndarray:
        """``[N]`` Σ_t r_t of the actor's greedy (argmax) decode of each episode's source.

        The SCST baseline (Rennie et al. 2017): the test-time output of the current weights,
        decoded with dropout off under the env's length cap min(|y*| + len_slack, max_len) and
        scored with the env's reward (BLEU increments × scale, the arithmetic of
        ``envs.rewards``), so that it is comparable with ``Episode.bleu_scaled``. One batched
        decode for all episodes; the actor's train/eval mode is restored.
        """
        cfg = self.env.config
        src_len = np.array([len(e.src) for e in episodes], dtype=np.int64)
        src = np.full((len(episodes), int(src_len.max())), PAD, dtype=episodes[0].src.dtype)  # float32 image features for captioning
        for i, e in enumerate(episodes):
            src[i, : len(e.src)] = e.src
        caps = np.minimum(np.array([len(e.ref) for e in episodes]) + cfg.len_slack, cfg.max_len)  # tokens at most
        was_training = self.actor.training
        self.actor.eval()
        try:
            tokens, lengths = greedy(
                self.actor, torch.as_tensor(src, device=self.device), torch.as_tensor(src_len, device=self.device),
                max_len=torch.as_tensor(caps + 1, device=self.device), banned=self.banned,
            )  # decoder steps = tokens + the (possibly forced) eos
        finally:
            self.actor.train(was_training)
        rewards = token_rewards(tokens, lengths, [e.ref for e in episodes], int(tokens.size(1)) + 1, cfg.smooth, cfg.scale)
        return rewards.sum(1).cpu().numpy()

    def _wave(self, w: int) -> list[Episode]:
        """Start episodes in rows 0..w-1 and step only the unfinished ones until all end."""
        m = self.env.num_envs
        mask = np.zeros(m, dtype=bool)
        mask[:w] = True
        self._obs, _ = self.env.reset(options={"reset_mask": mask})
        self._started = False  # the continuous mode must reset every row again
        active = np.arange(w)
        self._start_rows(active)
        out: list[Episode] = []
        while active.size:
            idx = torch.as_tensor(active, device=self.device)
            full = active.size == m
            enc = self._enc if full else self._enc.index_select(idx)
            state = self._state if full else self._state.index_select(idx)
            logits, new = self.actor.step(enc, state, self._last[idx])
            actions, chosen = self._draw(logits)
            terminated = self._advance(active, actions.cpu().numpy(), chosen.float().cpu().numpy())
            if full:
                self._state = new
                self._last = actions
            else:
                self._state.h[idx], self._state.c[idx], self._state.att_out[idx] = new.h, new.c, new.att_out
                self._last[idx] = actions
            for i in active[terminated]:
                out.append(self._finish(int(i)))
            active = active[~terminated]
        return out

    def _draw(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions ``[R]`` drawn from the behaviour policy for logits ``[R, V]``, and their log-probs."""
        logp = policy_log_probs(logits / self.temperature if self.temperature != 1.0 else logits, self.banned)
        actions = sample_categorical(logp, self.generator)
        return actions, logp.gather(1, actions.unsqueeze(1)).squeeze(1)

    def _advance(self, rows: np.ndarray, actions: np.ndarray, logp: np.ndarray) -> np.ndarray:
        """Step the env's ``rows`` by ``actions``, record action, reward and log-prob; returns terminated."""
        rewards, terminated = self.env.step_rows(rows, actions)
        pos = self._pos[rows]
        self._tokens[rows, pos] = actions
        self._rewards[rows, pos] = rewards
        self._logp[rows, pos] = logp
        self._pos[rows] += 1
        self.tokens_sampled += int(rows.size)
        return terminated

    def _finish(self, i: int) -> Episode:
        n = int(self._pos[i])  # actions taken: L + 1 with eos, L when capped
        acts = self._tokens[i, :n]
        capped = bool(acts[-1] != EOS)
        length = n if capped else n - 1
        rewards = np.zeros(length + 1, dtype=np.float32)
        logp = np.zeros(length + 1, dtype=np.float32)
        rewards[:n] = self._rewards[i, :n]
        logp[:n] = self._logp[i, :n]
        o = self._obs
        return Episode(
            src=o["src"][i, : o["src_len"][i]].copy(),
            ref=o["ref"][i, : o["ref_len"][i]].copy(),
            tokens=acts[:length].copy(),
            rewards=rewards,
            logp=logp,
            capped=capped,
            version=int(self._version[i]),
            index=int(self.env._buf.index[i]),
        )

    def _start_rows(self, rows: np.ndarray) -> None:
        """Encode the new sources of ``rows`` and reset their decoder state to ``<bos>``."""
        o = self._obs
        lens = o["src_len"][rows]
        width = int(lens.max())
        src = torch.as_tensor(o["src"][rows, :width], device=self.device)
        enc = self.actor.encode(src, torch.as_tensor(lens, device=self.device))
        idx = torch.as_tensor(rows, device=self.device)
        if self._enc is None:
            m = self.env.num_envs
            self._enc = _blank_encoder(enc, m, width)
            self._state = DecState(
                h=enc.h0.new_zeros(m, enc.h0.size(1)),
                c=enc.c0.new_zeros(m, enc.c0.size(1)),
                att_out=enc.h0.new_zeros(m, enc.h0.size(1)),
            )
        if width > self._enc.memory.size(1):
            self._enc = _widen(self._enc, width)
        full = self._enc.memory.size(1)
        self._enc.memory[idx] = _pad_time(enc.memory, full)
        self._enc.mask[idx] = _pad_time(enc.mask, full)
        if self._enc.keys is not None:
            self._enc.keys[idx] = _pad_time(enc.keys, full)
        self._enc.h0[idx] = enc.h0
        self._enc.c0[idx] = enc.c0
        init = self.actor.init_state(enc)
        self._state.h[idx] = init.h
        self._state.c[idx] = init.c
        self._state.att_out[idx] = init.att_out
        self._last[idx] = BOS
        self._pos[rows] = 0
        self._version[rows] = self.version


def _pad_time(x: torch.Tensor, width: int) -> torch.Tensor:
    """Right-pad dim 1 of ``x`` with zeros (False) to ``width``."""
    if x.size(1) == width:
        return x
    pad = x.new_zeros((x.size(0), width - x.size(1), *x.shape[2:]))
    return torch.cat([x, pad], dim=1)


def _blank_encoder(like: EncoderOut, m: int, width: int) -> EncoderOut:
    def blank(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.new_zeros((m, width, *t.shape[2:]))

    return EncoderOut(
        memory=blank(like.memory),
        mask=like.mask.new_zeros((m, width)),
        h0=like.h0.new_zeros((m, like.h0.size(1))),
        c0=like.c0.new_zeros((m, like.c0.size(1))),
        keys=blank(like.keys),
    )


def _widen(enc: EncoderOut, width: int) -> EncoderOut:
    return EncoderOut(
        memory=_pad_time(enc.memory, width),
        mask=_pad_time(enc.mask, width),
        h0=enc.h0,
        c0=enc.c0,
        keys=None if enc.keys is None else _pad_time(enc.keys, width),
    )


# ====================================================================== learner columns

COLUMNS = (
    "src", "src_len", "ref", "ref_len", "tgt_in", "actions", "rewards", "behaviour_logp",
    "lengths", "capped", "version", "ref_in", "ref_out", "greedy_reward",
)
"""The columns :func:`collate` produces (one row per episode)."""


def collate(episodes: Sequence[Episode]) -> dict[str, np.ndarray]:
    """Pad ``episodes`` into the learner's columns (``rayseq.algorithms.erac`` step layout).

    * ``src [N, S]``, ``src_len [N]``; ``ref [N, R]``, ``ref_len [N]`` (no bos/eos);
    * ``tgt_in [N, T]`` = ``<bos> y_1 … y_L <pad>…`` (T = max L + 1), the states;
    * ``actions [N, T]`` = ``y_1 … y_L <eos>`` (the eos of a capped episode is not a step);
    * ``rewards``, ``behaviour_logp`` ``[N, T]`` float32 (0 after the last step);
    * ``lengths [N]`` (L), ``capped [N]`` bool, ``version [N]``;
    * ``ref_in [N, R + 1]`` = ``<bos> y*``, ``ref_out [N, R + 1]`` = ``y* <eos>`` for the MLE term;
    * ``greedy_reward [N]`` float32: ``Episode.greedy_reward`` (SCST's baseline), NaN where None.
    """
    if not episodes:
        raise ValueError("collate: no episodes.")
    n = len(episodes)
    lengths = np.array([e.length for e in episodes], dtype=np.int64)
    src_len = np.array([len(e.src) for e in episodes], dtype=np.int64)
    ref_len = np.array([len(e.ref) for e in episodes], dtype=np.int64)
    t, s, r = int(lengths.max()) + 1, int(src_len.max()), int(ref_len.max())
    out = {
        "src": np.full((n, s), PAD, dtype=episodes[0].src.dtype),  # float32 image features for captioning
        "src_len": src_len,
        "ref": np.full((n, r), PAD, dtype=np.int64),
        "ref_len": ref_len,
        "tgt_in": np.full((n, t), PAD, dtype=np.int64),
        "actions": np.full((n, t), PAD, dtype=np.int64),
        "rewards": np.zeros((n, t), dtype=np.float32),
        "behaviour_logp": np.zeros((n, t), dtype=np.float32),
        "lengths": lengths,
        "capped": np.array([e.capped for e in episodes], dtype=bool),
        "version": np.array([e.version for e in episodes], dtype=np.int64),
        "ref_in": np.full((n, r + 1), PAD, dtype=np.int64),
        "ref_out": np.full((n, r + 1), PAD, dtype=np.int64),
        "greedy_reward": np.array([np.nan if e.greedy_reward is None else e.greedy_reward for e in episodes], dtype=np.float32),
    }
    for i, e in enumerate(episodes):
        L, S, R = e.length, len(e.src), len(e.ref)
        out["src"][i, :S] = e.src
        out["ref"][i, :R] = e.ref
        out["tgt_in"][i, 0] = BOS
        out["tgt_in"][i, 1 : L + 1] = e.tokens
        out["actions"][i, :L] = e.tokens
        out["actions"][i, L] = EOS
        out["rewards"][i, : L + 1] = e.rewards
        out["behaviour_logp"][i, : L + 1] = e.logp
        out["ref_in"][i, 0] = BOS
        out["ref_in"][i, 1 : R + 1] = e.ref
        out["ref_out"][i, :R] = e.ref
        out["ref_out"][i, R] = EOS
    return out
