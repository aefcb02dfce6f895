"""The critic Q_φ of AC / ERAC (Dai et al. 2018, §4.2; IMPLEMENTATION_NOTES "Critic").

A :class:`~rayseq.models.seq2seq.Seq2Seq` used as a Q-network:

* its **encoder reads the reference** y*, wrapped in ``<bos> … <eos>`` as the official code does
  (``critic(tgt, seq)`` with ``tgt`` = bos y* eos);
* its **decoder reads the sampled prefix**, teacher-forced: input ``<bos> y_1 … y_L``;
* the output layer gives Q(s_t, w) for **every** token w, straight from the logits (no softmax,
  no squashing): ``q[:, t, w]`` = Q(y_1..t, w; y*), the value of emitting w after the prefix
  y_1..t (state s_t, read at decoder position t).

MLP attention ``v · tanh(W[enc; dec] + b)``, a bias in ``att_out``, dropout 0 (the official
critic). By default the same shape as the paper's actor (256 / 2×128 / 256).

The target critic Q_φ̄ (§4.2, following Bahdanau et al. 2016 / Lillicrap et al. 2015) is a frozen
copy (:func:`make_target`) moved towards the critic by :func:`polyak_update` after every step.

Plain torch; no ray.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from rayseq.models.base import BOS, EOS, PAD
from rayseq.models.seq2seq import EncoderOut, Seq2Seq, Seq2SeqConfig


@dataclass
class CriticConfig:
    """Shape of a :class:`Critic` (official ``train_critic.py`` defaults)."""

    vocab_size: int
    """Target vocabulary size V: the decoder's inputs and outputs, and the encoder's input (y*)."""
    emb_dim: int = 256
    """Embedding size of the reference and of the prefix tokens."""
    enc_hidden: int = 128
    """Reference-encoder BiLSTM size per direction."""
    dec_hidden: int = 256
    """Decoder LSTM size; must equal 2 × enc_hidden."""
    dropout: float = 0.0
    """Dropout on ``att_out`` (0 in the official critic)."""
    init_range: float = 0.1
    """Every parameter ~ U(−init_range, init_range)."""
    input_feeding: bool = False
    """Feed the previous ``att_out`` into the decoder input (official critic default: off)."""
    att_out_bias: bool = True
    """Bias in ``att_out = tanh(W[h_dec; ctx] + b)`` (the official MLP-attention critic has one)."""
    ref_bos_eos: bool = True
    """Wrap the reference in ``<bos> … <eos>`` before encoding it (as the official code does)."""

    def __post_init__(self) -> None:
        self.seq2seq_config()  # the shape checks live in Seq2SeqConfig

    def seq2seq_config(self) -> Seq2SeqConfig:
        """The underlying :class:`Seq2SeqConfig`: MLP attention, source vocabulary = target's."""
        return Seq2SeqConfig(
            src_vocab_size=self.vocab_size,
            tgt_vocab_size=self.vocab_size,
            emb_dim=self.emb_dim,
            enc_hidden=self.enc_hidden,
            dec_hidden=self.dec_hidden,
            dropout=self.dropout,
            input_feeding=self.input_feeding,
            init_range=self.init_range,
            attention="mlp",
            att_out_bias=self.att_out_bias,
        )

    @classmethod
    def like_actor(cls, actor: Seq2SeqConfig, **overrides: object) -> CriticConfig:
        """A critic with the actor's sizes (target vocabulary, embedding, hidden, init range).

        Dropout, attention and input feeding stay the critic's own (0, MLP, off) unless given in
        ``overrides``.
        """
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(
                f"CriticConfig.like_actor: unknown field(s) {sorted(unknown)}; known: {sorted(known)}."
            )
        kwargs: dict[str, object] = dict(
            vocab_size=actor.tgt_vocab_size,
            emb_dim=actor.emb_dim,
            enc_hidden=actor.enc_hidden,
            dec_hidden=actor.dec_hidden,
            init_range=actor.init_range,
        )
        kwargs.update(overrides)
        return cls(**kwargs)  # type: ignore[arg-type]


