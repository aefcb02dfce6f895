"""The rollout sampler (incremental decoding over the vector env), collate and the replay buffer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from envs import SeqPredConfig, SeqPredVectorEnv, translation_pairs
from envs.pairs import toy_pairs
from rayseq.algorithms.erac import policy_log_probs, token_rewards
from rayseq.models.base import BOS, EOS
from rayseq.models.seq2seq import Seq2Seq, Seq2SeqConfig
from rayseq.replay import ReplayBuffer
from rayseq.rollout import Episode, RolloutSampler, collate


def _actor(vocab_src: int, vocab_tgt: int, input_feeding: bool = False) -> Seq2Seq:
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(src_vocab_size=vocab_src, tgt_vocab_size=vocab_tgt, emb_dim=16, enc_hidden=8, dec_hidden=16,
                        dropout=0.0, input_feeding=input_feeding)
    return Seq2Seq(cfg).eval()


@pytest.mark.parametrize("input_feeding,on_policy", [(False, False), (True, False), (False, True)])
def test_incremental_sampling_matches_teacher_forced_log_probs_and_env_rewards(input_feeding: bool, on_policy: bool) -> None:
    torch.set_num_threads(1)
    pairs = toy_pairs(num_pairs=64, max_len=7, seed=3)
    env = SeqPredVectorEnv(pairs, 5, SeqPredConfig(max_len=6, len_slack=2))
    actor = _actor(pairs.src_vocab_size, pairs.tgt_vocab_size, input_feeding)
    sampler = RolloutSampler(actor, env, seed=1)
    sampler.set_weights(actor.state_dict(), version=2)
    episodes = sampler.collect(30, on_policy) + sampler.collect(7, on_policy)  # rows restart, widths change
    if on_policy:
        assert len(episodes) == 37 and {e.version for e in episodes} == {2}
    assert len(episodes) >= 37
    assert any(e.capped for e in episodes) and not all(e.capped for e in episodes)
    batch = collate(episodes)
    src = torch.as_tensor(batch["src"])
    with torch.no_grad():
        logits = actor(src, torch.as_tensor(batch["src_len"]), torch.as_tensor(batch["tgt_in"]))
    logp = policy_log_probs(logits)
    taken = logp.gather(-1, torch.as_tensor(batch["actions"]).unsqueeze(-1)).squeeze(-1)
    lengths = torch.as_tensor(batch["lengths"])
    capped = torch.as_tensor(batch["capped"])
    t = torch.arange(taken.size(1))
    steps = (t.unsqueeze(0) < (lengths + (~capped).long()).unsqueeze(1))  # actions actually taken
    np.testing.assert_allclose(taken[steps].numpy(), batch["behaviour_logp"][steps.numpy()], atol=1e-5)
    # rewards: the env's incremental BLEU equals the batched prefix BLEU of the learner's helper
    toks = torch.as_tensor(batch["tgt_in"][:, 1:])
    expect = token_rewards(toks, lengths, [e.ref for e in episodes], width=taken.size(1))
    np.testing.assert_allclose(batch["rewards"], expect.numpy(), atol=1e-5)
    for e in episodes:
        assert e.capped == (e.length == min(len(e.ref) + 2, 6))
        assert (e.tokens != EOS).all() and (e.tokens != BOS).all() and (e.tokens != 0).all()
        assert e.rewards[-1] == 0 or e.capped
        ref_i = pairs.ref[e.index]
        np.testing.assert_array_equal(e.ref, ref_i)
        np.testing.assert_array_equal(e.src, pairs.src[e.index])


def test_sampler_on_translation_pairs_and_weights_version() -> None:
    torch.set_num_threads(1)
    pairs = translation_pairs("multi30k", split="valid")
    env = SeqPredVectorEnv(pairs, 8, SeqPredConfig())
    actor = _actor(pairs.src_vocab_size, pairs.tgt_vocab_size)
    sampler = RolloutSampler(actor, env, seed=0)
    first = sampler.collect(8)
    assert {e.version for e in first} == {0}
    sampler.set_weights(actor.state_dict(), version=7)
    later = sampler.collect(40)
    assert 7 in {e.version for e in later}
    total = sum(e.bleu_scaled for e in later)
    assert np.isfinite(total)


def test_step_rows_steps_only_the_given_rows_and_refuses_finished_ones() -> None:
    pairs = toy_pairs(num_pairs=16, seed=1)
    env = SeqPredVectorEnv(pairs, 3, SeqPredConfig(max_len=4, len_slack=1))
    env.reset(seed=0)
    before = env.observations()
    rewards, done = env.step_rows(np.array([1]), np.array([EOS]))
    after = env.observations()
    assert done.tolist() == [True] and rewards.tolist() == [0.0]
    np.testing.assert_array_equal(before["prefix"], after["prefix"])
    with pytest.raises(RuntimeError, match="reset it first"):
        env.step_rows(np.array([1]), np.array([4]))
    env.step_rows(np.array([0, 2]), np.array([4, 5]))
    assert env.observations()["prefix_len"].tolist() == [1, 0, 1]


def test_collate_layout() -> None:
    e1 = Episode(src=np.array([5, 6]), ref=np.array([7, 8, 9]), tokens=np.array([7, 8]), rewards=np.array([1, 2, 0], np.float32),
                 logp=np.array([-1, -2, -3], np.float32), capped=False, version=3, index=0)
    e2 = Episode(src=np.array([5]), ref=np.array([7]), tokens=np.array([9, 9, 9]), rewards=np.array([0, 0, 0, 0], np.float32),
                 logp=np.array([-1, -1, -1, 0], np.float32), capped=True, version=4, index=1)
    b = collate([e1, e2])
    np.testing.assert_array_equal(b["tgt_in"], [[BOS, 7, 8, 0], [BOS, 9, 9, 9]])
    np.testing.assert_array_equal(b["actions"], [[7, 8, EOS, 0], [9, 9, 9, EOS]])
    np.testing.assert_array_equal(b["ref_in"], [[BOS, 7, 8, 9], [BOS, 7, 0, 0]])
    np.testing.assert_array_equal(b["ref_out"], [[7, 8, 9, EOS], [7, EOS, 0, 0]])
    np.testing.assert_array_equal(b["lengths"], [2, 3])
    np.testing.assert_array_equal(b["capped"], [False, True])
    np.testing.assert_array_equal(b["version"], [3, 4])
    np.testing.assert_array_equal(b["rewards"][0], [1, 2, 0, 0])
    with pytest.raises(ValueError, match="no episodes"):
        collate([])


def _ep(i: int) -> Episode:
    return Episode(src=np.array([4]), ref=np.array([4]), tokens=np.array([4]), rewards=np.zeros(2, np.float32),
                   logp=np.zeros(2, np.float32), capped=False, version=i, index=i)


def test_replay_insert_sample_capacity() -> None:
    buf = ReplayBuffer(capacity=5, seed=0)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(1)
    buf.add(_ep(i) for i in range(3))
    assert len(buf) == 3
    assert sorted(e.index for e in buf.sample(3)) == [0, 1, 2]  # without replacement
    buf.add(_ep(i) for i in range(3, 8))
    assert len(buf) == 5 and buf.stats().dropped == 3 and buf.stats().added == 8
    assert {e.index for e in buf.sample(5)} == {3, 4, 5, 6, 7}  # the oldest were dropped
    assert len(buf.sample(12)) == 12  # with replacement beyond the size
    fresh = buf.sample(4, fresh_first=2)
    assert [e.index for e in fresh[:2]] == [6, 7]
    assert all(e.index in {3, 4, 5} for e in fresh[2:])
    state = buf.state_dict()
    a = [e.index for e in buf.sample(4)]
    buf.load_state_dict(state)
    assert [e.index for e in buf.sample(4)] == a
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0)
