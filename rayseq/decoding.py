"""Batched greedy decoding, ancestral sampling and beam search.

Every function talks to the model only through :class:`rayseq.models.base.IncrementalDecoder`
(``encode`` / ``expand_encoder`` / ``init_state`` / ``step``, plus ``index_select`` on the encoder
output and the state), so translation and captioning models share them. They run under
``torch.no_grad()`` and leave the model in the mode the caller set (train mode = dropout on).

Conventions shared by all three:

- ``max_len`` counts decoder steps, ``<eos>`` included: a hypothesis has at most ``max_len - 1``
  tokens, and ``<eos>`` is forced at step ``max_len`` (as in the official code). It is an int or a
  per-source long tensor ``[B]``; every value must be ≥ 1.
- Returned token sequences exclude ``<bos>`` and ``<eos>`` and are right-padded with ``<pad>`` to
  the longest one in the batch; ``lengths`` counts the tokens (``<eos>`` not included).
- Tokens in ``banned`` (default ``<pad>``, ``<bos>``) are never produced: their logits are set to
  −inf before the softmax, so the decoding policy is ``softmax(mask_logits(logits))``.
- Finished rows / sentences are dropped from the batch as they finish (``index_select``), so a
  batch costs what its live hypotheses cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from rayseq.models.base import BOS, EOS, PAD, Batched, IncrementalDecoder

BANNED_TOKENS: tuple[int, ...] = (PAD, BOS)
"""Tokens that can never be a correct target, hence never an action."""


def mask_logits(logits: torch.Tensor, banned: Sequence[int] = BANNED_TOKENS) -> torch.Tensor:
    """Copy of ``logits`` ``[..., V]`` with the ``banned`` token ids set to −inf."""
    if len(banned) == 0:
        return logits
    idx = torch.as_tensor(tuple(banned), dtype=torch.long, device=logits.device)
    return logits.index_fill(-1, idx, float("-inf"))


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool ``[..., V]``: True at the ``k`` largest entries of ``scores`` along the last axis (which
    of tied entries at the cut is kept is unspecified)."""
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, scores.topk(k, dim=-1).indices, True)


