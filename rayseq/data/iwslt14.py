"""IWSLT14 de-en preprocessing as MIXER (Ranzato et al. 2015) ran it, in Python.

A port of MIXER's ``prepareData.sh`` (the ancestor of fairseq's ``prepare-iwslt14.sh``)
with the 1-50 token cut Dai et al. 2018 used, step by step:

- train: drop the ``<url>``/``<talkid>``/``<keywords>`` lines (``grep -v``), delete the
  ``<title>``/``<description>`` tags keeping their text, ``tokenizer.perl -l LANG`` (HTML
  escapes on, no aggressive hyphen splitting), ``clean-corpus-n.perl -ratio 1.5 ... 1 50``,
  ``lowercase.perl``; valid = the lines with ``NR % 23 == 0``, train = the others.
- test: the ``<seg id="N">`` text of dev2010, TEDX.dev2012, tst2010, tst2011 and tst2012, in
  that order, with ``’`` → ``'``, tokenized and lowercased; not length filtered.

Tokenization is sacremoses' port of ``tokenizer.perl``, run in a process pool.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from multiprocessing import Pool
from pathlib import Path

from sacremoses import MosesTokenizer
from tqdm import tqdm

from rayseq.data.corpus import decode_utf8
from rayseq.data.errors import DataError

PathLike = str | os.PathLike[str]

# Test sets in the order MIXER concatenates them.
TEST_SETS: tuple[str, ...] = (
    "IWSLT14.TED.dev2010",
    "IWSLT14.TEDX.dev2012",
    "IWSLT14.TED.tst2010",
    "IWSLT14.TED.tst2011",
    "IWSLT14.TED.tst2012",
)
SPLITS: tuple[str, ...] = ("train", "valid", "test")
CLEAN_RATIO = 1.5  # clean-corpus-n.perl -ratio
CLEAN_MIN_TOKENS = 1  # clean-corpus-n.perl min
CLEAN_MAX_TOKENS = 50  # clean-corpus-n.perl max (fairseq uses 175; MIXER and Dai et al. 50)
CLEAN_MAX_WORD_CHARS = 1000  # clean-corpus-n.perl -max-word-length default
VALID_EVERY = 23  # awk 'NR%23 == 0' goes to valid
CHUNK_LINES = 1000  # lines per tokenization task sent to a worker

_DROP_TRAIN_LINE = ("<url>", "<talkid>", "<keywords>")
_STRIP_TRAIN_TAG = re.compile(r"</?title>|</?description>")
_SEG_OPEN = re.compile(r'<seg id="[0-9]*">\s*')
_SEG_CLOSE = re.compile(r"\s*</seg>\s*")
_WHITESPACE = re.compile(r"\s+")
# Python's \s matches \x1c-\x1f but Perl's does not: tokenizer.perl deletes them as ASCII junk.
_PERL_JUNK_NOT_SPACE = re.compile(r"[\x1c-\x1f]")

_TOKENIZERS: dict[str, MosesTokenizer] = {}  # per process, by language


def output_names(src: str = "de", tgt: str = "en") -> list[str]:
    """The six files ``prepare_iwslt14`` writes, e.g. ``train.de-en.de``."""
    pair = f"{src}-{tgt}"
    return [f"{split}.{pair}.{lang}" for split in SPLITS for lang in (src, tgt)]


def required_members(src: str = "de", tgt: str = "en") -> list[str]:
    """Base names of the archive files the pipeline reads (``train.tags`` and test XML)."""
    pair = f"{src}-{tgt}"
    names = [f"train.tags.{pair}.{lang}" for lang in (src, tgt)]
    names += [f"{name}.{pair}.{lang}.xml" for name in TEST_SETS for lang in (src, tgt)]
    return names


# Reading the archive


def _iter_tar(archive: Path, wanted: set[str]) -> Iterator[tuple[str, bytes | None]]:
    """(member name, bytes or None when its base name is not wanted) of each regular file."""
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            data = None
            if member.name.rsplit("/", 1)[-1] in wanted:
                f = tar.extractfile(member)
                assert f is not None  # regular files always extract
                data = f.read()
            yield member.name, data


def _iter_dir(root: Path, wanted: set[str]) -> Iterator[tuple[str, bytes | None]]:
    """Same as ``_iter_tar`` for an already extracted archive (names relative to ``root``)."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes() if path.name in wanted else None
            yield path.relative_to(root).as_posix(), data


