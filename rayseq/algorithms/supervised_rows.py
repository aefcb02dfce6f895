"""Training rows for the supervised-style objectives (MLE, RAML), built from dataset pairs.

A row is one target sequence to score: ``src`` [N, S], ``src_len`` [N], ``tgt_in`` [N, T+1]
(bos + y), ``tgt_out`` [N, T+1] (y + eos), ``weight`` [N]. MLE has one row per pair with weight 1;
RAML has K rows per pair (the reference and its samples) weighted by softmax(BLEU/τ), Eq. (1).
Plain numpy: the runtime ships these arrays to the learners.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from rayseq.algorithms.raml import (
    RAMLConfig,
    draw_raml_samples,
    raml_weights,
    sample_bleus,
)
from rayseq.data.batching import pad_batch
from rayseq.models.base import BOS, EOS, PAD

if TYPE_CHECKING:
    from rayseq.algorithms.vaml import VAMLConfig
    from rayseq.rollout import Episode


def _rows(src: Sequence[np.ndarray], tgt: Sequence[np.ndarray], weight: np.ndarray) -> dict[str, np.ndarray]:
    src_pad, src_len = pad_batch(list(src), pad=PAD)  # [N, S], [N]
    tgt_in, _ = pad_batch(list(tgt), pad=PAD, bos=BOS)  # [N, T+1]
    tgt_out, _ = pad_batch(list(tgt), pad=PAD, eos=EOS)  # [N, T+1]
    return {
        "src": src_pad,
        "src_len": src_len,
        "tgt_in": tgt_in,
        "tgt_out": tgt_out,
        "weight": np.asarray(weight, dtype=np.float32),
    }


def mle_rows(src: Sequence[np.ndarray], tgt: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """One row per pair, weight 1: the loss is the mean token-NLL sum over the batch."""
    return _rows(src, tgt, np.ones(len(src), dtype=np.float32))


def raml_rows(
    src: Sequence[np.ndarray],
    tgt: Sequence[np.ndarray],
    cfg: RAMLConfig,
    vocab_size: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """K rows per pair: the reference and its samples, weights softmax(BLEU/τ [+ log w]) per pair."""
    samples, log_w = zip(*(draw_raml_samples(np.asarray(y), cfg, vocab_size, rng) for y in tgt))
    bleus = sample_bleus(samples, list(tgt), smooth=cfg.bleu_smooth)  # [B, K]
    weights = raml_weights(torch.from_numpy(bleus), cfg.tau, torch.from_numpy(np.stack(log_w)))  # [B, K]
    k = cfg.samples_per_source
    rows_src = [s for s in src for _ in range(k)]
    rows_tgt = [y for per_pair in samples for y in per_pair]
    return _rows(rows_src, rows_tgt, weights.reshape(-1).numpy())


# ----------------------------------------------------------------------------- VAML


def qnet_episodes(
    src: Sequence[np.ndarray],
    tgt: Sequence[np.ndarray],
    cfg: "VAMLConfig",
    vocab_size: int,
    rng: np.random.Generator,
) -> list["Episode"]:
    """VAML step 1's trajectories as episodes: each reference and its ``cfg.num_corruptions``
    corrupted copies (``corrupt_references``), with the env's rewards (BLEU increments × |y*|,
    ``envs.rewards``; the eos step earns 0). Never capped: a trajectory ends with its eos action."""
    from envs.rewards import prefix_bleu_batch, reward_scale
    from rayseq.algorithms.vaml import corrupt_references
    from rayseq.rollout import Episode

    trajs = [
        (i, y) for i, ref in enumerate(tgt)
        for y in corrupt_references(np.asarray(ref), vocab_size, cfg.num_corruptions, cfg.corrupt_prob, rng, cfg.n_specials)
    ]
    refs = [np.asarray(tgt[i], dtype=np.int64) for i, _ in trajs]
    bleus = prefix_bleu_batch([y for _, y in trajs], refs, smooth=cfg.bleu_smooth)
    out = []
    for (i, y), ref, b in zip(trajs, refs, bleus):
        rewards = np.zeros(len(y) + 1, dtype=np.float32)
        rewards[: len(y)] = np.diff(b, prepend=0.0) * reward_scale(len(y), ref)
        out.append(Episode(np.asarray(src[i]), ref, y, rewards, np.zeros(len(y) + 1, dtype=np.float32), False, 0, i))
    return out


def vaml_actor_rows(
    src: Sequence[np.ndarray],
    tgt: Sequence[np.ndarray],
    cfg: "VAMLConfig",
    vocab_size: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """VAML step 2's rows: RAML's K rows per pair (``raml_rows``) plus each row's reference
    ``ref [N, R]``, ``ref_len [N]`` for the Q-net's targets P_Qφ (Eq. 17), and the per-token mix
    ``mix [N, T+1]`` (m_t of ``token_mix``, 0 at padding), drawn here, before the Q-net runs, so
    that the learner computes P_Qφ only where m_t > 0.

    The mix comes from a child of ``rng`` (``Generator.spawn``), which leaves ``rng``'s stream, and
    so the RAML samples of this and later batches, the same as RAML's own rows with that ``rng``.
    """
    from rayseq.algorithms.vaml import token_mix

    rows = raml_rows(src, tgt, cfg.raml_config(), vocab_size, rng)
    k = cfg.raml_config().samples_per_source
    ref, ref_len = pad_batch([np.asarray(y) for y in tgt for _ in range(k)], pad=PAD)  # [N, R], [N]
    seed = int(rng.spawn(1)[0].integers(2**63 - 1))
    mix = token_mix(rows["tgt_out"].shape, cfg.mix_prob, cfg.mix_mode, torch.Generator().manual_seed(seed))  # [N, T+1]
    rows.update(ref=ref, ref_len=ref_len, mix=np.where(rows["tgt_out"] != PAD, mix.numpy(), np.float32(0.0)))
    return rows
