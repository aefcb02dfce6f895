"""The actor as an RLlib RLModule: one class every algorithm uses as its policy.

``model_config`` holds the ``Seq2SeqConfig`` fields (vocabulary sizes included). Training batches
carry ``src`` [B, S], ``src_len`` [B] and the teacher-forced decoder input ``tgt_in`` [B, T];
``forward_train`` returns the logits [B, T, V]. On the environment's observations (inference /
exploration) it returns the next-token logits with ``<pad>``/``<bos>`` masked: a policy never reads
the observation's privileged ``ref``.
"""
from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.torch import TorchRLModule

from rayseq.decoding import BANNED_TOKENS, mask_logits
from rayseq.models.base import BOS
from rayseq.models.seq2seq import Seq2Seq, Seq2SeqConfig

LOGITS = "logits"


class ActorRLModule(TorchRLModule):
    """Wraps ``rayseq.models.seq2seq.Seq2Seq`` (the paper's actor)."""

    def setup(self) -> None:
        self.actor = Seq2Seq(Seq2SeqConfig(**self.model_config))

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        logits = self.actor(batch["src"], batch["src_len"], batch["tgt_in"])  # [B, T, V]
        return {LOGITS: logits}

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        """Next-token logits for environment observations.

        Stateless: it re-runs the decoder over the whole prefix, O(T^2) per episode. Fine for
        evaluation and RLlib's default runners; rollout workers for RL training must carry the
        decoder state token to token instead (``Seq2Seq.step``).
        """
        obs = batch[Columns.OBS]
        prefix, prefix_len = obs["prefix"].long(), obs["prefix_len"].long()  # [B, T], [B]
        b = prefix.shape[0]
        width = int(prefix_len.max().item()) + 1 if b else 1
        tgt_in = torch.full((b, width), BOS, dtype=torch.long, device=prefix.device)
        tgt_in[:, 1:] = prefix[:, : width - 1]
        src = obs["src"] if obs["src"].is_floating_point() else obs["src"].long()  # features stay float
        logits = self.actor(src, obs["src_len"].long(), tgt_in)  # [B, width, V]
        last = logits[torch.arange(b, device=prefix.device), prefix_len]  # [B, V]
        return {Columns.ACTION_DIST_INPUTS: mask_logits(last, BANNED_TOKENS)}