def read_members(archive: PathLike, names: Sequence[str]) -> dict[str, tuple[str, bytes]]:
    """``{base name: (where it was found, bytes)}`` for ``names`` in a .tgz or a directory.

    Members are matched by base name anywhere in the tree (the IWSLT archive keeps them
    under ``de-en/``); other files are ignored.
    """
    path = Path(archive)
    if not path.exists():
        raise DataError(
            f"{path}: no such file or directory. Download de-en.tgz from the IWSLT 2014 "
            f"release (https://wit3.fbk.eu/archive/2014-01/texts/de/en/de-en.tgz) and pass "
            f"its path, or the directory it was extracted to."
        )
    is_dir = path.is_dir()
    found: dict[str, tuple[str, bytes]] = {}
    seen: list[str] = []
    try:
        for name, data in (_iter_dir if is_dir else _iter_tar)(path, set(names)):
            seen.append(name)
            if data is None:
                continue
            base = name.rsplit("/", 1)[-1]
            location = str(path / name) if is_dir else f"{path}:{name}"
            if base in found:
                raise DataError(
                    f"{path}: {base} is there twice ({found[base][0]} and {location}); "
                    f"keep one copy (pass the de-en folder itself, or a clean archive)."
                )
            found[base] = (location, data)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: cannot be read as a .tgz archive or directory ({e}). The download is "
            f"damaged or not the IWSLT de-en.tgz: download it again."
        ) from None
    missing = [name for name in names if name not in found]
    if missing:
        shown = ", ".join(seen[:40]) or "no files"
        if len(seen) > 40:
            shown += f", ... ({len(seen)} files)"
        more = f" (and also {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise DataError(
            f"{path}: required file {missing[0]} is missing{more}. Found: {shown}. "
            f"Pass the IWSLT 2014 de-en.tgz as distributed, or the folder it extracts to."
        )
    return found


def decode_lines(data: bytes, location: str) -> list[str]:
    """The ``\\n``-separated UTF-8 lines of ``data`` (as Perl reads them, no final empty line)."""
    text = decode_utf8(data, location, "The IWSLT files are UTF-8: re-download the archive or convert that file.")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


# The sed/grep steps


def filter_train_tags(lines: Sequence[str]) -> list[str]:
    """``grep -v`` url/talkid/keywords lines, ``sed`` away title/description tags."""
    return [
        _STRIP_TRAIN_TAG.sub("", line)
        for line in lines
        if not any(tag in line for tag in _DROP_TRAIN_LINE)
    ]


def extract_segments(lines: Sequence[str]) -> list[str]:
    """The text of each ``<seg id="N">`` line of an IWSLT XML file, with ``’`` → ``'``."""
    out = []
    for line in lines:
        if "<seg id" in line:
            text = _SEG_CLOSE.sub("", _SEG_OPEN.sub("", line))
            out.append(text.replace("\u2019", "'"))
    return out


# tokenizer.perl


def tokenize_line(tokenizer: MosesTokenizer, line: str) -> str:
    """``tokenizer.perl -l LANG`` on one line: HTML escapes on, no aggressive dash splits.

    Like the Perl script, a whitespace-only line is passed through unchanged.
    """
    line = _PERL_JUNK_NOT_SPACE.sub("", line)
    if not line or _WHITESPACE.fullmatch(line):
        return line
    return tokenizer.tokenize(line, aggressive_dash_splits=False, return_str=True, escape=True)


def _tokenize_chunk(job: tuple[str, list[str]]) -> list[str]:
    """Pool worker: tokenize a chunk of lines in language ``job[0]``."""
    lang, lines = job
    tokenizer = _TOKENIZERS.get(lang)
    if tokenizer is None:
        tokenizer = _TOKENIZERS[lang] = MosesTokenizer(lang=lang)
    return [tokenize_line(tokenizer, line) for line in lines]


