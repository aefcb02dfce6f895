"""Captioning: coco-caption metrics, the NIC actor, the environment, every algorithm on a tiny task."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from coco_tiny import make_tiny_coco
from run_checks import check_bleu

from rayseq.evaluation.coco import cider_d, coco_bleu
from rayseq.models.base import BOS, IncrementalDecoder
from rayseq.models.nic import NIC
from rayseq.models.seq2seq import Seq2Seq, Seq2SeqConfig

# ----------------------------------------------------------------------------- metrics

WORDS = ["a", "man", "dog", "on", "the", "sits", "with", "red", "car", "street", "two", "of", "in"]


def _examples(seed: int, n: int = 40):
    rng = np.random.default_rng(seed)
    word = lambda: str(rng.choice(WORDS))
    hyps = [[word() for _ in range(rng.integers(0, 13))] for _ in range(n)]
    refs = [[[word() for _ in range(rng.integers(1, 13))] for _ in range(rng.integers(1, 6))] for _ in range(n)]
    return hyps, refs


FIXED = (
    [["a", "man", "rides", "a", "horse", "on", "a", "beach"], ["two", "dogs", "on", "the", "grass"], ["a", "red", "bus"]],
    [
        [["a", "man", "rides", "a", "horse"], ["a", "person", "riding", "a", "brown", "horse", "on", "a", "beach"]],
        [["two", "dogs", "play", "on", "the", "grass"], ["dogs", "running", "on", "grass"], ["two", "dogs"]],
        [["a", "red", "double", "decker", "bus"], ["the", "bus", "is", "red"]],
    ],
)


@pytest.mark.parametrize("case", ["fixed", 0, 1, 2])
def test_bleu_and_cider_d_equal_pycocoevalcap(case) -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    hyps, refs = FIXED if case == "fixed" else _examples(case)
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
    with contextlib.redirect_stdout(io.StringIO()):
        expect, _ = Bleu(4).compute_score(gts, res)
    got = coco_bleu(hyps, refs)
    for n in range(4):
        assert got[f"bleu_{n + 1}"] == pytest.approx(100 * expect[n], rel=1e-12, abs=1e-12)
    assert cider_d(hyps, refs)["cider_d"] == pytest.approx(Cider().compute_score(gts, res)[0], rel=1e-12)
    if case == "fixed":
        assert 10 < got["bleu_4"] < 100  # a real, non-degenerate score


def test_metric_input_errors() -> None:
    with pytest.raises(ValueError, match="caption 0 has no reference"):
        coco_bleu([["a"]], [[]])
    with pytest.raises(ValueError, match="hypothesis 0 is a string"):
        cider_d(["a dog"], [[["a", "dog"]]])


# ----------------------------------------------------------------------------- NIC


def _nic_cfg(**kw) -> Seq2SeqConfig:
    base = {"src_vocab_size": 0, "tgt_vocab_size": 11, "emb_dim": 8, "enc_hidden": 6, "dec_hidden": 12, "dropout": 0.0, "src_feature_dim": 5}
    return Seq2SeqConfig(**{**base, **kw})


def test_config_selects_nic_and_it_is_an_incremental_decoder() -> None:
    model = Seq2Seq(_nic_cfg())
    assert isinstance(model, NIC) and isinstance(model, IncrementalDecoder)
    assert type(Seq2Seq(dataclasses.replace(_nic_cfg(), src_vocab_size=7, src_feature_dim=0))) is Seq2Seq
    with pytest.raises(ValueError, match="needs src_vocab_size=0"):
        _nic_cfg(src_vocab_size=7)
    with pytest.raises(ValueError, match="src_vocab_size=0: must be a positive int.*feature sources"):
        _nic_cfg(src_feature_dim=0)
    with pytest.raises(ValueError, match="expected float image features \\[B, 5\\]"):
        model.encode(torch.zeros(2, 4), None)


def test_nic_teacher_forcing_equals_incremental_steps_and_the_image_matters() -> None:
    torch.manual_seed(0)
    model = Seq2Seq(_nic_cfg()).eval()
    feats = torch.randn(3, 5)
    tgt_in = torch.tensor([[BOS, 4, 5, 6], [BOS, 7, 3, 0], [BOS, 8, 9, 10]])
    full = model(feats, None, tgt_in)  # [3, 4, V]
    enc = model.encode(feats, torch.full((3,), 5))
    state = model.init_state(enc)
    for t in range(tgt_in.size(1)):
        logits, state = model.step(enc, state, tgt_in[:, t])
        torch.testing.assert_close(logits, full[:, t])
    # the image initialises the decoder: another image, other first-step logits
    other = model(feats.flip(0), None, tgt_in)
    assert not torch.allclose(other[:, 0], full[:, 0])
    two = model.expand_encoder(enc, 2)
    torch.testing.assert_close(two.h0[2], enc.h0[1])


def test_decoding_and_actor_file_round_trip(tmp_path: Path) -> None:
    from rayseq.actor_io import load_actor, save_actor
    from rayseq.evaluation.decode import translate_ids
    from rayseq.data.coco import FeatureSourceVocab
    from rayseq.data.errors import DataError
    from rayseq.data.vocab import Vocab

    torch.manual_seed(0)
    model = Seq2Seq(_nic_cfg()).eval()
    feats = [np.random.default_rng(i).standard_normal(5).astype(np.float32) for i in range(4)]
    hyps = translate_ids(model, feats, beam=3, max_len=6)
    assert len(hyps) == 4 and all(len(h) <= 5 for h in hyps)
    assert translate_ids(model, feats, beam=1, max_len=6) == [translate_ids(model, [f], beam=1, max_len=6)[0] for f in feats]
    tgt = Vocab(["<pad>", "<unk>", "<bos>", "<eos>", *"abcdefg"])
    save_actor(tmp_path / "a.pt", model, FeatureSourceVocab(), tgt, {"algo": "mle"})
    loaded = load_actor(tmp_path / "a.pt")
    assert isinstance(loaded.model, NIC) and loaded.model.cfg == model.cfg
    assert translate_ids(loaded.model, feats, beam=3, max_len=6) == hyps
    with pytest.raises(DataError, match="reads image features, not source text"):
        loaded.src_vocab.encode(["a"])


# ----------------------------------------------------------------------------- task, env, every algorithm


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory) -> Path:
    return make_tiny_coco(tmp_path_factory.mktemp("coco"), sizes=(24, 6, 6))


def test_captioning_env_has_the_image_feature_as_source(tiny_coco: Path) -> None:
    import gymnasium as gym

    import envs

    env = gym.make(envs.CAPTIONING_ID, data_dir=str(tiny_coco), split="train")
    obs, _ = env.reset(seed=0)
    assert obs["src"].dtype == np.float32 and obs["src"].shape == (2048,)
    ref = obs["ref"][: obs["ref_len"]]
    total = 0.0
    for tok in [*ref.tolist(), 3]:
        obs, r, term, _, _ = env.step(int(tok))
        total += r
    assert term and total > 0.5  # reproducing the caption earns its BLEU
    vec = gym.make_vec(envs.CAPTIONING_ID, num_envs=3, vectorization_mode="vector_entry_point", data_dir=str(tiny_coco))
    assert vec.reset(seed=0)[0]["src"].shape == (3, 2048)


def _tiny_overrides(algo: str, mle_run: Path | None) -> list[str]:
    """The toy preset's sizes for ``algo`` (whatever its stages are), on tiny captioning data."""
    from rayseq.config import PRESETS
    from rayseq.registry import get_algorithm

    fields = {f.name for f in dataclasses.fields(get_algorithm(algo).config_cls)}
    out = []
    for key, value in PRESETS["cpu"]["toy"].items():
        if value is None or (key.startswith("algo.") and key[5:] not in fields):
            continue
        out.append(f"{key}={value}")
    out += ["epochs=1", "batch_size=16", "valid_beam=2", "log_every=2", "valid_max_sentences=6"]
    if "actor_init" in fields and mle_run is not None:
        out.append(f"algo.actor_init={mle_run}")
    return out


