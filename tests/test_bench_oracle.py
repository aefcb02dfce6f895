"""``rayseq bench oracle``: the real ERAC critic/actor networks and losses against the exact oracle
of ``envs.oracle`` (Proposition 1) on a tiny ToySeq-like MDP."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rayseq.bench.oracle import (
    OracleBenchConfig,
    kl_divergence,
    make_mdp,
    run,
    state_inputs,
    state_visitation,
)

# Fewer, smaller updates than the defaults (~10 s on one thread); still far inside the bounds.
SMALL = {"critic_steps": 400, "joint_steps": 300, "batch_size": 32, "vaml_steps": 300, "progress": False}

KEYS = {
    "critic_q_rmse", "policy_kl_before", "policy_kl_after", "q_scale", "num_states", "tau",
    "critic_steps", "joint_steps", "wall_s",
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def result() -> dict:
    out = run(OracleBenchConfig(**SMALL))
    print("\noracle bench:", json.dumps({k: v for k, v in out.items() if k != "config"}))
    return out


def test_result_keys_and_json(result: dict) -> None:
    assert KEYS <= result.keys()
    back = json.loads(json.dumps(result))
    assert back["config"]["critic_steps"] == SMALL["critic_steps"]
    for k, v in result.items():
        if isinstance(v, float):
            assert math.isfinite(v), k
    assert result["num_states"] == 13  # 1 + 3 + 9 prefixes of length < 3 over 3 symbols
    assert result["critic_steps"] == 400 and result["joint_steps"] == 300
    assert result["tau"] == OracleBenchConfig().tau


def test_sampled_rewards_match_the_oracle(result: dict) -> None:
    assert result["reward_max_abs_err"] < 1e-5


def test_critic_converges_to_soft_q_of_the_frozen_actor(result: dict) -> None:
    rmse, scale = result["critic_q_rmse"], result["q_scale"]
    assert scale > 1.0
    assert rmse < 0.1 * scale
    assert rmse < 0.1 * result["critic_q_rmse_init"]
    # Discriminates the entropy term: Q^π without it (τ = 0) is much farther away.
    assert rmse < 0.25 * result["hard_q_gap"]


def test_joint_erac_approaches_the_boltzmann_policy_of_soft_q_star(result: dict) -> None:
    before, after = result["policy_kl_before"], result["policy_kl_after"]
    assert before > 0.05
    assert 0 <= after < 0.25 * before
    assert 0 <= result["policy_kl_after_visited"] < 0.25 * result["policy_kl_before_visited"]
    # The actor's soft value at the root is (nearly) the optimum V*, up from the random actor's.
    gap_before = result["soft_value_optimal"] - result["soft_value_before"]
    gap_after = result["soft_value_optimal"] - result["soft_value_after"]
    assert gap_before > 0.1 and -1e-6 <= gap_after < 0.1 * gap_before


def test_vaml_qnet_recovers_q_r_of_proposition_1(result: dict) -> None:
    """Soft Q-learning (Eq. 16) on corrupted references + exploratory sequences → Q* = Q_R."""
    assert result["vaml_q_rmse_rel"] < 0.03, result["vaml_q_rmse"]
    assert result["vaml_q_rmse"] < 0.1 * result["vaml_q_rmse_init"]
    assert result["vaml_kl"] < 1e-2


def test_helpers() -> None:
    mdp = make_mdp(OracleBenchConfig())
    states, tgt_in, pos = state_inputs(mdp)
    assert states == mdp.states() and tgt_in.shape == (13, 3) and pos.tolist()[:4] == [0, 1, 1, 1]
    assert tgt_in[4].tolist() == [2, 4, 4]  # <bos> 4 4 for the state (4, 4)
    uniform = {s: np.full(4, 0.25) for s in states}
    reach = state_visitation(mdp, uniform)
    assert reach[()] == 1.0 and reach[(5,)] == 0.25 and reach[(5, 6)] == 0.0625
    assert kl_divergence(np.array([0.5, 0.5, 0.0]), np.array([0.5, 0.5, 0.0])) == 0.0
    assert kl_divergence(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="ref"):
        make_mdp(OracleBenchConfig(ref=(4, 9)))
    with pytest.raises(ValueError, match="tau"):
        run(OracleBenchConfig(tau=0.0))
