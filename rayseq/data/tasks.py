"""Registry of tasks: translation (here) and captioning (``rayseq.data.coco``): where their files live, how vocabularies are built.

Adding a task is one ``TaskSpec`` plus one line in ``TASKS``. ``load_task`` finds
the files, builds both vocabularies from the training split (cached in-process
per task and data directory) and loads splits on demand.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from rayseq.data.coco import COCO, CaptionTask, CaptionTaskSpec, load_caption_task
from rayseq.data.coco import clear_cache as clear_caption_cache
from rayseq.data.corpus import ParallelCorpus, load_parallel, read_parallel_text
from rayseq.data.errors import DataError
from rayseq.data.paths import DATA_DIR_ENV
from rayseq.data.vocab import Vocab

SHIPPED_ROOT = Path(__file__).resolve().parent / "corpora"
"""Corpora that ship inside the package (``rayseq/data/corpora/<task>/``)."""


@dataclass(frozen=True)
class TaskSpec:
    """How to find and prepare one translation task's data."""

    name: str
    """Registry key, e.g. ``multi30k``; also the subfolder name under the data dir."""
    src_lang: str
    """Source language code, the ``{lang}`` of source files."""
    tgt_lang: str
    """Target language code, the ``{lang}`` of target files."""
    file_pattern: str
    """File name per split and side, ``{split}`` = file stem, ``{lang}`` = language; ``.gz`` optional."""
    splits: tuple[tuple[str, str], ...]
    """(split name, file stem) pairs, e.g. ``("valid", "val")``."""
    min_freq: int
    """Tokens seen fewer times than this in the vocab split become ``<unk>``."""
    max_len: int | None = None
    """Pairs with a side longer than this are dropped in ``max_len_splits``."""
    max_len_splits: tuple[str, ...] = ()
    """Splits the ``max_len`` filter applies to (never test)."""
    shipped: bool = False
    """Whether the files ship with the package (no ``data_dir`` needed)."""
    vocab_split: str = "train"
    """Split the vocabularies are built from."""
    fallbacks: tuple[tuple[str, str, str], ...] = ()
    """(split, file stem, what it holds) used, with a warning, when a split's files are missing."""
    prepare_hint: str = ""
    """What to do when the data is missing or only a fallback is found."""

    @property
    def split_names(self) -> tuple[str, ...]:
        """Names accepted by :meth:`Task.split`."""
        return tuple(s for s, _ in self.splits)


MULTI30K = TaskSpec(
    name="multi30k",
    src_lang="de",
    tgt_lang="en",
    file_pattern="{split}.lc.norm.tok.{lang}",
    splits=(("train", "train"), ("valid", "val"), ("test", "test_2016_flickr")),
    # min_freq 2 (the usual Multi30k setting): tokens seen once in train are mostly typos and
    # rare compounds. Vocab: de 7,859 / en 5,921 entries with specials, from 18,722 / 10,210 types.
    min_freq=2,
    shipped=True,
    prepare_hint="These files ship with rayseq: reinstall it (`pip install -e .`) or pass --data-dir "
    "to a folder that holds them.",
)

IWSLT14 = TaskSpec(
    name="iwslt14",
    src_lang="de",
    tgt_lang="en",
    file_pattern="{split}.de-en.{lang}",
    splits=(("train", "train"), ("valid", "valid"), ("test", "test")),
    min_freq=3,  # as in the paper's code (src 32,038 / tgt 22,811 on the full train split)
    max_len=50,  # the paper's encoder drops longer pairs in train and valid; test is not filtered
    max_len_splits=("train", "valid"),
    fallbacks=(("train", "train-head500", "which hold only the first 500 lines of the training split"),),
    prepare_hint=(
        "Download the IWSLT14 de-en archive (de-en.tgz) and run "
        "`rayseq data prepare-iwslt14 de-en.tgz OUTDIR`, then pass --data-dir OUTDIR "
        f"or set {DATA_DIR_ENV} so that ${DATA_DIR_ENV}/iwslt14 is OUTDIR."
    ),
)

TOY = TaskSpec(
    name="toy",
    src_lang="src",
    tgt_lang="tgt",
    file_pattern="{split}.{lang}",
    splits=(("train", "train"), ("valid", "valid"), ("test", "test")),
    min_freq=1,  # 8 symbols, all frequent (see rayseq/data/toy.py)
    shipped=True,
    prepare_hint="These files ship with rayseq (regenerate with `python -m rayseq.data.toy`).",
)

TASKS: dict[str, TaskSpec | CaptionTaskSpec] = {
    MULTI30K.name: MULTI30K,
    IWSLT14.name: IWSLT14,
    TOY.name: TOY,
    COCO.name: COCO,  # image captioning (rayseq/data/coco.py)
}


