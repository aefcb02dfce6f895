"""The actor's typed config and the tensors its ``encode`` / ``step`` pass along.

Shared by the translation actor (``rayseq.models.seq2seq.Seq2Seq``) and the captioning decoder
(``rayseq.models.nic.NIC``), so that neither imports the other's module for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


@dataclass
class Seq2SeqConfig:
    """Shape of a :class:`Seq2Seq`. Defaults are the paper's translation actor."""

    src_vocab_size: int
    """Source vocabulary size, specials included."""
    tgt_vocab_size: int
    """Target vocabulary size V, specials included."""
    emb_dim: int = 256
    """Source and target embedding size."""
    enc_hidden: int = 128
    """Encoder LSTM size per direction (the encoder output is 2 × this)."""
    dec_hidden: int = 256
    """Decoder LSTM size; must equal 2 × enc_hidden (initial state = concatenated final states)."""
    dropout: float = 0.3
    """Dropout on ``att_out`` before the output layer (0 for the critic)."""
    input_feeding: bool = False
    """Feed the previous ``att_out`` into the decoder input (Luong et al. 2015)."""
    init_range: float = 0.1
    """Every parameter is drawn from U(−init_range, init_range)."""
    attention: Literal["dot", "mlp"] = "dot"
    """``dot``: ``h_dec · enc`` (no projection); ``mlp``: ``v · tanh(W[enc; dec] + b)`` (critic)."""
    att_out_bias: bool = False
    """Bias in ``att_out = tanh(W[h_dec; ctx] + b)``. The official code has one only for its
    MLP-attention critic; the actor has none."""
    src_feature_dim: int = 0
    """Source kind. 0: token ids from a vocabulary of ``src_vocab_size``. D > 0: one float feature
    vector ``[D]`` per source (an image feature, captioning); ``src_vocab_size`` is then 0 and
    ``Seq2Seq(cfg)`` builds the NIC decoder (:class:`rayseq.models.nic.NIC`) instead."""

    def __post_init__(self) -> None:
        features = isinstance(self.src_feature_dim, int) and self.src_feature_dim > 0
        if not isinstance(self.src_feature_dim, int) or self.src_feature_dim < 0:
            raise ValueError(f"Seq2SeqConfig.src_feature_dim={self.src_feature_dim!r}: must be an int >= 0 (0 = token sources).")
        if features and self.src_vocab_size != 0:
            raise ValueError(
                f"Seq2SeqConfig: src_feature_dim={self.src_feature_dim} (feature sources) needs "
                f"src_vocab_size=0, got {self.src_vocab_size!r}."
            )
        if features and self.input_feeding:
            raise ValueError("Seq2SeqConfig: input_feeding needs attention; the NIC captioning decoder (src_feature_dim > 0) has none.")
        sizes = ("tgt_vocab_size", "emb_dim", "enc_hidden", "dec_hidden") if features else (
            "src_vocab_size", "tgt_vocab_size", "emb_dim", "enc_hidden", "dec_hidden")
        for name in sizes:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                hint = " (0 only for feature sources: set src_feature_dim)" if name == "src_vocab_size" else ""
                raise ValueError(f"Seq2SeqConfig.{name}={value!r}: must be a positive int{hint}.")
        if self.dec_hidden != 2 * self.enc_hidden:
            raise ValueError(
                f"Seq2SeqConfig: dec_hidden={self.dec_hidden} must equal 2 * enc_hidden "
                f"(= {2 * self.enc_hidden}), because the decoder starts from the concatenated "
                f"final forward/backward encoder states. Change one of the two."
            )
        if self.attention not in ("dot", "mlp"):
            raise ValueError(
                f"Seq2SeqConfig.attention={self.attention!r}: use 'dot' (actor) or 'mlp' (critic)."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Seq2SeqConfig.dropout={self.dropout}: must be in [0, 1).")
        if self.init_range <= 0:
            raise ValueError(f"Seq2SeqConfig.init_range={self.init_range}: must be > 0.")


@dataclass
class EncoderOut:
    """The encoded source batch, computed once and reused at every decoder step."""

    memory: torch.Tensor
    """Encoder outputs ``[B, S, 2H]`` (zeros at padding)."""
    mask: torch.Tensor
    """``[B, S]`` bool, True at real source tokens, False at padding."""
    h0: torch.Tensor
    """Initial decoder hidden state ``[B, Hd]`` (final fwd ‖ bwd encoder hidden)."""
    c0: torch.Tensor
    """Initial decoder cell state ``[B, Hd]``."""
    keys: torch.Tensor | None = None
    """MLP attention only: ``W_enc · memory + b`` precomputed, ``[B, S, A]``; None for dot."""

    @property
    def batch_size(self) -> int:
        return self.memory.size(0)

    def index_select(self, idx: torch.Tensor) -> EncoderOut:
        """Rows ``idx`` ``[N]`` of the batch (repeat, reorder or drop sources)."""
        return EncoderOut(
            memory=self.memory.index_select(0, idx),
            mask=self.mask.index_select(0, idx),
            h0=self.h0.index_select(0, idx),
            c0=self.c0.index_select(0, idx),
            keys=None if self.keys is None else self.keys.index_select(0, idx),
        )

    def to(self, *args, **kwargs) -> EncoderOut:
        """``Tensor.to`` on every float tensor; the bool mask only follows the device."""
        memory = self.memory.to(*args, **kwargs)
        return EncoderOut(
            memory=memory,
            mask=self.mask.to(memory.device),
            h0=self.h0.to(*args, **kwargs),
            c0=self.c0.to(*args, **kwargs),
            keys=None if self.keys is None else self.keys.to(*args, **kwargs),
        )


@dataclass
class DecState:
    """Decoder state after reading a prefix: LSTM (h, c) and the last ``att_out``."""

    h: torch.Tensor
    """LSTM hidden state ``[N, Hd]``."""
    c: torch.Tensor
    """LSTM cell state ``[N, Hd]``."""
    att_out: torch.Tensor
    """Last attentional output ``[N, Hd]`` after dropout (zeros before the first step); fed back
    into the input when input feeding is on."""

    def index_select(self, idx: torch.Tensor) -> DecState:
        """Rows ``idx`` ``[N']`` (beam reordering, dropping finished rows)."""
        return DecState(
            h=self.h.index_select(0, idx),
            c=self.c.index_select(0, idx),
            att_out=self.att_out.index_select(0, idx),
        )

    def to(self, *args, **kwargs) -> DecState:
        """``Tensor.to`` on every tensor."""
        return DecState(
            h=self.h.to(*args, **kwargs),
            c=self.c.to(*args, **kwargs),
            att_out=self.att_out.to(*args, **kwargs),
        )
