"""Seq2Seq (rayseq.models.seq2seq) and decoding (rayseq.decoding) on tiny models."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from rayseq.decoding import (
    BANNED_TOKENS,
    beam_search,
    greedy,
    mask_logits,
    sample,
    teacher_forcing_io,
)
from rayseq.models.base import BOS, EOS, PAD, UNK, IncrementalDecoder
from rayseq.models.seq2seq import Seq2Seq, Seq2SeqConfig

CONFIGS = [
    pytest.param(dict(input_feeding=False, attention="dot"), id="dot"),
    pytest.param(dict(input_feeding=True, attention="dot"), id="dot-feed"),
    pytest.param(dict(input_feeding=False, attention="mlp"), id="mlp"),
    pytest.param(dict(input_feeding=True, attention="mlp", att_out_bias=True), id="mlp-feed"),
]


def tiny_model(seed: int = 0, src_vocab: int = 11, tgt_vocab: int = 9, **overrides) -> Seq2Seq:
    torch.manual_seed(seed)
    cfg = dict(
        src_vocab_size=src_vocab,
        tgt_vocab_size=tgt_vocab,
        emb_dim=8,
        enc_hidden=6,
        dec_hidden=12,
        dropout=0.3,
    )
    cfg.update(overrides)
    return Seq2Seq(Seq2SeqConfig(**cfg)).eval()


def random_batch(
    seed: int, batch: int, src_vocab: int, lengths: list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded source ids [B, S] (no specials) and their lengths [B]."""
    g = torch.Generator().manual_seed(seed)
    if lengths is None:
        lengths = torch.randint(1, 8, (batch,), generator=g).tolist()
    src = torch.full((batch, max(lengths)), PAD, dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, :n] = torch.randint(4, src_vocab, (n,), generator=g)
    return src, torch.tensor(lengths)


