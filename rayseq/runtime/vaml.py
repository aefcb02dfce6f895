"""VAML (Dai et al. 2018, §4.1) on RLlib: the Q-net and the actor in one RLModule, two stages.

* :class:`VAMLRLModule` — the actor (the ``Seq2Seq`` every algorithm uses) and the Q-net (a
  :class:`~rayseq.models.critic.Critic`: its encoder reads y*), plus a Polyak target Q-net when
  ``qnet_target_beta`` is set.
* :class:`VAMLLearner` — stage ``"qnet"``: soft Q-learning, Eq. (16) with V of Eq. (10), on the
  corrupted references (Adam); stage ``"actor"``: Eq. (17) with the frozen Q-net's P_Qφ on RAML's
  weighted samples, mixed per token with the sampled token's NLL (SGD, RAML's optimiser). Each
  network is clipped to its own gradient norm; only the output layer's real steps are computed
  (packed ``[K, V]`` rows, as the actor-critic learner does). The mix m_t arrives with the batch
  (``vaml_actor_rows`` draws it), so the frozen Q-net gives Q only at the steps with m_t > 0
  (``Critic.hidden_at``: ~``mix_prob`` of the output-layer rows; sequences with none skipped).
* :class:`VAMLAlgorithm` — the supervised runtime (dataset batches, no env runners) with the
  Q-net stage added: ``train_qnet(n)`` runs n Q-net updates, ``train()`` one actor epoch.

The math lives in :mod:`rayseq.algorithms.vaml`.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.utils.annotations import override

from rayseq.algorithms.erac import step_masks
from rayseq.algorithms.supervised_rows import qnet_episodes, vaml_actor_rows
from rayseq.algorithms.vaml import (
    VAMLConfig,
    needs_qnet,
    qnet_token_targets,
    soft_max_value,
    soft_q_loss,
    soft_q_target,
    vaml_actor_loss_rows,
)
from rayseq.data.batching import bucket_batches
from rayseq.metrics import (
    LOSS_ACTOR,
    LOSS_CRITIC_TD,
    LOSS_MLE,
    LOSS_VAML_CE,
    Q_TAKEN,
    TOKENS_PER_S,
)
from rayseq.models.base import PAD
from rayseq.models.critic import Critic, CriticConfig, make_target, polyak_update
from rayseq.models.seq2seq import Seq2Seq, Seq2SeqConfig
from rayseq.rollout import collate
from rayseq.runtime.ac_learner import clip_global_norm_
from rayseq.runtime.actor_module import ActorRLModule
from rayseq.runtime.supervised import SupervisedSeqAlgorithm, SupervisedSeqConfig

STAGES = ("qnet", "actor")
Q_ROWS, V_ROWS, STEP_MASK, STEP_DONE = "q_rows", "v_rows", "step_mask", "step_done"
LOGIT_ROWS_Q, LOGIT_ROWS_NLL, Q_STEPS = "logit_rows_q", "logit_rows_nll", "q_steps"
MIX = "mix"
"""Batch column of step 2: the per-token mix m_t ``[N, T]`` (``vaml_actor_rows``), 0 at padding."""


class VAMLRLModule(ActorRLModule):
    """actor + Q-net (+ target Q-net); ``model_config`` = the actor's ``Seq2SeqConfig`` fields plus
    ``qnet`` (``CriticConfig`` overrides) and ``qnet_target`` (bool)."""

    def setup(self) -> None:
        cfg = dict(self.model_config)
        overrides = cfg.pop("qnet", None) or {}
        with_target = bool(cfg.pop("qnet_target", False))
        self.actor = Seq2Seq(Seq2SeqConfig(**cfg))
        self.qnet = Critic(CriticConfig.like_actor(self.actor.cfg, **overrides))
        self.target_qnet = make_target(self.qnet) if with_target else None
        self.stage = "qnet"

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        """Packed rows of the real steps: stage ``qnet`` → Q_φ ``[K, V]`` (and the target Q-net's
        V rows); stage ``actor`` → at the M real steps whose mix ``batch["mix"]`` is > 0
        (``needs_qnet``; ``Q_STEPS`` ``[N, T]``), the actor logits and the frozen Q-net's Q, both
        ``[M, V]`` in row-major order, and the actor logits ``[K − M, V]`` at the other real steps
        (NLL only). Two output-layer calls, not one ``[K, V]`` indexed twice: the loss then
        costs at the m = 0 steps what RAML's costs."""
        if self.stage == "qnet":
            tgt_in = batch["tgt_in"]
            mask, done = step_masks(batch["lengths"], batch["capped"], tgt_in.size(1))  # [N, T]
            out: dict[str, Any] = {STEP_MASK: mask, STEP_DONE: done}
            out[Q_ROWS] = self.qnet.q_head(self.qnet.hidden(batch["ref"], batch["ref_len"], tgt_in)[mask])  # [K, V]
            if self.target_qnet is not None:
                with torch.no_grad():
                    out[V_ROWS] = self.target_qnet.q_head(self.target_qnet.hidden(batch["ref"], batch["ref_len"], tgt_in)[mask])
            return out
        if MIX not in batch:
            raise KeyError(f"VAMLRLModule (stage actor): the batch has no {MIX!r} column (the per-token "
                           "mix m_t); build step 2's rows with rayseq.algorithms.supervised_rows.vaml_actor_rows.")
        mask = batch["tgt_out"].ne(PAD)  # [N, T]
        at = mask & needs_qnet(batch[MIX])  # [N, T] the steps whose loss reads P_Qφ
        hid = self.actor.decode_hidden(self.actor.encode(batch["src"], batch["src_len"]), batch["tgt_in"])  # [N, T, Hd]
        out = {STEP_MASK: mask, Q_STEPS: at, LOGIT_ROWS_Q: self.actor.out(hid[at]),  # [M, V]
               LOGIT_ROWS_NLL: self.actor.out(hid[mask & ~at])}  # [K − M, V]
        with torch.no_grad():
            out[Q_ROWS] = self.qnet.q_head(self.qnet.hidden_at(batch["ref"], batch["ref_len"], batch["tgt_in"], at))  # [M, V]
        return out


