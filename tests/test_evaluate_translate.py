"""Actor files, run directories, ``rayseq eval`` and ``rayseq translate`` on a tiny Multi30k actor."""

from __future__ import annotations

import argparse
import gzip
import io
import json
from pathlib import Path

import pytest
import torch

from rayseq import actor_io
from rayseq.actor_io import load_actor, read_run_info, resolve_actor, save_actor
from rayseq.commands import evaluate as eval_cmd
from rayseq.commands import translate as translate_cmd
from rayseq.evaluation.score import evaluate
from rayseq.evaluation.bleu import corpus_bleu_ids
from rayseq.evaluation.decode import translate_ids, translate_lines
from rayseq.data.batching import pad_batch
from rayseq.data.errors import DataError
from rayseq.data.tasks import SHIPPED_ROOT, load_task
from rayseq.models.base import EOS, UNK
from rayseq.models.seq2seq import Seq2Seq, Seq2SeqConfig

MAX_LEN = 8  # decoder steps: 7 tokens + <eos> (enough for 4-grams, fast)


def _tiny_model(seed: int = 0) -> Seq2Seq:
    """A tiny actor over the Multi30k vocabularies that never emits <unk> and never stops early.

    Without <unk> a hypothesis used as its own reference scores BLEU 100 on token ids too;
    without early <eos> every hypothesis is non-empty (a reference file has no empty lines).
    """
    task = load_task("multi30k")
    torch.manual_seed(seed)
    cfg = Seq2SeqConfig(len(task.src_vocab), len(task.tgt_vocab), emb_dim=16, enc_hidden=8, dec_hidden=16, dropout=0.2)
    model = Seq2Seq(cfg)
    with torch.no_grad():
        model.out.bias[UNK] = -50.0
        model.out.bias[EOS] = -50.0
    return model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    task = load_task("multi30k")
    d = tmp_path_factory.mktemp("run")
    (d / "run.json").write_text(json.dumps({"task": "multi30k", "data_dir": None, "algo": "mle"}))
    save_actor(d / "actor_best.pt", _tiny_model(), task.src_vocab, task.tgt_vocab, {"algo": "mle", "step": 3})
    return d


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The first 20 lines of the shipped Multi30k validation files, as plain text."""
    d = tmp_path_factory.mktemp("data")
    out = []
    for lang in ("de", "en"):
        with gzip.open(SHIPPED_ROOT / "multi30k" / f"val.lc.norm.tok.{lang}.gz", "rt", encoding="utf-8") as f:
            lines = [next(f) for _ in range(20)]
        path = d / f"val20.{lang}"
        path.write_text("".join(lines), encoding="utf-8")
        out.append(path)
    return out[0], out[1]


def _logits(model: Seq2Seq) -> torch.Tensor:
    task = load_task("multi30k")
    corpus = task.split("valid")
    src, src_len = pad_batch(corpus.src[:4])
    tgt, _ = pad_batch(corpus.tgt[:4], bos=2)
    with torch.no_grad():
        return model(torch.from_numpy(src), torch.from_numpy(src_len), torch.from_numpy(tgt))


# ----------------------------------------------------------------------------- actor files


def test_save_load_round_trip(tmp_path: Path) -> None:
    task = load_task("multi30k")
    model = _tiny_model().eval()
    save_actor(tmp_path / "a.pt", model, task.src_vocab, task.tgt_vocab, {"bleu/valid": torch.tensor(1.5), "p": tmp_path})
    loaded = load_actor(tmp_path / "a.pt")
    assert not loaded.model.training
    assert loaded.src_vocab == task.src_vocab and loaded.tgt_vocab == task.tgt_vocab
    assert loaded.meta == {"bleu/valid": 1.5, "p": str(tmp_path)}
    assert loaded.model.cfg == model.cfg
    assert torch.equal(_logits(loaded.model), _logits(model))


def test_failed_save_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = load_task("multi30k")
    path = tmp_path / "actor_best.pt"
    save_actor(path, _tiny_model(0), task.src_vocab, task.tgt_vocab, {"v": 1})
    before = path.read_bytes()

    def dying_save(obj: object, f: io.BufferedWriter) -> None:
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # a kill arriving mid-write

    monkeypatch.setattr(actor_io.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_actor(path, _tiny_model(1), task.src_vocab, task.tgt_vocab, {"v": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_actor(path).meta == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["actor_best.pt"]  # no temp file left


def test_load_actor_errors(tmp_path: Path) -> None:
    task = load_task("multi30k")
    with pytest.raises(DataError, match="nope.pt: not found"):
        load_actor(tmp_path / "nope.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(DataError, match="text.pt: not a rayseq actor file: torch.load failed"):
        load_actor(tmp_path / "text.pt")
    torch.save({"model": {}, "optimizer": {}}, tmp_path / "other.pt")
    with pytest.raises(DataError, match=r"other.pt: not a rayseq actor.*keys \['model', 'optimizer'\]"):
        load_actor(tmp_path / "other.pt")
    model = _tiny_model()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(DataError, match="sd.pt: .*bare state_dict"):
        load_actor(tmp_path / "sd.pt")

    good = tmp_path / "good.pt"
    save_actor(good, model, task.src_vocab, task.tgt_vocab, {})
    payload = torch.load(good, weights_only=True)
    payload["tgt_itos"] = payload["tgt_itos"][:-1]
    torch.save(payload, tmp_path / "vocab.pt")
    with pytest.raises(DataError, match=r"vocab.pt: tgt_itos has 5920 tokens but model_config.tgt_vocab_size is 5921"):
        load_actor(tmp_path / "vocab.pt")
    payload = torch.load(good, weights_only=True)
    payload["state_dict"]["out.weight"] = payload["state_dict"]["out.weight"][:, :4]
    torch.save(payload, tmp_path / "weights.pt")
    with pytest.raises(DataError, match=r"weights.pt: state_dict does not fit model_config.*out.weight"):
        load_actor(tmp_path / "weights.pt")
    payload = torch.load(good, weights_only=True)
    payload["format"] = "rayseq-actor/2"
    torch.save(payload, tmp_path / "newer.pt")
    with pytest.raises(DataError, match="newer.pt: .*'rayseq-actor/2', which this rayseq version cannot read"):
        load_actor(tmp_path / "newer.pt")
    with pytest.raises(DataError, match="vocab sizes"):
        save_actor(tmp_path / "x.pt", model, task.tgt_vocab, task.src_vocab, {})


def test_run_dir_errors(tmp_path: Path, run_dir: Path) -> None:
    assert resolve_actor(run_dir) == run_dir / "actor_best.pt"
    assert read_run_info(run_dir).task == "multi30k"
    with pytest.raises(DataError, match="missing: run directory not found"):
        resolve_actor(tmp_path / "missing")
    with pytest.raises(DataError, match="has no actor_best.pt; is it a rayseq run directory"):
        resolve_actor(tmp_path)
    (tmp_path / "actor_latest.pt").write_bytes(b"")
    with pytest.raises(DataError, match="has no actor_best.pt; it has actor_latest.pt: use --which latest"):
        resolve_actor(tmp_path)
    with pytest.raises(DataError, match="which='worst'"):
        resolve_actor(run_dir, "worst")


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_src_ref(tmp_path: Path, run_dir: Path, subset: tuple[Path, Path]) -> None:
    src, ref = subset
    hyp = tmp_path / "hyp.txt"
    r = evaluate(run_dir, src_file=src, ref_files=[ref], hyp_out=hyp, beam=3, max_len=MAX_LEN, batch_size=7, progress=False)
    assert r["split"] is None and r["sentences"] == 20 and r["beam"] == 3 and r["references"] == 1
    assert 0.0 <= r["bleu"] < 50.0 and 0.0 <= r["sacrebleu"] < 50.0
    assert r["sacrebleu_signature"].startswith("nrefs:1|")
    assert r["decode_tokens_per_s"] > 0 and r["seconds"] > 0
    lines = hyp.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines[:-1]) == 20
    # Original order: the same as translating each sentence on its own.
    actor = load_actor(run_dir / "actor_best.pt")
    src_lines = src.read_text(encoding="utf-8").splitlines()
    assert lines[:-1] == translate_lines(actor, src_lines, beam=3, batch_size=1, max_len=MAX_LEN)
    assert all(len(line.split()) == MAX_LEN - 1 for line in lines[:-1])

    # The hypotheses as their own reference: BLEU 100 on both metrics (no <unk> in them).
    own = evaluate(run_dir, src_file=src, ref_files=[hyp], beam=3, max_len=MAX_LEN, progress=False)
    assert own["bleu"] == pytest.approx(100.0) and own["sacrebleu"] == pytest.approx(100.0)
    # Multi-reference: the exact reference among several still gives 100.
    multi = evaluate(run_dir, src_file=src, ref_files=[ref, hyp], beam=3, max_len=MAX_LEN, progress=False)
    assert multi["references"] == 2 and multi["sacrebleu_signature"].startswith("nrefs:2|")
    assert multi["bleu"] == pytest.approx(100.0) and multi["sacrebleu"] == pytest.approx(100.0)


def test_evaluate_task_split_greedy(run_dir: Path) -> None:
    r = evaluate(run_dir, split="valid", beam=1, max_len=4, batch_size=200, progress=False)
    corpus = load_task("multi30k").split("valid")
    assert r["split"] == "multi30k/valid" and r["sentences"] == len(corpus)
    # the same as decoding the task's own ids and scoring them against its references (no text round trip)
    hyps = translate_ids(load_actor(run_dir / "actor_best.pt").model, corpus.src, beam=1, batch_size=200, max_len=4)
    paper = corpus_bleu_ids(hyps, [[y] for y in corpus.tgt])
    assert (r["bleu"], r["bleu_precisions"], r["bleu_bp"]) == (paper["bleu"], paper["precisions"], paper["bp"])
    # 3 tokens per hypothesis (never <eos>, max_len 4): no 4-gram, so BLEU-4 is exactly 0
    assert all(len(h) == 3 for h in hyps) and r["bleu_precisions"][3] == 0.0 and r["bleu"] == 0.0


def test_evaluate_errors(tmp_path: Path, run_dir: Path, subset: tuple[Path, Path]) -> None:
    src, ref = subset
    with pytest.raises(DataError, match="nowhere: run directory not found"):
        evaluate(tmp_path / "nowhere", progress=False)
    with pytest.raises(DataError, match="needs at least one --ref"):
        evaluate(run_dir, src_file=src, progress=False)
    with pytest.raises(DataError, match="--ref needs --src"):
        evaluate(run_dir, ref_files=[ref], progress=False)
    short = tmp_path / "short.en"
    short.write_text("a man .\n")
    with pytest.raises(DataError, match=r"short.en has 1 lines but source file .*val20.de has 20"):
        evaluate(run_dir, src_file=src, ref_files=[ref, short], progress=False)
    with pytest.raises(DataError, match="--split 'dev': task 'multi30k' has splits train, valid, test"):
        evaluate(run_dir, split="dev", progress=False)
    with pytest.raises(DataError, match="--hyp-out .*: folder .*no-such-dir does not exist"):
        evaluate(run_dir, src_file=src, ref_files=[ref], hyp_out=tmp_path / "no-such-dir" / "h.txt", progress=False)
    with pytest.raises(DataError, match="--beam 0"):
        evaluate(run_dir, beam=0, progress=False)


# ----------------------------------------------------------------------------- translate


def test_translate_lines_keeps_empty_lines(run_dir: Path) -> None:
    actor = load_actor(run_dir / "actor_best.pt")
    lines = ["ein mann läuft .", "", "zwei hunde spielen im schnee .", "   ", "xyzzy"]
    out = translate_lines(actor, lines, beam=2, batch_size=2, max_len=MAX_LEN)
    assert len(out) == 5 and out[1] == "" and out[3] == ""
    assert all(len(out[i].split()) == MAX_LEN - 1 for i in (0, 2, 4))


# ----------------------------------------------------------------------------- run()


def _parse(module: object, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_eval_run_prints_one_json_line(run_dir: Path, subset: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    src, ref = subset
    argv = [str(run_dir), "--src", str(src), "--ref", str(ref), "--ref", str(ref), "--beam", "2",
            "--max-len", str(MAX_LEN), "--no-progress", "--json"]
    assert eval_cmd.run(_parse(eval_cmd, argv)) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    assert result["sentences"] == 20 and result["references"] == 2 and result["beam"] == 2


def test_translate_run_streams_batches(run_dir: Path) -> None:
    class CountingOut(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1
            super().flush()

    stdin = io.StringIO("ein mann .\n\nzwei hunde .\neine frau\nein kind .\n")
    stdout = CountingOut()
    args = _parse(translate_cmd, [str(run_dir), "--beam", "2", "--batch-size", "2", "--max-len", str(MAX_LEN)])
    assert translate_cmd.run(args, stdin=stdin, stdout=stdout) == 0
    lines = stdout.getvalue().split("\n")
    assert len(lines) == 6 and lines[-1] == "" and lines[1] == ""
    assert stdout.flushes == 3  # one per batch of 2 lines
