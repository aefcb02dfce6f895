"""``rayseq train --algo vaml``: step 1 trains (or loads) the Q-net, step 2 the actor.

Step 1 (:func:`qnet_stage`): at most ``algo.qnet_epochs`` passes of soft Q-learning (Eq. 16) over
the corrupted training references, checkpointed after every pass (``--resume`` continues
mid-stage), each pass followed by held-out checks of the Q-net on the validation references; the
best Q-net by ``algo.qnet_select`` (held-out error, the default, or greedy BLEU given y*) is kept
(``RUN_DIR/qnet.pt``) and is the one step 2 uses, the Q-net lr is × ``qnet_lr_decay`` after a pass
without improvement by that figure, and after ``qnet_max_decays`` decays the stage stops. The checks:

* ``qnet/valid_td`` — Eq. (16)'s squared soft TD error per sequence on corrupted validation
  references (computed here with the padded equations, independently of the learner's packed rows);
* ``qnet/greedy_bleu`` — corpus BLEU of decoding argmax_w Q_φ(s, w; y*) given the reference: an
  oracle that reads y* should reproduce it (near 100);
* the critic-quality figures of ``rayseq.evaluation.critic.score_qnet``: top-1 / top-5 accuracy of
  argmax Q for the next reference token, entropy of step 2's target P_Q = softmax(Q/τ) (τ =
  ``algo.pq_tau`` when set; on the ``algo.pq_topk`` best tokens when set), the eos margin after y*.

The finished Q-net is written to ``RUN_DIR/qnet.pt`` (``algo.qnet_init`` of a later run may reuse
it and skip step 1; such a run writes its copy there too). Step 2 (the actor, Eq. 17; from ``algo.actor_init`` when given) is the supervised epoch loop
(``rayseq.drivers.supervised.epoch_loop``) with the Q-net summary kept in its checkpoints.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayseq.algorithms.erac import step_masks
from rayseq.algorithms.supervised_rows import qnet_episodes
from rayseq.algorithms.vaml import (
    QNET_SELECT,
    VAMLConfig,
    soft_max_value,
    soft_q_loss,
    soft_q_target,
)
from rayseq.actor_io import QNET_FILE, QNET_FORMAT, critic_shape_diffs, load_critic_file, save_critic_file
from rayseq.config import RunConfig
from rayseq.data.errors import DataError
from rayseq.data.tasks import Task
from rayseq.drivers.stage import Run, open_run, say
from rayseq.drivers.supervised import build, epoch_loop
from rayseq.errors import TrainingError
from rayseq.evaluation.bleu import corpus_bleu_ids
from rayseq.evaluation.decode import translate_ids
from rayseq.algorithms.mle import PlateauSchedule
from rayseq.evaluation.critic import score_qnet
from rayseq.metrics import (
    CRITIC_TARGET_ENTROPY,
    CRITIC_TOP1_ACC,
    EPOCH_TIME_S,
    LR_QNET,
    QNET_GREEDY_BLEU,
    QNET_VALID_TD,
)
from rayseq.models.base import BOS, EOS
from rayseq.models.critic import Critic, CriticConfig
from rayseq.replay import run_replay_key
from rayseq.rollout import collate
from rayseq.run_dir import read_run_json



def qnet_config(cfg: RunConfig, task: Task) -> CriticConfig:
    """The Q-net's shape: the critic's, sized like this run's actor."""
    return CriticConfig.like_actor(cfg.seq2seq_config(len(task.src_vocab), len(task.tgt_vocab)))


def save_qnet(path: Path, state_dict: dict[str, Any], critic_cfg: CriticConfig, meta: dict[str, Any]) -> Path:
    """``qnet.pt``: format tag, the ``CriticConfig``, the weights and ``meta``; written atomically."""
    return save_critic_file(path, state_dict, asdict(critic_cfg), meta, fmt=QNET_FORMAT)


def load_qnet(spec: str, want: CriticConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state_dict, meta)`` of ``algo.qnet_init`` (a ``qnet.pt`` or a VAML run dir holding one),
    checked against this run's Q-net shape."""
    path = Path(spec)
    if path.is_dir():
        path = path / QNET_FILE
    if not path.is_file():
        raise TrainingError(f"algo.qnet_init={spec}: no Q-net file {path}; name a VAML run dir or its {QNET_FILE}.")
    try:
        obj = load_critic_file(path, fmt=QNET_FORMAT)
    except DataError as err:
        raise TrainingError(f"algo.qnet_init={err} (written by `rayseq train --algo vaml`).") from None
    diffs = critic_shape_diffs(obj["critic_config"], asdict(want))
    if diffs:
        raise TrainingError(
            f"algo.qnet_init={path}: the Q-net does not fit this run ({'; '.join(diffs)}); train it with the same "
            f"task and model settings, or drop algo.qnet_init."
        )
    return obj["state_dict"], obj.get("meta", {})