class VAMLLearner(TorchLearner):
    """The two VAML steps; the algorithm config is ``config.objective_config`` (a ``VAMLConfig``)."""

    @override(TorchLearner)
    def build(self) -> None:
        super().build()
        self.vaml = VAMLConfig(**self.config.objective_config)

    def _vaml(self, module_id) -> VAMLRLModule:
        module = self.module[module_id]
        return module.unwrapped() if hasattr(module, "unwrapped") else module

    @override(TorchLearner)
    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        vaml = VAMLConfig(**config.objective_config)
        module = self._vaml(module_id)
        self.register_optimizer(
            module_id=module_id, optimizer_name="actor", optimizer=torch.optim.SGD(module.actor.parameters(), lr=vaml.lr),
            params=list(module.actor.parameters()), lr_or_lr_schedule=None,
        )
        self.register_optimizer(
            module_id=module_id, optimizer_name="qnet", optimizer=torch.optim.Adam(module.qnet.parameters(), lr=vaml.qnet_lr),
            params=list(module.qnet.parameters()), lr_or_lr_schedule=None,
        )

    # ----------------------------------------------------------------- driver calls

    def set_stage(self, stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"set_stage: stage={stage!r}; use one of {STAGES}.")
        for module_id in self.module.keys():  # noqa: SIM118 (MultiRLModule iterates otherwise)
            self._vaml(module_id).stage = stage

    def set_lr(self, lr: float) -> None:
        """The actor's learning rate (the driver's plateau schedule)."""
        for module_id in self.module.keys():  # noqa: SIM118
            for group in self.get_optimizer(module_id, "actor").param_groups:
                group["lr"] = lr

    def set_qnet_lr(self, lr: float) -> None:
        """The Q-net's learning rate (step 1's plateau schedule)."""
        for module_id in self.module.keys():  # noqa: SIM118
            for group in self.get_optimizer(module_id, "qnet").param_groups:
                group["lr"] = lr

    def load_actor(self, state_dict: dict[str, Any]) -> None:
        """Actor weights (``Seq2Seq`` keys): step 2 fine-tuning an MLE actor (``algo.actor_init``)."""
        for module_id in self.module.keys():  # noqa: SIM118
            self._vaml(module_id).actor.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()})

    def load_qnet(self, state_dict: dict[str, Any]) -> None:
        """Q-net weights (``Critic`` keys), e.g. from an earlier run's ``qnet.pt``; the target too."""
        for module_id in self.module.keys():  # noqa: SIM118
            module = self._vaml(module_id)
            module.qnet.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()})
            if module.target_qnet is not None:
                module.target_qnet.load_state_dict(module.qnet.state_dict())

    # ----------------------------------------------------------------- loss

    @override(TorchLearner)
    def compute_loss_for_module(self, *, module_id, config, batch: dict[str, Any], fwd_out) -> torch.Tensor:
        stage = self._vaml(module_id).stage
        loss, parts = packed_vaml_losses(fwd_out, batch, self.vaml, stage)
        for key, value in parts.items():
            self.metrics.log_value((module_id, key), value, window=1)
        return loss

    @override(TorchLearner)
    def compute_gradients(self, loss_per_module, **kwargs):
        grads = super().compute_gradients(loss_per_module, **kwargs)
        return {pid: g for pid, g in grads.items() if g is not None}  # the frozen network has none

    @override(TorchLearner)
    def postprocess_gradients_for_module(self, *, module_id, config=None, module_gradients_dict):
        """Clip each network to its own global norm (actor: ``grad_clip``, Q-net: ``qnet_grad_clip``)."""
        for name, optimizer in self.get_optimizers_for_module(module_id):
            grads = list(self.filter_param_dict_for_optimizer(module_gradients_dict, optimizer).values())
            if grads:
                clip_global_norm_(grads, self.vaml.grad_clip if name == "actor" else self.vaml.qnet_grad_clip)
        return module_gradients_dict

    @override(TorchLearner)
    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().after_gradient_based_update(timesteps=timesteps)
        for module_id in self.module.keys():  # noqa: SIM118
            module = self._vaml(module_id)
            if module.stage == "qnet" and module.target_qnet is not None:
                polyak_update(module.target_qnet, module.qnet, float(self.vaml.qnet_target_beta))