@dataclass(eq=False)
class Task:
    """A task's vocabularies and lazily loaded, cached splits (treat them as read-only)."""

    spec: TaskSpec
    data_dir: Path
    paths: dict[str, tuple[Path, Path]]
    """Split name -> (source file, target file)."""
    src_vocab: Vocab
    tgt_vocab: Vocab
    _corpora: dict[str, ParallelCorpus] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def split(self, name: str) -> ParallelCorpus:
        """The encoded split ``name`` (``train``/``valid``/``test``), loaded once."""
        if name not in self.paths:
            raise DataError(
                f"task {self.spec.name!r} has no split {name!r}; choose from {list(self.paths)}."
            )
        with self._lock:
            if name not in self._corpora:
                src, tgt = self.paths[name]
                max_len = self.spec.max_len if name in self.spec.max_len_splits else None
                self._corpora[name] = load_parallel(
                    src, tgt, self.src_vocab, self.tgt_vocab, max_len, name=f"{self.spec.name}/{name}"
                )
            return self._corpora[name]

    def __getstate__(self) -> dict[str, object]:
        """Picklable (e.g. for Ray workers): everything but the lock."""
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())


def load_task(name: str, data_dir: str | os.PathLike[str] | None = None) -> Task | CaptionTask:
    """The registered task ``name``, reading files from ``data_dir`` where needed.

    Shipped tasks read the package's copy unless ``data_dir`` is given; other tasks
    read ``data_dir`` or ``$RAYSEQ_DATA_DIR/<name>``. A ``data_dir`` whose
    ``<name>`` subfolder holds the files works too. Repeated calls with the same
    task and directory return the same (cached) Task.
    """
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; registered tasks: {', '.join(sorted(TASKS))}.")
    if isinstance(TASKS[name], CaptionTaskSpec):
        return load_caption_task(TASKS[name], data_dir)
    return _load_task_cached(name, _resolve_data_dir(TASKS[name], data_dir))


def clear_task_cache() -> None:
    """Forget every cached Task (e.g. after the files on disk changed)."""
    _load_task_cached.cache_clear()
    clear_caption_cache()


@functools.lru_cache(maxsize=None)
def _load_task_cached(name: str, data_dir: Path) -> Task:
    """Find every split's files and build both vocabularies from ``spec.vocab_split``."""
    spec = TASKS[name]
    paths = _split_paths(spec, data_dir)
    src_text, tgt_text = read_parallel_text(*paths[spec.vocab_split])
    src_vocab = Vocab.build(src_text, min_freq=spec.min_freq)
    tgt_vocab = Vocab.build(tgt_text, min_freq=spec.min_freq)
    return Task(spec, data_dir, paths, src_vocab, tgt_vocab)


def _resolve_data_dir(spec: TaskSpec, data_dir: str | os.PathLike[str] | None) -> Path:
    """The folder holding ``spec``'s files (see :func:`load_task`)."""
    if data_dir is None and spec.shipped:
        return SHIPPED_ROOT / spec.name
    if data_dir is None:
        env = os.environ.get(DATA_DIR_ENV)
        if not env:
            raise DataError(
                f"task {spec.name!r} needs a data directory: pass --data-dir DIR (data_dir=DIR) "
                f"or set {DATA_DIR_ENV} so that ${DATA_DIR_ENV}/{spec.name} holds the files. "
                f"{spec.prepare_hint}"
            )
        root = Path(env).expanduser() / spec.name
        origin = f"(from ${DATA_DIR_ENV}={env})"
    else:
        root = Path(data_dir).expanduser()
        origin = "(from data_dir / --data-dir)"
    if not root.is_dir():
        raise DataError(
            f"{root}: data directory for task {spec.name!r} {origin} not found. {spec.prepare_hint}"
        )
    nested = root / spec.name
    if _find(spec, root, spec.vocab_split) is None and nested.is_dir():
        root = nested
    return root.resolve()


def _find(spec: TaskSpec, root: Path, split: str) -> tuple[Path, Path, str] | None:
    """(src, tgt, fallback note or "") of ``split`` in ``root`` (plain or .gz), else None."""
    candidates = [(stem, "") for s, stem in spec.splits if s == split]
    candidates += [(stem, note) for s, stem, note in spec.fallbacks if s == split]
    for stem, note in candidates:
        src = _existing(root / spec.file_pattern.format(split=stem, lang=spec.src_lang))
        tgt = _existing(root / spec.file_pattern.format(split=stem, lang=spec.tgt_lang))
        if src is not None and tgt is not None:
            return src, tgt, note
    return None


def _existing(path: Path) -> Path | None:
    """``path`` or ``path.gz``, whichever is a file."""
    for p in (path, path.with_name(path.name + ".gz")):
        if p.is_file():
            return p
    return None


def _split_paths(spec: TaskSpec, root: Path) -> dict[str, tuple[Path, Path]]:
    """Files of every split; DataError listing the missing ones; warns on fallbacks."""
    paths: dict[str, tuple[Path, Path]] = {}
    missing: list[str] = []
    for split, stem in spec.splits:
        found = _find(spec, root, split)
        if found is None:
            langs = (spec.src_lang, spec.tgt_lang)
            missing += [spec.file_pattern.format(split=stem, lang=lang) + "[.gz]" for lang in langs]
            continue
        src, tgt, note = found
        paths[split] = (src, tgt)
        if note:
            warnings.warn(
                f"{spec.name}: no {split} split in {root}; using {src.name} / {tgt.name}, {note}. "
                f"{spec.prepare_hint}",
                stacklevel=4,
            )
    if missing:
        raise DataError(f"{root}: task {spec.name!r} is missing {', '.join(missing)}. {spec.prepare_hint}")
    return paths
