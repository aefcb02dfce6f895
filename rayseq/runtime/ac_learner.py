"""The actor-critic RLModule and TorchLearner of AC / ERAC (Dai et al. 2018, §4.2).

:class:`ActorCriticRLModule` holds the actor (the same ``Seq2Seq`` every algorithm uses), the
critic (reads the reference) and the Polyak-averaged target critic. Rollout workers build it
``inference_only``: the actor alone (critic weights never travel to them).

One learner update reads a batch of sampled episodes (``rayseq.rollout.collate`` columns) and
makes **one teacher-forced pass** per network: the actor over ``<bos> + sample`` and
``<bos> + y*`` together (the source encoded once, both decoder inputs in one call), the critic
and the target critic over ``<bos> + sample``. Then Eq. (19) → Eq. (18) for the critic and
Eq. (20) + λ_mle·MLE for the actor, one backward for both (their parameters are disjoint, each
loss only reaches its own network), each model's gradient clipped to its own global norm, two
Adam optimisers, and the Polyak step φ̄ ← (1 − β)φ̄ + βφ after every update.

Stages (``set_stage``): ``"critic"`` trains the critic against the frozen actor (no actor
gradient, no MLE pass); ``"joint"`` trains both.

The same module and learner run the sequence-level REINFORCE baselines of
``rayseq.algorithms.reinforce`` (the learner branches by objective; the module's ``heads``
say which networks exist besides the actor): SCST has no other network (its baseline is the
greedy decode's reward, which the rollout workers add to each episode), MIXER a linear baseline
b_t on the actor decoder's detached state (its "critic" stage is baseline pretraining). See
:func:`packed_reinforce_losses`.
"""
from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import torch
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI
from ray.rllib.utils.annotations import override

from rayseq.algorithms.erac import (
    ERACConfig,
    critic_loss,
    entropy,
    erac_actor_loss,
    gather_actions,
    policy_log_probs,
    reference_horizon,
    sharpen_log_probs,
    soft_td_target,
    soft_value,
    step_masks,
)
from rayseq.algorithms.mle import sequence_nll
from rayseq.algorithms.reinforce import (
    baseline_mse,
    reinforce_baseline_loss,
    returns_to_go,
    scst_loss,
)
from rayseq.metrics import (
    ENTROPY,
    LOSS_ACTOR,
    LOSS_ACTOR_OBJECTIVE,
    LOSS_BASELINE,
    LOSS_CRITIC_TD,
    LOSS_CRITIC_VAR,
    LOSS_MLE,
    Q_TAKEN,
    REWARD_BASELINE,
)
from rayseq.models.base import PAD
from rayseq.models.critic import Critic, CriticConfig, make_target, polyak_update
from rayseq.models.seq2seq import Seq2Seq, Seq2SeqConfig
from rayseq.registry import get_algorithm
from rayseq.runtime.actor_module import ActorRLModule

STAGES = ("critic", "joint")
ACTOR_LOGITS, MLE_LOGITS, Q, Q_TARGET = "actor_logits", "mle_logits", "q", "q_target"
STEP_MASK, STEP_DONE, MLE_TARGETS = "step_mask", "step_done", "mle_targets"
BASELINE = "baseline"

CRITIC_HEADS, BASELINE_HEAD, NO_HEADS = "critic", "baseline", "none"
_OBJECTIVE_HEADS = {"scst": NO_HEADS, "mixer": BASELINE_HEAD}
"""Objective → the networks trained besides the actor (``model_config["heads"]``); every other
objective (AC, ERAC): the critic and its target."""


def module_heads(objective: str) -> str:
    """The ``heads`` of ``ActorCriticRLModule`` an objective needs."""
    return _OBJECTIVE_HEADS.get(objective, CRITIC_HEADS)


def needs_greedy_decode(objective: str) -> bool:
    """SCST's baseline is the greedy decode's reward: the rollout workers must decode it."""
    return objective == "scst"


def typed_objective(config: Any) -> tuple[str, Any]:
    """``(objective, typed algorithm config)`` of an ``ActorCriticConfig``: the registry entry of
    its ``algo_name`` built from its ``objective_config`` dict."""
    entry = get_algorithm(getattr(config, "algo_name", "erac"))
    return entry.objective, entry.config_cls(**config.objective_config)