def _train(algo: str, data: Path, out: Path, mle_run: Path | None = None) -> dict:
    from rayseq.config import build_run_config
    from rayseq.registry import get_algorithm
    from rayseq.train import train

    cfg = build_run_config(algo, get_algorithm(algo).config_cls, "cpu", "coco", _tiny_overrides(algo, mle_run),
                           data_dir=str(data), out=str(out), num_rollout_workers=1, envs_per_worker=8)
    assert cfg.seq2seq_config(0, 10).src_feature_dim == 2048  # the task makes the actor NIC
    return train(cfg)


@pytest.fixture(scope="module")
def mle_run(tiny_coco: Path, tmp_path_factory, ray_session) -> Path:
    out = tmp_path_factory.mktemp("mle") / "run"
    _train("mle", tiny_coco, out)
    return out


def _algorithms() -> list[str]:
    from rayseq.registry import ALGORITHMS

    return sorted(ALGORITHMS)


@pytest.mark.ray
@pytest.mark.parametrize("algo", _algorithms())
def test_smoke_every_registered_algorithm_on_captioning(algo: str, tiny_coco: Path, mle_run: Path, tmp_path: Path) -> None:
    """Only ``--task`` changes: each algorithm trains, validates and is tested on image features."""
    results = _train(algo, tiny_coco, tmp_path / algo, mle_run)
    test = results["test"]
    assert test["split"] == "coco/test" and test["sentences"] == 6
    assert test["features"] == "surrogate"
    assert test["bleu"] == test["bleu_4"]
    info = json.loads((tmp_path / algo / "run.json").read_text())  # the run's own decoding settings
    check_bleu(tmp_path / algo, results, SimpleNamespace(valid_beam=info["valid_beam"], max_decode_len=info["max_decode_len"]))
    saved = json.loads((tmp_path / algo / "results.json").read_text())
    assert saved["test"]["features"] == "surrogate"
    assert (tmp_path / algo / "actor_best.pt").is_file()


@pytest.mark.ray
def test_eval_json_reports_bleu4_and_cider_d(mle_run: Path, capsys) -> None:
    from rayseq.cli import main

    assert main(["eval", str(mle_run), "--split", "test", "--json", "--no-progress", "--beam", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "coco/test" and result["features"] == "surrogate"
    assert {"bleu_1", "bleu_4", "cider_d", "sacrebleu"} <= set(result) and result["references"] == 4
    assert main(["eval", str(mle_run), "--split", "nope"]) == 2
