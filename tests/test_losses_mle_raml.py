"""Tests for the MLE and RAML losses, RAML samplers/weights and the plateau lr schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from envs.rewards import sentence_bleu
from rayseq.algorithms.mle import MLEConfig, PlateauSchedule, mle_loss, sequence_nll
from rayseq.algorithms.raml import (
    RAMLConfig,
    draw_raml_samples,
    hamming_edit_log_probs,
    ngram_replace_samples,
    payoff_samples,
    raml_loss,
    raml_weights,
    sample_bleus,
)

N_SPECIALS = 4

# One logit row with softmax probabilities [1/6, 2/6, 3/6] for ids 0, 1, 2.
ROW = [0.0, math.log(2.0), math.log(3.0)]


def _logits(n: int, t: int) -> torch.Tensor:
    return torch.tensor(ROW, dtype=torch.float64).expand(n, t, 3).clone()


# ----------------------------------------------------------------------------- MLE


def test_mle_loss_hand_computed_sum_over_time_mean_over_batch() -> None:
    targets = torch.tensor([[1, 2, 0], [2, 0, 0]])
    out = mle_loss(_logits(2, 3), targets, pad=0)
    # seq 0: -log(2/6) - log(3/6) = log 3 + log 2; seq 1: -log(3/6) = log 2.
    expected = (math.log(3) + math.log(2) + math.log(2)) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert int(out.num_tokens) == 3


def test_mle_loss_ignores_pad_positions() -> None:
    targets = torch.tensor([[1, 2, 0], [2, 0, 0]])
    logits = _logits(2, 3).requires_grad_(True)
    base = mle_loss(logits, targets).loss
    base.backward()
    assert torch.all(logits.grad[0, 2] == 0) and torch.all(logits.grad[1, 1:] == 0)
    noisy = _logits(2, 3)
    noisy[0, 2] = torch.tensor([9.0, -4.0, 2.0])
    noisy[1, 1:] = 7.0
    assert mle_loss(noisy, targets).loss.item() == pytest.approx(base.item(), abs=1e-12)


def test_sequence_nll_shape_errors_speak() -> None:
    with pytest.raises(ValueError, match=r"logits \[N, T, V\]"):
        sequence_nll(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))


def test_mle_config_defaults_and_validation() -> None:
    cfg = MLEConfig()
    assert (cfg.lr, cfg.batch_size, cfg.max_epochs, cfg.lr_decay, cfg.max_decays) == (
        0.6, 50, 30, 0.5, 6,
    )
    assert (cfg.grad_clip, cfg.beam_size) == (5.0, 5)
    with pytest.raises(ValueError, match="lr_decay"):
        MLEConfig(lr_decay=1.5)


# ----------------------------------------------------------------------------- PlateauSchedule


def test_plateau_schedule_decays_and_stops() -> None:
    s = PlateauSchedule(lr=0.6, decay=0.5, max_decays=2)
    assert s.step(10.0) is True  # first validation is the best
    assert s.step(12.0) is True
    assert s.step(12.0) is True  # ties count as improvement (official >=)
    assert s.lr == 0.6 and s.num_decays == 0
    assert s.step(11.0) is False
    assert s.lr == pytest.approx(0.3) and s.num_decays == 1 and not s.should_stop
    assert s.step(13.0) is True and s.lr == pytest.approx(0.3)  # lr is not restored
    assert s.step(1.0) is False
    assert s.lr == pytest.approx(0.15) and s.num_decays == 2 and not s.should_stop
    assert s.step(2.0) is False  # a third non-improvement after max_decays decays: stop
    assert s.should_stop and s.num_decays == 2 and s.lr == pytest.approx(0.15)
    assert s.best == 13.0
    with pytest.raises(RuntimeError):
        s.step(20.0)


def test_plateau_schedule_lower_is_better() -> None:
    s = PlateauSchedule(lr=1.0, decay=0.5, max_decays=1, higher_is_better=False)
    assert s.step(5.0) and s.step(4.0)
    assert not s.step(4.5) and s.lr == 0.5
    assert not s.step(4.5) and s.should_stop


def _official_schedule(metrics: list[float], lr0: float, decay: float, num_decay: int):
    """The loop of ERAC-VAML train_actor.py, transcribed (BLEU, no start_decay)."""
    best, lr, lrs = 0.0, lr0, []
    for i, m in enumerate(metrics):
        if m >= best:
            best = m
        else:
            next_lr = lr * decay
            if next_lr < lr0 * decay**num_decay:
                return lrs, i  # stopped after validation i
            lr = next_lr
        lrs.append(lr)
    return lrs, None


@pytest.mark.parametrize("seed", range(5))
def test_plateau_schedule_matches_official_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    metrics = list(np.round(rng.uniform(1, 30, size=40), 1))
    ref_lrs, ref_stop = _official_schedule(metrics, 0.6, 0.5, 6)
    s = PlateauSchedule.from_config(MLEConfig())
    lrs, stop = [], None
    for i, m in enumerate(metrics):
        s.step(m)
        if s.should_stop:
            stop = i
            break
        lrs.append(s.lr)
    assert stop == ref_stop and lrs == pytest.approx(ref_lrs)


def test_plateau_schedule_state_round_trip() -> None:
    s = PlateauSchedule(lr=0.6, decay=0.5, max_decays=3)
    for m in [5.0, 4.0, 6.0, 3.0]:
        s.step(m)
    state = s.state_dict()
    t = PlateauSchedule(lr=123.0)
    t.load_state_dict(state)
    assert t.state_dict() == state
    for m in [2.0, 7.0, 1.0]:
        assert s.step(m) == t.step(m)
        assert (s.lr, s.num_decays, s.should_stop) == (t.lr, t.num_decays, t.should_stop)
    assert t.should_stop and t.num_decays == 3 and t.lr == pytest.approx(0.6 / 8)
    with pytest.raises(KeyError, match="missing"):
        t.load_state_dict({"lr": 1.0})


# ----------------------------------------------------------------------------- RAML weights / loss


def test_raml_weights_hand_computed_softmax() -> None:
    bleus = torch.tensor([[0.5, 0.2, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    w = raml_weights(bleus, tau=1.0)
    e = [math.exp(0.5), math.exp(0.2), 1.0]
    np.testing.assert_allclose(w[0].numpy(), [x / sum(e) for x in e], atol=1e-12)
    e = [math.e, math.e, 1.0]
    np.testing.assert_allclose(w[1].numpy(), [x / sum(e) for x in e], atol=1e-12)
    torch.testing.assert_close(w.sum(1), torch.ones(2, dtype=torch.float64))
    # tau = 0.5 doubles the logits; log-weights add to them.
    w = raml_weights(bleus[:1], tau=0.5, log_weights=torch.tensor([[0.0, math.log(2.0), 0.0]]))
    e = [math.exp(1.0), 2 * math.exp(0.4), 1.0]
    np.testing.assert_allclose(w[0].numpy(), [x / sum(e) for x in e], atol=1e-12)


def test_raml_loss_hand_computed() -> None:
    targets = torch.tensor([[1, 2, 0], [2, 0, 0], [1, 1, 2], [2, 2, 0]])  # B=2, K=2
    weights = torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float64)
    # NLLs: log 6, log 2, log 18, log 4.
    expected = (
        0.25 * math.log(6) + 0.75 * math.log(2) + 0.5 * math.log(18) + 0.5 * math.log(4)
    ) / 2
    for w, kw in [(weights, {}), (weights.reshape(-1), {}), (weights.reshape(-1), {"num_sources": 2})]:
        out = raml_loss(_logits(4, 3), targets, w, pad=0, **kw)
        assert out.loss.item() == pytest.approx(expected, abs=1e-12)
        assert int(out.num_tokens) == 2 + 1 + 3 + 2


def test_raml_loss_with_all_weight_on_reference_is_mle() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 5, 7, dtype=torch.float64)
    targets = torch.randint(4, 7, (6, 5))
    targets[:, 4] = 0
    w = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)  # ref at k=0
    ref_rows = torch.tensor([0, 3])
    assert raml_loss(logits, targets, w).loss.item() == pytest.approx(
        mle_loss(logits[ref_rows], targets[ref_rows]).loss.item(), abs=1e-12
    )


def test_raml_loss_rejects_unnormalised_flat_weights() -> None:
    with pytest.raises(ValueError, match="num_sources"):
        raml_loss(_logits(2, 3), torch.ones(2, 3, dtype=torch.long), torch.tensor([0.3, 0.3]))


# ----------------------------------------------------------------------------- n-gram sampler


def test_ngram_sampler_changes_one_short_span_and_no_specials() -> None:
    rng = np.random.default_rng(0)
    vocab = 1000
    lengths_seen = []
    for trial in range(400):
        m = int(rng.integers(1, 30))
        ref = rng.integers(N_SPECIALS, vocab, size=m)
        if trial % 5 == 0:
            ref[rng.integers(0, m)] = 1  # an <unk> in the reference stays where it is unless replaced
        for s in ngram_replace_samples(ref, vocab, 4, rng):
            assert s.shape == ref.shape and s.dtype == np.int64
            diff = np.flatnonzero(s != ref)
            assert len(diff) >= 1  # with V=1000 a replacement almost never equals the original
            span = diff[-1] - diff[0] + 1
            assert span <= min(4, m)
            lengths_seen.append(span)
            changed = s[diff[0] : diff[-1] + 1]
            assert np.all(changed >= N_SPECIALS) and np.all(changed < vocab)
    assert set(lengths_seen) == {1, 2, 3, 4}


def test_ngram_sampler_never_emits_specials_small_vocab() -> None:
    rng = np.random.default_rng(1)
    ref = np.array([4, 5, 4, 5, 4, 5])
    for s in ngram_replace_samples(ref, 6, 500, rng):
        assert set(s.tolist()) <= {4, 5}


def test_ngram_sampler_span_length_uniform_and_short_refs() -> None:
    rng = np.random.default_rng(2)
    ref = np.arange(N_SPECIALS, N_SPECIALS + 2)  # m = 2 -> n in {1, 2}
    for s in ngram_replace_samples(ref, 10**6, 200, rng):
        assert 1 <= np.count_nonzero(s != ref) <= 2
    assert ngram_replace_samples(np.zeros(0, dtype=np.int64), 10, 3, rng)[0].size == 0
    # n ~ U{1..4} for a long reference: the number of changed tokens is ~ uniform.
    ref = np.arange(N_SPECIALS, N_SPECIALS + 20)
    counts = np.bincount(
        [np.count_nonzero(s != ref) for s in ngram_replace_samples(ref, 10**6, 4000, rng)],
        minlength=5,
    )
    assert counts[0] == 0
    assert np.all(np.abs(counts[1:] / 4000 - 0.25) < 0.03)


def test_ngram_sampler_deterministic_under_seed() -> None:
    ref = np.array([4, 9, 12, 7, 30, 5, 6])
    a = ngram_replace_samples(ref, 50, 6, np.random.default_rng(42))
    b = ngram_replace_samples(ref, 50, 6, np.random.default_rng(42))
    c = ngram_replace_samples(ref, 50, 6, np.random.default_rng(43))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


# ----------------------------------------------------------------------------- payoff sampler


@pytest.mark.parametrize("include_count", [True, False])
def test_payoff_sampler_edit_distance_follows_q(include_count: bool) -> None:
    m, alphabet = 10, 50
    vocab = alphabet + N_SPECIALS
    tau_e = 1.0 / math.log(2 * (alphabet - 1)) if include_count else 0.5
    rng = np.random.default_rng(123)
    ref = rng.integers(N_SPECIALS, vocab, size=m)
    n = 20000
    samples, _ = payoff_samples(
        ref, vocab, n, tau_e, rng, include_count=include_count, include_reference=False
    )
    dist = np.array([np.count_nonzero(s != ref) for s in samples])
    assert all(np.all(s >= N_SPECIALS) for s in samples)
    observed = np.bincount(dist, minlength=m + 1)
    expected = n * np.exp(hamming_edit_log_probs(m, alphabet, tau_e, include_count))
    keep = expected >= 5
    chi2 = float((((observed - expected) ** 2 / expected)[keep]).sum())
    df = int(keep.sum()) - 1
    assert df >= 3
    assert chi2 < df + 6 * math.sqrt(2 * df) + 10, (chi2, observed, expected.round(1))
    assert observed[~keep].sum() <= max(20, 3 * expected[~keep].sum())


def test_hamming_q_closed_form() -> None:
    # q(e) = C(m,e) (A-1)^e exp(-e/tau) / (1 + (A-1) exp(-1/tau))^m
    m, a, tau = 6, 11, 0.4
    r = (a - 1) * math.exp(-1 / tau)
    want = [math.comb(m, e) * r**e / (1 + r) ** m for e in range(m + 1)]
    np.testing.assert_allclose(np.exp(hamming_edit_log_probs(m, a, tau)), want, rtol=1e-12)


def test_payoff_log_weights_are_minus_log_proposal() -> None:
    m, alphabet, tau_e, n = 7, 20, 0.3, 50
    vocab = alphabet + N_SPECIALS
    rng = np.random.default_rng(5)
    ref = rng.integers(N_SPECIALS, vocab, size=m)
    r = (alphabet - 1) * math.exp(-1 / tau_e)
    log_z = m * math.log1p(r)
    samples, logw = payoff_samples(ref, vocab, n, tau_e, rng, include_reference=False)
    d = np.array([np.count_nonzero(s != ref) for s in samples])
    # Without specials in y*, q(y) = exp(-d/tau_e) / Z: the negative-Hamming payoff itself.
    np.testing.assert_allclose(logw, d / tau_e + log_z, rtol=1e-10)
    # With the reference forced in: q_mix(y) = (1[y = y*] + n q(y)) / (n + 1).
    samples, logw = payoff_samples(ref, vocab, n, tau_e, np.random.default_rng(5))
    assert len(samples) == n + 1 and np.array_equal(samples[0], ref)
    log_q = np.array([-np.count_nonzero(s != ref) / tau_e - log_z for s in samples])
    is_ref = np.array([np.array_equal(s, ref) for s in samples])
    q_mix = (is_ref + n * np.exp(log_q)) / (n + 1)
    np.testing.assert_allclose(logw, -np.log(q_mix), rtol=1e-10)


def test_payoff_weights_recover_bleu_payoff_target() -> None:
    """Self-normalised IS with BLEU from envs.rewards recovers E_p[d_H] under p ∝ exp(BLEU/τ)."""
    ref = np.array([4, 5, 6])
    vocab, tau, tau_e = N_SPECIALS + 3, 0.1, 0.5
    # Exact expectation by enumeration of the 27 length-3 sequences over {4, 5, 6}.
    seqs = np.array(np.meshgrid(*[np.arange(4, 7)] * 3, indexing="ij")).reshape(3, -1).T
    logits = np.array([sentence_bleu(s, ref) / tau for s in seqs])
    p = np.exp(logits - logits.max())
    p /= p.sum()
    exact = float((p * (seqs != ref).sum(1)).sum())
    samples, logw = payoff_samples(ref, vocab, 30000, tau_e, np.random.default_rng(0))
    bleus = sample_bleus([samples], [ref])
    w = raml_weights(torch.from_numpy(bleus), tau, torch.from_numpy(logw[None]))[0].numpy()
    est = float((w * np.array([np.count_nonzero(s != ref) for s in samples])).sum())
    naive = float(np.mean([np.count_nonzero(s != ref) for s in samples]))
    assert est == pytest.approx(exact, abs=0.03)
    assert abs(naive - exact) > 0.1  # the proposal alone is far off: the weights matter


def test_payoff_sampler_unk_in_reference() -> None:
    ref = np.array([4, 1, 5])  # <unk> at position 1 may be replaced by any non-special token
    rng = np.random.default_rng(3)
    samples, logw = payoff_samples(ref, 10, 200, 0.5, rng, include_reference=False)
    assert all(np.all((s >= N_SPECIALS) | (np.arange(3) == 1) & (s == 1)) for s in samples)
    assert np.all(np.isfinite(logw))


# ----------------------------------------------------------------------------- sample sets


def test_sample_bleus_use_reward_module() -> None:
    rng = np.random.default_rng(0)
    refs = [rng.integers(N_SPECIALS, 30, size=int(rng.integers(3, 12))) for _ in range(3)]
    cfg = RAMLConfig()
    sets = [draw_raml_samples(r, cfg, 30, rng)[0] for r in refs]
    bleus = sample_bleus(sets, refs)
    assert bleus.shape == (3, cfg.samples_per_source)
    for b in range(3):
        for k in range(cfg.samples_per_source):
            assert bleus[b, k] == sentence_bleu(sets[b][k], refs[b])
        assert bleus[b, 0] == pytest.approx(1.0)  # the reference scores 1 (+1 smoothing)


@pytest.mark.parametrize("sampler", ["ngram", "payoff"])
def test_raml_pipeline_end_to_end(sampler: str) -> None:
    cfg = RAMLConfig(sampler=sampler, payoff_tau=0.3)
    vocab, rng = 20, np.random.default_rng(7)
    refs = [rng.integers(N_SPECIALS, vocab, size=int(rng.integers(2, 8))) for _ in range(3)]
    drawn = [draw_raml_samples(r, cfg, vocab, rng) for r in refs]
    sets = [d[0] for d in drawn]
    log_w = torch.from_numpy(np.stack([d[1] for d in drawn]))
    weights = raml_weights(torch.from_numpy(sample_bleus(sets, refs)), cfg.tau, log_w)  # [B, K]
    torch.testing.assert_close(weights.sum(1), torch.ones(3, dtype=torch.float64))
    k = cfg.samples_per_source
    t = max(len(s) for ss in sets for s in ss) + 1
    targets = torch.zeros(3 * k, t, dtype=torch.long)
    for i, s in enumerate(s for ss in sets for s in ss):
        targets[i, : len(s)] = torch.from_numpy(s)
        targets[i, len(s)] = 3  # eos
    logits = torch.randn(3 * k, t, vocab, requires_grad=True)
    out = raml_loss(logits, targets, weights)
    out.loss.backward()
    assert torch.isfinite(out.loss) and logits.grad.abs().sum() > 0
    if sampler == "ngram":
        assert torch.all(log_w == 0)


def test_raml_config_defaults_and_errors() -> None:
    cfg = RAMLConfig()
    assert (cfg.num_samples, cfg.samples_per_source, cfg.tau, cfg.sampler) == (4, 5, 1.0, "ngram")
    assert (cfg.lr, cfg.batch_size, cfg.grad_clip, cfg.max_ngram) == (0.6, 42, 5.0, 4)
    with pytest.raises(ValueError, match="sampler"):
        RAMLConfig(sampler="beam")  # type: ignore[arg-type]
