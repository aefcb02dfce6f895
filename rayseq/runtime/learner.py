"""A TorchLearner for the supervised-style objectives (MLE, RAML): weighted sequence NLL.

The driver turns dataset pairs into rows ``(src, src_len, tgt_in, tgt_out, weight)``. MLE rows
weigh 1; RAML's K samples of a source carry the weights softmax(BLEU/τ) of Eq. (1), summing to 1
per source. The loss Σ_rows w·NLL / Σ_rows w is then MLE's mean over sequences and RAML's
Eq. (2) averaged over sources, and stays the same when RLlib splits a batch across learners.
"""
from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.utils.annotations import override

from rayseq.algorithms.mle import sequence_nll
from rayseq.metrics import LOSS_ACTOR
from rayseq.runtime.actor_module import LOGITS

WEIGHT = "weight"


class SupervisedSeqLearner(TorchLearner):
    """Weighted sequence NLL with SGD (the official MLE/RAML optimiser); lr set by the driver."""

    @override(TorchLearner)
    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        params = self.get_parameters(self._module[module_id])
        # No lr schedule: the driver's PlateauSchedule sets the lr through ``set_lr``.
        self.register_optimizer(
            module_id=module_id,
            optimizer=torch.optim.SGD(params, lr=config.lr),
            params=params,
            lr_or_lr_schedule=None,
        )

    @override(TorchLearner)
    def compute_loss_for_module(self, *, module_id, config, batch: dict[str, Any], fwd_out) -> torch.Tensor:
        nll = sequence_nll(fwd_out[LOGITS], batch["tgt_out"])  # [N]
        w = batch[WEIGHT].to(nll.dtype)  # [N]
        loss = (w * nll).sum() / w.sum()
        self.metrics.log_value((module_id, LOSS_ACTOR), loss.item(), window=1)
        self.metrics.log_value((module_id, "num_target_tokens"), int(batch["tgt_out"].ne(0).sum()), reduce="sum")
        return loss

    def load_actor(self, state_dict: dict[str, Any]) -> None:
        """Load actor weights (``Seq2Seq`` keys): a run that continues from another actor."""
        for module_id in self.module.keys():  # noqa: SIM118 (MultiRLModule iterates otherwise)
            module = self.module[module_id]
            module = module.unwrapped() if hasattr(module, "unwrapped") else module
            module.actor.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()})

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every optimizer (called on each learner by the driver)."""
        for optim in self._named_optimizers.values():
            for group in optim.param_groups:
                group["lr"] = lr
