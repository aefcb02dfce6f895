"""Tests of the corpora layer ``rayseq.data`` (plain numpy, no ray/torch)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rayseq.data.batching import bucket_batches, pad_batch
from rayseq.data.corpus import load_parallel, read_lines, read_parallel_text
from rayseq.data.errors import DataError
from rayseq.data.tasks import DATA_DIR_ENV, TASKS, clear_task_cache, load_task
from rayseq.data.vocab import BOS, EOS, PAD, SPECIALS, UNK, Vocab

IWSLT_DIR = Path("/work/shared/data/iwslt14")


def _write(path: Path, text: str | bytes) -> Path:
    data = text.encode("utf-8") if isinstance(text, str) else text
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


# Vocab


def test_vocab_build_is_deterministic_and_ordered() -> None:
    sents = [["b", "a", "c"], ["a", "b"], ["a", "d", "<unk>"], ["e"]]
    v1 = Vocab.build(sents)
    v2 = Vocab.build(list(reversed(sents)))
    assert v1 == v2
    # freq desc (a:3, b:2), ties by token asc (c, d, e); a literal "<unk>" is the special
    assert v1.itos == [*SPECIALS, "a", "b", "c", "d", "e"]
    assert Vocab.build(sents, min_freq=2).itos == [*SPECIALS, "a", "b"]
    assert Vocab.build(sents, max_size=5).itos == [*SPECIALS, "a"]
    assert (PAD, UNK, BOS, EOS) == (0, 1, 2, 3)


def test_vocab_build_rejects_raw_strings() -> None:
    with pytest.raises(DataError, match="split"):
        Vocab.build(["a b c"])


def test_vocab_encode_decode_with_unk() -> None:
    v = Vocab.build([["hello", "world"]])
    ids = v.encode(["hello", "mars", "world"])
    assert ids.dtype == np.int64
    assert ids.tolist() == [v.stoi["hello"], UNK, v.stoi["world"]]
    assert v.decode(ids) == ["hello", "<unk>", "world"]
    framed = [BOS, *ids.tolist(), EOS, PAD, v.stoi["hello"]]
    assert v.decode(np.array(framed)) == ["hello", "<unk>", "world"]
    assert v.decode(framed, strip_specials=False)[0] == "<bos>"
    with pytest.raises(DataError, match="outside the vocabulary"):
        v.decode([len(v)])


def test_vocab_save_load_roundtrip(tmp_path: Path) -> None:
    v = Vocab.build([["der", "hund", "läuft", "."], ["der", "."]])
    path = tmp_path / "vocab.de.txt"
    v.save(path)
    assert path.read_text(encoding="utf-8").splitlines()[:4] == list(SPECIALS)
    assert Vocab.load(path) == v
    assert sorted(os.listdir(tmp_path)) == ["vocab.de.txt"]  # no temp file left


def test_vocab_load_validates(tmp_path: Path) -> None:
    bad_specials = _write(tmp_path / "a.txt", "<pad>\n<bos>\n<unk>\n<eos>\nx\n")
    with pytest.raises(DataError, match=r"a\.txt:2: expected the special '<unk>'"):
        Vocab.load(bad_specials)
    dup = _write(tmp_path / "b.txt", "\n".join([*SPECIALS, "x", "y", "x"]) + "\n")
    with pytest.raises(DataError, match=r"b\.txt:7: token 'x' already on line 5"):
        Vocab.load(dup)
    latin1 = _write(tmp_path / "c.txt", "\n".join(SPECIALS).encode() + b"\nh\xe9\n")
    with pytest.raises(DataError, match=r"c\.txt:5: not valid UTF-8"):
        Vocab.load(latin1)


def test_vocab_save_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v = Vocab.build([["a"]])
    target = tmp_path / "is_a_dir"
    target.mkdir()
    with pytest.raises(DataError, match="could not write"):
        v.save(target)
    assert sorted(os.listdir(tmp_path)) == ["is_a_dir"]
    assert os.listdir(target) == []

    old = tmp_path / "vocab.txt"
    v.save(old)
    before = old.read_bytes()

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(DataError, match="old file is unchanged"):
        Vocab.build([["a", "b"]]).save(old)
    assert sorted(os.listdir(tmp_path)) == ["is_a_dir", "vocab.txt"]
    assert old.read_bytes() == before

    with pytest.raises(DataError, match="does not exist"):
        v.save(tmp_path / "missing" / "vocab.txt")


# Reading corpora


def test_read_lines_plain_and_gz(tmp_path: Path) -> None:
    text = "ein hund .\nzwei katzen\r\n"
    assert read_lines(_write(tmp_path / "a.de", text)) == ["ein hund .", "zwei katzen"]
    assert read_lines(_write(tmp_path / "a.de.gz", text)) == ["ein hund .", "zwei katzen"]
    assert read_lines(_write(tmp_path / "nolf.de", "x\ny")) == ["x", "y"]


def test_missing_file_names_path_and_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.de.*not found.*--data-dir"):
        read_lines(tmp_path / "nope.de")


def test_bad_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.de.gz", b"gut\nauch gut\nk\xe4se\n")
    with pytest.raises(DataError, match=r"bad\.de\.gz:3: not valid UTF-8"):
        read_lines(path)


def test_empty_line_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "e.en", "one\n  \nthree\n")
    with pytest.raises(DataError, match=r"e\.en:2: empty line"):
        read_lines(path)


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.en.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"x\.en\.gz.*gzip"):
        read_lines(path)


def test_line_count_mismatch_names_both(tmp_path: Path) -> None:
    src = _write(tmp_path / "t.de", "a\nb\nc\n")
    tgt = _write(tmp_path / "t.en", "a\nb\n")
    with pytest.raises(DataError) as err:
        read_parallel_text(src, tgt)
    msg = str(err.value)
    assert str(src) in msg and str(tgt) in msg and "3" in msg and "2" in msg


def test_load_parallel_max_len(tmp_path: Path) -> None:
    src = _write(tmp_path / "t.de", "a b\na b c d\nc\n")
    tgt = _write(tmp_path / "t.en", "x\ny\nx y z w\n")
    sv, tv = Vocab.build([["a", "b"]]), Vocab.build([["x"]])
    full = load_parallel(src, tgt, sv, tv)
    assert len(full) == 3 and full.src_text[1] == ["a", "b", "c", "d"]
    short = load_parallel(src, tgt, sv, tv, max_len=3, name="toy")
    assert len(short) == 1 and short.name == "toy"
    s, t = short[0]
    assert s.tolist() == [sv.stoi["a"], sv.stoi["b"]] and t.tolist() == [tv.stoi["x"]]


# Tasks


def test_unknown_task_lists_names() -> None:
    with pytest.raises(DataError) as err:
        load_task("wmt99")
    assert all(name in str(err.value) for name in TASKS)


def test_multi30k_splits_and_roundtrip() -> None:
    task = load_task("multi30k")
    assert load_task("multi30k") is task  # cached vocab and splits
    assert len(task.src_vocab) == 7859 and len(task.tgt_vocab) == 5921
    sizes = {s: len(task.split(s)) for s in ("train", "valid", "test")}
    assert sizes == {"train": 29000, "valid": 1014, "test": 1000}
    train = task.split("train")
    for ids, text, vocab in ((train.src[0], train.src_text[0], task.src_vocab),
                             (train.tgt[0], train.tgt_text[0], task.tgt_vocab)):
        assert ids.dtype == np.int64
        expected = [t if t in vocab.stoi else "<unk>" for t in text]
        assert vocab.decode(ids) == expected
    assert train.tgt_text[0][:3] == ["two", "young", ","]
    with pytest.raises(DataError, match="no split 'dev'"):
        task.split("dev")


def test_iwslt14_needs_a_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(DataError, match=f"{DATA_DIR_ENV}.*prepare-iwslt14"):
        load_task("iwslt14")
    with pytest.raises(DataError, match=r"not found"):
        load_task("iwslt14", tmp_path / "nowhere")
    _write(tmp_path / "valid.de-en.de", "a\n")
    _write(tmp_path / "valid.de-en.en", "b\n")
    with pytest.raises(DataError, match=r"missing train\.de-en\.de\[\.gz\].*test\.de-en\.en"):
        load_task("iwslt14", tmp_path)


def test_iwslt14_from_shared_data(monkeypatch: pytest.MonkeyPatch) -> None:
    if not IWSLT_DIR.is_dir():
        pytest.skip(f"{IWSLT_DIR} is absent: no IWSLT14 data on this machine")
    clear_task_cache()
    with pytest.warns(UserWarning, match="first 500 lines.*prepare-iwslt14 de-en.tgz OUTDIR"):
        task = load_task("iwslt14", IWSLT_DIR)
    monkeypatch.setenv(DATA_DIR_ENV, str(IWSLT_DIR.parent))
    assert load_task("iwslt14") is task  # $RAYSEQ_DATA_DIR/iwslt14 is the same folder
    assert load_task("iwslt14", IWSLT_DIR.parent) is task  # a parent holding iwslt14/ works too
    assert len(task.split("train")) == 500
    valid, test = task.split("valid"), task.split("test")
    assert len(valid) == 6969
    assert len(test) == 6750
    assert max(max(len(s), len(t)) for s, t in zip(valid.src_text, valid.tgt_text)) <= 50
    assert max(len(t) for t in test.tgt_text) > 50  # test is not length-filtered


# Batching


def test_bucket_batches() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=1000)
    b0 = bucket_batches(lengths, 32, seed=7, epoch=0)
    assert np.array_equal(np.sort(np.concatenate(b0)), np.arange(1000))
    assert all(len(b) <= 32 for b in b0)
    again = bucket_batches(lengths, 32, seed=7, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(b0, again, strict=True))
    b1 = bucket_batches(lengths, 32, seed=7, epoch=1)
    assert not all(np.array_equal(a, b) for a, b in zip(b0, b1))
    spread = np.mean([np.ptp(lengths[b]) for b in b0])
    assert spread <= 2  # 1000 sentences over 59 lengths: a batch spans at most ~2 lengths
    ordered = bucket_batches(lengths, 32, seed=7, shuffle=False)
    assert np.all(np.diff(lengths[np.concatenate(ordered)]) >= 0)


def test_bucket_batches_max_tokens() -> None:
    lengths = np.array([5, 50, 3, 3, 10, 200, 7, 7, 7, 1])
    batches = bucket_batches(lengths, 4, seed=0, max_tokens=30)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(len(lengths)))
    for b in batches:
        assert len(b) <= 4
        assert len(b) * lengths[b].max() <= 30 or len(b) == 1  # too-long sentence alone
    assert bucket_batches([], 4, seed=0) == []


def test_pad_batch() -> None:
    seqs = [np.array([5, 6, 7]), np.array([8])]
    tokens, lengths = pad_batch(seqs, pad=PAD, bos=BOS, eos=EOS)
    assert tokens.dtype == np.int64 and lengths.tolist() == [5, 3]
    assert tokens.tolist() == [[BOS, 5, 6, 7, EOS], [BOS, 8, EOS, PAD, PAD]]
    plain, plain_len = pad_batch(seqs)
    assert plain.tolist() == [[5, 6, 7], [8, 0, 0]] and plain_len.tolist() == [3, 1]


def test_data_layer_imports_neither_ray_nor_torch() -> None:
    code = (
        "import sys, rayseq.data.tasks, rayseq.data.batching;"
        "bad = [m for m in ('ray', 'torch') if m in sys.modules]; assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_task_pickles() -> None:
    import pickle

    task = load_task("multi30k")
    task.split("valid")
    copy = pickle.loads(pickle.dumps(task))
    assert copy.src_vocab == task.src_vocab and len(copy.split("valid")) == 1014


def test_shipped_toy_corpus_is_what_the_generator_writes(tmp_path: Path) -> None:
    from rayseq.data.tasks import SHIPPED_ROOT
    from rayseq.data.toy import write_toy_corpus

    write_toy_corpus(tmp_path)
    for f in sorted(tmp_path.iterdir()):
        assert (SHIPPED_ROOT / "toy" / f.name).read_bytes() == f.read_bytes(), f.name
    src, tgt = (SHIPPED_ROOT / "toy" / "valid.src").read_text().splitlines(), (SHIPPED_ROOT / "toy" / "valid.tgt").read_text().splitlines()
    assert all(t.split() == s.split()[::-1] for s, t in zip(src, tgt))
