"""Attentional encoder-decoder of the paper (Dai et al. 2018, §6.1; IMPLEMENTATION_NOTES "Actor").

BiLSTM encoder → LSTM decoder initialised with the concatenated final encoder states → attention
over the encoder outputs (source padding masked) → ``att_out = tanh(W[h_dec; ctx])`` → dropout →
``Linear(dec_hidden → V)``. With ``input_feeding`` the previous (post-dropout) ``att_out`` is
concatenated to the next input embedding (Luong et al. 2015), zeros at the first step.

The same class is the critic / Q-net (its encoder reads the reference y*, its output layer gives
Q(prefix, w) for every w) with ``attention="mlp"`` and ``dropout=0``.

Implements :class:`rayseq.models.base.IncrementalDecoder`: ``encode`` once, then ``step``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rayseq.models.seq2seq_types import DecState, EncoderOut, Seq2SeqConfig


class Attention(nn.Module):
    """Source attention: scores, padding mask, softmax over source positions, context."""

    def __init__(self, kind: Literal["dot", "mlp"], mem_dim: int, query_dim: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "dot":
            if mem_dim != query_dim:
                raise ValueError(
                    f"dot attention needs memory size ({mem_dim}) == query size ({query_dim})."
                )
        else:
            # v · tanh(W[enc; dec] + b), with W split so W_enc · enc + b is computed once per source.
            self.w_mem = nn.Linear(mem_dim, query_dim, bias=True)
            self.w_query = nn.Linear(query_dim, query_dim, bias=False)
            self.v = nn.Linear(query_dim, 1, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor | None:
        """Query-independent part of the scores: ``W_enc · memory + b`` ``[B, S, A]`` (mlp), else None."""
        return self.w_mem(memory) if self.kind == "mlp" else None

    def forward(
        self,
        query: torch.Tensor,  # [B, T, Hd]
        memory: torch.Tensor,  # [B, S, M]
        keys: torch.Tensor | None,  # [B, S, A] or None
        mask: torch.Tensor,  # [B, S] bool, True = real token
    ) -> torch.Tensor:
        """Context vectors ``[B, T, M]``: attention-weighted sums of ``memory`` per query."""
        if self.kind == "dot":
            scores = torch.bmm(query, memory.transpose(1, 2))  # [B, T, S]
        else:
            hidden = torch.tanh(keys.unsqueeze(1) + self.w_query(query).unsqueeze(2))  # [B, T, S, A]
            scores = self.v(hidden).squeeze(-1)  # [B, T, S]
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = F.softmax(scores, dim=-1)  # [B, T, S]
        return torch.bmm(weights, memory)  # [B, T, M]


class Seq2Seq(nn.Module):
    """BiLSTM encoder, attentional LSTM decoder; see the module docstring.

    Token ids: ``<pad>=0 <unk>=1 <bos>=2 <eos>=3`` (``rayseq.models.base``). Sources carry no
    ``<bos>``/``<eos>``; the decoder reads ``<bos>`` first. Logits are raw: masking of tokens
    that must never be produced is the decoder's job (``rayseq.decoding.mask_logits``).
    """

    def __new__(cls, cfg: Seq2SeqConfig | None = None, *args: object, **kwargs: object) -> nn.Module:
        """``Seq2Seq(cfg)`` is the actor ``cfg`` describes: :class:`rayseq.models.nic.NIC` for
        feature sources (``cfg.src_feature_dim > 0``), so every consumer builds it the same way."""
        if cls is Seq2Seq and cfg is not None and cfg.src_feature_dim > 0:
            from rayseq.models.nic import NIC

            return NIC(cfg)
        return super().__new__(cls)

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mem_dim = 2 * cfg.enc_hidden
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.emb_dim)
        self.encoder = nn.LSTM(cfg.emb_dim, cfg.enc_hidden, batch_first=True, bidirectional=True)
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab_size, cfg.emb_dim)
        dec_in = cfg.emb_dim + (cfg.dec_hidden if cfg.input_feeding else 0)
        self.decoder = nn.LSTM(dec_in, cfg.dec_hidden, batch_first=True)
        self.attention = Attention(cfg.attention, mem_dim, cfg.dec_hidden)
        self.att_proj = nn.Linear(cfg.dec_hidden + mem_dim, cfg.dec_hidden, bias=cfg.att_out_bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.dec_hidden, cfg.tgt_vocab_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every parameter ~ U(−init_range, init_range), as in the official code."""
        for p in self.parameters():
            nn.init.uniform_(p, -self.cfg.init_range, self.cfg.init_range)

    # ----------------------------------------------------------------- encoder

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> EncoderOut:
        """Encode ``src`` ``[B, S]`` (long, right-padded) with lengths ``src_len`` ``[B]`` (all ≥ 1).

        Returns an :class:`EncoderOut`; positions ``≥ src_len`` never influence any output.
        """
        if src.dim() != 2 or src_len is None or src_len.shape != (src.size(0),):
            raise ValueError(
                f"encode: expected src [B, S] and src_len [B], got src {tuple(src.shape)} and "
                f"src_len {None if src_len is None else tuple(src_len.shape)}."
            )
        lengths = src_len.to("cpu", torch.long)
        if int(lengths.min()) < 1 or int(lengths.max()) > src.size(1):
            raise ValueError(
                f"encode: source lengths must be in [1, {src.size(1)}] (the padded width), got "
                f"min {int(lengths.min())}, max {int(lengths.max())}. Drop empty sources."
            )
        emb = self.src_embed(src)  # [B, S, E]
        packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
        out, (h_n, c_n) = self.encoder(packed)  # h_n, c_n: [2, B, H]
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))  # [B, S, 2H]
        positions = torch.arange(src.size(1), device=src.device)
        mask = positions.unsqueeze(0) < src_len.to(src.device).unsqueeze(1)  # [B, S]
        return EncoderOut(
            memory=memory,
            mask=mask,
            h0=torch.cat([h_n[0], h_n[1]], dim=-1),  # [B, 2H] = [B, Hd]
            c0=torch.cat([c_n[0], c_n[1]], dim=-1),
            keys=self.attention.keys(memory),
        )

    def expand_encoder(self, enc: EncoderOut, k: int) -> EncoderOut:
        """Each source repeated ``k`` times consecutively: row ``b * k + j`` is source ``b``."""
        idx = torch.arange(enc.batch_size, device=enc.memory.device).repeat_interleave(k)
        return enc.index_select(idx)

    # ----------------------------------------------------------------- decoder

    def init_state(self, enc: EncoderOut) -> DecState:
        """State before reading ``<bos>``: encoder final states, zero ``att_out``."""
        return DecState(h=enc.h0, c=enc.c0, att_out=torch.zeros_like(enc.h0))

    def _att_out(self, enc: EncoderOut, dec_out: torch.Tensor) -> torch.Tensor:
        """``dropout(tanh(W[h_dec; ctx]))`` ``[B, T, Hd]`` for decoder outputs ``[B, T, Hd]``."""
        ctx = self.attention(dec_out, enc.memory, enc.keys, enc.mask)  # [B, T, 2H]
        return self.dropout(torch.tanh(self.att_proj(torch.cat([dec_out, ctx], dim=-1))))

    def step(
        self, enc: EncoderOut, state: DecState, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, DecState]:
        """Read ``tokens`` ``[N]``; return raw next-token logits ``[N, V]`` and the new state."""
        x = self.tgt_embed(tokens).unsqueeze(1)  # [N, 1, E]
        if self.cfg.input_feeding:
            x = torch.cat([x, state.att_out.unsqueeze(1)], dim=-1)  # [N, 1, E + Hd]
        dec_out, (h, c) = self.decoder(x, (state.h.unsqueeze(0), state.c.unsqueeze(0)))
        att = self._att_out(enc, dec_out).squeeze(1)  # [N, Hd]
        return self.out(att), DecState(h=h.squeeze(0), c=c.squeeze(0), att_out=att)

    def decode(self, enc: EncoderOut, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``[N, T, V]`` for decoder inputs ``tgt_in`` ``[N, T]``: ``out(decode_hidden)``."""
        return self.out(self.decode_hidden(enc, tgt_in))  # [N, T, V]

    def decode_hidden(self, enc: EncoderOut, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced attentional outputs ``[N, T, Hd]`` (the output layer's input) for ``tgt_in``.

        ``self.out`` of them gives the logits; taking only the rows that matter first (e.g. the
        real, non-padding steps) saves the output layer's cost on the rest.

        ``tgt_in`` starts with ``<bos>``; ``enc`` must have N rows (use ``expand_encoder`` to score
        several targets per source). Position t holds the logits after reading ``tgt_in[:, :t+1]``;
        equal to running :meth:`step` T times. Padding after ``<eos>`` only affects its own
        (to be masked) positions.
        """
        if tgt_in.dim() != 2 or tgt_in.size(0) != enc.batch_size:
            raise ValueError(
                f"decode: tgt_in must be [N, T] with N = encoder batch {enc.batch_size}, got "
                f"{tuple(tgt_in.shape)}. For k targets per source pass expand_encoder(enc, k)."
            )
        emb = self.tgt_embed(tgt_in)  # [N, T, E]
        hx = (enc.h0.unsqueeze(0), enc.c0.unsqueeze(0))
        if not self.cfg.input_feeding:
            dec_out, _ = self.decoder(emb, hx)  # [N, T, Hd], one LSTM call over T
            att = self._att_out(enc, dec_out)  # [N, T, Hd]
        else:
            att_t = torch.zeros_like(enc.h0)  # [N, Hd]
            atts = []
            for t in range(tgt_in.size(1)):
                x = torch.cat([emb[:, t], att_t], dim=-1).unsqueeze(1)  # [N, 1, E + Hd]
                dec_out, hx = self.decoder(x, hx)
                att_t = self._att_out(enc, dec_out).squeeze(1)  # [N, Hd]
                atts.append(att_t)
            att = torch.stack(atts, dim=1)  # [N, T, Hd]
        return att

    def forward(
        self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced raw logits ``[B, T, V]``.

        Args:
          src: ``[B, S]`` source ids, right-padded with ``<pad>``.
          src_len: ``[B]`` source lengths (≥ 1).
          tgt_in: ``[B, T]`` decoder inputs ``<bos> y_1 … y_{T-1}`` (padding after ``<eos>``).

        Returns:
          logits ``[B, T, V]`` where ``logits[:, t]`` scores ``y_{t+1}`` (``<eos>`` after the last
          token); no masking, no softmax.
        """
        return self.decode(self.encode(src, src_len), tgt_in)