class ActorCriticRLModule(ActorRLModule, InferenceOnlyAPI):
    """actor + critic + target critic; ``model_config`` = actor ``Seq2SeqConfig`` fields plus
    ``critic`` (a dict of ``CriticConfig`` overrides) and ``heads`` (``"critic"``, the default;
    ``"baseline"``: a linear b_t instead, MIXER; ``"none"``: the actor alone, SCST)."""

    def setup(self) -> None:
        cfg = dict(self.model_config)
        critic_overrides = cfg.pop("critic", None) or {}
        self.heads = cfg.pop("heads", CRITIC_HEADS)
        if self.heads not in (CRITIC_HEADS, BASELINE_HEAD, NO_HEADS):
            raise ValueError(f"ActorCriticRLModule: heads={self.heads!r}; use {CRITIC_HEADS!r}, {BASELINE_HEAD!r} or {NO_HEADS!r}.")
        self.actor = Seq2Seq(Seq2SeqConfig(**cfg))
        self.stage = "joint"
        if not self.inference_only and self.heads == CRITIC_HEADS:
            self.critic = Critic(CriticConfig.like_actor(self.actor.cfg, **critic_overrides))
            self.target_critic = make_target(self.critic)
        elif not self.inference_only and self.heads == BASELINE_HEAD:
            self.baseline = torch.nn.Linear(self.actor.cfg.dec_hidden, 1)  # b_t = w·h_t + c

    def get_non_inference_attributes(self) -> list[str]:
        return {CRITIC_HEADS: ["critic", "target_critic"], BASELINE_HEAD: [BASELINE], NO_HEADS: []}[self.heads]

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        """One teacher-forced pass per network, the output layers applied to the real steps only.

        Returns ``[K, V]`` rows for the K steps of ``step_masks`` (row-major over [N, T]): actor
        logits, critic Q, target-critic Q̄; and the actor's logits at the K* reference positions
        (joint stage: the MLE term). Padding never reaches an output layer.
        """
        tgt_in, ref, ref_len = batch["tgt_in"], batch["ref"], batch["ref_len"]
        mask, done = step_masks(batch["lengths"], batch["capped"], tgt_in.size(1))  # [N, T]
        out: dict[str, Any] = {STEP_MASK: mask, STEP_DONE: done}
        if self.heads != CRITIC_HEADS:
            return self._forward_reinforce(batch, out, mask)
        if self.stage == "critic":
            with torch.no_grad():
                out[ACTOR_LOGITS] = self.actor.out(self.actor.decode_hidden(self.actor.encode(batch["src"], batch["src_len"]), tgt_in)[mask])
        else:
            enc = self.actor.encode(batch["src"], batch["src_len"])  # once for both decoder inputs
            out[ACTOR_LOGITS] = self.actor.out(self.actor.decode_hidden(enc, tgt_in)[mask])  # [K, V]
            ref_mask = batch["ref_out"].ne(PAD)  # [N, R + 1]
            out[MLE_LOGITS] = self.actor.out(self.actor.decode_hidden(enc, batch["ref_in"])[ref_mask])  # [K*, V]
            out[MLE_TARGETS] = batch["ref_out"][ref_mask]  # [K*]
        out[Q] = self.critic.q_head(self.critic.hidden(ref, ref_len, tgt_in)[mask])  # [K, V]
        with torch.no_grad():
            out[Q_TARGET] = self.target_critic.q_head(self.target_critic.hidden(ref, ref_len, tgt_in)[mask])
        return out

    def _forward_reinforce(self, batch: dict[str, Any], out: dict[str, Any], mask: torch.Tensor) -> dict[str, Any]:
        """SCST / MIXER: the actor's logits ``[K, V]`` at the K steps and (joint stage) at the
        reference; MIXER's b(s_t) ``[K]`` on the decoder state, detached (b trains no actor weight)."""
        joint = self.stage == "joint"
        with contextlib.nullcontext() if joint else torch.no_grad():  # baseline pretraining: actor frozen
            enc = self.actor.encode(batch["src"], batch["src_len"])
            hidden = self.actor.decode_hidden(enc, batch["tgt_in"])[mask]  # [K, Hd]
            out[ACTOR_LOGITS] = self.actor.out(hidden)  # [K, V]
            if joint:
                ref_mask = batch["ref_out"].ne(PAD)  # [N, R + 1]
                out[MLE_LOGITS] = self.actor.out(self.actor.decode_hidden(enc, batch["ref_in"])[ref_mask])  # [K*, V]
                out[MLE_TARGETS] = batch["ref_out"][ref_mask]  # [K*]
        if self.heads == BASELINE_HEAD:
            out[BASELINE] = self.baseline(hidden.detach()).squeeze(-1)  # [K]
        return out


