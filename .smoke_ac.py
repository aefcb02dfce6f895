import sys, time
from dataclasses import asdict
import torch
torch.set_num_threads(1)
from gymnasium import spaces
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from envs.seqpred import SeqPredConfig, observation_space
from rayseq.runtime.session import init_ray
from rayseq.runtime.actor_critic import ActorCriticConfig
from rayseq.runtime.ac_learner import ActorCriticRLModule
from rayseq.runtime.rollout_runner import task_pairs
from rayseq.models.seq2seq import Seq2SeqConfig
from rayseq.algorithms.erac import ERACConfig
nrun = int(sys.argv[1]); sched = sys.argv[2]
init_ray(num_cpus=4)
pairs = task_pairs("toy", None)
mc = asdict(Seq2SeqConfig(src_vocab_size=pairs.src_vocab_size, tgt_vocab_size=pairs.tgt_vocab_size, emb_dim=16, enc_hidden=8, dec_hidden=16, dropout=0.0))
cfg = (ActorCriticConfig()
  .environment(observation_space=observation_space(pairs, SeqPredConfig()), action_space=spaces.Discrete(pairs.tgt_vocab_size), env_config={"task": "toy"})
  .rl_module(rl_module_spec=RLModuleSpec(module_class=ActorCriticRLModule, model_config=mc))
  .env_runners(num_env_runners=nrun, num_envs_per_env_runner=8, create_local_env_runner=(nrun == 0))
  .learners(num_learners=0)
  .debugging(seed=1))
cfg.objective_config = asdict(ERACConfig(batch_size=8))
cfg.task = "toy"; cfg.schedule = sched; cfg.updates_per_iteration = 10; cfg.log_every = 5; cfg.show_progress = False
t = time.time()
algo = cfg.build_algo()
print("built", time.time() - t)
algo.set_stage("critic")
algo.train()
algo.set_stage("joint")
algo.train()
print(algo.pop_train_log()[-1])
print(len(algo.actor_state_dict()))
algo.stop()
