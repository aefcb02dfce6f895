"""Value augmented maximum likelihood (VAML; Dai et al. 2018, §4.1).

Two steps (IMPLEMENTATION_NOTES "VAML step 1/2"):

1. **Q-net** Q_φ(s, w; y*) — the :class:`~rayseq.models.critic.Critic` network, whose encoder reads
   the reference y* — trained by soft Q-learning, Eq. (16):

       min_φ Σ_t [Q_φ(y_<t, y_t; y*) − Q̂_t]²,   Q̂_t = r_t + V_φ(y_≤t; y*),
       V_φ(s) = τ log Σ_w exp(Q_φ(s, w)/τ)                                          (Eq. 10)

   with the gradient flowing through both Q_φ and V_φ (residual gradient; no target network by
   default, a Polyak one as an option). Trajectories: the reference and ``num_corruptions`` copies
   of it with each token replaced w.p. ``corrupt_prob`` by a uniform random token (the official
   ones). Terminal steps (the ``<eos>`` action, or the last token of a capped sequence) bootstrap
   nothing, for **every** sequence of a padded batch (the official code bootstraps past ``<eos>``
   for all but the longest sequence; not copied).
2. **Actor** θ trained to the token-level targets P_Qφ = softmax(Q_φ/τ) (Eq. 17) of the frozen
   Q-net on RAML's sample set and weights (Eq. 1–2): per token, with probability ``mix_prob`` the
   cross-entropy CE(P_Qφ(·|s_t) ‖ π_θ(·|s_t)), otherwise the NLL of the sampled token (the
   official per-token Bernoulli mix; ``mix_mode="expected"`` uses the mixture's expectation).
   The coin m_t is drawn with the batch, before the Q-net runs, so P_Qφ is computed only at the
   steps with m_t > 0 (``needs_qnet``; ~``mix_prob`` of them) and the CE term evaluated only
   there (``vaml_actor_loss_rows``): the same loss and gradients as the full computation.

Plain torch/numpy; no ray. The RLlib glue is ``rayseq.runtime.vaml``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rayseq.algorithms.mle import SupervisedConfig
from rayseq.algorithms.raml import N_SPECIALS, SAMPLERS, RAMLConfig
from rayseq.decoding import keep_top_k
from rayseq.metrics import QNET_GREEDY_BLEU, QNET_VALID_TD
from rayseq.models.base import BOS, PAD

MIX_MODES = ("bernoulli", "expected")
QNET_SELECT = {"valid_td": QNET_VALID_TD, "greedy_bleu": QNET_GREEDY_BLEU}
"""``VAMLConfig.qnet_select`` → the held-out figure that picks the best Q-net."""


@dataclass
class VAMLConfig(SupervisedConfig):
    """Hyper-parameters of VAML (official defaults; IMPLEMENTATION_NOTES "VAML")."""

    tau: float = 0.4
    """τ of Eq. (10) and (17), relative to the length-scaled reward |y*|·ΔBLEU (official 0.4)."""
    # ------------------------------------------------------------------ step 1: the Q-net
    qnet_epochs: float = 5.0
    """At most this many passes of Q-net training over the training references (fractions
    allowed); it stops earlier on a held-out plateau (``qnet_max_decays``)."""
    qnet_lr: float = 1e-3
    """Adam learning rate of the Q-net (official 1e-3)."""
    qnet_lr_decay: float = 0.5
    """Q-net lr × this after a pass whose held-out Eq. 16 error did not improve."""
    qnet_max_decays: int = 5
    """Decays allowed before the next non-improvement ends step 1 (the best Q-net is kept)."""
    qnet_batch_size: int = 50
    """References per Q-net update; each brings 1 + ``num_corruptions`` trajectories."""
    num_corruptions: int = 5
    """Corrupted copies of each reference (official 5; the reference itself is added)."""
    corrupt_prob: float = 0.2
    """Probability that a reference token is replaced by a uniform random token (official 0.2)."""
    qnet_target_beta: float | None = None
    """None: no target network, V_φ from the Q-net itself with gradient (the paper); a rate β:
    V from a Polyak-averaged target network φ̄ ← (1 − β)φ̄ + βφ, no gradient through it."""
    qnet_init: str | None = None
    """A ``qnet.pt`` of an earlier VAML run (or its run dir): skip step 1 and use that Q-net."""
    qnet_only: bool = False
    """Step 1 alone: train the Q-net (``qnet.pt``, for ``qnet_init`` of later runs) and train no actor;
    the start actor (``actor_init``, or the initial weights) is validated and tested."""
    qnet_replay: str | None = None
    """Optional extra off-policy trajectories for step 1: the run dir of an actor-critic job trained
    with ``algo.replay_backend=redis``; its joint-stage replay is sampled alongside the corrupted
    references (soft Q-learning is off-policy)."""
    qnet_replay_fraction: float = 0.5
    """With ``qnet_replay``: replayed trajectories per update = this × the corrupted ones."""
    qnet_valid_sentences: int = 200
    """Validation references for the Q-net's held-out TD error and its greedy (argmax Q) BLEU."""
    qnet_grad_clip: float = 5.0
    """Max global L2 norm of the Q-net gradient."""
    qnet_select: Literal["valid_td", "greedy_bleu"] = "valid_td"
    """The held-out figure that picks the best Q-net and drives the lr decay and the plateau stop:
    "valid_td" — the lowest Eq. 16 error (the paper); "greedy_bleu" — the highest BLEU of argmax_w Q
    given y* (how well the Q-net ranks the right next token; it peaks before the TD error stops falling)."""
    # ------------------------------------------------------------------ step 2: the actor
    mix_prob: float = 0.2
    """Per-token probability of the CE(P_Qφ ‖ π_θ) term; otherwise the sampled token's NLL."""
    mix_mode: Literal["bernoulli", "expected"] = "bernoulli"
    """"bernoulli": the official per-token coin; "expected": mix_prob·CE + (1 − mix_prob)·NLL."""
    pq_tau: float | None = None
    """τ of the actor's target P_Qφ = softmax(Q/τ) in step 2 (Eq. 17); None: ``tau`` (the paper).
    Smaller is sharper: with a large vocabulary the soft Q at τ = 0.4 spreads P_Qφ almost evenly."""
    pq_topk: int = 0
    """Keep P_Qφ only on the Q-net's ``pq_topk`` best tokens at each step, renormalised there
    (``qnet_token_targets``); 0 = the whole vocabulary (the paper). The soft Q of the thousands of
    tokens no trajectory took is nearly flat, so a sharper τ alone still leaves a near-uniform tail;
    this cuts the tail and keeps the Q-net's ranking of its plausible tokens."""
    num_samples: int = 4
    """RAML samples per reference (the reference is added: K = num_samples + 1)."""
    raml_tau: float = 1.0
    """τ of RAML's sequence weights softmax(BLEU/τ), BLEU in [0, 1] (Eq. 1)."""
    sampler: Literal["ngram", "payoff"] = "ngram"
    """RAML's proposal (``rayseq.algorithms.raml``): official n-gram replacement or Hamming payoff."""
    max_ngram: int = 4
    """Largest replaced n-gram of the n-gram sampler."""
    bleu_smooth: str = "plus1"
    """Sentence-BLEU smoothing of the RAML weights and of the Q-net's rewards (official +1)."""
    n_specials: int = N_SPECIALS
    """Ids [0, n_specials) are never sampled as substitutes (RAML samples and corruptions)."""
    exclude_tokens: tuple[int, ...] = (PAD, BOS)
    """Never actions: excluded from V_φ's logsumexp and from P_Qφ."""
    batch_size: int = 42
    """Sources per actor update (RAML's); the actor sees B·K sequences. (The actor's optimiser,
    schedule, decoding and start fields are :class:`rayseq.algorithms.mle.SupervisedConfig`'s.)"""

    def __post_init__(self) -> None:
        self.check_supervised()
        if not self.tau > 0:
            raise ValueError(f"VAMLConfig.tau={self.tau}: must be > 0 (Eq. 10 divides by τ).")
        if not 0.0 <= self.corrupt_prob <= 1.0:
            raise ValueError(f"VAMLConfig.corrupt_prob={self.corrupt_prob}: must be in [0, 1].")
        if not 0.0 <= self.mix_prob <= 1.0:
            raise ValueError(f"VAMLConfig.mix_prob={self.mix_prob}: must be in [0, 1].")
        if self.pq_tau is not None and not self.pq_tau > 0:
            raise ValueError(f"VAMLConfig.pq_tau={self.pq_tau}: must be > 0 (Eq. 17 divides by it), or none for tau.")
        if not isinstance(self.pq_topk, int) or isinstance(self.pq_topk, bool) or self.pq_topk < 0:
            raise ValueError(f"VAMLConfig.pq_topk={self.pq_topk!r}: must be an int >= 0 (the tokens P_Q keeps per "
                             f"step; 0 = the whole vocabulary).")
        if self.qnet_select not in QNET_SELECT:
            raise ValueError(f"VAMLConfig.qnet_select={self.qnet_select!r}; use one of {tuple(QNET_SELECT)}.")
        if self.mix_mode not in MIX_MODES:
            raise ValueError(f"VAMLConfig.mix_mode={self.mix_mode!r}; use one of {MIX_MODES}.")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"VAMLConfig.sampler={self.sampler!r}; use one of {SAMPLERS}.")
        if self.num_corruptions < 0 or self.num_samples < 0:
            raise ValueError(
                f"VAMLConfig.num_corruptions={self.num_corruptions}, num_samples={self.num_samples}: must be >= 0."
            )
        if self.qnet_epochs < 0:
            raise ValueError(f"VAMLConfig.qnet_epochs={self.qnet_epochs}: must be >= 0.")
        if self.qnet_batch_size < 1 or self.qnet_valid_sentences < 1:
            raise ValueError(
                f"VAMLConfig.qnet_batch_size={self.qnet_batch_size}, qnet_valid_sentences="
                f"{self.qnet_valid_sentences}: must be >= 1."
            )
        if self.qnet_target_beta is not None and not 0.0 < self.qnet_target_beta <= 1.0:
            raise ValueError(
                f"VAMLConfig.qnet_target_beta={self.qnet_target_beta}: must be in (0, 1], or none for no target network."
            )
        if self.qnet_replay is not None and not 0.0 < self.qnet_replay_fraction:
            raise ValueError(f"VAMLConfig.qnet_replay_fraction={self.qnet_replay_fraction}: must be > 0.")

    @property
    def actor_target_tau(self) -> float:
        """τ of P_Qφ in step 2: ``pq_tau``, or ``tau`` when None."""
        return self.tau if self.pq_tau is None else float(self.pq_tau)

    def raml_config(self) -> RAMLConfig:
        """Step 2's sample set: RAML's config with this run's sampler settings."""
        return RAMLConfig(
            num_samples=self.num_samples, tau=self.raml_tau, sampler=self.sampler, max_ngram=self.max_ngram,
            bleu_smooth=self.bleu_smooth, n_specials=self.n_specials, batch_size=self.batch_size, seed=self.seed,
        )