class ActorCriticLearner(TorchLearner):
    """Critic + actor updates of AC / ERAC; the algorithm config is ``config.objective_config``."""

    @override(TorchLearner)
    def build(self) -> None:
        super().build()
        self.objective, self.erac = typed_objective(self.config)
        """The registry objective and its typed config (``ERACConfig``, ``SCSTConfig``, …)."""

    def _ac(self, module_id) -> ActorCriticRLModule:
        module = self.module[module_id]
        return module.unwrapped() if hasattr(module, "unwrapped") else module

    @override(TorchLearner)
    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        _, erac = typed_objective(config)
        module = self._ac(module_id)
        self.register_optimizer(
            module_id=module_id,
            optimizer_name="actor",
            optimizer=torch.optim.Adam(module.actor.parameters(), lr=erac.actor_lr, betas=erac.adam_betas),
            params=list(module.actor.parameters()),
            lr_or_lr_schedule=None,
        )
        if module.heads == BASELINE_HEAD:  # MIXER: one lr for pretraining and training
            self.register_optimizer(
                module_id=module_id,
                optimizer_name=BASELINE,
                optimizer=torch.optim.Adam(module.baseline.parameters(), lr=erac.baseline_lr, betas=erac.adam_betas),
                params=list(module.baseline.parameters()),
                lr_or_lr_schedule=None,
            )
        if module.heads != CRITIC_HEADS:
            return
        self.register_optimizer(
            module_id=module_id,
            optimizer_name="critic",
            optimizer=torch.optim.Adam(
                module.critic.parameters(), lr=erac.critic_pretrain_lr, betas=erac.critic_pretrain_adam_betas
            ),
            params=list(module.critic.parameters()),
            lr_or_lr_schedule=None,
        )

    # ----------------------------------------------------------------- driver calls

    def set_stage(self, stage: str) -> None:
        """``"critic"`` (pretraining, actor frozen) or ``"joint"``; sets each optimiser's lr/betas."""
        if stage not in STAGES:
            raise ValueError(f"set_stage: stage={stage!r}; use one of {STAGES}.")
        for module_id in self.module.keys():  # noqa: SIM118 (MultiRLModule iterates otherwise)
            module = self._ac(module_id)
            if stage == "critic" and module.heads == NO_HEADS:
                raise ValueError(f"set_stage: objective {self.objective!r} trains no network besides the actor; it has no 'critic' stage.")
            module.stage = stage
            if module.heads != CRITIC_HEADS:
                continue
            critic_opt = self.get_optimizer(module_id, "critic")
            lr, betas = (
                (self.erac.critic_pretrain_lr, self.erac.critic_pretrain_adam_betas)
                if stage == "critic"
                else (self.erac.critic_lr, self.erac.adam_betas)
            )
            for group in critic_opt.param_groups:
                group["lr"], group["betas"] = lr, betas

    def load_actor(self, state_dict: dict[str, Any]) -> None:
        """Load actor weights (``Seq2Seq`` keys), e.g. the MLE-pretrained actor."""
        for module_id in self.module.keys():  # noqa: SIM118 (MultiRLModule iterates otherwise)
            self._ac(module_id).actor.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()})

    def set_lr(self, lr: float) -> None:
        """The actor's learning rate (the driver's decay on no validation improvement)."""
        for module_id in self.module.keys():  # noqa: SIM118 (MultiRLModule iterates otherwise)
            for group in self.get_optimizer(module_id, "actor").param_groups:
                group["lr"] = lr

    def set_tau(self, tau: float) -> None:
        """The entropy weight τ of Eq. 20 (and of V̄ when ``critic_tau`` is None): the automatic
        temperature (``ERACConfig.target_entropy``) sets it after every update."""
        self.erac = replace(self.erac, tau=float(tau))

    def set_critic_lr(self, lr: float) -> None:
        """The critic's learning rate (critic pretraining's decay on a held-out plateau)."""
        for module_id in self.module.keys():  # noqa: SIM118 (MultiRLModule iterates otherwise)
            for group in self.get_optimizer(module_id, "critic").param_groups:
                group["lr"] = lr

    def critic_state_dict(self) -> dict[str, Any]:
        """The critic's weights (``Critic`` keys) as numpy arrays."""
        module = self._ac(next(iter(self.module.keys())))
        return {k: v.detach().cpu().numpy().copy() for k, v in module.critic.state_dict().items()}

    def load_critic(self, state_dict: dict[str, Any]) -> None:
        """Load critic weights into the critic and the target critic (the best pretrained critic)."""
        for module_id in self.module.keys():  # noqa: SIM118 (MultiRLModule iterates otherwise)
            module = self._ac(module_id)
            weights = {k: torch.as_tensor(v) for k, v in state_dict.items()}
            module.critic.load_state_dict(weights)
            module.target_critic.load_state_dict(weights)

    def reset_optimizers(self) -> None:
        """Forget every optimiser's moments (Adam's m, v, step): the official fresh optimisers of
        joint training, at the lr and betas the stage set."""
        for module_id in self.module.keys():  # noqa: SIM118 (MultiRLModule iterates otherwise)
            for _, optimizer in self.get_optimizers_for_module(module_id):
                optimizer.state.clear()

    # ----------------------------------------------------------------- loss

    @override(TorchLearner)
    def compute_loss_for_module(self, *, module_id, config, batch: dict[str, Any], fwd_out) -> torch.Tensor:
        module = self._ac(module_id)
        if module.heads == CRITIC_HEADS:
            total, parts = packed_losses(fwd_out, batch, self.erac, joint=module.stage == "joint")
        else:
            total, parts = packed_reinforce_losses(fwd_out, batch, self.erac, self.objective, joint=module.stage == "joint")
        for key, value in parts.items():
            self.metrics.log_value((module_id, key), value, window=1)
        self.metrics.log_value((module_id, "num_steps"), int(fwd_out[STEP_MASK].sum()), reduce="sum")
        return total

    @override(TorchLearner)
    def compute_gradients(self, loss_per_module, **kwargs):
        grads = super().compute_gradients(loss_per_module, **kwargs)
        return {pid: g for pid, g in grads.items() if g is not None}  # frozen actor: no grads

    @override(TorchLearner)
    def postprocess_gradients_for_module(self, *, module_id, config=None, module_gradients_dict):
        """Clip each model (actor, critic) to its own global norm ``grad_clip``."""
        for name, optimizer in self.get_optimizers_for_module(module_id):
            grads = [g for g in self.filter_param_dict_for_optimizer(module_gradients_dict, optimizer).values()]
            if not grads:
                continue
            norm = clip_global_norm_(grads, self.erac.grad_clip)
            self.metrics.log_value((module_id, f"grad_norm/{name}"), float(norm), window=1)
        return module_gradients_dict

    @override(TorchLearner)
    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().after_gradient_based_update(timesteps=timesteps)
        for module_id in self.module.keys():  # noqa: SIM118 (MultiRLModule iterates otherwise)
            module = self._ac(module_id)
            if module.heads == CRITIC_HEADS:
                polyak_update(module.target_critic, module.critic, self.erac.beta)