def packed_vaml_losses(
    fwd_out: dict[str, Any], batch: dict[str, Any], vaml: VAMLConfig, stage: str
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. (16) (stage ``qnet``) or Eq. (17) with the per-token mix (stage ``actor``) on the packed
    ``[K, V]`` rows of :class:`VAMLRLModule` — the padded ``[N, T, V]`` equations without the
    padding (tested equal); in stage ``actor`` P_Qφ and the CE term only at the rows whose mix
    ``batch["mix"]`` is > 0 (tested equal to the full computation). Returns the loss and the logged parts."""
    mask = fwd_out[STEP_MASK]  # [N, T]
    q_rows = fwd_out[Q_ROWS]  # [K, V] (stage qnet), [M, V] at the Q_STEPS (stage actor)
    if stage == "qnet":
        v_src = fwd_out.get(V_ROWS, q_rows)  # target Q-net (no grad) or the Q-net itself (grad)
        v_rows = soft_max_value(v_src, vaml.tau, vaml.exclude_tokens)  # Eq. (10), [K]
        values = torch.zeros(mask.shape, dtype=v_rows.dtype, device=v_rows.device).masked_scatter(mask, v_rows)  # [N, T]
        target = soft_q_target(batch["rewards"], values, fwd_out[STEP_DONE], mask)[mask]  # [K]
        q_taken = q_rows.gather(-1, batch["actions"][mask].long().unsqueeze(-1)).squeeze(-1)  # [K]
        every = torch.ones((1, q_taken.numel()), dtype=torch.bool, device=q_taken.device)
        qloss = soft_q_loss(q_taken[None], target[None], every, num_seqs=mask.size(0))  # Eq. (16)
        return qloss.loss, {LOSS_CRITIC_TD: qloss.loss.item(), Q_TAKEN: q_taken.detach().mean().item()}
    at, rest = fwd_out[Q_STEPS], mask & ~fwd_out[Q_STEPS]  # [N, T]: steps with m_t > 0, the other real ones
    weights = batch["weight"][:, None].expand(mask.shape)  # [N, T]
    aloss = vaml_actor_loss_rows(
        fwd_out[LOGIT_ROWS_Q], batch["tgt_out"][at], qnet_token_targets(q_rows, vaml.actor_target_tau, vaml.exclude_tokens, vaml.pq_topk),  # Eq. (17)
        batch[MIX][at], weights[at], fwd_out[LOGIT_ROWS_NLL], batch["tgt_out"][rest], weights[rest],
        num_sources=float(batch["weight"].sum()), mix_prob=vaml.mix_prob,
    )
    return aloss.loss, {LOSS_ACTOR: aloss.loss.item(), LOSS_VAML_CE: aloss.ce.item(), LOSS_MLE: aloss.nll.item()}


class VAMLAlgoConfig(SupervisedSeqConfig):
    """RLlib config of VAML: the supervised runtime with the VAML module and learner."""

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or VAMLAlgorithm)
        self.objective = "vaml"
        # one network gets no gradient in each stage: DDP (num_learners > 1) must allow that
        self.torch_ddp_kwargs = {"find_unused_parameters": True}

    def get_default_learner_class(self):
        return VAMLLearner

    def get_default_rl_module_spec(self):
        from ray.rllib.core.rl_module.rl_module import RLModuleSpec

        return RLModuleSpec(module_class=VAMLRLModule)

    @staticmethod
    def module_extras(algo_config: Any) -> dict[str, Any]:
        """A target Q-net only when ``qnet_target_beta`` is set."""
        return {"qnet_target": algo_config.qnet_target_beta is not None}

    def validate(self) -> None:
        super(SupervisedSeqConfig, self).validate()
        if self.objective != "vaml":
            self._value_error(f"objective={self.objective!r}; VAMLAlgoConfig runs 'vaml' only")


class VAMLAlgorithm(SupervisedSeqAlgorithm):
    """Step 1 (``train_qnet``) then step 2 (``train()``: one actor epoch, as RAML's)."""

    @classmethod
    def get_default_config(cls) -> VAMLAlgoConfig:
        return VAMLAlgoConfig()

    def setup(self, config) -> None:
        super().setup(config)
        self._vaml = VAMLConfig(**self.config.objective_config)
        self.qnet_updates = 0
        self._replay = None

    def _make_rows(self, src, tgt, rng):
        return vaml_actor_rows(src, tgt, self._vaml, self._vocab_size, rng)

    def set_stage(self, stage: str) -> None:
        self.learner_group.foreach_learner(lambda learner: learner.set_stage(stage))

    def attach_replay(self, replay: Any) -> None:
        """An extra source of off-policy trajectories for step 1 (``sample(n)`` → episodes)."""
        self._replay = replay

    def train_qnet(self, n: int) -> float:
        """``n`` Q-net updates, continuing the Q-net's pass over the training references."""
        v = self._vaml
        per_epoch = max(1, -(-len(self._train.tgt) // v.qnet_batch_size))
        lengths = [len(y) for y in self._train.tgt]
        done, tok_s = 0, 0.0
        t0 = time.perf_counter()
        while done < n:
            epoch, pos = divmod(self.qnet_updates, per_epoch)
            batches = bucket_batches(lengths, v.qnet_batch_size, seed=v.seed + 7, epoch=epoch)[pos : pos + n - done]
            rng = np.random.default_rng((v.seed, epoch, pos, 2))
            before = self.num_updates
            tok_s = self._updates(
                batches, lambda src, tgt, rng=rng: self._qnet_rows(src, tgt, rng), epoch + pos / per_epoch,
                f"Q-net epoch {epoch + 1}", loss_key=LOSS_CRITIC_TD, epoch_batches=per_epoch,
            )
            self.qnet_updates += self.num_updates - before
            done += len(batches)
        self.metrics.log_value(TOKENS_PER_S, tok_s, window=1)
        return time.perf_counter() - t0

    def _qnet_rows(self, src, tgt, rng) -> dict[str, np.ndarray]:
        episodes = qnet_episodes(src, tgt, self._vaml, self._vocab_size, rng)
        if self._replay is not None:
            episodes += list(self._replay.sample(max(1, round(self._vaml.qnet_replay_fraction * len(episodes)))))
        cols = collate(episodes)
        return {k: cols[k] for k in ("ref", "ref_len", "tgt_in", "actions", "rewards", "lengths", "capped")}

    def qnet_state_dict(self) -> dict[str, Any]:
        """The Q-net's torch state dict (``Critic`` keys), from the (first) learner."""
        from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE

        state = self.learner_group.get_state(components=f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}")
        module_state = state[COMPONENT_LEARNER][COMPONENT_RL_MODULE][DEFAULT_MODULE_ID]
        return {k.removeprefix("qnet."): v for k, v in module_state.items() if k.startswith("qnet.")}

    def load_qnet(self, state_dict: dict[str, Any]) -> None:
        self.learner_group.foreach_learner(lambda learner: learner.load_qnet(state_dict))

    def set_qnet_lr(self, lr: float) -> None:
        """The Q-net optimiser's lr on every learner."""
        self.learner_group.foreach_learner(lambda learner: learner.set_qnet_lr(lr))

    def get_state(self, *args, **kwargs) -> dict[str, Any]:
        state = super().get_state(*args, **kwargs)
        state["rayseq_qnet_updates"] = self.qnet_updates
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self.qnet_updates = int(state.get("rayseq_qnet_updates", self.qnet_updates))