def random_targets(seed: int, batch: int, tgt_vocab: int, length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tgt_in = torch.randint(4, tgt_vocab, (batch, length), generator=g)
    tgt_in[:, 0] = BOS
    return tgt_in


def sequence_logprob(
    model: Seq2Seq, src: torch.Tensor, src_len: torch.Tensor, tokens: torch.Tensor,
    lengths: torch.Tensor, banned=BANNED_TOKENS,
) -> torch.Tensor:
    """log p(tokens + <eos> | src) [N] under the masked decoding policy, via teacher forcing."""
    tgt_in, tgt_out = teacher_forcing_io(tokens, lengths)
    with torch.no_grad():
        logp = F.log_softmax(mask_logits(model(src, src_len, tgt_in), banned), dim=-1)
    tok_logp = logp.gather(2, tgt_out.unsqueeze(2)).squeeze(2)  # [N, T+1]
    return tok_logp.masked_fill(tgt_out == PAD, 0.0).sum(1)


# ----------------------------------------------------------------------- model


def test_seq2seq_satisfies_protocol_and_paper_shapes():
    model = Seq2Seq(Seq2SeqConfig(src_vocab_size=50, tgt_vocab_size=40))
    assert isinstance(model, IncrementalDecoder)
    assert model.encoder.hidden_size == 128 and model.encoder.bidirectional
    assert model.decoder.hidden_size == 256 and model.att_proj.bias is None
    assert model.att_proj.in_features == 512 and model.out.in_features == 256
    assert all(p.abs().max() <= 0.1 for p in model.parameters())
    with pytest.raises(ValueError, match="dec_hidden"):
        Seq2SeqConfig(src_vocab_size=5, tgt_vocab_size=5, enc_hidden=100)
    with pytest.raises(ValueError, match="attention"):
        Seq2SeqConfig(src_vocab_size=5, tgt_vocab_size=5, attention="general")


@pytest.mark.parametrize("overrides", CONFIGS)
def test_forward_equals_incremental_steps(overrides):
    model = tiny_model(**overrides)
    src, src_len = random_batch(1, 5, 11, lengths=[3, 7, 1, 5, 7])
    tgt_in = random_targets(2, 5, 9, 6)
    with torch.no_grad():
        full = model(src, src_len, tgt_in)  # [B, T, V]
        enc = model.encode(src, src_len)
        state = model.init_state(enc)
        steps = []
        for t in range(tgt_in.size(1)):
            logits, state = model.step(enc, state, tgt_in[:, t])
            steps.append(logits)
    assert full.shape == (5, 6, 9)
    torch.testing.assert_close(full, torch.stack(steps, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("overrides", CONFIGS)
def test_source_padding_does_not_change_outputs(overrides):
    model = tiny_model(**overrides)
    src, src_len = random_batch(3, 3, 11, lengths=[2, 6, 4])
    tgt_in = random_targets(4, 3, 9, 5)
    with torch.no_grad():
        batched = model(src, src_len, tgt_in)
        for i in range(3):
            n = int(src_len[i])
            alone = model(src[i : i + 1, :n], src_len[i : i + 1], tgt_in[i : i + 1])
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=0)
            # Garbage (non-pad ids) beyond the length is ignored too.
            junk = torch.cat([src[i : i + 1, :n], torch.full((1, 4), 7)], 1)
            torch.testing.assert_close(model(junk, src_len[i : i + 1], tgt_in[i : i + 1]), alone,
                                       atol=1e-5, rtol=0)
    tok_b, len_b, sc_b = beam_search(model, src, src_len, beam_size=3, max_len=8)
    tok_0, len_0, sc_0 = beam_search(model, src[:1, :2], src_len[:1], beam_size=3, max_len=8)
    assert len_b[0] == len_0[0] and torch.equal(tok_b[0, : len_0[0]], tok_0[0, : len_0[0]])
    torch.testing.assert_close(sc_b[:1], sc_0, atol=1e-5, rtol=0)


def test_expand_encoder_and_state_index_select():
    model = tiny_model(attention="mlp")
    src, src_len = random_batch(5, 3, 11)
    with torch.no_grad():
        enc = model.encode(src, src_len)
        big = model.expand_encoder(enc, 4)
        assert big.memory.shape[0] == 12 and big.keys.shape[0] == 12
        torch.testing.assert_close(big.memory[4:8], enc.memory[1:2].expand(4, -1, -1))
        state = model.init_state(big).index_select(torch.tensor([5, 0]))
        assert state.h.shape == (2, 12) and torch.equal(state.h[0], enc.h0[1])
        assert model.init_state(enc).to(torch.float64).h.dtype == torch.float64


def test_decode_scores_several_targets_per_source_and_rejects_mismatch():
    model = tiny_model()
    src, src_len = random_batch(6, 2, 11)
    tgt_in = random_targets(7, 6, 9, 4)
    with torch.no_grad():
        enc = model.encode(src, src_len)
        many = model.decode(model.expand_encoder(enc, 3), tgt_in)
        one = model(src[1:2, : int(src_len[1])], src_len[1:2], tgt_in[4:5])
        torch.testing.assert_close(many[4:5], one, atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="expand_encoder"):
            model.decode(enc, tgt_in)


# -------------------------------------------------------------------- decoding


def test_mask_logits_and_teacher_forcing_io():
    logits = torch.zeros(2, 6)
    masked = mask_logits(logits)
    assert torch.isinf(masked[:, [PAD, BOS]]).all() and torch.isfinite(masked[:, [UNK, EOS, 4, 5]]).all()
    assert torch.equal(logits, torch.zeros(2, 6))  # out of place
    tgt_in, tgt_out = teacher_forcing_io(torch.tensor([[5, 6, 7], [8, 0, 0]]), torch.tensor([3, 1]))
    assert tgt_in.tolist() == [[BOS, 5, 6, 7], [BOS, 8, 0, 0]]
    assert tgt_out.tolist() == [[5, 6, 7, EOS], [8, EOS, 0, 0]]


@pytest.mark.parametrize("overrides", CONFIGS[:2])
def test_beam_size_one_is_greedy(overrides):
    model = tiny_model(seed=3, init_range=1.0, **overrides)
    src, src_len = random_batch(8, 16, 11)
    g_tok, g_len = greedy(model, src, src_len, max_len=12)
    b_tok, b_len, b_score = beam_search(model, src, src_len, beam_size=1, max_len=12)
    assert torch.equal(g_len, b_len) and torch.equal(g_tok, b_tok)
    torch.testing.assert_close(b_score, sequence_logprob(model, src, src_len, g_tok, g_len),
                               atol=1e-4, rtol=0)


def _exhaustive_argmax(model, src, src_len, max_len, producible, banned):
    """Best (tokens, logprob) over every sequence of < max_len producible tokens, per source."""
    best = []
    for i in range(src.size(0)):
        seqs = [s for n in range(max_len) for s in itertools.product(producible, repeat=n)]
        tokens = torch.zeros(len(seqs), max_len - 1, dtype=torch.long)
        for j, s in enumerate(seqs):
            tokens[j, : len(s)] = torch.tensor(s, dtype=torch.long)
        lengths = torch.tensor([len(s) for s in seqs])
        n = len(seqs)
        lp = sequence_logprob(model, src[i : i + 1].expand(n, -1), src_len[i : i + 1].expand(n),
                              tokens, lengths, banned)
        j = int(lp.argmax())
        best.append((list(seqs[j]), float(lp[j])))
    return best


@pytest.mark.parametrize(
    "banned,beam_size",
    [pytest.param(BANNED_TOKENS, 128, id="unk-allowed"), pytest.param((PAD, BOS, UNK), 64, id="unk-banned")],
)
def test_large_beam_finds_the_exact_argmax(banned, beam_size):
    """3 real tokens + specials, max_len 4: enumerate all sequences; a beam wider than the
    candidate set of every step must return the global optimum."""
    producible = [t for t in range(7) if t not in banned and t != EOS]
    found_lengths, narrow_beam_worse = [], 0
    for seed in range(4):
        model = tiny_model(seed=seed, tgt_vocab=7, init_range=1.5, dropout=0.0)
        with torch.no_grad():  # make <eos> unlikely so the optima are not all the empty sequence
            model.out.bias[EOS] -= 4.0
        src, src_len = random_batch(10 + seed, 3, 11)
        tok, lengths, scores = beam_search(model, src, src_len, beam_size=beam_size, max_len=4,
                                           banned=banned)
        best = _exhaustive_argmax(model, src, src_len, 4, producible, banned)
        for i, (seq, lp) in enumerate(best):
            assert tok[i, : lengths[i]].tolist() == seq
            assert scores[i].item() == pytest.approx(lp, abs=1e-5)
        found_lengths += lengths.tolist()
        _, _, narrow = beam_search(model, src, src_len, beam_size=2, max_len=4, banned=banned)
        narrow_beam_worse += int((narrow < scores - 1e-5).sum())
    # The check is not vacuous: optima of several lengths, and a narrow beam misses some.
    assert len(set(found_lengths)) >= 3 and narrow_beam_worse >= 3


def test_beam_five_scores_at_least_greedy():
    for seed in range(3):
        model = tiny_model(seed=seed, init_range=1.0)
        src, src_len = random_batch(20 + seed, 12, 11)
        g_tok, g_len = greedy(model, src, src_len, max_len=10)
        g_score = sequence_logprob(model, src, src_len, g_tok, g_len)
        b_tok, b_len, b_score = beam_search(model, src, src_len, beam_size=5, max_len=10)
        assert (b_score >= g_score - 1e-5).all()
        torch.testing.assert_close(b_score, sequence_logprob(model, src, src_len, b_tok, b_len),
                                   atol=1e-4, rtol=0)


def test_length_penalty_normalises_scores():
    model = tiny_model(seed=1, init_range=1.0)
    src, src_len = random_batch(30, 6, 11)
    alpha = 0.8
    tok, lengths, scores = beam_search(model, src, src_len, beam_size=4, max_len=10,
                                       length_penalty=alpha)
    raw = sequence_logprob(model, src, src_len, tok, lengths)
    torch.testing.assert_close(scores, raw / ((5.0 + lengths + 1) / 6.0) ** alpha, atol=1e-4, rtol=0)


@pytest.mark.parametrize("overrides", CONFIGS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sample_logprobs_are_the_policy_logprobs(overrides, temperature):
    model = tiny_model(seed=4, init_range=0.5, **overrides)
    src, src_len = random_batch(40, 4, 11)
    k = 3
    tokens, lengths, logprobs = sample(model, src, src_len, max_len=9, temperature=temperature,
                                       num_samples=k, generator=torch.Generator().manual_seed(0))
    assert tokens.shape[0] == 12 and logprobs.shape == (12, tokens.shape[1] + 1)
    rep_src, rep_len = src.repeat_interleave(k, 0), src_len.repeat_interleave(k)
    tgt_in, tgt_out = teacher_forcing_io(tokens, lengths)
    with torch.no_grad():
        ref = F.log_softmax(mask_logits(model(rep_src, rep_len, tgt_in)) / temperature, dim=-1)
    ref = ref.gather(2, tgt_out.unsqueeze(2)).squeeze(2).masked_fill(tgt_out == PAD, 0.0)
    torch.testing.assert_close(logprobs, ref, atol=1e-5, rtol=0)


def test_samples_never_contain_pad_or_bos_and_are_reproducible():
    model = tiny_model(seed=5)
    with torch.no_grad():  # a model that would love to emit <pad>/<bos>
        model.out.bias[PAD] += 10.0
        model.out.bias[BOS] += 10.0
    src, src_len = random_batch(50, 8, 11)
    tokens, lengths, _ = sample(model, src, src_len, max_len=15, num_samples=4,
                                generator=torch.Generator().manual_seed(1))
    inside = torch.arange(tokens.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    assert not ((tokens == PAD) & inside).any() and not (tokens == BOS).any()
    assert not (tokens == EOS).any() and (tokens[~inside] == PAD).all()
    again = sample(model, src, src_len, max_len=15, num_samples=4,
                   generator=torch.Generator().manual_seed(1))
    assert torch.equal(again[0], tokens) and torch.equal(again[1], lengths)
    g_tok, g_len = greedy(model, src, src_len, max_len=15)
    assert not (g_tok == BOS).any() and not ((g_tok == PAD) & (torch.arange(g_tok.shape[1]) < g_len[:, None])).any()


def test_eos_forced_at_max_len():
    model = tiny_model(seed=6)
    with torch.no_grad():  # a model that never wants to stop
        model.out.bias[EOS] -= 20.0
    src, src_len = random_batch(60, 3, 11)
    tokens, lengths, logprobs = sample(model, src, src_len, max_len=5, num_samples=2)
    assert lengths.tolist() == [4] * 6 and tokens.shape == (6, 4)
    assert (logprobs[:, 4] < -15).all()  # the forced <eos> carries log π(<eos>), not 0
    per_source = torch.tensor([3, 6, 1])
    _, lengths, _ = sample(model, src, src_len, max_len=per_source, num_samples=2)
    assert lengths.tolist() == [2, 2, 5, 5, 0, 0]
    _, g_len = greedy(model, src, src_len, max_len=per_source)
    assert g_len.tolist() == [2, 5, 0]
    b_tok, b_len, b_score = beam_search(model, src, src_len, beam_size=3, max_len=per_source)
    assert b_len.tolist() == [2, 5, 0] and b_tok.shape == (3, 5)
    assert torch.isfinite(b_score).all()


def test_decoding_keeps_the_callers_mode():
    model = tiny_model(seed=7).train()
    src, src_len = random_batch(70, 3, 11)
    greedy(model, src, src_len, max_len=5)
    beam_search(model, src, src_len, beam_size=2, max_len=5)
    assert model.training


def test_overfits_copy_task():
    """Learns to copy 4 short sequences in 200 Adam steps; greedy reproduces them."""
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(src_vocab_size=12, tgt_vocab_size=12, emb_dim=32,
                                  enc_hidden=32, dec_hidden=64, dropout=0.0))
    seqs = [[4, 5, 6], [7, 8, 9, 10, 11], [11, 4, 4, 9], [6, 10]]
    lengths = torch.tensor([len(s) for s in seqs])
    src = torch.zeros(4, 5, dtype=torch.long)
    for i, s in enumerate(seqs):
        src[i, : len(s)] = torch.tensor(s)
    tgt_in, tgt_out = teacher_forcing_io(src, lengths)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        logits = model(src, lengths, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, 12), tgt_out.reshape(-1), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    tokens, out_len = greedy(model, src, lengths, max_len=10)
    assert out_len.tolist() == lengths.tolist()
    assert torch.equal(tokens, src)
    b_tok, b_len, _ = beam_search(model, src, lengths, beam_size=3, max_len=10)
    assert torch.equal(b_tok, src) and torch.equal(b_len, lengths)


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_batched_decoding_equals_one_source_at_a_time(length_penalty):
    """Dropping finished rows/sources mid-batch must not change anyone's result."""
    model = tiny_model(seed=8, init_range=1.0, input_feeding=True)
    src, src_len = random_batch(80, 7, 11)
    limits = torch.tensor([9, 3, 12, 1, 7, 12, 5])
    tok, lengths, scores = beam_search(model, src, src_len, beam_size=4, max_len=limits,
                                       length_penalty=length_penalty)
    g_tok, g_len = greedy(model, src, src_len, max_len=limits)
    for i in range(7):
        one = (src[i : i + 1, : int(src_len[i])], src_len[i : i + 1])
        t1, l1, s1 = beam_search(model, *one, beam_size=4, max_len=int(limits[i]),
                                 length_penalty=length_penalty)
        assert lengths[i] == l1[0] and tok[i, : l1[0]].tolist() == t1[0].tolist()
        assert scores[i].item() == pytest.approx(s1[0].item(), abs=1e-5)
        gt1, gl1 = greedy(model, *one, max_len=int(limits[i]))
        assert g_len[i] == gl1[0] and g_tok[i, : gl1[0]].tolist() == gt1[0].tolist()
    assert (lengths < limits).all() and lengths[3] == 0


def test_sample_categorical_matches_the_distribution():
    from rayseq.decoding import sample_categorical

    probs = torch.tensor([0.0, 0.1, 0.0, 0.45, 0.05, 0.4, 0.0])
    logp = probs.log().expand(40000, -1)
    draws = sample_categorical(logp, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=7).float() / draws.numel()
    assert (freq[probs == 0] == 0).all()
    torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)