@torch.no_grad()
def clip_global_norm_(grads: list[torch.Tensor], max_norm: float) -> float:
    """Scale ``grads`` in place so their global L2 norm is at most ``max_norm``; returns the norm before."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype))
    return float(norm)


def packed_losses(fwd_out: dict[str, Any], batch: dict[str, Any], erac: ERACConfig, joint: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. (19) → Eq. (18) for the critic, Eq. (20) + λ_mle·MLE for the actor, on packed steps.

    The K real steps of the N sequences arrive as ``[K, V]`` rows (``ActorCriticRLModule``); the
    losses see them as one ``[1, K]`` "sequence" and average over ``num_seqs`` = N, which is the
    padded ``[N, T]`` computation without the padding. Returns the total loss (critic + actor;
    their parameters are disjoint) and the logged parts.
    """
    mask, done = fwd_out[STEP_MASK], fwd_out[STEP_DONE]  # [N, T]
    n_seqs = mask.size(0)
    logits, q, q_bar = fwd_out[ACTOR_LOGITS][None], fwd_out[Q][None], fwd_out[Q_TARGET][None]  # [1, K, V]
    every = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)  # [1, K]
    logp = policy_log_probs(logits.detach(), erac.exclude_tokens)  # [1, K, V]
    logp_target = sharpen_log_probs(logp, erac.target_temperature)  # the policy V̄ evaluates (π itself at T = 1)
    horizon = None
    if erac.entropy_horizon == "reference":  # τ·H only at states of at most |y*| tokens
        horizon = reference_horizon(batch["ref_len"], mask.size(1))[mask][None]  # [1, K]
    v_k = soft_value(q_bar, logp_target, erac.target_tau, None, erac.exclude_tokens, horizon)  # Eq. (9) on Q̄, [1, K]
    v_bar = torch.zeros(mask.shape, dtype=v_k.dtype, device=v_k.device).masked_scatter_(mask, v_k[0])  # [N, T]
    target = soft_td_target(batch["rewards"].to(v_k.dtype), v_bar, done, mask)[mask][None]  # Eq. (19), [1, K]
    q_taken = gather_actions(q, batch["actions"][mask][None])  # [1, K]
    closs = critic_loss(q_taken, target, q, every, erac.lambda_var, erac.exclude_tokens, num_seqs=n_seqs)  # Eq. (18)
    total = closs.loss
    parts = {
        LOSS_CRITIC_TD: closs.td.item(),
        LOSS_CRITIC_VAR: closs.var.item(),
        Q_TAKEN: q_taken.detach().mean().item(),
        ENTROPY: entropy(logp).item(),
    }
    if joint:
        aloss = erac_actor_loss(
            logits, q.detach(), every, erac.tau, erac.lambda_mle,
            fwd_out[MLE_LOGITS][None], fwd_out[MLE_TARGETS][None], erac.normalize_logpi_l2, erac.exclude_tokens,
            num_seqs=n_seqs, support=erac.actor_support,
        )  # Eq. (20) + λ_mle·MLE
        total = total + aloss.loss
        parts.update({LOSS_ACTOR: aloss.loss.item(), LOSS_ACTOR_OBJECTIVE: aloss.objective.item(), LOSS_MLE: aloss.mle.item()})
    return total, parts


