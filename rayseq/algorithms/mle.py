"""Maximum likelihood (MLE) baseline: config, token NLL loss and the official plateau schedule.

The official MLE run (``zihangdai/ERAC-VAML`` ``mt/erac/train_actor.py``): SGD lr 0.6, batch 50,
up to 30 epochs, grad-norm clip 5; after every epoch validate with beam 5; if validation BLEU did
not improve, lr × 0.5; training ends at the first non-improvement once 6 decays have been made.
The loss is the token NLL summed over time and averaged over the batch.

Plain torch; no ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

PAD = 0


@dataclass
class SupervisedConfig:
    """What MLE, RAML and VAML's step 2 share: the SGD optimiser, the official validation-driven lr
    schedule, decoding for validation, the seed, and where the actor starts and how long it trains.

    With ``actor_init`` the run fine-tunes a trained actor: "MLE continued" (the baseline that gets an
    RL stage's extra updates) and RAML / VAML started from the same MLE actor as the RL runs.
    """

    lr: float = 0.6
    """SGD learning rate of the actor (initial; decayed by ``PlateauSchedule``)."""
    batch_size: int = 50
    """Sources per update (B)."""
    max_epochs: int = 30
    """Upper limit on training epochs."""
    lr_decay: float = 0.5
    """Factor applied to lr after a validation without improvement."""
    max_decays: int = 6
    """Number of lr decays allowed; the next non-improvement ends training."""
    grad_clip: float = 5.0
    """Max global L2 norm of the actor's gradient."""
    beam_size: int = 5
    """Beam size for validation / test decoding (no length normalisation)."""
    max_decode_len: int = 100
    """Max hypothesis length when decoding for evaluation."""
    seed: int = 1234
    """Random seed (the official default): batch order, samples, corruptions, the mix."""
    actor_init: str | None = None
    """Start from this actor (a run directory's best actor, or an actor file) instead of random
    weights. Its validation BLEU counts as epoch 0, so the best actor is never worse than the start."""
    continue_lr: bool = True
    """With ``actor_init`` from an MLE run: start at the lr where that run's schedule stopped
    (training goes on where it left off); False: start at ``lr``."""
    budget_epochs: float = 0.0
    """Stop after this many epochs' worth of updates, a fraction allowed (0: no cap but ``epochs``):
    e.g. "MLE continued" for exactly the RL stage's updates (its ``algo.joint_epochs``)."""
    valid_every_updates: int = 0
    """Validate (keep the best actor, step the lr schedule) every this many updates; 0: after each
    epoch. "MLE continued" uses the RL stage's ``algo.valid_every``."""

    def __post_init__(self) -> None:
        self.check_supervised()

    def check_supervised(self) -> None:
        """Raise ``ValueError`` naming the class and field of the first shared setting out of range."""
        name = type(self).__name__
        if self.lr <= 0:
            raise ValueError(f"{name}.lr must be > 0; got {self.lr}")
        if not 0.0 < self.lr_decay < 1.0:
            raise ValueError(f"{name}.lr_decay must be in (0, 1); got {self.lr_decay}")
        if self.max_decays < 0:
            raise ValueError(f"{name}.max_decays must be >= 0; got {self.max_decays}")
        for field_name in ("batch_size", "max_epochs", "beam_size", "max_decode_len"):
            if getattr(self, field_name) < 1:
                raise ValueError(f"{name}.{field_name} must be >= 1; got {getattr(self, field_name)}")
        if self.budget_epochs < 0 or self.valid_every_updates < 0:
            raise ValueError(f"{name}.budget_epochs and valid_every_updates must be >= 0 (0: off); got "
                             f"{self.budget_epochs} and {self.valid_every_updates}")


@dataclass
class MLEConfig(SupervisedConfig):
    """Hyper-parameters of MLE training (official defaults; all in :class:`SupervisedConfig`)."""


class SeqLoss(NamedTuple):
    """A sequence loss and the number of (non-pad) target tokens it covers."""

    loss: torch.Tensor  # [] scalar to minimise
    num_tokens: torch.Tensor  # [] int64, non-pad target tokens in the batch (for ppl / throughput)


def sequence_nll(logits: torch.Tensor, targets: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """Per-sequence negative log-likelihood −Σ_t log π(y_t | y_<t, x), pad positions masked.

    logits: [N, T, V] unnormalised scores for each target position; targets: [N, T] ids.
    Returns [N].
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"sequence_nll expects logits [N, T, V] and targets [N, T]; got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    n, t, v = logits.shape
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # half / bf16 logits: take the softmax in fp32
    nll = F.cross_entropy(
        logits.reshape(n * t, v), targets.reshape(n * t), ignore_index=pad, reduction="none"
    )  # [N*T], 0 at pad
    return nll.view(n, t).sum(dim=1)  # [N]


def mle_loss(logits: torch.Tensor, targets: torch.Tensor, pad: int = PAD) -> SeqLoss:
    """MLE objective: token NLL summed over time, averaged over the batch (official loss).

    L = (1/B) Σ_b Σ_t −log π(y*_t | y*_<t, x_b).
    logits: [B, T, V]; targets: [B, T] (reference followed by eos, pad = ``pad``).
    """
    nll = sequence_nll(logits, targets, pad)  # [B]
    num_tokens = targets.ne(pad).sum()  # []
    return SeqLoss(loss=nll.mean(), num_tokens=num_tokens)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class PlateauSchedule:
    """The official validation-driven lr schedule (``train_actor.py``), pure python.

    After each validation call ``step(metric)``. A metric ≥ the best so far (ties count, as in the
    official ``curr_bleu >= best_bleu``) is an improvement: the caller should save the best
    checkpoint. Otherwise, if fewer than ``max_decays`` decays were made, lr ← lr × decay;
    if ``max_decays`` decays were already made, ``should_stop`` becomes True (the official
    "learning rate being too small" exit, i.e. lr would drop below lr0 · decay^max_decays).
    """

    lr: float
    """Current learning rate (starts at the initial lr)."""
    decay: float = 0.5
    """Multiplicative lr decay on a validation without improvement."""
    max_decays: int = 6
    """Decays allowed before the next non-improvement stops training."""
    higher_is_better: bool = True
    """True for BLEU; False for perplexity (the official ``--ppl_anneal``)."""
    best: float | None = None
    """Best validation metric seen so far (None before the first validation)."""
    num_decays: int = 0
    """Decays made so far."""
    stopped: bool = False
    """Set once training should end."""
    history: list[float] = field(default_factory=list)
    """Every validation metric passed to ``step``."""

    def step(self, metric: float) -> bool:
        """Record one validation result; return True when it is an improvement (save a checkpoint)."""
        if self.stopped:
            raise RuntimeError("PlateauSchedule.step called after should_stop became True")
        metric = float(metric)
        if math.isnan(metric):
            raise ValueError("PlateauSchedule.step got a NaN validation metric")
        self.history.append(metric)
        if self.best is None or (
            metric >= self.best if self.higher_is_better else metric <= self.best
        ):
            self.best = metric
            return True
        if self.num_decays >= self.max_decays:
            self.stopped = True
        else:
            self.lr *= self.decay
            self.num_decays += 1
        return False

    @property
    def should_stop(self) -> bool:
        """True once a non-improvement came after ``max_decays`` decays."""
        return self.stopped

    def state_dict(self) -> dict[str, Any]:
        """Plain-python state for checkpoints."""
        return {
            "lr": self.lr,
            "decay": self.decay,
            "max_decays": self.max_decays,
            "higher_is_better": self.higher_is_better,
            "best": self.best,
            "num_decays": self.num_decays,
            "stopped": self.stopped,
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()``."""
        missing = set(self.state_dict()) - set(state)
        if missing:
            raise KeyError(f"PlateauSchedule state is missing keys {sorted(missing)}")
        self.lr = float(state["lr"])
        self.decay = float(state["decay"])
        self.max_decays = int(state["max_decays"])
        self.higher_is_better = bool(state["higher_is_better"])
        self.best = None if state["best"] is None else float(state["best"])
        self.num_decays = int(state["num_decays"])
        self.stopped = bool(state["stopped"])
        self.history = [float(x) for x in state["history"]]

    @classmethod
    def from_config(cls, cfg: MLEConfig) -> "PlateauSchedule":
        """Schedule with the config's lr, decay and max_decays."""
        return cls(lr=cfg.lr, decay=cfg.lr_decay, max_decays=cfg.max_decays)