# ======================================================================= step 1: the Q-net


def corrupt_references(
    ref: np.ndarray,
    vocab_size: int,
    num: int,
    prob: float,
    rng: np.random.Generator,
    n_specials: int = N_SPECIALS,
) -> list[np.ndarray]:
    """The official Q-net trajectories: y* plus ``num`` copies, each token of a copy replaced
    independently w.p. ``prob`` by a token ∼ U[n_specials, vocab_size) (it may equal the original).

    ref: [m] ids without bos/eos. Returns ``num + 1`` arrays of length m, the reference first.
    """
    if vocab_size <= n_specials:
        raise ValueError(f"corrupt_references: vocab_size={vocab_size} leaves no non-special token.")
    ref = np.asarray(ref, dtype=np.int64).reshape(-1)
    out = [ref.copy()]
    for _ in range(num):
        hit = rng.random(len(ref)) < prob  # [m]
        copy = ref.copy()
        copy[hit] = rng.integers(n_specials, vocab_size, size=int(hit.sum()))
        out.append(copy)
    return out


def _allowed_mask(vocab: int, exclude: Sequence[int], device: torch.device) -> torch.Tensor:
    allowed = torch.ones(vocab, dtype=torch.bool, device=device)  # [V]
    if len(exclude):
        allowed[torch.as_tensor(tuple(exclude), dtype=torch.long, device=device)] = False
    return allowed


