"""Reward-augmented maximum likelihood (RAML; Norouzi et al., 2016), as in Dai et al. (2018) §2.1.

Target distribution (Eq. 1):  P_R(y | x*, y*) = exp(R(y; y*)/τ) / Σ_y' exp(R(y'; y*)/τ),
objective (Eq. 2):            min_θ CE(P_R ‖ P_θ) = E_{y∼P_R}[−log P_θ(y | x*)].

Sampling from P_R is infeasible, so both are restricted to a small sample set per source:

* ``sampler="ngram"`` (the official code, ``shared/utils.py::ngram_sample``): the reference plus
  ``num_samples`` copies of it, each with one random contiguous n-gram (n ∈ [1, 4]) replaced by
  uniform non-special tokens. Weights = softmax(sentence BLEU / τ) over the set; the proposal
  probability is ignored (the estimator is biased towards whatever the n-gram proposal favours).
* ``sampler="payoff"`` (Norouzi et al., 2016, Hamming-distance version): draws from the
  exponentiated negative-Hamming payoff q(y) ∝ exp(−d_H(y, y*)/τ_e), re-weighted by self-normalised
  importance sampling towards the BLEU payoff target exp(BLEU(y; y*)/τ); see ``payoff_samples``.

Loss (Eq. 2 on the sample set): Σ_k w_k · NLL(y_k), summed over tokens, averaged over sources.
Sentence BLEU always comes from the project's reward module (``envs.rewards``, official +1
smoothing on every order).

Plain torch/numpy; no ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

from envs.rewards import prefix_bleu_batch
from rayseq.algorithms.mle import PAD, SeqLoss, SupervisedConfig, sequence_nll

N_SPECIALS = 4  # <pad>=0 <unk>=1 <bos>=2 <eos>=3
SAMPLERS = ("ngram", "payoff")


@dataclass
class RAMLConfig(SupervisedConfig):
    """Hyper-parameters of RAML training (official defaults; IMPLEMENTATION_NOTES "RAML")."""

    num_samples: int = 4
    """Samples drawn per reference; the reference itself is added, so K = num_samples + 1."""
    tau: float = 1.0
    """τ of Eq. (1): temperature of the payoff target exp(BLEU/τ), BLEU in [0, 1]."""
    sampler: Literal["ngram", "payoff"] = "ngram"
    """"ngram": official n-gram replacement; "payoff": Norouzi et al. Hamming payoff + importance weights."""
    max_ngram: int = 4
    """Largest n of the replaced n-gram (ngram sampler)."""
    payoff_tau: float = 0.08
    """τ_e of the Hamming proposal q(y) ∝ exp(−d_H/τ_e) (payoff sampler). With the count term,
    q puts most mass on distance m unless τ_e < 1/ln(V−5); 0.08 gives ~1–2 edits per 20 tokens
    at V ≈ 20k."""
    payoff_count: bool = True
    """Include the number of sequences at distance e, C(m,e)(V'−1)^e, in q(e) (Norouzi et al.);
    False samples e ∝ exp(−e/τ_e) only (the importance weights stay exact either way)."""
    include_reference: bool = True
    """Always put the reference in the sample set (the official code does)."""
    bleu_smooth: str = "plus1"
    """Sentence-BLEU smoothing for the weights (``envs.rewards``; "plus1" = official)."""
    n_specials: int = N_SPECIALS
    """Ids [0, n_specials) are special and never sampled as substitutes."""
    batch_size: int = 42
    """Sources per batch (B); the model sees B·K sequences. (The optimiser, schedule, decoding and
    start fields are :class:`rayseq.algorithms.mle.SupervisedConfig`'s.)"""

    def __post_init__(self) -> None:
        self.check_supervised()
        if self.sampler not in SAMPLERS:
            raise ValueError(f"RAMLConfig.sampler={self.sampler!r}; use one of {SAMPLERS}")
        if self.num_samples < 0 or (self.num_samples == 0 and not self.include_reference):
            raise ValueError(
                f"RAMLConfig.num_samples={self.num_samples} with include_reference="
                f"{self.include_reference} leaves an empty sample set"
            )
        if self.tau <= 0 or self.payoff_tau <= 0:
            raise ValueError(
                f"RAMLConfig.tau ({self.tau}) and payoff_tau ({self.payoff_tau}) must be > 0"
            )
        if self.max_ngram < 1:
            raise ValueError(f"RAMLConfig.max_ngram must be >= 1; got {self.max_ngram}")

    @property
    def samples_per_source(self) -> int:
        """K: sequences per source in the loss."""
        return self.num_samples + int(self.include_reference)


def _check_vocab(vocab_size: int, n_specials: int, need: int) -> None:
    if vocab_size - n_specials < need:
        raise ValueError(
            f"vocab_size={vocab_size} with n_specials={n_specials} leaves fewer than {need} "
            "non-special tokens to sample from"
        )


# ----------------------------------------------------------------------------- samplers


def ngram_replace_samples(
    ref: np.ndarray,
    vocab_size: int,
    num_samples: int,
    rng: np.random.Generator,
    max_n: int = 4,
    n_specials: int = N_SPECIALS,
) -> list[np.ndarray]:
    """The official RAML proposal (``ngram_sample``): replace one random n-gram per sample.

    For each sample: n ∼ U{1, …, min(max_n, m)}, start ∼ U{0, …, m − n}, and ref[start:start+n]
    is overwritten with tokens ∼ U[n_specials, vocab_size) (a replacement may equal the original).
    ref: [m] ids without bos/eos. Returns ``num_samples`` arrays of length m (the reference is
    not included). An empty reference yields empty samples.
    """
    _check_vocab(vocab_size, n_specials, 1)
    ref = np.asarray(ref, dtype=np.int64).reshape(-1)
    m = len(ref)
    out: list[np.ndarray] = []
    for _ in range(num_samples):
        sample = ref.copy()  # [m]
        if m > 0:
            n = int(rng.integers(1, min(max_n, m) + 1))
            start = int(rng.integers(0, m - n + 1))
            sample[start : start + n] = rng.integers(n_specials, vocab_size, size=n)
        out.append(sample)
    return out


def hamming_edit_log_probs(
    m: int, alphabet: int, tau_edit: float, include_count: bool = True
) -> np.ndarray:
    """log q(e), e = 0..m: Norouzi et al. (2016) §3 edit-distance proposal, Hamming version.

    q(e) ∝ C(m, e) (alphabet − 1)^e exp(−e/τ_e), the payoff exp(−e/τ_e) times the number of
    length-m sequences at Hamming distance e from y* when every position may take ``alphabet``
    values. ``include_count=False`` drops the count: q(e) ∝ exp(−e/τ_e). Returns [m + 1].
    """
    e = np.arange(m + 1, dtype=np.float64)
    logits = -e / tau_edit  # [m+1]
    if include_count:
        log_comb = (
            math.lgamma(m + 1)
            - np.array([math.lgamma(k + 1) for k in range(m + 1)])
            - np.array([math.lgamma(m - k + 1) for k in range(m + 1)])
        )
        logits = logits + log_comb + e * math.log(alphabet - 1)
    return logits - np.logaddexp.reduce(logits)


def payoff_samples(
    ref: np.ndarray,
    vocab_size: int,
    num_samples: int,
    tau_edit: float,
    rng: np.random.Generator,
    n_specials: int = N_SPECIALS,
    include_count: bool = True,
    include_reference: bool = True,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Exponentiated-payoff samples (Norouzi et al., 2016) with their log importance corrections.

    Proposal q, per draw: e ∼ q(e) (``hamming_edit_log_probs`` with V' = vocab_size − n_specials
    substitutes), e distinct positions uniformly, each replaced by a uniform non-special token
    different from the original (V' − 1 choices; V' if the original is special, e.g. <unk>). So

        log q(y) = log q(e) − log C(m, e) − Σ_{i changed} log a_i,

    which for a reference without specials is exactly exp(−d_H(y, y*)/τ_e) / Z (with the count
    term): the proposal *is* the negative-Hamming payoff distribution.

    What the weights correct. The RAML target used here is the BLEU payoff (Eq. 1)
    p(y) ∝ exp(BLEU(y; y*)/τ), restricted to q's support (length-m sequences). The sample set is
    the reference (if ``include_reference``) plus ``num_samples`` i.i.d. draws from q; it is
    treated as a deterministic mixture q_mix(y) = (1[y = y*] + num_samples · q(y)) / K, K the set
    size (balance-heuristic multiple importance sampling, so the forced reference is accounted for
    and a draw that happens to equal y* gets the same density). The returned log correction is
    ``log_weights[k] = −log q_mix(y_k)``; the self-normalised weights are then

        w_k = softmax_k(BLEU(y_k)/τ + log_weights[k])      (``raml_weights(bleus, τ, log_weights)``)

    i.e. w ∝ exp(BLEU/τ) / q_mix: they remove the bias of the Hamming proposal (which prefers
    few edits regardless of BLEU) and of always including y*, up to the usual O(1/K)
    self-normalisation bias. Without ``include_reference`` q_mix = q.

    ref: [m] ids without bos/eos. Returns (K arrays of length m, reference first if included;
    log_weights [K] float64).
    """
    _check_vocab(vocab_size, n_specials, 2)
    ref = np.asarray(ref, dtype=np.int64).reshape(-1)
    m = len(ref)
    alphabet = vocab_size - n_specials  # V'
    log_qe = hamming_edit_log_probs(m, alphabet, tau_edit, include_count)  # [m+1]
    # Substitutes per position: V'−1 if the original is a normal token, V' if it is special.
    n_alt = np.where(ref >= n_specials, alphabet - 1, alphabet)  # [m]
    log_alt = np.log(n_alt.astype(np.float64))  # [m]
    p_e = np.exp(log_qe)
    p_e = p_e / p_e.sum()

    samples: list[np.ndarray] = []
    log_q: list[float] = []
    for _ in range(num_samples):
        e = int(rng.choice(m + 1, p=p_e))
        pos = rng.choice(m, size=e, replace=False) if e > 0 else np.zeros(0, dtype=np.int64)
        sample = ref.copy()
        for i in pos:
            orig = int(ref[i])
            if orig >= n_specials:
                # Uniform over the V'−1 non-special tokens other than orig.
                tok = int(rng.integers(n_specials, vocab_size - 1))
                sample[i] = tok + 1 if tok >= orig else tok
            else:
                sample[i] = int(rng.integers(n_specials, vocab_size))
        log_comb = math.lgamma(m + 1) - math.lgamma(e + 1) - math.lgamma(m - e + 1)
        log_q.append(float(log_qe[e] - log_comb - log_alt[pos].sum()))
        samples.append(sample)

    log_q_arr = np.asarray(log_q, dtype=np.float64)  # [num_samples]
    if not include_reference:
        return samples, -log_q_arr
    k = num_samples + 1
    log_q_ref = float(log_qe[0])  # q(y*) = q(e = 0)
    # log q_mix(y) = log(1[y = y*] + n q(y)) − log K
    is_ref = np.array([bool(np.array_equal(s, ref)) for s in samples])
    log_mix = np.where(
        is_ref,
        np.logaddexp(0.0, math.log(num_samples) + log_q_arr) if num_samples else 0.0,
        (math.log(num_samples) if num_samples else -np.inf) + log_q_arr,
    ) - math.log(k)
    log_mix_ref = (
        np.logaddexp(0.0, math.log(num_samples) + log_q_ref) if num_samples else 0.0
    ) - math.log(k)
    log_weights = -np.concatenate([[log_mix_ref], log_mix])  # [K]
    return [ref.copy()] + samples, log_weights


def draw_raml_samples(
    ref: np.ndarray, cfg: RAMLConfig, vocab_size: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], np.ndarray]:
    """The sample set of one reference under ``cfg``: (K arrays, log_weights [K]).

    Reference first when ``cfg.include_reference``. log_weights are zeros for the n-gram sampler
    (the official code ignores the proposal) and −log q_mix for the payoff sampler.
    """
    if cfg.sampler == "ngram":
        samples = ngram_replace_samples(
            ref, vocab_size, cfg.num_samples, rng, cfg.max_ngram, cfg.n_specials
        )
        if cfg.include_reference:
            samples = [np.asarray(ref, dtype=np.int64).reshape(-1).copy()] + samples
        return samples, np.zeros(len(samples), dtype=np.float64)
    return payoff_samples(
        ref,
        vocab_size,
        cfg.num_samples,
        cfg.payoff_tau,
        rng,
        n_specials=cfg.n_specials,
        include_count=cfg.payoff_count,
        include_reference=cfg.include_reference,
    )


def sample_bleus(
    samples: Sequence[Sequence[np.ndarray]],
    refs: Sequence[Sequence[int] | Sequence[Sequence[int]]],
    smooth: str = "plus1",
) -> np.ndarray:
    """Sentence BLEU in [0, 1] of every sample against its source's reference(s), via ``envs.rewards``.

    samples: B lists of K id arrays; refs: B references (or lists of references).
    Returns [B, K] float64 (0 for an empty sample).
    """
    b = len(samples)
    k = len(samples[0]) if b else 0
    if any(len(s) != k for s in samples):
        raise ValueError("sample_bleus: every source must have the same number of samples K")
    flat_hyps = [h for per_src in samples for h in per_src]
    flat_refs = [refs[i] for i in range(b) for _ in range(k)]
    prefix = prefix_bleu_batch(flat_hyps, flat_refs, smooth=smooth)
    bleu = np.array([p[-1] if len(p) else 0.0 for p in prefix], dtype=np.float64)
    return bleu.reshape(b, k)


# ----------------------------------------------------------------------------- weights and loss


def raml_weights(
    bleus: torch.Tensor, tau: float, log_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. (1) restricted to the K samples of each source: w = softmax_k(BLEU_k / τ [+ log_weights_k]).

    bleus: [B, K] sentence BLEU in [0, 1]; log_weights: optional [B, K] importance corrections
    (−log q_mix from ``payoff_samples``). Returns [B, K], each row summing to 1.
    """
    if bleus.dim() != 2:
        raise ValueError(f"raml_weights expects bleus [B, K]; got {tuple(bleus.shape)}")
    logits = bleus.double() / tau  # [B, K]
    if log_weights is not None:
        logits = logits + log_weights.to(logits)
    return torch.softmax(logits, dim=1).to(bleus.dtype if bleus.is_floating_point() else torch.float32)


def raml_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    pad: int = PAD,
    num_sources: int | None = None,
) -> SeqLoss:
    """RAML objective, Eq. (2) on the sample set: (1/B) Σ_b Σ_k w_bk Σ_t −log π(y_bk,t | ·).

    logits: [B*K, T, V]; targets: [B*K, T] (sources major: rows b*K .. b*K+K−1 belong to source b);
    weights: [B, K] or [B*K] (no gradient flows through them).
    B is read from 2-D weights, else from ``num_sources``, else from Σ w (= B when every source's
    weights sum to 1, as ``raml_weights`` gives).
    """
    nll = sequence_nll(logits, targets, pad)  # [B*K]
    w = weights.detach()
    if w.dim() == 2:
        b = w.shape[0]
        w = w.reshape(-1)
    elif num_sources is not None:
        b = num_sources
    else:
        total = float(w.sum())
        b = round(total)
        if b < 1 or abs(total - b) > 1e-3:
            raise ValueError(
                f"raml_loss: flat weights sum to {total:.6f}, not a whole number of sources; "
                "pass weights as [B, K] or give num_sources"
            )
    if w.numel() != nll.numel():
        raise ValueError(
            f"raml_loss: {w.numel()} weights for {nll.numel()} sequences; expected one per row"
        )
    loss = (w.to(nll.dtype) * nll).sum() / b
    return SeqLoss(loss=loss, num_tokens=targets.ne(pad).sum())