def packed_reinforce_losses(
    fwd_out: dict[str, Any], batch: dict[str, Any], cfg: Any, objective: str, joint: bool
) -> tuple[torch.Tensor, dict[str, float]]:
    """SCST (``scst_loss``) or MIXER (``reinforce_baseline_loss`` + ``baseline_mse``), plus
    λ_mle·MLE, on packed steps; returns the total loss and the logged parts.

    The log-probs of the K taken actions (and MIXER's K baselines) are scattered back to the
    ``[N, T]`` step layout of the rewards (0 at padding, never read), then the padded equations of
    ``rayseq.algorithms.reinforce`` apply. Outside the joint stage (MIXER's baseline pretraining)
    only the baseline's MSE is trained.
    """
    mask = fwd_out[STEP_MASK]  # [N, T]
    n_seqs = mask.size(0)
    logp = policy_log_probs(fwd_out[ACTOR_LOGITS], cfg.exclude_tokens)  # [K, V]
    taken = logp.gather(-1, batch["actions"][mask].unsqueeze(-1)).squeeze(-1)  # [K]
    logp_taken = taken.new_zeros(mask.shape).masked_scatter(mask, taken)  # [N, T]
    rewards = batch["rewards"].to(taken.dtype)  # [N, T]
    ref_len = batch["ref_len"].to(taken.dtype).clamp(min=1)  # [N]
    parts = {ENTROPY: entropy(logp.detach()[None]).item()}
    total = taken.new_zeros(())
    if objective == "scst":
        greedy_reward = batch["greedy_reward"].to(taken.dtype)  # [N]
        rl = scst_loss(logp_taken, rewards, greedy_reward, mask, num_seqs=n_seqs)
        parts[REWARD_BASELINE] = 100.0 * (greedy_reward / ref_len).mean().item()
    elif objective == "mixer":
        b = fwd_out[BASELINE]  # [K]
        baseline = b.new_zeros(mask.shape).masked_scatter(mask, b)  # [N, T]
        returns = returns_to_go(rewards, mask)  # [N, T]
        mse = baseline_mse(baseline, returns, mask, num_seqs=n_seqs)
        total = total + mse
        rl = reinforce_baseline_loss(logp_taken, returns, baseline, mask, num_seqs=n_seqs)
        parts[LOSS_BASELINE] = mse.item()
        parts[REWARD_BASELINE] = 100.0 * (baseline[:, 0].detach() / ref_len).mean().item()
    else:
        raise ValueError(f"packed_reinforce_losses: objective {objective!r}; use 'scst' or 'mixer'.")
    if joint:
        mle = sequence_nll(fwd_out[MLE_LOGITS][None], fwd_out[MLE_TARGETS][None]).sum() / n_seqs
        actor = rl + cfg.lambda_mle * mle
        total = total + actor
        parts.update({LOSS_ACTOR: actor.item(), LOSS_ACTOR_OBJECTIVE: rl.item(), LOSS_MLE: mle.item()})
    return total, parts
