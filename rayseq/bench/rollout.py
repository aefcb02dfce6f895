"""``rayseq bench rollout``: sampled tokens/s of one rollout worker, ours vs RLlib's default runner.

Both sides sample translations of Multi30k training sources from the same actor (the paper-size
``Seq2Seq`` inside the project's RLModule, same random weights) on the same native vector env
(:class:`envs.vector.SeqPredVectorEnv`, BLEU-increment rewards included), with the same number of
parallel sequences, in the same process, one torch thread each (a worker's CPU):

* **ours**: :class:`rayseq.runtime.rollout_runner.SeqRolloutRunner` — incremental decoding with the
  decoder state carried token to token, rows restarted as their episodes end;
* **RLlib default**: ``SingleAgentEnvRunner`` configured as RLlib's docs recommend for a batched
  env — the env's own vector entry point (``gym_env_vectorize_mode="vector_entry_point"``),
  ``num_envs_per_env_runner`` = the same count, exploration on, default connectors; the module's
  ``_forward`` reads each observation statelessly (source + prefix), as any RLlib module must
  without an RNN-state connector.

A token is one env step (an action, eos included). ``speedup`` = ours ÷ RLlib default.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch


@dataclass
class RolloutBenchConfig:
    envs: int = 64
    """Parallel sequences per worker for the headline figures."""
    also_envs: tuple[int, ...] = (256,)
    """Further sizes, reported under ``envs_<n>``."""
    seconds: float = 20.0
    """Timed sampling per side and size (after a warm-up)."""
    seed: int = 0


def _model_config() -> dict:
    from rayseq.config import ModelConfig
    from rayseq.data.tasks import load_task

    task = load_task("multi30k")
    return asdict(ModelConfig(dropout=0.0).to_seq2seq(len(task.src_vocab), len(task.tgt_vocab)))


def _base_config(envs: int, model_config: dict, seed: int):
    from gymnasium import spaces
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from envs.seqpred import SeqPredConfig, observation_space
    from rayseq.runtime.ac_learner import ActorCriticRLModule
    from rayseq.runtime.actor_critic import ActorCriticConfig
    from rayseq.runtime.rollout_runner import task_pairs

    pairs = task_pairs("multi30k", None)
    return (
        ActorCriticConfig()  # any new-stack config; this one adds no model_config defaults
        .environment(
            "rayseq-bench-translation",
            env_config={"env": "rayseq/Translation-v0", "task": "multi30k", "split": "train"},
            observation_space=observation_space(pairs, SeqPredConfig()),
            action_space=spaces.Discrete(pairs.tgt_vocab_size),
        )
        .env_runners(num_envs_per_env_runner=envs, gym_env_vectorize_mode="vector_entry_point", explore=True)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=ActorCriticRLModule, model_config=model_config, inference_only=True))
        .debugging(seed=seed)
    )


def _time_ours(envs: int, model_config: dict, seconds: float, seed: int, weights: dict) -> dict:
    from rayseq.runtime.rollout_runner import SeqRolloutRunner

    cfg = _base_config(envs, model_config, seed)
    cfg.env_config = {"task": "multi30k", "data_dir": None, "len_slack": 10, "max_len": 50, "sample_train_mode": False}
    runner = SeqRolloutRunner(config=cfg, worker_index=0)
    runner.module.set_state(weights)
    try:
        runner.sample_episodes(envs)  # warm-up
        tokens, episodes, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            out = runner.sample_episodes(envs)
            tokens += out["tokens"]
            episodes += len(out["episodes"])
        elapsed = time.perf_counter() - t0
    finally:
        runner.stop()
    return {"tokens_per_s": tokens / elapsed, "episodes_per_s": episodes / elapsed, "tokens": tokens}


def _time_rllib(envs: int, model_config: dict, seconds: float, seed: int, weights: dict) -> dict:
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
    from ray.tune.registry import register_env

    import envs as rayseq_envs

    register_env("rayseq-bench-translation", rayseq_envs.make_env)
    cfg = _base_config(envs, model_config, seed)
    runner = SingleAgentEnvRunner(config=cfg)
    runner.module.set_state(weights)
    runner.module.eval()
    try:
        runner.sample(num_timesteps=envs * 4)  # warm-up
        tokens, episodes, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            eps = runner.sample(num_timesteps=envs * 8)
            tokens += sum(len(e) for e in eps)
            episodes += sum(1 for e in eps if e.is_done)
        elapsed = time.perf_counter() - t0
    finally:
        runner.stop()
    return {"tokens_per_s": tokens / elapsed, "episodes_per_s": episodes / elapsed, "tokens": tokens}


def run(cfg: RolloutBenchConfig) -> dict:
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rayseq.runtime.ac_learner import ActorCriticRLModule

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(cfg.seed)
        model_config = _model_config()
        base = _base_config(cfg.envs, model_config, cfg.seed)
        module = RLModuleSpec(module_class=ActorCriticRLModule, model_config=model_config, inference_only=True,
                              observation_space=base.observation_space, action_space=base.action_space).build()
        weights = module.get_state()
        result: dict = {"threads_per_worker": 1, "seconds_per_side": cfg.seconds}
        for i, envs in enumerate((cfg.envs, *cfg.also_envs)):
            ours = _time_ours(envs, model_config, cfg.seconds, cfg.seed, weights)
            rllib = _time_rllib(envs, model_config, cfg.seconds, cfg.seed, weights)
            row = {
                "envs_per_worker": envs,
                "ours_tokens_per_s": ours["tokens_per_s"],
                "rllib_default_tokens_per_s": rllib["tokens_per_s"],
                "speedup": ours["tokens_per_s"] / rllib["tokens_per_s"],
                "ours_episodes_per_s": ours["episodes_per_s"],
                "rllib_default_episodes_per_s": rllib["episodes_per_s"],
            }
            if i == 0:
                result.update(row)
            else:
                result[f"envs_{envs}"] = row
        return result
    finally:
        torch.set_num_threads(threads)