def keep_top_k(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """``scores`` ``[..., V]`` with −inf outside its ``top_k`` largest entries along the last axis
    (entries already −inf stay so); ``top_k`` 0 or ≥ V: ``scores`` itself."""
    if top_k < 0:
        raise ValueError(f"keep_top_k: top_k={top_k} must be >= 0 (0 = every entry).")
    if top_k == 0 or top_k >= scores.size(-1):
        return scores
    return scores.masked_fill(~top_k_mask(scores, top_k), float("-inf"))


def teacher_forcing_io(
    tokens: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder inputs and targets for decoded ``tokens`` ``[N, T]`` with ``lengths`` ``[N]``.

    Returns ``(tgt_in, tgt_out)``, both ``[N, T + 1]`` long: ``tgt_in = <bos> y_1 … y_L <pad>…``
    and ``tgt_out = y_1 … y_L <eos> <pad>…``; ``model.forward(src, src_len, tgt_in)`` then scores
    every action of the sequence, the final ``<eos>`` included.
    """
    n, t = tokens.shape
    body = tokens.masked_fill(
        torch.arange(t, device=tokens.device).unsqueeze(0) >= lengths.unsqueeze(1), PAD
    )  # [N, T]
    tgt_in = torch.cat([torch.full((n, 1), BOS, dtype=torch.long, device=tokens.device), body], 1)
    tgt_out = torch.cat([body, torch.full((n, 1), PAD, dtype=torch.long, device=tokens.device)], 1)
    tgt_out.scatter_(1, lengths.long().unsqueeze(1), EOS)
    return tgt_in, tgt_out


def _check_banned(banned: Sequence[int]) -> None:
    if EOS in banned:
        raise ValueError(
            f"banned={tuple(banned)} contains <eos> ({EOS}); a sequence could never end. "
            f"Ban only tokens that must never be produced, e.g. {BANNED_TOKENS}."
        )


def _step_limits(max_len: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """``max_len`` as a long tensor ``[batch]`` of per-row step limits (validated ≥ 1)."""
    if isinstance(max_len, torch.Tensor):
        if max_len.shape != (batch,):
            raise ValueError(
                f"max_len tensor must have shape [{batch}] (one limit per source), "
                f"got {tuple(max_len.shape)}."
            )
        limits = max_len.to(device=device, dtype=torch.long)
    else:
        limits = torch.full((batch,), int(max_len), dtype=torch.long, device=device)
    if batch > 0 and int(limits.min()) < 1:
        raise ValueError(
            f"max_len must be ≥ 1 (it counts decoder steps, <eos> included), got "
            f"{int(limits.min())}."
        )
    return limits


def _rollout(
    model: IncrementalDecoder,
    enc: Batched,
    limits: torch.Tensor,  # [N]
    choose: Callable[[torch.Tensor], torch.Tensor],
    banned: Sequence[int],
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-to-right decoding of N rows, one token per row per step, chosen by ``choose(logp)``.

    ``logp = log_softmax(mask_logits(logits) / temperature)`` ``[n, V]`` for the n live rows.
    Returns ``(tokens [N, L], lengths [N], logprobs [N, L + 1])`` with L = max length; see
    :func:`sample` for the contract.
    """
    n_rows = limits.size(0)
    device = limits.device
    t_max = int(limits.max()) if n_rows > 0 else 0
    out_tokens = torch.full((n_rows, t_max), PAD, dtype=torch.long, device=device)
    out_logp = torch.zeros(n_rows, t_max, device=device)
    lengths = torch.zeros(n_rows, dtype=torch.long, device=device)

    rows = torch.arange(n_rows, device=device)  # original ids of the live rows
    state = model.init_state(enc)
    inputs = torch.full((n_rows,), BOS, dtype=torch.long, device=device)
    for t in range(t_max):
        logits, state = model.step(enc, state, inputs)  # [n, V]
        logp = F.log_softmax(mask_logits(logits.float(), banned) / temperature, dim=-1)
        tok = choose(logp)  # [n]
        tok = tok.masked_fill(limits[rows] == t + 1, EOS)  # eos forced at the last step
        out_tokens[rows, t] = tok
        out_logp[rows, t] = logp.gather(1, tok.unsqueeze(1)).squeeze(1)
        done = tok == EOS  # [n]
        lengths[rows[done]] = t
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            rows, tok = rows[keep], tok[keep]
            enc, state = enc.index_select(keep), state.index_select(keep)
        inputs = tok

    width = int(lengths.max()) if n_rows > 0 else 0
    out_tokens = out_tokens[:, :width].masked_fill(out_tokens[:, :width] == EOS, PAD)
    return out_tokens, lengths, out_logp[:, : width + 1]


@torch.no_grad()
def greedy(
    model: IncrementalDecoder,
    src: torch.Tensor,
    src_len: torch.Tensor | None,
    max_len: int | torch.Tensor,
    banned: Sequence[int] = BANNED_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy (argmax) decoding of each source.

    Returns ``(tokens [B, L] long, lengths [B] long)``: tokens without ``<bos>``/``<eos>``,
    ``<pad>`` after each sequence's end, L = ``lengths.max()``.
    """
    _check_banned(banned)
    enc = model.encode(src, src_len)
    limits = _step_limits(max_len, src.size(0), src.device)
    tokens, lengths, _ = _rollout(model, enc, limits, lambda lp: lp.argmax(-1), banned)
    return tokens, lengths


@torch.no_grad()
def sample(
    model: IncrementalDecoder,
    src: torch.Tensor,
    src_len: torch.Tensor | None,
    max_len: int | torch.Tensor,
    temperature: float = 1.0,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    banned: Sequence[int] = BANNED_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ancestral sampling of ``num_samples`` = k sequences per source.

    The behaviour policy at each step is ``softmax(mask_logits(logits) / temperature)``.

    Returns ``(tokens, lengths, logprobs)``:
      - ``tokens`` ``[B*k, L]`` long, row ``b*k + j`` is sample j of source b, without
        ``<bos>``/``<eos>``, ``<pad>`` after the end; L = ``lengths.max()``.
      - ``lengths`` ``[B*k]`` tokens per sample (``<eos>`` excluded).
      - ``logprobs`` ``[B*k, L + 1]`` behaviour log-probability of every action, the final
        ``<eos>`` included at index ``lengths``; 0 after it. Where ``<eos>`` was forced
        (``lengths == max_len - 1``) its entry is the policy's log π(<eos>), not 0.
    """
    if temperature <= 0:
        raise ValueError(f"sample: temperature={temperature} must be > 0 (use greedy for 0).")
    if num_samples < 1:
        raise ValueError(f"sample: num_samples={num_samples} must be ≥ 1.")
    _check_banned(banned)
    enc = model.expand_encoder(model.encode(src, src_len), num_samples)
    limits = _step_limits(max_len, src.size(0), src.device).repeat_interleave(num_samples)

    return _rollout(
        model, enc, limits, lambda lp: sample_categorical(lp, generator), banned, temperature
    )


def sample_categorical(
    logp: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One draw per row from ``exp(logp)`` ``[N, V]``; returns token ids ``[N]``.

    Inverse-CDF sampling (float64 cumulative sum + ``searchsorted``): ~40× faster than
    ``torch.multinomial`` on CPU for V ≈ 23k, and a zero-probability token is never drawn.
    """
    cdf = logp.exp().double().cumsum(-1)  # [N, V]
    u = 1.0 - torch.rand(
        logp.size(0), 1, generator=generator, dtype=torch.float64, device=logp.device
    )  # (0, 1]
    idx = torch.searchsorted(cdf, u * cdf[:, -1:])  # first token with cdf ≥ u·total
    return idx.squeeze(1).clamp_(max=logp.size(-1) - 1)


def _length_penalty(length: torch.Tensor | int, alpha: float) -> torch.Tensor | float:
    """GNMT length penalty ``((5 + |Y|) / 6) ** alpha``, |Y| counting ``<eos>``."""
    if isinstance(length, torch.Tensor):
        return ((5.0 + length.float()) / 6.0) ** alpha
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model: IncrementalDecoder,
    src: torch.Tensor,
    src_len: torch.Tensor | None,
    beam_size: int = 5,
    max_len: int | torch.Tensor = 100,
    length_penalty: float = 0.0,
    banned: Sequence[int] = BANNED_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Beam search, batched over sources; the best finished hypothesis of each source.

    Each step expands the K live beams of a source by every token and ranks the K·V candidates by
    total log-probability. A ``<eos>`` candidate ranked within the top K becomes a finished
    hypothesis; the K best non-``<eos>`` candidates stay live (so ``beam_size=1`` is greedy). At
    step ``max_len`` every live beam is finished with a forced ``<eos>``. A source stops once no
    live beam can beat its best finished hypothesis any more (scores only decrease), or at
    ``max_len``.

    Scores are ``log p(y_1 … y_L <eos> | x)``; with ``length_penalty`` = α > 0 they are divided by
    the GNMT penalty ``((5 + L + 1) / 6) ** α`` (α = 0, the paper's setting, means none).

    Returns ``(tokens [B, L] long, lengths [B] long, scores [B] float)``, tokens without
    ``<bos>``/``<eos>`` and ``<pad>`` after each sequence's end, L = ``lengths.max()``.
    """
    if beam_size < 1:
        raise ValueError(f"beam_search: beam_size={beam_size} must be ≥ 1.")
    if length_penalty < 0:
        raise ValueError(f"beam_search: length_penalty={length_penalty} must be ≥ 0.")
    _check_banned(banned)
    k = beam_size
    n_src = src.size(0)
    device = src.device
    limits = _step_limits(max_len, n_src, device)  # [B]
    t_max = int(limits.max()) if n_src > 0 else 0

    best_tokens = torch.full((n_src, t_max), PAD, dtype=torch.long, device=device)
    best_lengths = torch.zeros(n_src, dtype=torch.long, device=device)
    best_scores = torch.full((n_src,), float("-inf"), device=device)

    enc = model.expand_encoder(model.encode(src, src_len), k)  # rows b*K + j
    state = model.init_state(enc)
    sents = torch.arange(n_src, device=device)  # original ids of the live sources
    scores = torch.full((n_src, k), float("-inf"), device=device)  # [b, K]
    scores[:, 0] = 0.0  # one live beam at the start
    history = torch.zeros(n_src, k, 0, dtype=torch.long, device=device)  # [b, K, t]
    inputs = torch.full((n_src * k,), BOS, dtype=torch.long, device=device)

    for t in range(t_max):
        b = sents.size(0)
        logits, state = model.step(enc, state, inputs)  # [b*K, V]
        logp = F.log_softmax(mask_logits(logits.float(), banned), dim=-1)
        vocab = logp.size(-1)
        cand = scores.unsqueeze(2) + logp.view(b, k, vocab)  # [b, K, V]

        # Finished: <eos> candidates ranked in the top K of all K·V, or every beam at the limit.
        top_scores, top_idx = cand.view(b, k * vocab).topk(min(2 * k, k * vocab), dim=1)  # [b, 2K]
        top_beam, top_tok = top_idx // vocab, top_idx % vocab
        eos_scores = cand[:, :, EOS]  # [b, K]
        in_top = (top_tok[:, :k] == EOS).long()  # [b, K] by rank
        admitted = torch.zeros(b, k, dtype=torch.long, device=device)
        admitted = admitted.scatter_add(1, top_beam[:, :k], in_top) > 0  # [b, K] by beam
        at_limit = limits[sents] == t + 1  # [b]
        admitted |= at_limit.unsqueeze(1)
        fin = eos_scores.masked_fill(~admitted, float("-inf"))
        if length_penalty > 0:
            fin = fin / _length_penalty(t + 1, length_penalty)
        fin_best, fin_beam = fin.max(dim=1)  # [b]
        improved = fin_best > best_scores[sents]
        if bool(improved.any()):
            imp = improved.nonzero().squeeze(1)
            sid = sents[imp]
            best_scores[sid] = fin_best[imp]
            best_lengths[sid] = t
            best_tokens[sid, :t] = history[imp, fin_beam[imp]]

        # Live: the K best non-<eos> candidates (at most K of the top 2K are <eos>).
        order = torch.argsort((top_tok == EOS).to(torch.uint8), dim=1, stable=True)[:, :k]
        scores = top_scores.gather(1, order)  # [b, K]
        beam = top_beam.gather(1, order)  # [b, K]
        tok = top_tok.gather(1, order)  # [b, K]
        history = torch.cat(
            [history.gather(1, beam.unsqueeze(2).expand(-1, -1, t)), tok.unsqueeze(2)], dim=2
        )  # [b, K, t+1]

        # A source is done at its limit, or when no live beam can still beat its best finished one.
        bound = scores.max(dim=1).values  # [b]; completions only lower a raw score
        if length_penalty > 0:
            bound = bound / _length_penalty(limits[sents], length_penalty)
        done = at_limit | (best_scores[sents] >= bound)
        if bool(done.all()):
            break
        rows = (torch.arange(b, device=device) * k).unsqueeze(1) + beam  # [b, K] rows to continue
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            sents, scores, history = sents[keep], scores[keep], history[keep]
            tok, rows = tok[keep], rows[keep]
            enc = enc.index_select((keep.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1))
        state = state.index_select(rows.view(-1))
        inputs = tok.view(-1)
    width = int(best_lengths.max()) if n_src > 0 else 0
    return best_tokens[:, :width], best_lengths, best_scores