def tokenize_streams(
    streams: Sequence[tuple[str, Sequence[str]]], *, workers: int, progress: bool
) -> list[list[str]]:
    """Tokenize each ``(lang, lines)`` stream, in order, over a pool of ``workers`` processes."""
    jobs: list[tuple[str, list[str]]] = []
    owner: list[int] = []  # stream index of each job
    for i, (lang, lines) in enumerate(streams):
        for start in range(0, len(lines), CHUNK_LINES):
            jobs.append((lang, list(lines[start : start + CHUNK_LINES])))
            owner.append(i)
    out: list[list[str]] = [[] for _ in streams]
    total = sum(len(lines) for _, lines in streams)
    bar = tqdm(total=total, unit="line", desc="tokenizing", file=sys.stderr, disable=not progress)
    with ExitStack() as stack:
        stack.enter_context(bar)
        if workers <= 1 or len(jobs) <= 1:
            results: Iterator[list[str]] = map(_tokenize_chunk, jobs)
        else:  # imap keeps the order of the jobs
            pool = stack.enter_context(Pool(processes=min(workers, len(jobs))))
            results = pool.imap(_tokenize_chunk, jobs)
        for i, chunk in zip(owner, results):
            out[i].extend(chunk)
            bar.update(len(chunk))
    return out


# clean-corpus-n.perl, lowercase.perl, the awk split


def _clean_side(line: str) -> str:
    """clean-corpus-n.perl's normalisation of one side: drop ``|``, squeeze whitespace."""
    return _WHITESPACE.sub(" ", line.replace("|", "")).strip(" ")


def clean_pair(src: str, tgt: str) -> tuple[str, str] | None:
    """``clean-corpus-n.perl -ratio 1.5 CORPUS src tgt OUT 1 50`` on one pair; None = dropped.

    (The ``|`` deletion only runs when the first pair has none, which after the tokenizer's
    ``&#124;`` escape is always the case.)
    """
    src, tgt = _clean_side(src), _clean_side(tgt)
    if not src or not tgt:
        return None
    src_words, tgt_words = src.split(" "), tgt.split(" ")
    ns, nt = len(src_words), len(tgt_words)
    for n in (ns, nt):
        if not CLEAN_MIN_TOKENS <= n <= CLEAN_MAX_TOKENS:
            return None
    if ns / nt > CLEAN_RATIO or nt / ns > CLEAN_RATIO:
        return None
    if any(len(w) > CLEAN_MAX_WORD_CHARS for w in src_words + tgt_words):
        return None
    return src, tgt


def split_valid(lines: Sequence[str]) -> tuple[list[str], list[str]]:
    """(train, valid): valid takes the 1-based lines ``NR % 23 == 0``."""
    train = [line for nr, line in enumerate(lines, 1) if nr % VALID_EVERY != 0]
    valid = [line for nr, line in enumerate(lines, 1) if nr % VALID_EVERY == 0]
    return train, valid


# Writing


def _check_outdir(outdir: Path, names: Sequence[str], overwrite: bool) -> None:
    """Refuse a non-directory OUTDIR, or existing outputs unless ``overwrite``."""
    if outdir.exists() and not outdir.is_dir():
        raise DataError(f"{outdir}: exists and is not a directory; choose another OUTDIR.")
    existing = [name for name in names if (outdir / name).exists()]
    if existing and not overwrite:
        raise DataError(
            f"{outdir}: already holds {', '.join(existing)}. Pass overwrite=True "
            f"(--overwrite) to replace them, or choose another OUTDIR."
        )


