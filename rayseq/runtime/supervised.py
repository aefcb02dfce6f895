"""MLE and RAML as RLlib Algorithms: no env runners, dataset batches fed to the learner group.

One ``train()`` call is one epoch over the training split (length-bucketed, shuffled per epoch
with the run's seed). The driver (``rayseq.train``) validates between epochs and sets the lr.
"""
from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.checkpoints import Checkpointable
from ray.rllib.utils.metrics import LEARNER_RESULTS
from tqdm import tqdm

from rayseq.algorithms.raml import RAMLConfig
from rayseq.algorithms.supervised_rows import mle_rows, raml_rows
from rayseq.data.batching import bucket_batches
from rayseq.metrics import LOSS_ACTOR, TOKENS_PER_S, TOKENS_TOTAL
from rayseq.runtime.actor_module import ActorRLModule
from rayseq.runtime.learner import SupervisedSeqLearner

OBJECTIVES = ("mle", "raml")


class SupervisedSeqConfig(AlgorithmConfig):
    """RLlib config of MLE/RAML; ``rayseq`` holds the project's run settings (JSON-safe)."""

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or SupervisedSeqAlgorithm)
        self.lr = 0.6
        self.grad_clip = 5.0
        self.grad_clip_by = "global_norm"
        self.objective = "mle"
        """"mle" or "raml"."""
        self.objective_config: dict[str, Any] = {}
        """The algorithm dataclass (RAMLConfig, …) as a dict."""
        self.task = "multi30k"
        self.data_dir: str | None = None
        self.batch_size = 50
        self.seed = 0
        self.log_every = 100
        """Record the training loss every this many updates."""
        self.show_progress = True
        """A tqdm bar (else a log line every ``log_every`` updates)."""
        # No env runners: the data come from the corpus, not from sampling.
        self._is_online = False

    def get_default_learner_class(self):
        return SupervisedSeqLearner

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=ActorRLModule)

    @staticmethod
    def module_extras(algo_config: Any) -> dict[str, Any]:
        """``model_config`` entries the module needs beyond the actor's shape (none here)."""
        return {}

    def validate(self) -> None:
        super().validate()
        if self.objective not in OBJECTIVES:
            self._value_error(f"objective={self.objective!r}; use one of {OBJECTIVES}")


