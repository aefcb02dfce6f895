"""VAML step 2 with the Q-net restricted to the mixed steps: the mix m_t is drawn with the rows,
before the Q-net runs, and P_Qφ = softmax(Q/τ) (Eq. 17) is computed only where m_t > 0. For the
same draw, the loss and the actor's gradients must equal the full computation (Q-net and CE at
every step, the padded ``vaml_actor_loss``)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rayseq.algorithms.raml import RAMLConfig
from rayseq.algorithms.supervised_rows import raml_rows, vaml_actor_rows
from rayseq.algorithms.vaml import (
    VAMLConfig,
    qnet_token_targets,
    vaml_actor_loss,
    vaml_actor_loss_rows,
)

V = 14
SRC = [np.array([4, 5, 6]), np.array([7, 8]), np.array([9, 10, 11, 12]), np.array([5])]
TGT = [np.array([4, 5, 6, 7, 8, 9, 10]), np.array([9, 10]), np.array([11, 12, 13, 4, 5]), np.array([6, 7, 8])]


def _module():
    from gymnasium import spaces

    from rayseq.runtime.vaml import VAMLRLModule

    torch.manual_seed(0)
    cfg = {"src_vocab_size": 14, "tgt_vocab_size": V, "emb_dim": 8, "enc_hidden": 4, "dec_hidden": 8, "dropout": 0.0,
           "qnet_target": False}
    module = VAMLRLModule(observation_space=spaces.Discrete(2), action_space=spaces.Discrete(V), model_config=cfg)
    module.stage = "actor"
    return module


def _batch(v: VAMLConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    rows = vaml_actor_rows(SRC, TGT, v, V, np.random.default_rng(seed))
    return {k: torch.as_tensor(a) for k, a in rows.items()}


def _restricted(module, b: dict, v: VAMLConfig) -> tuple[torch.Tensor, dict, list[torch.Tensor]]:
    from rayseq.runtime.vaml import packed_vaml_losses

    fwd = module.forward_train(b)
    loss, parts = packed_vaml_losses(fwd, b, v, "actor")
    grads = torch.autograd.grad(loss, list(module.actor.parameters()), allow_unused=True)
    return loss, {**parts, "fwd": fwd}, list(grads)


def _full(module, b: dict, v: VAMLConfig):
    """The full computation for the same draw ``b["mix"]``: Q-net and P_Qφ at every step (padded)."""
    logits = module.actor(b["src"], b["src_len"], b["tgt_in"])  # [N, T, V]
    with torch.no_grad():
        p_q = qnet_token_targets(module.qnet(b["ref"], b["ref_len"], b["tgt_in"]), v.tau, v.exclude_tokens)  # [N, T, V]
    w = b["weight"][:, None].expand(b["tgt_out"].shape)
    out = vaml_actor_loss(logits, b["tgt_out"], p_q, b["mix"], w, num_sources=len(SRC))
    grads = torch.autograd.grad(out.loss, list(module.actor.parameters()), allow_unused=True)
    return out, list(grads)


def _assert_same_grads(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g, r in zip(got, want):
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bernoulli_restricted_loss_and_gradients_equal_the_full_computation(seed: int) -> None:
    v = VAMLConfig(num_samples=2, mix_prob=0.3, tau=0.5)
    module = _module()
    b = _batch(v, seed)
    real = b["tgt_out"].ne(0)
    mixed = real & (b["mix"] > 0)
    assert 0 < int(mixed.sum()) < int(real.sum())  # a real test: some steps mixed, some not

    loss, parts, grads = _restricted(module, b, v)
    assert parts["fwd"]["q_rows"].shape == (int(mixed.sum()), V)  # Q only at the mixed steps
    full, full_grads = _full(module, b, v)
    torch.testing.assert_close(loss, full.loss, rtol=1e-6, atol=1e-7)
    _assert_same_grads(grads, full_grads)
    assert math.isclose(parts["loss/mle"], float(full.nll), rel_tol=1e-6)

    # a different draw gives a different loss: the comparison above can fail
    flipped = {**b, "mix": torch.where(real, 1.0 - b["mix"], b["mix"])}
    assert not torch.allclose(_full(module, flipped, v)[0].loss, full.loss, rtol=1e-4)


def test_expected_mode_is_unchanged_q_at_every_step() -> None:
    v = VAMLConfig(num_samples=2, mix_mode="expected", mix_prob=0.3)
    module = _module()
    b = _batch(v)
    real = b["tgt_out"].ne(0)
    assert torch.equal(b["mix"], torch.where(real, 0.3, 0.0))
    loss, parts, grads = _restricted(module, b, v)
    assert parts["fwd"]["q_rows"].shape == (int(real.sum()), V)
    full, full_grads = _full(module, b, v)
    torch.testing.assert_close(loss, full.loss, rtol=1e-6, atol=1e-7)
    _assert_same_grads(grads, full_grads)
    assert math.isclose(parts["loss/vaml_ce"], float(full.ce), rel_tol=1e-5)  # exact here, not an estimate
    assert math.isclose(parts["loss/mle"], float(full.nll), rel_tol=1e-6)


def test_a_draw_with_no_mixed_token_never_runs_the_qnet_and_is_the_weighted_nll() -> None:
    v = VAMLConfig(num_samples=2, mix_prob=0.2)
    module = _module()
    b = _batch(v)
    b["mix"] = torch.zeros_like(b["mix"])
    calls = []
    module.qnet.encode = lambda *a, **k: calls.append("encode")  # must not be reached
    loss, parts, grads = _restricted(module, b, v)
    assert calls == [] and parts["fwd"]["q_rows"].shape == (0, V)
    del module.qnet.encode
    full, full_grads = _full(module, b, v)
    torch.testing.assert_close(loss, full.loss, rtol=1e-6, atol=1e-7)
    _assert_same_grads(grads, full_grads)
    # with no mixed step, VAML's step 2 is RAML's weighted NLL, Eq. (2)
    from rayseq.algorithms.mle import sequence_nll

    nll = sequence_nll(module.actor(b["src"], b["src_len"], b["tgt_in"]), b["tgt_out"])
    torch.testing.assert_close(loss, (b["weight"] * nll).sum() / len(SRC), rtol=1e-6, atol=1e-7)
    assert parts["loss/vaml_ce"] == 0.0


def test_hidden_at_skips_unwanted_sequences_stops_early_and_encodes_each_reference_once() -> None:
    module = _module()
    qnet = module.qnet
    b = _batch(VAMLConfig(num_samples=2))  # K = 3 rows per source, consecutive, sharing a reference
    n, t = b["tgt_in"].shape
    at = torch.zeros(n, t, dtype=torch.bool)
    at[0, 1] = at[1, 0] = at[2, 2] = True  # source 0's three rows (one reference)
    at[7, 3] = at[7, 1] = True  # a row of source 2
    seen: dict[str, object] = {}
    encode = qnet.encode
    qnet.encode = lambda ref, ref_len: seen.setdefault("encoded", ref.size(0)) and encode(ref, ref_len)

    def record(name: str):
        def hook(_module, args) -> None:
            seen.setdefault(name, tuple(args[0].shape[:2]))  # [rows, steps] of the input
        return hook

    hooks = [qnet.net.decoder.register_forward_pre_hook(record("decoded")),
             qnet.net.attention.register_forward_pre_hook(record("attended"))]
    with torch.no_grad():
        got = qnet.hidden_at(b["ref"], b["ref_len"], b["tgt_in"], at)
        del qnet.encode
        for h in hooks:
            h.remove()
        want = qnet.hidden(b["ref"], b["ref_len"], b["tgt_in"])[at]
    # 2 distinct references; 4 sequences read up to step 3; attention at the 5 wanted steps only
    assert seen == {"encoded": 2, "decoded": (4, 4), "attended": (5, 1)}
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert qnet.hidden_at(b["ref"], b["ref_len"], b["tgt_in"], torch.zeros_like(at)).shape == (0, 8)
    with pytest.raises(ValueError, match="hidden_at"):
        qnet.hidden_at(b["ref"], b["ref_len"], b["tgt_in"], at[:, :2])


def test_hidden_at_with_input_feeding_equals_hidden() -> None:
    from rayseq.models.critic import Critic, CriticConfig

    torch.manual_seed(1)
    qnet = Critic(CriticConfig(vocab_size=V, emb_dim=8, enc_hidden=4, dec_hidden=8, input_feeding=True))
    b = _batch(VAMLConfig(num_samples=2, mix_prob=0.4))
    at = b["tgt_out"].ne(0) & (b["mix"] > 0)
    with torch.no_grad():
        torch.testing.assert_close(qnet.hidden_at(b["ref"], b["ref_len"], b["tgt_in"], at),
                                   qnet.hidden(b["ref"], b["ref_len"], b["tgt_in"])[at], rtol=1e-6, atol=1e-7)


def test_loss_rows_equal_the_padded_equation_on_random_tensors() -> None:
    g = torch.Generator().manual_seed(3)
    k, vocab = 40, 9
    logits = torch.randn(k, vocab, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(2, vocab, (k,), generator=g)
    p_q = qnet_token_targets(torch.randn(k, vocab, generator=g, dtype=torch.float64), 0.7)
    weights = torch.rand(k, generator=g, dtype=torch.float64)
    for mix in ((torch.rand(k, generator=g) < 0.3).double(), torch.full((k,), 0.3, dtype=torch.float64),
                torch.ones(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)):
        sel = mix > 0
        full = vaml_actor_loss(logits[None], targets[None], p_q[None], mix[None], weights[None], num_sources=4)
        rows = vaml_actor_loss_rows(logits[sel], targets[sel], p_q[sel], mix[sel], weights[sel],
                                    logits[~sel], targets[~sel], weights[~sel], num_sources=4, mix_prob=0.3)
        (g_full,) = torch.autograd.grad(full.loss, logits)
        (g_rows,) = torch.autograd.grad(rows.loss, logits)
        torch.testing.assert_close(rows.loss, full.loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g_rows, g_full, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rows.nll, full.nll, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="vaml_actor_loss_rows"):
        vaml_actor_loss_rows(logits[:3], targets[:3], p_q[:2], mix[:3], weights[:3], logits[3:], targets[3:],
                             weights[3:], num_sources=4, mix_prob=0.3)


def test_rows_carry_the_mix_and_keep_ramls_sample_stream() -> None:
    v = VAMLConfig(num_samples=2, mix_prob=0.5)
    rng_v, rng_r = np.random.default_rng(7), np.random.default_rng(7)
    raml = RAMLConfig(**{f: getattr(v.raml_config(), f) for f in ("num_samples", "tau", "sampler", "max_ngram",
                                                                    "bleu_smooth", "n_specials", "batch_size", "seed")})
    for _ in range(2):  # the second batch too: drawing the mix must not shift RAML's samples
        rv, rr = vaml_actor_rows(SRC, TGT, v, V, rng_v), raml_rows(SRC, TGT, raml, V, rng_r)
        for key in ("src", "tgt_in", "tgt_out", "weight"):
            np.testing.assert_array_equal(rv[key], rr[key])
        real = rv["tgt_out"] != 0
        assert rv["mix"].shape == rv["tgt_out"].shape and rv["mix"].dtype == np.float32
        assert set(np.unique(rv["mix"][real])) <= {0.0, 1.0} and not rv["mix"][~real].any()
    again = vaml_actor_rows(SRC, TGT, v, V, np.random.default_rng(7))
    np.testing.assert_array_equal(again["mix"], vaml_actor_rows(SRC, TGT, v, V, np.random.default_rng(7))["mix"])


def test_actor_stage_without_a_mix_column_is_a_clear_error() -> None:
    module = _module()
    b = _batch(VAMLConfig(num_samples=1))
    del b["mix"]
    with pytest.raises(KeyError, match="vaml_actor_rows"):
        module.forward_train(b)