def open_run_replay(run_dir: str, seed: int = 0) -> Any:
    """The Redis replay ring of an actor-critic run's joint stage (``algo.qnet_replay=RUN_DIR``): the
    trajectories its rollout workers sampled, read as extra off-policy data for soft Q-learning."""
    from rayseq.replay_redis import RedisReplayBuffer

    try:
        info = read_run_json(run_dir)
    except Exception as err:  # noqa: BLE001
        raise TrainingError(f"algo.qnet_replay={run_dir}: not a run directory ({err}).") from None
    backend = str((info.get("algo_config") or {}).get("replay_backend", "memory"))
    if backend == "memory":
        raise TrainingError(
            f"algo.qnet_replay={run_dir}: that {info.get('algo')} run kept its replay in memory; train it with "
            f"algo.replay_backend=redis (or a redis:// URL) so that another job can read its trajectories."
        )
    try:
        return RedisReplayBuffer.open_existing(None if backend == "redis" else backend, run_replay_key(run_dir) + ":joint", seed)
    except ValueError as err:
        raise TrainingError(f"algo.qnet_replay={run_dir}: {err}") from None


def evaluate_qnet(
    critic: Critic, v: VAMLConfig, task: Task, n: int, max_len: int
) -> dict[str, float]:
    """The held-out checks on the first ``n`` validation references (see the module docstring)."""
    valid = task.split("valid")
    refs = [np.asarray(y) for y in valid.tgt[:n]]
    critic.eval()
    rng = np.random.default_rng((v.seed, 99))
    episodes = qnet_episodes([np.zeros(1, dtype=np.int64)] * len(refs), refs, v, len(task.tgt_vocab), rng)
    td, seqs = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(episodes), 300):
            cols = {k: torch.as_tensor(a) for k, a in collate(episodes[i : i + 300]).items()}
            q = critic(cols["ref"], cols["ref_len"], cols["tgt_in"])  # [N, T, V]
            mask, done = step_masks(cols["lengths"], cols["capped"], q.size(1))  # [N, T]
            target = soft_q_target(cols["rewards"], soft_max_value(q, v.tau, v.exclude_tokens), done, mask)  # Eq. 16
            q_taken = q.gather(-1, cols["actions"].unsqueeze(-1)).squeeze(-1)  # [N, T]
            td += float(soft_q_loss(q_taken, target, mask).loss) * q.size(0)
            seqs += q.size(0)
    wrapped = [np.concatenate([[BOS], y, [EOS]]).astype(np.int64) for y in refs]
    hyps = translate_ids(critic.net, wrapped, beam=1, max_len=max_len, desc="Q-net greedy")
    bleu = corpus_bleu_ids(hyps, [[y] for y in refs])["bleu"]
    quality = score_qnet(critic, (valid.src[:n], refs), v.actor_target_tau, len(refs), exclude=v.exclude_tokens,
                         top_k=v.pq_topk)
    return {QNET_VALID_TD: td / max(seqs, 1), QNET_GREEDY_BLEU: float(bleu), **quality}


