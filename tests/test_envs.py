"""The Gymnasium MDP: API conformance, reward semantics, the native vector env, RLlib's runner."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs import (
    SeqPredConfig,
    SeqPredEnv,
    SeqPredVectorEnv,
    toy_pairs,
    translation_pairs,
)
from envs.rewards import bleu_increments, sentence_bleu

EOS = 3


@pytest.fixture(scope="module")
def multi30k_pairs():
    return translation_pairs("multi30k", "valid")


@pytest.mark.parametrize("env_id", [envs.TOY_ID, envs.TRANSLATION_ID])
def test_make_with_no_arguments_and_check_env(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"src", "src_len", "prefix", "prefix_len", "ref", "ref_len"}
    assert obs["prefix_len"] == 0 and obs["ref_len"] >= 1
    assert env.observation_space.contains(obs)


def _policy_action(rng, obs, vocab):
    """Mostly the next reference token, sometimes a random one or eos: varied BLEU."""
    t, ref = int(obs["prefix_len"]), obs["ref"][: int(obs["ref_len"])]
    u = rng.random()
    if u < 0.04:
        return EOS
    if t < len(ref) and u < 0.75:
        return int(ref[t])
    return int(rng.integers(4, vocab))


def test_rewards_are_bleu_increments_and_sum_to_scaled_bleu(multi30k_pairs):
    env = SeqPredEnv(multi30k_pairs)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    for _ in range(30):
        obs, info = env.reset()
        ref = obs["ref"][: obs["ref_len"]].tolist()
        tokens, rewards, done = [], [], False
        while not done:
            a = _policy_action(rng, obs, multi30k_pairs.tgt_vocab_size)
            obs, r, done, truncated, info = env.step(a)
            assert not truncated
            rewards.append(r)
            if a != EOS:
                tokens.append(a)
            else:
                assert r == 0.0
        cap = min(len(ref) + 10, 50)
        assert len(tokens) <= cap and (len(tokens) == cap or rewards[-1] == 0.0)
        assert info["bleu"] == pytest.approx(sentence_bleu(tokens, ref), abs=1e-12)
        assert sum(rewards) == pytest.approx(len(ref) * info["bleu"], abs=1e-9)
        if tokens:
            np.testing.assert_allclose(rewards[: len(tokens)], bleu_increments(tokens, ref), rtol=0, atol=1e-12)


def test_length_cap_forces_eos_and_terminates():
    pairs = toy_pairs(num_pairs=8)
    env = SeqPredEnv(pairs, SeqPredConfig(len_slack=2))
    obs, _ = env.reset(seed=1, options={"index": 0})
    cap = len(pairs.ref[0]) + 2
    for t in range(cap):
        obs, r, done, truncated, info = env.step(4)
        assert done == (t == cap - 1) and not truncated
    assert info["length"] == cap and obs["prefix_len"] == cap
    with pytest.raises(RuntimeError, match="reset"):
        env.step(4)


def test_episode_order_is_seeded_and_covers_every_pair():
    pairs = toy_pairs(num_pairs=10)
    env = SeqPredEnv(pairs)
    seen = [env.reset(seed=3)[1]["index"]] + [env.reset()[1]["index"] for _ in range(9)]
    assert sorted(seen) == list(range(10))  # one epoch visits each pair once
    again = [env.reset(seed=3)[1]["index"]] + [env.reset()[1]["index"] for _ in range(9)]
    assert again == seen


def test_bad_input_errors():
    env = SeqPredEnv(toy_pairs(num_pairs=4))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside the target vocabulary"):
        env.step(99)
    with pytest.raises(TypeError, match="unknown option"):
        gym.make(envs.TOY_ID, colour="red")
    with pytest.raises(ValueError, match="smooth"):
        SeqPredConfig(smooth="plus2")


def test_explicit_files(tmp_path):
    (tmp_path / "s.de").write_text("ein mann .\nzwei hunde\n", encoding="utf-8")
    (tmp_path / "t.en").write_text("a man .\ntwo dogs\n", encoding="utf-8")
    env = gym.make(envs.TRANSLATION_ID, src_file=tmp_path / "s.de", tgt_file=tmp_path / "t.en")
    obs, _ = env.reset(seed=0, options={"index": 1})
    assert obs["ref_len"] == 2 and obs["src_len"] == 2


@pytest.mark.parametrize("num_envs", [1, 5])
def test_vector_env_equals_single_envs(multi30k_pairs, num_envs):
    """Sub-env i of the native vector env yields exactly what a single env seeded seed+i yields."""
    cfg = SeqPredConfig(len_slack=3)
    venv = SeqPredVectorEnv(multi30k_pairs, num_envs, cfg)
    singles = [SeqPredEnv(multi30k_pairs, cfg) for _ in range(num_envs)]
    vobs, _ = venv.reset(seed=42)
    sobs = [e.reset(seed=42 + i)[0] for i, e in enumerate(singles)]
    needs_reset = [False] * num_envs
    rng = np.random.default_rng(0)
    finished = 0
    for _ in range(300):
        for i in range(num_envs):
            for k in vobs:
                np.testing.assert_array_equal(vobs[k][i], sobs[i][k])
        actions = np.array([_policy_action(rng, sobs[i], multi30k_pairs.tgt_vocab_size) for i in range(num_envs)])
        vobs, vr, vterm, vtrunc, vinfo = venv.step(actions)
        for i, env in enumerate(singles):
            if needs_reset[i]:  # NEXT_STEP autoreset: this step resets, reward 0
                sobs[i], _ = env.reset()
                r, term, info = 0.0, False, {}
            else:
                sobs[i], r, term, _, info = env.step(actions[i])
            assert vr[i] == pytest.approx(r, abs=1e-12) and vterm[i] == term and not vtrunc[i]
            if term:
                finished += 1
                assert vinfo["_bleu"][i] and vinfo["bleu"][i] == pytest.approx(info["bleu"], abs=1e-12)
            needs_reset[i] = term
    assert finished >= num_envs  # episodes did end and restart


def test_make_vec_gives_the_native_vector_env():
    venv = gym.make_vec(envs.TOY_ID, num_envs=3, vectorization_mode="vector_entry_point")
    assert isinstance(venv.unwrapped, SeqPredVectorEnv)
    obs, _ = venv.reset(seed=0)
    assert obs["prefix"].shape == (3, 50) and venv.action_space.shape == (3,)
    obs, r, term, trunc, _ = venv.step(np.array([EOS, EOS, 4]))
    assert term.tolist() == [True, True, False] and r[:2].tolist() == [0.0, 0.0]


def test_rllib_env_runner_builds_and_samples_the_vector_env():
    """RLlib's SingleAgentEnvRunner creates our vector env (it passes num_envs) and samples from it."""
    import torch  # a required dependency (RLlib's torch stack)
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.core.rl_module.torch import TorchRLModule
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
    from ray.tune.registry import register_env

    class UniformModule(TorchRLModule):
        def setup(self):
            self.bias = torch.nn.Parameter(torch.zeros(self.action_space.n))

        def _forward(self, batch, **kwargs):
            n = batch["obs"]["prefix"].shape[0]
            return {"action_dist_inputs": self.bias.expand(n, -1)}

    register_env("rayseq-test-toy", envs.make_env)
    config = (
        PPOConfig()
        .environment("rayseq-test-toy", env_config={"env": envs.TOY_ID, "num_pairs": 32})
        .env_runners(num_envs_per_env_runner=4, gym_env_vectorize_mode="vector_entry_point")
        .rl_module(rl_module_spec=RLModuleSpec(module_class=UniformModule))
    )
    runner = SingleAgentEnvRunner(config=config)
    try:
        assert isinstance(runner.env.unwrapped, SeqPredVectorEnv) and runner.num_envs == 4
        episodes = runner.sample(num_timesteps=300)
        done = [e for e in episodes if e.is_done]
        assert done and sum(len(e) for e in episodes) >= 300
        for e in done:
            assert 0.0 <= e.get_return() <= 5.0 + 1e-9  # |y*| <= 5 on the toy task; BLEU <= 1
    finally:
        runner.stop()