class SupervisedSeqAlgorithm(Algorithm):
    """Feeds batches of the training split to the learner group, one epoch per iteration."""

    @classmethod
    def get_default_config(cls) -> SupervisedSeqConfig:
        return SupervisedSeqConfig()

    def setup(self, config: AlgorithmConfig) -> None:
        super().setup(config)
        from rayseq.data.tasks import load_task

        task = load_task(self.config.task, self.config.data_dir)
        self._train = task.split("train")
        self._vocab_size = len(task.tgt_vocab)
        self._epoch = 0
        self._batch_pos = 0
        """Batches of the current epoch already trained on (an iteration can end mid-epoch)."""
        self._epoch_batches = 1
        """Batches in the current epoch (set by each ``training_step``)."""
        self.updates_per_iteration = 0
        """Updates of the next ``train()``: at most this many, never past the epoch's end (0: the
        rest of the epoch). The driver sets it to validate more often than once an epoch."""
        self.num_updates = 0
        self.tokens_total = 0
        """Target tokens trained on over the run (the compare plot's x axis)."""
        self._train_log: list[dict[str, Any]] = []
        self._raml = RAMLConfig(**self.config.objective_config) if self.config.objective == "raml" else None

    def training_step(self) -> None:
        cfg = self.config
        lengths = [len(y) for y in self._train.tgt]
        batches = bucket_batches(lengths, cfg.batch_size, seed=cfg.seed, epoch=self._epoch)
        # RAML's samples: one stream per epoch, or per (epoch, first batch) when the epoch is split
        rng = np.random.default_rng((cfg.seed, self._epoch, 1) if self._batch_pos == 0 else (cfg.seed, self._epoch, 1, self._batch_pos))
        start, self._epoch_batches = self._batch_pos, len(batches)
        stop = len(batches) if self.updates_per_iteration <= 0 else min(len(batches), start + self.updates_per_iteration)
        tok_s = self._updates(batches[start:stop], lambda src, tgt: self._make_rows(src, tgt, rng),
                              self._epoch + start / len(batches), f"epoch {self._epoch + 1}", epoch_batches=len(batches))
        self.metrics.log_value(TOKENS_PER_S, tok_s, window=1)
        self.metrics.log_value("epoch", self._epoch + stop / len(batches), window=1)
        self._batch_pos = stop
        if stop == len(batches):
            self._epoch, self._batch_pos = self._epoch + 1, 0

    @property
    def epochs_done(self) -> float:
        """Epochs trained so far, the current one's fraction included."""
        return self._epoch + (self._batch_pos / self._epoch_batches if self._batch_pos else 0.0)

    def _make_rows(self, src: list, tgt: list, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The learner rows of one batch of pairs (MLE: the pairs; RAML: K weighted samples each)."""
        return mle_rows(src, tgt) if self._raml is None else raml_rows(src, tgt, self._raml, self._vocab_size, rng)

    def _updates(self, batches: list, make_rows, epoch: float, desc: str, loss_key: str = LOSS_ACTOR,
                 epoch_batches: int | None = None) -> float:
        """One learner update per batch of pair indices; logs ``loss_key`` every ``log_every``
        updates (epoch = ``epoch`` + the batches done ÷ ``epoch_batches``, default ``len(batches)``).
        Returns target tokens/s."""
        cfg = self.config
        tokens = 0
        window: list[float] = []
        t0 = time.perf_counter()
        bar = tqdm(batches, desc=desc, unit="batch", disable=not cfg.show_progress, leave=False)
        for i, idx in enumerate(bar):
            rows = make_rows([self._train.src[j] for j in idx], [self._train.tgt[j] for j in idx])
            batch = MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(rows)}, env_steps=len(idx))
            results = self.learner_group.update(batch=batch, timesteps={})
            self.metrics.aggregate(results, key=LEARNER_RESULTS)
            window.append(np.mean([r[DEFAULT_MODULE_ID][loss_key].peek() for r in results]))
            n_tok = int((rows["tgt_out" if "tgt_out" in rows else "actions"] != 0).sum())
            tokens += n_tok
            self.tokens_total += n_tok
            self.num_updates += 1
            if self.num_updates % cfg.log_every == 0:
                loss, window = float(np.mean(window)), []  # mean over the last log_every updates
                tok_s = tokens / (time.perf_counter() - t0)
                at = epoch + (i + 1) / (epoch_batches or len(batches))
                self._train_log.append({"step": self.num_updates, "epoch": at, loss_key: loss, TOKENS_PER_S: tok_s,
                                        TOKENS_TOTAL: float(self.tokens_total)})
                if not cfg.show_progress:
                    print(f"{desc} step {self.num_updates}: {loss_key} {loss:.3f}, {tok_s:.0f} tokens/s", file=sys.stderr, flush=True)
            bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
        return tokens / max(time.perf_counter() - t0, 1e-9)

    # -- driver-side helpers ------------------------------------------------------------------
    def pop_train_log(self) -> list[dict[str, Any]]:
        """Training-loss records since the last call (``step``, ``epoch``, loss, tokens/s)."""
        out, self._train_log = self._train_log, []
        return out

    def actor_state_dict(self) -> dict[str, Any]:
        """The actor's torch state dict (keys of ``Seq2Seq``), from the (first) learner."""
        from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE

        state = self.learner_group.get_state(components=f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}")
        module_state = state[COMPONENT_LEARNER][COMPONENT_RL_MODULE][DEFAULT_MODULE_ID]
        return {k.removeprefix("actor."): v for k, v in module_state.items() if k.startswith("actor.")}

    def set_lr(self, lr: float) -> None:
        self.learner_group.foreach_learner(lambda learner: learner.set_lr(lr))

    def load_actor(self, state_dict: dict[str, Any]) -> None:
        """Load actor weights on every learner (a run continued from another actor)."""
        self.learner_group.foreach_learner(lambda learner: learner.load_actor(state_dict))

    def restore_from_path(self, path, *args, **kwargs) -> None:
        # Algorithm.restore_from_path also syncs env runners, which this algorithm does not have.
        Checkpointable.restore_from_path(self, path, *args, **kwargs)

    def get_state(self, *args, **kwargs) -> dict[str, Any]:
        state = super().get_state(*args, **kwargs)
        state["rayseq_epoch"] = self._epoch
        state["rayseq_batch_pos"] = self._batch_pos
        state["rayseq_num_updates"] = self.num_updates
        state["rayseq_tokens_total"] = self.tokens_total
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self._epoch = int(state.get("rayseq_epoch", self._epoch))
        self._batch_pos = int(state.get("rayseq_batch_pos", 0))
        self.num_updates = int(state.get("rayseq_num_updates", self.num_updates))
        self.tokens_total = int(state.get("rayseq_tokens_total", self.tokens_total))