def qnet_stage(run: Run) -> dict[str, Any]:
    """Step 1 (or its resumption, or ``algo.qnet_init``); leaves the algorithm in stage ``actor``.

    Checkpoints after every pass. Returns the Q-net summary that goes into ``results.json``
    (``updates``, the held-out checks, ``path``, ``wall_time_s``).
    """
    algo, cfg, task, run_dir = run.algo, run.cfg, run.task, run.run_dir
    v: VAMLConfig = cfg.algo_config
    summary = dict(run.state.get("qnet") or {})
    if summary.get("done"):
        algo.set_stage("actor")
        return summary

    def checkpoint(summary: dict[str, Any]) -> None:
        run.checkpoint({"epoch": 0, "step": algo.num_updates, "qnet": summary})

    critic_cfg = qnet_config(cfg, task)
    critic = Critic(critic_cfg)
    t0 = time.monotonic() - float(summary.get("wall_time_s", 0.0))
    if v.qnet_init:
        state_dict, meta = load_qnet(v.qnet_init, critic_cfg)
        algo.load_qnet(state_dict)
        critic.load_state_dict(state_dict)
        summary = {"source": f"qnet_init {v.qnet_init}", **{k: meta[k] for k in ("updates",) if k in meta}}
        summary.update(evaluate_qnet(critic, v, task, v.qnet_valid_sentences, cfg.max_decode_len))
        best_file = run_dir / QNET_FILE  # the run dir holds the Q-net it used (a later qnet_init may name it)
        save_qnet(best_file, state_dict, critic_cfg, {**meta, "task": cfg.task, "source": summary["source"]})
        summary["path"] = str(best_file)
    else:
        if v.qnet_replay:
            algo.attach_replay(open_run_replay(v.qnet_replay, v.seed))
        n_pairs = len(task.split("train"))
        per_epoch = max(1, math.ceil(n_pairs / v.qnet_batch_size))
        total = math.ceil(v.qnet_epochs * n_pairs / v.qnet_batch_size)
        select = QNET_SELECT[v.qnet_select]
        schedule = PlateauSchedule(lr=v.qnet_lr, decay=v.qnet_lr_decay, max_decays=v.qnet_max_decays,
                                   higher_is_better=select == QNET_GREEDY_BLEU)
        if "qnet_schedule" in run.state:
            schedule.load_state_dict(run.state["qnet_schedule"])
        algo.set_stage("qnet")
        algo.set_qnet_lr(schedule.lr)
        best_file = run_dir / QNET_FILE
        if algo.qnet_updates < total and not schedule.should_stop:
            say(f"[Q-net stage] at most {total - algo.qnet_updates} updates of soft Q-learning (Eq. 16), "
                f"τ = {v.tau}, {v.num_corruptions} corruptions per reference; held-out check every pass")
        while algo.qnet_updates < total and not schedule.should_stop:
            t_chunk = time.perf_counter()
            algo.train_qnet(min(per_epoch, total - algo.qnet_updates))
            run.log_records(algo.pop_train_log(), "Q-net stage", "a smaller algo.qnet_lr", epoch_of=lambda _: 0.0)
            weights = algo.qnet_state_dict()
            critic.load_state_dict({k: torch.tensor(np.array(x)) for k, x in weights.items()})
            checks = evaluate_qnet(critic, v, task, v.qnet_valid_sentences, cfg.max_decode_len)
            if schedule.step(checks[select]):
                save_qnet(best_file, weights, critic_cfg, {"task": cfg.task, "tau": v.tau, "updates": algo.qnet_updates,
                                                           "run_dir": str(run_dir), **checks})
            algo.set_qnet_lr(schedule.lr)
            run.writer.log(algo.num_updates, 0.0, {**checks, LR_QNET: schedule.lr, EPOCH_TIME_S: time.perf_counter() - t_chunk})
            summary = {"source": "trained", "updates": algo.qnet_updates, **checks, "wall_time_s": time.monotonic() - t0}
            say(f"[Q-net stage] update {algo.qnet_updates}/{total}: held-out TD {checks[QNET_VALID_TD]:.3f}, greedy BLEU "
                f"given y* {checks[QNET_GREEDY_BLEU]:.2f} (best {v.qnet_select} {schedule.best:.3f}), top-1 "
                f"{checks[CRITIC_TOP1_ACC]:.3f}, H(P_Q) {checks[CRITIC_TARGET_ENTROPY]:.2f}, Q-net lr {schedule.lr:g}")
            run.checkpoint({"epoch": 0, "step": algo.num_updates, "qnet": summary, "qnet_schedule": schedule.state_dict()})
        if best_file.is_file():  # the best Q-net by algo.qnet_select is the one step 2 uses
            best = load_critic_file(best_file, fmt=QNET_FORMAT)
            algo.load_qnet(best["state_dict"])
            summary = {"source": "trained", **{k: x for k, x in best["meta"].items() if k not in ("task", "run_dir")},
                       "last_updates": algo.qnet_updates, "stopped_on_plateau": bool(schedule.should_stop)}
        else:  # qnet_epochs = 0: an untrained Q-net, evaluated as is
            critic.load_state_dict({k: torch.tensor(np.array(x)) for k, x in algo.qnet_state_dict().items()})
            summary = {"source": "trained", "updates": 0, **evaluate_qnet(critic, v, task, v.qnet_valid_sentences, cfg.max_decode_len)}
            save_qnet(best_file, algo.qnet_state_dict(), critic_cfg,
                      {"task": cfg.task, "tau": v.tau, "updates": 0, "run_dir": str(run_dir)})
        summary["path"] = str(best_file)
    summary.update(done=True, wall_time_s=time.monotonic() - t0)
    checkpoint(summary)
    algo.set_stage("actor")
    return summary


def train_vaml(cfg: RunConfig, resume: bool = False, address: str | None = None) -> dict[str, Any]:
    """Run (or resume) VAML: the Q-net stage, then the actor epochs; returns ``results.json``."""
    with open_run(cfg, resume, address, build) as run:
        return epoch_loop(run, {"qnet": qnet_stage(run)}, train_actor=not cfg.algo_config.qnet_only)
