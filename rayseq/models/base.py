"""The incremental-decoder protocol shared by every rayseq sequence model.

Decoding (``rayseq.decoding``: greedy, sampling, beam search) and RL rollout workers talk to a
model only through :class:`IncrementalDecoder`: encode the input once, then advance one token at
a time from a cached state. Nothing else about the model is assumed, so an attention-free
image-captioning decoder (NIC: the image feature initialises the LSTM) plugs into the same
decoding code as the attentional translation model (:class:`rayseq.models.seq2seq.Seq2Seq`).

Special token ids are shared by source and target vocabularies.
"""

from __future__ import annotations

from typing import Protocol, Self, TypeVar, runtime_checkable

import torch

PAD = 0
"""``<pad>``: padding id in both vocabularies."""
UNK = 1
"""``<unk>``: out-of-vocabulary id."""
BOS = 2
"""``<bos>``: first decoder input; never a target, never produced."""
EOS = 3
"""``<eos>``: ends a target sequence."""


@runtime_checkable
class Batched(Protocol):
    """A bundle of tensors whose first dimension is the batch (encoder output, decoder state)."""

    def index_select(self, idx: torch.Tensor) -> Self:
        """Rows ``idx`` (a long tensor ``[N]``) of every batched tensor, in that order.

        Used to reorder beams, to repeat a source for several hypotheses and to drop finished
        rows from a batch. Returns a new object; the original is left unchanged.
        """
        ...


EncT = TypeVar("EncT", bound=Batched)
StateT = TypeVar("StateT", bound=Batched)


@runtime_checkable
class IncrementalDecoder(Protocol[EncT, StateT]):
    """Encode once, then decode token by token from a cached state.

    Contract (what ``rayseq.decoding`` and rollout workers rely on, and nothing more):

    - ``encode(src, src_len)`` runs the encoder once. ``src`` is whatever the model reads (token
      ids ``[B, S]`` for translation, image features ``[B, D]`` for captioning); ``src_len`` is
      ``[B]`` lengths or ``None`` when the input has none. The batch size is ``src.size(0)``.
    - ``expand_encoder(enc, k)`` repeats each source ``k`` times, consecutively:
      row ``b * k + j`` is source ``b``.
    - ``init_state(enc)`` is the decoder state before the first token (``<bos>``) is read.
    - ``step(enc, state, tokens)`` reads ``tokens`` ``[N]`` (``<bos>`` at the first step) and
      returns the raw next-token logits ``[N, V]`` and the new state; ``state`` is not modified.
      Logits are never masked by the model; decoding masks ``<pad>``/``<bos>`` itself.
    - ``enc`` and ``state`` support ``index_select`` (see :class:`Batched`), so beams can be
      reordered and finished rows dropped without re-encoding.

    Teacher-forced scoring (``forward``) must equal running ``step`` over the target prefix.
    """

    def encode(self, src: torch.Tensor, src_len: torch.Tensor | None) -> EncT: ...

    def expand_encoder(self, enc: EncT, k: int) -> EncT: ...

    def init_state(self, enc: EncT) -> StateT: ...

    def step(
        self, enc: EncT, state: StateT, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, StateT]: ...