def soft_max_value(q: torch.Tensor, tau: float, exclude: Sequence[int] = (PAD, BOS)) -> torch.Tensor:
    """Optimal soft value, Eq. (10): V(s) = τ log Σ_w exp(Q(s, w)/τ) over the allowed tokens.

    q: [..., V]. Returns [...]; differentiable (VAML lets the gradient flow through V).
    """
    if not tau > 0:
        raise ValueError(f"soft_max_value: τ={tau} must be > 0.")
    allowed = _allowed_mask(q.size(-1), exclude, q.device)
    return tau * torch.logsumexp((q / tau).masked_fill(~allowed, float("-inf")), dim=-1)


def soft_q_target(
    rewards: torch.Tensor,  # [N, T] r_t of the action taken at s_t
    values: torch.Tensor,  # [N, T] V_φ(s_t) at every state position t (soft_max_value)
    done: torch.Tensor,  # [N, T] bool, step t is terminal
    mask: torch.Tensor,  # [N, T] bool, steps that exist
) -> torch.Tensor:
    """One-step look-ahead target of Eq. (16): Q̂_t = r_t + V_φ(s_{t+1}), Q̂_t = r_t where step t is
    terminal, 0 where ``mask`` is False. **Not detached**: the gradient flows through V_φ (the
    paper's choice); pass target-network values to get the usual semi-gradient."""
    if not (rewards.shape == values.shape == done.shape == mask.shape):
        raise ValueError(
            f"soft_q_target: rewards {tuple(rewards.shape)}, values {tuple(values.shape)}, done "
            f"{tuple(done.shape)} and mask {tuple(mask.shape)} must all be [N, T]."
        )
    next_v = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)  # [N, T] V(s_{t+1})
    target = rewards.to(values.dtype) + torch.where(done.bool(), torch.zeros_like(next_v), next_v)
    return torch.where(mask, target, torch.zeros_like(target))


