"""NIC, the captioning actor (Vinyals et al. 2015, "Show and Tell"; Dai et al. 2018 §6.1).

The image feature ``f`` ``[D]`` (ResNet-101 pooled, 2048-d) is projected into the word-embedding
space, ``x_{-1} = W_I f + b``, and read by the decoder LSTM as its first input from a zero state;
the resulting ``(h_0, c_0)`` is the state in which ``<bos>`` is read. Then, as NIC:
``h_t = LSTM(W_e y_{t-1}, h_{t-1})``, ``logits_t = W_o dropout(h_t) + b_o``. No attention.

It presents the translation actor's interface exactly (:class:`rayseq.models.base.IncrementalDecoder`
plus ``decode``/``decode_hidden``/``forward``/``out``/``cfg``) and reuses its batch types:
:class:`~rayseq.models.seq2seq.EncoderOut` with an empty memory (``[B, 0, 0]``, no source positions
to attend to) and :class:`~rayseq.models.seq2seq.DecState` (``att_out`` = the dropout'ed LSTM output,
the output layer's input). So decoding, beam search, rollout workers and every learner use it
unchanged; ``Seq2Seq(cfg)`` returns a NIC when ``cfg.src_feature_dim > 0``.
"""

from __future__ import annotations

import torch
from torch import nn

from rayseq.models.seq2seq_types import DecState, EncoderOut, Seq2SeqConfig


class NIC(nn.Module):
    """Image feature → LSTM initial state → word-by-word LSTM decoder; see the module docstring."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        if cfg.src_feature_dim <= 0:
            raise ValueError(f"NIC needs Seq2SeqConfig.src_feature_dim > 0 (the image feature size), got {cfg.src_feature_dim}.")
        self.cfg = cfg
        self.img_proj = nn.Linear(cfg.src_feature_dim, cfg.emb_dim)
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab_size, cfg.emb_dim)
        self.decoder = nn.LSTM(cfg.emb_dim, cfg.dec_hidden, batch_first=True)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.dec_hidden, cfg.tgt_vocab_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every parameter ~ U(−init_range, init_range), as the translation actor."""
        for p in self.parameters():
            nn.init.uniform_(p, -self.cfg.init_range, self.cfg.init_range)

    # ----------------------------------------------------------------- encoder

    def encode(self, src: torch.Tensor, src_len: torch.Tensor | None = None) -> EncoderOut:
        """Read image features ``src`` ``[B, D]`` (``src_len`` is ignored: a feature has no length).

        Returns an :class:`EncoderOut` whose ``h0``/``c0`` are the LSTM state after reading
        ``W_I f + b`` and whose memory is empty.
        """
        d = self.cfg.src_feature_dim
        if src.dim() != 2 or src.size(1) != d or not src.is_floating_point():
            raise ValueError(
                f"NIC.encode: expected float image features [B, {d}] (model src_feature_dim={d}), got "
                f"{src.dtype} {tuple(src.shape)}. Check that the task's feature store holds {d}-d features."
            )
        x = self.img_proj(src.to(self.img_proj.weight.dtype)).unsqueeze(1)  # [B, 1, E]
        _, (h, c) = self.decoder(x)  # zero initial state; h, c: [1, B, Hd]
        b = src.size(0)
        return EncoderOut(
            memory=h.new_zeros(b, 0, 0),
            mask=torch.zeros(b, 0, dtype=torch.bool, device=src.device),
            h0=h.squeeze(0),
            c0=c.squeeze(0),
        )

    def expand_encoder(self, enc: EncoderOut, k: int) -> EncoderOut:
        """Each image repeated ``k`` times consecutively: row ``b * k + j`` is image ``b``."""
        idx = torch.arange(enc.batch_size, device=enc.h0.device).repeat_interleave(k)
        return enc.index_select(idx)

    # ----------------------------------------------------------------- decoder

    def init_state(self, enc: EncoderOut) -> DecState:
        """State before reading ``<bos>``: the image-initialised LSTM state."""
        return DecState(h=enc.h0, c=enc.c0, att_out=torch.zeros_like(enc.h0))

    def step(self, enc: EncoderOut, state: DecState, tokens: torch.Tensor) -> tuple[torch.Tensor, DecState]:
        """Read ``tokens`` ``[N]``; return raw next-token logits ``[N, V]`` and the new state."""
        x = self.tgt_embed(tokens).unsqueeze(1)  # [N, 1, E]
        out, (h, c) = self.decoder(x, (state.h.unsqueeze(0), state.c.unsqueeze(0)))
        hid = self.dropout(out.squeeze(1))  # [N, Hd]
        return self.out(hid), DecState(h=h.squeeze(0), c=c.squeeze(0), att_out=hid)

    def decode_hidden(self, enc: EncoderOut, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced output-layer inputs ``[N, T, Hd]`` for ``tgt_in`` ``[N, T]`` (starts with ``<bos>``).

        Equal to running :meth:`step` T times; ``self.out`` of them gives the logits.
        """
        if tgt_in.dim() != 2 or tgt_in.size(0) != enc.batch_size:
            raise ValueError(
                f"decode: tgt_in must be [N, T] with N = encoder batch {enc.batch_size}, got "
                f"{tuple(tgt_in.shape)}. For k targets per image pass expand_encoder(enc, k)."
            )
        out, _ = self.decoder(self.tgt_embed(tgt_in), (enc.h0.unsqueeze(0), enc.c0.unsqueeze(0)))
        return self.dropout(out)  # [N, T, Hd]

    def decode(self, enc: EncoderOut, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``[N, T, V]``."""
        return self.out(self.decode_hidden(enc, tgt_in))

    def forward(self, src: torch.Tensor, src_len: torch.Tensor | None, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced raw logits ``[B, T, V]`` of captions ``tgt_in`` (``<bos> y_1 … y_{T-1}``) of images ``src`` ``[B, D]``."""
        return self.decode(self.encode(src, src_len), tgt_in)