def _write_outputs(outdir: Path, files: dict[str, list[str]]) -> None:
    """Write every file to a temporary folder next to ``outdir``, then move them in.

    If a move fails, the files already moved are removed again, so ``outdir`` never
    holds a mix of new files and missing ones.
    """
    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
    moved: list[Path] = []
    created = not outdir.exists()
    try:
        for name, lines in files.items():
            with open(tmp / name, "w", encoding="utf-8", newline="\n") as f:
                f.writelines(line + "\n" for line in lines)
        outdir.mkdir(exist_ok=True)
        for name in files:
            os.replace(tmp / name, outdir / name)
            moved.append(outdir / name)
    except BaseException:
        for path in moved:
            path.unlink(missing_ok=True)
        if created:
            try:
                outdir.rmdir()  # only if still empty
            except OSError:
                pass
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# The pipeline


def prepare_iwslt14(
    archive: PathLike,
    outdir: PathLike,
    *,
    progress: bool = True,
    src: str = "de",
    tgt: str = "en",
    overwrite: bool = False,
    workers: int | None = None,
) -> dict[str, int]:
    """Build MIXER's IWSLT14 splits from ``de-en.tgz`` (or its extracted folder) into ``outdir``.

    Writes ``{train,valid,test}.{src}-{tgt}.{src,tgt}`` (UTF-8, one sentence per line) and
    returns the number of pairs per split (for the real archive MIXER's reference files
    have 6,969 valid and 6,750 test pairs, and about 153K train). ``src``/``tgt`` name the
    archive's language pair as in its file names. Nothing is written unless every step
    succeeds. ``workers`` defaults to ``os.cpu_count()``. Raises DataError for a
    missing/unreadable archive or member, non-UTF-8 text, train (or test) sides of
    different lengths, or existing outputs without ``overwrite``.
    """
    out = Path(outdir)
    names = output_names(src, tgt)
    _check_outdir(out, names, overwrite)
    members = read_members(archive, required_members(src, tgt))
    pair = f"{src}-{tgt}"

    # Train: grep/sed the tags, both sides must still line up.
    train_raw = []
    for lang in (src, tgt):
        location, data = members[f"train.tags.{pair}.{lang}"]
        train_raw.append((location, filter_train_tags(decode_lines(data, location))))
    (src_loc, src_lines), (tgt_loc, tgt_lines) = train_raw
    if len(src_lines) != len(tgt_lines):
        raise DataError(
            f"{src_loc} has {len(src_lines)} lines and {tgt_loc} has {len(tgt_lines)} after "
            f"dropping the <url>/<talkid>/<keywords> lines; they must be line-aligned. "
            f"Re-download the archive or fix the files."
        )

    # Test: the seg text of each set, both sides aligned.
    test_raw: dict[str, list[str]] = {src: [], tgt: []}
    for name in TEST_SETS:
        counts = []
        for lang in (src, tgt):
            location, data = members[f"{name}.{pair}.{lang}.xml"]
            segs = extract_segments(decode_lines(data, location))
            counts.append((location, len(segs)))
            test_raw[lang].extend(segs)
        if counts[0][1] != counts[1][1]:
            raise DataError(
                f"{counts[0][0]} has {counts[0][1]} <seg> lines and {counts[1][0]} has "
                f"{counts[1][1]}; they must be aligned. Re-download the archive."
            )

    streams = [(src, src_lines), (tgt, tgt_lines), (src, test_raw[src]), (tgt, test_raw[tgt])]
    tok = tokenize_streams(streams, workers=workers or os.cpu_count() or 1, progress=progress)
    train_src_tok, train_tgt_tok, test_src_tok, test_tgt_tok = tok

    cleaned = [p for p in map(clean_pair, train_src_tok, train_tgt_tok) if p is not None]
    train_src, valid_src = split_valid([s.lower() for s, _ in cleaned])
    train_tgt, valid_tgt = split_valid([t.lower() for _, t in cleaned])
    splits = {
        "train": (train_src, train_tgt),
        "valid": (valid_src, valid_tgt),
        "test": ([s.lower() for s in test_src_tok], [t.lower() for t in test_tgt_tok]),
    }
    files = {}
    for split, (s_lines, t_lines) in splits.items():
        files[f"{split}.{pair}.{src}"] = s_lines
        files[f"{split}.{pair}.{tgt}"] = t_lines
    _write_outputs(out, files)
    return {split: len(s_lines) for split, (s_lines, _) in splits.items()}
