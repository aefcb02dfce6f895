"""``rayseq bench reward``: our batched prefix BLEU against sacrebleu re-scoring every prefix.

Both sides score the same prefixes of the same perturbed Multi30k sentences in the same run;
the figure of merit is the ratio (prefix BLEUs per second), since these machines are noisy.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from envs.rewards import prefix_bleu_batch, select_backend


@dataclass
class RewardBenchConfig:
    batch: int = 256
    """Sentences per batch."""
    smooth: str = "exp"
    """Smoothing (a sacrebleu method, so that sacrebleu computes the same function)."""
    repeats: int = 20
    """Timed repetitions of our batched call (the best is kept)."""
    sacrebleu_repeats: int = 2
    """Timed repetitions of the sacrebleu loop (the best is kept)."""
    seed: int = 0
    """Seed of the sentence sample and of the perturbations."""
    backend: str = "auto"
    """Our implementation: "auto", "numba" or "numpy" (``envs.rewards.BACKENDS``)."""


def perturb(ref: np.ndarray, vocab_size: int, rng: np.random.Generator) -> np.ndarray:
    """A hypothesis like a model's: some tokens replaced, dropped or inserted, a chunk moved."""
    out = []
    for tok in ref:
        u = rng.random()
        if u < 0.1:
            continue
        if u < 0.25:
            out.append(int(rng.integers(4, vocab_size)))
        else:
            out.append(int(tok))
        if rng.random() < 0.05:
            out.append(int(rng.integers(4, vocab_size)))
    if len(out) > 4 and rng.random() < 0.3:
        i = int(rng.integers(0, len(out) - 2))
        out = out[i:] + out[:i]
    return np.asarray(out or [int(ref[0])], dtype=np.int64)


def make_batch(cfg: RewardBenchConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from rayseq.data.tasks import load_task

    task = load_task("multi30k")
    valid = task.split("valid")
    rng = np.random.default_rng(cfg.seed)
    idx = rng.choice(len(valid), size=cfg.batch, replace=False)
    refs = [np.asarray(valid.tgt[i], dtype=np.int64) for i in idx]
    hyps = [perturb(r, len(task.tgt_vocab), rng) for r in refs]
    return hyps, refs


def sacrebleu_prefix_bleu(hyps: list[np.ndarray], refs: list[np.ndarray], smooth: str) -> list[np.ndarray]:
    """The baseline: sacrebleu's sentence BLEU of every prefix, one call per prefix."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(tokenize="none", smooth_method=smooth, effective_order=True)
    out = []
    for h, r in zip(hyps, refs):
        words = [str(t) for t in h]
        ref = [" ".join(str(t) for t in r)]
        out.append(np.array([bleu.sentence_score(" ".join(words[:t]), ref).score / 100 for t in range(1, len(words) + 1)]))
    return out


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(cfg: RewardBenchConfig) -> dict:
    hyps, refs = make_batch(cfg)
    n_prefixes = int(sum(len(h) for h in hyps))
    # The first call compiles the numba kernel (or loads it from numba's cache): not timed.
    ours = prefix_bleu_batch(hyps, refs, smooth=cfg.smooth, backend=cfg.backend)
    backend = select_backend(np.array([len(h) for h in hyps]), np.array([len(r) for r in refs]), cfg.backend)
    theirs = sacrebleu_prefix_bleu(hyps, refs, cfg.smooth)
    max_abs_diff = max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs))
    t_ours = _best_time(lambda: prefix_bleu_batch(hyps, refs, smooth=cfg.smooth, backend=cfg.backend), cfg.repeats)
    t_sacre = _best_time(lambda: sacrebleu_prefix_bleu(hyps, refs, cfg.smooth), cfg.sacrebleu_repeats)
    return {
        "batch": cfg.batch,
        "prefixes": n_prefixes,
        "smooth": cfg.smooth,
        "backend": backend,
        "ours_prefix_bleu_per_s": n_prefixes / t_ours,
        "sacrebleu_prefix_bleu_per_s": n_prefixes / t_sacre,
        "speedup": t_sacre / t_ours,
        "max_abs_diff": max_abs_diff,
    }