def wrap_reference(ref: torch.Tensor, ref_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``<bos> y* <eos>`` for right-padded references ``ref`` ``[N, R]`` with lengths ``[N]``.

    Returns ``(src [N, R + 2], src_len [N] = ref_len + 2)``, ``<pad>`` after ``<eos>``.
    """
    n, r = ref.shape
    pos = torch.arange(r, device=ref.device).unsqueeze(0)  # [1, R]
    body = ref.masked_fill(pos >= ref_len.unsqueeze(1), PAD)  # [N, R]
    src = torch.full((n, r + 2), PAD, dtype=torch.long, device=ref.device)  # [N, R + 2]
    src[:, 0] = BOS
    src[:, 1 : r + 1] = body
    src.scatter_(1, (ref_len.long() + 1).unsqueeze(1), EOS)
    return src, ref_len.long() + 2


class Critic(nn.Module):
    """Q_φ(s, w; y*) for every prefix position and every token; see the module docstring."""

    def __init__(self, cfg: CriticConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = Seq2Seq(cfg.seq2seq_config())

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def encode(self, ref: torch.Tensor, ref_len: torch.Tensor) -> EncoderOut:
        """Encode references ``ref`` ``[N, R]`` (no bos/eos, right-padded), lengths ``[N]`` (≥ 1)."""
        if ref.dim() != 2 or ref_len.shape != (ref.size(0),):
            raise ValueError(
                f"Critic.encode: expected ref [N, R] and ref_len [N], got {tuple(ref.shape)} and "
                f"{tuple(ref_len.shape)}."
            )
        if self.cfg.ref_bos_eos:
            ref, ref_len = wrap_reference(ref, ref_len)
        return self.net.encode(ref, ref_len)

    def expand_encoder(self, enc: EncoderOut, k: int) -> EncoderOut:
        """Each reference repeated ``k`` times consecutively (k samples per source)."""
        return self.net.expand_encoder(enc, k)

    def decode(self, enc: EncoderOut, tgt_in: torch.Tensor) -> torch.Tensor:
        """Q-values ``[N, T, V]`` for decoder inputs ``tgt_in`` ``[N, T]`` = ``<bos> y_1 … y_{T-1}``."""
        return self.net.decode(enc, tgt_in)  # [N, T, V], raw output layer = Q

    def hidden(self, ref: torch.Tensor, ref_len: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """The output layer's inputs ``[N, T, Hd]`` (``q_head`` of them = :meth:`forward`)."""
        return self.net.decode_hidden(self.encode(ref, ref_len), tgt_in)

    def hidden_at(
        self, ref: torch.Tensor, ref_len: torch.Tensor, tgt_in: torch.Tensor, at: torch.Tensor
    ) -> torch.Tensor:
        """The output layer's inputs at the positions ``at`` only: ``hidden(ref, ref_len, tgt_in)[at]``
        ``[M, Hd]`` (row-major order of ``at`` ``[N, T]`` bool), without the work that cannot reach them.

        The decoder LSTM is recurrent, so a wanted sequence is still read from ``<bos>``, but only up
        to the last wanted position of the batch; sequences with no wanted position are skipped;
        each distinct reference (the K samples of a source share theirs) is encoded once; the
        attention and ``att_out`` (position-wise: ``Seq2Seq.decode_hidden``'s, recomputed here from
        the same sub-modules) run at the wanted positions only, unless input feeding makes them
        part of the recurrence.
        """
        if at.shape != tgt_in.shape:
            raise ValueError(f"Critic.hidden_at: at {tuple(at.shape)} must be tgt_in's shape {tuple(tgt_in.shape)}.")
        net = self.net
        rows = at.any(dim=1).nonzero().squeeze(1)  # [J] sequences with a wanted position
        if rows.numel() == 0:
            return net.out.weight.new_zeros((0, self.cfg.dec_hidden))  # [0, Hd]
        at = at.index_select(0, rows)  # [J, T]
        width = int(at.nonzero()[:, 1].max()) + 1  # the decoder stops after the last wanted step
        at, tgt_in = at[:, :width], tgt_in.index_select(0, rows)[:, :width]  # [J, W]
        ref_keys = torch.cat([ref_len.index_select(0, rows).unsqueeze(1).to(ref.dtype), ref.index_select(0, rows)], dim=1)
        distinct, which = torch.unique(ref_keys, dim=0, return_inverse=True)  # [U, 1 + R], [J]
        enc = self.encode(distinct[:, 1:], distinct[:, 0])  # U rows
        if net.cfg.input_feeding:
            return net.decode_hidden(enc.index_select(which), tgt_in)[at]  # [M, Hd]
        hx = (enc.h0.index_select(0, which).unsqueeze(0), enc.c0.index_select(0, which).unsqueeze(0))  # [1, J, Hd]
        dec_out, _ = net.decoder(net.tgt_embed(tgt_in), hx)  # [J, W, Hd]
        query = dec_out[at].unsqueeze(1)  # [M, 1, Hd]
        mem = enc.index_select(which.index_select(0, at.nonzero()[:, 0]))  # M rows: each wanted step's reference
        ctx = net.attention(query, mem.memory, mem.keys, mem.mask)  # [M, 1, 2H]
        return net.dropout(torch.tanh(net.att_proj(torch.cat([query, ctx], dim=-1)))).squeeze(1)  # [M, Hd]

    def q_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Q-values ``[..., V]`` from output-layer inputs ``[..., Hd]`` (any leading shape)."""
        return self.net.out(hidden)

    def forward(
        self, ref: torch.Tensor, ref_len: torch.Tensor, tgt_in: torch.Tensor
    ) -> torch.Tensor:
        """Q(s_t, w; y*) for every decoder position t and token w.

        Args:
          ref: ``[N, R]`` reference y* token ids, **without** bos/eos, right-padded (the critic
            adds ``<bos>``/``<eos>`` itself when ``cfg.ref_bos_eos``).
          ref_len: ``[N]`` reference lengths |y*| (≥ 1).
          tgt_in: ``[N, T]`` sampled prefix, teacher-forced: ``<bos> y_1 … y_L <pad>…``.

        Returns:
          q ``[N, T, V]``: ``q[:, t, w]`` = Q(y_1..t, w; y*), unsquashed. Positions after the
          sequence's last state are garbage and must be masked by the loss.
        """
        return self.decode(self.encode(ref, ref_len), tgt_in)


def make_target(critic: nn.Module) -> nn.Module:
    """The target network Q_φ̄: a deep copy of ``critic`` with ``requires_grad=False``, eval mode."""
    target = copy.deepcopy(critic)
    target.requires_grad_(False)
    target.eval()
    return target


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, beta: float) -> None:
    """φ̄ ← (1 − β)·φ̄ + β·φ, in place (§4.2; official ``utils.slow_update``, β = 0.001 per step).

    ``target`` and ``source`` must have the same parameters (names and shapes); β ∈ (0, 1]
    (β = 1 copies the source).
    """
    if not (math.isfinite(beta) and 0.0 < beta <= 1.0):
        raise ValueError(f"polyak_update: β={beta} must be in (0, 1] (the official value is 0.001).")
    tgt = dict(target.named_parameters())
    src = dict(source.named_parameters())
    if tgt.keys() != src.keys():
        raise ValueError(
            f"polyak_update: target and source parameters differ: only in target "
            f"{sorted(tgt.keys() - src.keys())}, only in source {sorted(src.keys() - tgt.keys())}."
        )
    for name, p_tgt in tgt.items():
        p_src = src[name]
        if p_tgt.shape != p_src.shape:
            raise ValueError(
                f"polyak_update: parameter {name!r} has shape {tuple(p_tgt.shape)} in the target "
                f"but {tuple(p_src.shape)} in the source."
            )
        p_tgt.mul_(1.0 - beta).add_(p_src.detach(), alpha=beta)
