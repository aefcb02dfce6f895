"""RLModules that let RLlib's own PPO, APPO and SAC train the project's actor (issue 5, swap-ins).

Every module here holds the actor (``rayseq.models.seq2seq.Seq2Seq``, the same network MLE, RAML
and ERAC train) as its policy, plus the heads its RLlib learner needs, declared through RLlib's
RLModule APIs:

================  =========================================  ======================================
module            RLlib APIs                                 extra networks
================  =========================================  ======================================
SeqPPOModule      ValueFunctionAPI, InferenceOnlyAPI         value head V(s)
SeqAPPOModule     + TargetNetworkAPI                         + the "old" actor (APPO's target)
SeqSACModule      QNetAPI, TargetNetworkAPI, InferenceOnly   twin Q heads Q(s, ·) + their targets
================  =========================================  ======================================

**The state** is the environment's observation (``envs.seqpred``): source and generated prefix.
The policy reads ``src``/``src_len``/``prefix``/``prefix_len`` and never ``ref`` (privileged: the
answer). Each call re-encodes the source and teacher-forces ``<bos> + prefix`` (stateless, so
RLlib's default env runners, connectors and replay buffers work unchanged): O(T²) decoder steps
per episode instead of O(T). Acceptable for a comparison baseline; the project's own rollout
workers (``rayseq.runtime.rollout_runner``) carry the decoder state instead.

**The value / Q heads read the actor's decoder state** ``att_out`` [B, Hd] at the current step
(the input of the actor's output layer), *detached*: a small MLP on top of it. The critic never
sees the reference either (unlike the paper's critic), so these are the usual RL baselines; the
detach keeps a randomly initialised head from pushing its regression gradient into the
MLE-pretrained actor (the heads learn on a moving but shared representation; only the RL
objective changes the actor).

``model_config`` = the actor's ``Seq2SeqConfig`` fields, plus ``init_actor`` (an actor file,
``rayseq.actor_io``, loaded in ``setup`` so learners, env runners and target networks all start
from the same MLE actor) and ``head_hidden`` (the heads' MLP width).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from ray.rllib.algorithms.sac.sac_learner import (  # the keys SAC's learner reads from forward_train
    ACTION_LOG_PROBS,
    ACTION_LOG_PROBS_NEXT,
    ACTION_PROBS,
    ACTION_PROBS_NEXT,
    QF_PREDS,
    QF_TARGET_NEXT,
    QF_TWIN_PREDS,
)
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.rl_module.apis import (
    TARGET_NETWORK_ACTION_DIST_INPUTS,
    InferenceOnlyAPI,
    QNetAPI,
    TargetNetworkAPI,
    ValueFunctionAPI,
)
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

from rayseq.decoding import BANNED_TOKENS, mask_logits
from rayseq.models.base import BOS
from rayseq.models.seq2seq import Seq2Seq, Seq2SeqConfig

INIT_ACTOR = "init_actor"
"""``model_config`` key: actor file to load in ``setup`` (None: random initialisation)."""
HEAD_HIDDEN = "head_hidden"
"""``model_config`` key: hidden width of the value / Q heads' MLP."""

_SEQ2SEQ_FIELDS = {f.name for f in dataclasses.fields(Seq2SeqConfig)}


# ----------------------------------------------------------------------------- plain torch


def decoder_state(actor: Seq2Seq, obs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The actor's ``att_out`` [B, Hd] after reading ``<bos> + prefix`` for the source ``src``.

    Reads ``src``, ``src_len``, ``prefix``, ``prefix_len`` of the observation, never ``ref``.
    One encoder pass and one teacher-forced decoder pass over the longest prefix in the batch.
    """
    prefix, prefix_len = obs["prefix"].long(), obs["prefix_len"].long().reshape(-1)  # [B, T], [B]
    b = prefix.shape[0]
    width = int(prefix_len.max().item()) + 1 if b else 1
    tgt_in = torch.full((b, width), BOS, dtype=torch.long, device=prefix.device)  # [B, W]
    tgt_in[:, 1:] = prefix[:, : width - 1]
    src = obs["src"] if obs["src"].is_floating_point() else obs["src"].long()  # image features stay float
    enc = actor.encode(src, obs["src_len"].long().reshape(-1))
    hidden = actor.decode_hidden(enc, tgt_in)  # [B, W, Hd]
    return hidden[torch.arange(b, device=prefix.device), prefix_len]  # [B, Hd]


def policy_logits(actor: Seq2Seq, state: torch.Tensor) -> torch.Tensor:
    """Next-token logits [B, V] from decoder states [B, Hd]; ``<pad>``/``<bos>`` set to −inf."""
    return mask_logits(actor.out(state), BANNED_TOKENS)


def head_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """The value / Q head: Linear → tanh → Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim))