class QLoss(NamedTuple):
    """The Q-net loss of Eq. (16) (summed over steps, averaged over sequences)."""

    loss: torch.Tensor  # [] Σ_t (Q − Q̂)² / N, to minimise
    num_tokens: torch.Tensor  # [] int64, steps covered


def soft_q_loss(
    q_taken: torch.Tensor,  # [N, T] Q_φ(s_t, y_t)
    target: torch.Tensor,  # [N, T] Q̂_t (soft_q_target; carries gradient through V_φ)
    mask: torch.Tensor,  # [N, T] bool, steps that exist
    num_seqs: int | None = None,
) -> QLoss:
    """Soft Q-learning objective, Eq. (16): Σ_t [Q_φ(y_<t, y_t; y*) − Q̂_t]², averaged over the
    ``num_seqs`` sequences (default: the rows of ``mask``)."""
    if not (q_taken.shape == target.shape == mask.shape):
        raise ValueError(
            f"soft_q_loss: q_taken {tuple(q_taken.shape)}, target {tuple(target.shape)} and mask "
            f"{tuple(mask.shape)} must all be [N, T]."
        )
    err = torch.where(mask, q_taken - target, torch.zeros_like(q_taken))  # [N, T]
    n = max(int(num_seqs) if num_seqs is not None else mask.size(0), 1)
    return QLoss(loss=(err * err).sum() / n, num_tokens=mask.sum())


# ======================================================================= step 2: the actor