def masked_log_probs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probs, log_probs)`` [B, V] of ``softmax(logits)`` with log-probs of banned (−inf) tokens
    set to 0, so that ``probs · f(log_probs)`` is 0 there instead of NaN (0 · −inf)."""
    log_probs = torch.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    return probs, log_probs.masked_fill(torch.isinf(log_probs), 0.0)


# ----------------------------------------------------------------------------- RLModules


class SeqActorModule(TorchRLModule):
    """The actor alone: the policy every swap-in module shares (no learner can train it alone)."""

    def setup(self) -> None:
        cfg = Seq2SeqConfig(**{k: v for k, v in self.model_config.items() if k in _SEQ2SEQ_FIELDS})
        self.actor = Seq2Seq(cfg)
        path = self.model_config.get(INIT_ACTOR)
        if path:
            from rayseq.actor_io import load_actor

            loaded = load_actor(path)
            self.actor.load_state_dict(loaded.model.state_dict())
        self.head_hidden = int(self.model_config.get(HEAD_HIDDEN, 256))

    def actor_model(self) -> Seq2Seq:
        """The policy network (what the driver validates and saves)."""
        return self.actor

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        """Next-token logits [B, V] for environment observations (exploration and inference)."""
        state = decoder_state(self.actor, batch[Columns.OBS])
        return {Columns.ACTION_DIST_INPUTS: policy_logits(self.actor, state)}


class SeqPPOModule(SeqActorModule, ValueFunctionAPI, InferenceOnlyAPI):
    """Policy + value head V(s) [B] on the detached decoder state (PPO's ``ValueFunctionAPI``)."""

    def setup(self) -> None:
        super().setup()
        if not self.inference_only:
            self.value_head = head_mlp(self.actor.cfg.dec_hidden, self.head_hidden, 1)

    def get_non_inference_attributes(self) -> list[str]:
        return ["value_head"]

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        """``ACTION_DIST_INPUTS`` [B, V] (with gradient) and ``EMBEDDINGS`` [B, Hd] (the detached
        decoder state, reused by ``compute_values`` so the actor runs once per loss)."""
        state = decoder_state(self.actor, batch[Columns.OBS])
        return {Columns.ACTION_DIST_INPUTS: policy_logits(self.actor, state), Columns.EMBEDDINGS: state.detach()}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        """V(s) [B]; ``embeddings`` = decoder states from ``_forward_train`` if given."""
        if embeddings is None:
            with torch.no_grad():  # the head reads the detached state anyway
                embeddings = decoder_state(self.actor, batch[Columns.OBS])
        return self.value_head(embeddings).squeeze(-1)


class SeqAPPOModule(SeqPPOModule, TargetNetworkAPI):
    """PPO's module plus APPO's target network: a lagged copy of the actor (the "old" policy)."""

    def make_target_networks(self) -> None:
        self._old_actor = make_target_network(self.actor)

    def get_target_network_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.actor, self._old_actor)]

    def get_non_inference_attributes(self) -> list[str]:
        return ["value_head", "_old_actor"]

    def forward_target(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        """The old actor's logits [B, V] (``TARGET_NETWORK_ACTION_DIST_INPUTS``)."""
        with torch.no_grad():
            state = decoder_state(self._old_actor, batch[Columns.OBS])
            return {TARGET_NETWORK_ACTION_DIST_INPUTS: policy_logits(self._old_actor, state)}


class SeqSACModule(SeqActorModule, QNetAPI, TargetNetworkAPI, InferenceOnlyAPI):
    """Policy + twin Q heads Q(s, ·) [B, V] and their Polyak targets (discrete SAC).

    RLlib's ``SACTorchLearner`` finds the parameters of each optimiser by attribute name:
    ``pi_encoder`` + ``pi`` (policy: the actor; ``pi`` is an empty identity), ``qf_encoder`` +
    ``qf`` and ``qf_twin_encoder`` + ``qf_twin`` (the two Q heads' trunk and output layers).
    """

    def setup(self) -> None:
        super().setup()
        self.pi = nn.Identity()
        if not self.inference_only:
            hd, v = self.actor.cfg.dec_hidden, self.actor.cfg.tgt_vocab_size
            self.qf_encoder = nn.Sequential(nn.Linear(hd, self.head_hidden), nn.Tanh())
            self.qf = nn.Linear(self.head_hidden, v)
            self.qf_twin_encoder = nn.Sequential(nn.Linear(hd, self.head_hidden), nn.Tanh())
            self.qf_twin = nn.Linear(self.head_hidden, v)

    @property
    def pi_encoder(self) -> Seq2Seq:
        """The actor, under the name SAC's learner takes the policy's parameters from."""
        return self.actor

    def get_non_inference_attributes(self) -> list[str]:
        return ["qf_encoder", "qf", "qf_twin_encoder", "qf_twin", "target_qf_encoder", "target_qf",
                "target_qf_twin_encoder", "target_qf_twin"]

    def make_target_networks(self) -> None:
        self.target_qf_encoder = make_target_network(self.qf_encoder)
        self.target_qf = make_target_network(self.qf)
        self.target_qf_twin_encoder = make_target_network(self.qf_twin_encoder)
        self.target_qf_twin = make_target_network(self.qf_twin)

    def get_target_network_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [
            (self.qf_encoder, self.target_qf_encoder),
            (self.qf, self.target_qf),
            (self.qf_twin_encoder, self.target_qf_twin_encoder),
            (self.qf_twin, self.target_qf_twin),
        ]

    def _q(self, state: torch.Tensor, trunk: nn.Module, out: nn.Module) -> torch.Tensor:
        return out(trunk(state.detach()))  # [B, V]

    def compute_q_values(self, batch: dict[str, Any], state: torch.Tensor | None = None) -> torch.Tensor:
        """min of the twin Q heads [B, V] at the observation's state."""
        if state is None:
            with torch.no_grad():
                state = decoder_state(self.actor, batch[Columns.OBS])
        return torch.min(self._q(state, self.qf_encoder, self.qf), self._q(state, self.qf_twin_encoder, self.qf_twin))

    def forward_target(self, batch: dict[str, Any], state: torch.Tensor | None = None) -> torch.Tensor:
        """min of the twin target Q heads [B, V] (no gradient)."""
        with torch.no_grad():
            if state is None:
                state = decoder_state(self.actor, batch[Columns.OBS])
            return torch.min(
                self._q(state, self.target_qf_encoder, self.target_qf),
                self._q(state, self.target_qf_twin_encoder, self.target_qf_twin),
            )

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        """What ``SACTorchLearner._compute_loss_for_module_discrete`` reads: the policy's probs and
        log-probs at s (with gradient) and s' (without), Q(s, ·) of both heads, target Q(s', ·)."""
        state = decoder_state(self.actor, batch[Columns.OBS])  # [B, Hd]
        with torch.no_grad():
            state_next = decoder_state(self.actor, batch[Columns.NEXT_OBS])
            probs_next, log_probs_next = masked_log_probs(policy_logits(self.actor, state_next))
        logits = policy_logits(self.actor, state)  # [B, V]
        probs, log_probs = masked_log_probs(logits)
        return {
            Columns.ACTION_DIST_INPUTS: logits,
            ACTION_PROBS: probs,
            ACTION_LOG_PROBS: log_probs,
            ACTION_PROBS_NEXT: probs_next,
            ACTION_LOG_PROBS_NEXT: log_probs_next,
            QF_PREDS: self._q(state, self.qf_encoder, self.qf),
            QF_TWIN_PREDS: self._q(state, self.qf_twin_encoder, self.qf_twin),
            QF_TARGET_NEXT: self.forward_target(batch, state=state_next),
        }


# ----------------------------------------------------------------------------- API check


def missing_apis(learner_cls: type, module_cls: type) -> list[type]:
    """The RLModule APIs ``learner_cls.rl_module_required_apis()`` lists that ``module_cls`` lacks."""
    return [api for api in learner_cls.rl_module_required_apis() if not issubclass(module_cls, api)]


def check_module_apis(algo: str, learner_cls: type, module_cls: type) -> None:
    """ValueError naming each RLlib API ``module_cls`` must implement for ``learner_cls``."""
    missing = missing_apis(learner_cls, module_cls)
    if missing:
        names = ", ".join(f"{api.__module__}.{api.__name__}" for api in missing)
        raise ValueError(
            f"swap-in {algo!r}: RLlib's {learner_cls.__name__} needs RLModule APIs "
            f"{[a.__name__ for a in learner_cls.rl_module_required_apis()]}; {module_cls.__name__} "
            f"does not implement {names}. Add the missing API(s) to the module "
            f"(rayseq/runtime/swapin_module.py) or register the swap-in with a module that has them."
        )