def qnet_token_targets(q: torch.Tensor, tau: float, exclude: Sequence[int] = (PAD, BOS), top_k: int = 0) -> torch.Tensor:
    """Token-level target distribution, Eq. (17): P_Qφ(w | s) = softmax_w(Q_φ(s, w)/τ), 0 at the
    excluded tokens; with ``top_k`` > 0, 0 outside the ``top_k`` largest Q(s, ·) of the allowed
    tokens and renormalised over them. q: [..., V].
    Returns [..., V] float32/64, detached."""
    if not tau > 0:
        raise ValueError(f"qnet_token_targets: τ={tau} must be > 0.")
    allowed = _allowed_mask(q.size(-1), exclude, q.device)
    logits = q.detach().float() if q.dtype not in (torch.float32, torch.float64) else q.detach()
    return torch.softmax(keep_top_k((logits / tau).masked_fill(~allowed, float("-inf")), top_k), dim=-1)


def token_mix(
    shape: torch.Size | tuple[int, ...],
    prob: float,
    mode: str = "bernoulli",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The per-token weight m_t of the CE term: m_t ∼ Bernoulli(prob) ("bernoulli", the official
    mix) or m_t = prob ("expected"). Returns float32 of ``shape``."""
    if mode == "expected":
        return torch.full(tuple(shape), float(prob), device=device)
    if mode != "bernoulli":
        raise ValueError(f"token_mix: mode={mode!r}; use one of {MIX_MODES}.")
    u = torch.rand(tuple(shape), generator=generator, device="cpu" if generator is not None else device)
    return (u < prob).float().to(device)


def needs_qnet(mix: torch.Tensor) -> torch.Tensor:
    """The steps whose Eq. (17) term reads P_Qφ: m_t > 0 (all of them in ``"expected"`` mode,
    ~``mix_prob`` of them in ``"bernoulli"``). mix: [...] m_t (``token_mix``). Returns [...] bool."""
    return mix > 0


class VAMLActorLoss(NamedTuple):
    """Step 2's loss and its parts (sums over tokens, weighted by the RAML weights, per source)."""

    loss: torch.Tensor  # [] Σ w·[m·CE + (1 − m)·NLL] / B, to minimise
    ce: torch.Tensor  # [] Σ w·CE(P_Qφ ‖ π_θ) / B over every token (logged; m ignored; vaml_actor_loss_rows: an estimate)
    nll: torch.Tensor  # [] Σ w·NLL / B over every token (logged; m ignored)


def vaml_actor_loss(
    logits: torch.Tensor,  # [N, T, V] actor logits at s_t
    targets: torch.Tensor,  # [N, T] sampled token y_t (PAD = no step)
    p_q: torch.Tensor,  # [N, T, V] P_Qφ(· | s_t), Eq. (17)
    mix: torch.Tensor,  # [N, T] m_t: weight of the CE term (token_mix)
    weights: torch.Tensor,  # [N, T] RAML weight of the row's sequence (Eq. 1), repeated per token
    num_sources: float,
    pad: int = PAD,
) -> VAMLActorLoss:
    """VAML's actor objective, Eq. (17) on RAML's sample set (Eq. 2's weights), with the official
    per-token mix: (1/B) Σ_k w_k Σ_t [m_t·CE(P_Qφ(·|s_t) ‖ π_θ(·|s_t)) + (1 − m_t)·(−log π_θ(y_t|s_t))].
    """
    if not (logits.shape == p_q.shape and logits.shape[:2] == targets.shape == mix.shape == weights.shape):
        raise ValueError(
            f"vaml_actor_loss: logits {tuple(logits.shape)}, p_q {tuple(p_q.shape)}, targets "
            f"{tuple(targets.shape)}, mix {tuple(mix.shape)}, weights {tuple(weights.shape)} do not fit."
        )
    logp = F.log_softmax(logits.float() if logits.dtype not in (torch.float32, torch.float64) else logits, dim=-1)
    real = targets.ne(pad)  # [N, T]
    nll = -logp.gather(-1, targets.long().clamp(min=0).unsqueeze(-1)).squeeze(-1)  # [N, T]
    ce = -(p_q.to(logp.dtype) * logp.masked_fill(p_q == 0, 0.0)).sum(-1)  # [N, T]
    w = torch.where(real, weights.detach().to(logp.dtype), torch.zeros_like(nll))  # [N, T]
    m = mix.detach().to(logp.dtype)
    b = max(float(num_sources), 1e-8)  # B sources (the RAML weights of a source sum to 1)
    loss = (w * (m * ce + (1.0 - m) * nll)).sum() / b
    return VAMLActorLoss(loss=loss, ce=(w * ce).detach().sum() / b, nll=(w * nll).detach().sum() / b)


def vaml_actor_loss_rows(
    logits: torch.Tensor,  # [M, V] actor logits at the M steps with m_t > 0 (needs_qnet)
    targets: torch.Tensor,  # [M] sampled token y_t at those steps
    p_q: torch.Tensor,  # [M, V] P_Qφ(· | s_t) at those steps, Eq. (17)
    mix: torch.Tensor,  # [M] m_t at those steps
    weights: torch.Tensor,  # [M] RAML weight (Eq. 1) of each step's sequence
    nll_logits: torch.Tensor,  # [R, V] actor logits at the R real steps with m_t = 0
    nll_targets: torch.Tensor,  # [R] sampled token y_t at those steps
    nll_weights: torch.Tensor,  # [R] RAML weight of each step's sequence
    num_sources: float,
    mix_prob: float,
) -> VAMLActorLoss:
    """VAML's actor objective, Eq. (17) with the per-token mix, on packed rows split by the coin:
    (1/B) [Σ_{m>0} w·(m·CE(P_Qφ ‖ π_θ) + (1 − m)·NLL) + Σ_{m=0} w·NLL].

    Equal to :func:`vaml_actor_loss` on the same steps and the same draw of m, loss and gradients
    (there the CE of an m = 0 step is multiplied by 0), but P_Qφ and the CE term only exist at
    the ~``mix_prob`` of the steps with m > 0; the other steps cost what RAML's NLL costs. The
    logged ``nll`` is exact; the logged ``ce`` is Σ_{m>0} w·m·CE / (mix_prob·B): exactly
    Σ w·CE / B when m ≡ mix_prob ("expected"), its unbiased estimate under the Bernoulli coin
    (0 if mix_prob = 0).
    """
    m_rows, r_rows = logits.size(0), nll_logits.size(0)
    if not (logits.dim() == nll_logits.dim() == 2 and p_q.shape == logits.shape
            and targets.shape == mix.shape == weights.shape == (m_rows,)
            and nll_targets.shape == nll_weights.shape == (r_rows,) and nll_logits.size(1) == logits.size(1)):
        raise ValueError(
            f"vaml_actor_loss_rows: logits {tuple(logits.shape)}, p_q {tuple(p_q.shape)} must be [M, V] and "
            f"targets {tuple(targets.shape)}, mix {tuple(mix.shape)}, weights {tuple(weights.shape)} [M]; "
            f"nll_logits {tuple(nll_logits.shape)} [R, V], nll_targets {tuple(nll_targets.shape)} and "
            f"nll_weights {tuple(nll_weights.shape)} [R]."
        )
    fp32 = (torch.float32, torch.float64)
    logp = F.log_softmax(logits.float() if logits.dtype not in fp32 else logits, dim=-1)  # [M, V]
    nll = -logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)  # [M]
    ce = -(p_q.to(logp.dtype) * logp.masked_fill(p_q == 0, 0.0)).sum(-1)  # [M]
    nll_r = F.cross_entropy(nll_logits.float() if nll_logits.dtype not in fp32 else nll_logits,
                            nll_targets.long(), reduction="none")  # [R]
    w, w_r = weights.detach().to(logp.dtype), nll_weights.detach().to(nll_r.dtype)  # [M], [R]
    m = mix.detach().to(logp.dtype)  # [M]
    b = max(float(num_sources), 1e-8)  # B sources (the RAML weights of a source sum to 1)
    loss = ((w * (m * ce + (1.0 - m) * nll)).sum() + (w_r * nll_r).sum()) / b
    ce_sum = (w * m * ce).detach().sum()
    return VAMLActorLoss(
        loss=loss,
        ce=ce_sum / (b * mix_prob) if mix_prob > 0 else ce_sum * 0.0,
        nll=((w * nll).detach().sum() + (w_r * nll_r).detach().sum()) / b,
    )
