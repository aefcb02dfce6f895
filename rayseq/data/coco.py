"""MSCOCO captioning (Karpathy split) as a rayseq task: annotations, tokens, vocabulary, features.

A task data folder holds the three annotation files of the Karpathy split in the COCO caption
format, read with pycocotools, and a feature store (:mod:`rayseq.data.features`) in ``features/``::

    DATA/captions_karpathy_restval.json[.gz]   training (each image-caption pair one sample)
    DATA/captions_karpathy_val.json[.gz]       validation (one entry per image, all its captions as references)
    DATA/captions_karpathy_test.json[.gz]      test (likewise)
    DATA/features/                             image features keyed by image id

``rayseq data surrogate-features --annotations ../shared/data/coco --out DATA`` builds such a folder
(the annotation files copied, surrogate features made). Captions are tokenized as Karpathy's
``prepro.py`` does (lowercase, punctuation deleted, split on whitespace); the vocabulary keeps
tokens seen at least ``min_freq`` times in the training captions; training captions longer than
``max_len`` tokens are dropped (never references). With a surrogate store, the caption each
image's feature was made from is removed from everything (training pairs and references).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import json
import os
import string
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayseq.data.errors import DataError
from rayseq.data.features import FeatureStore, open_store
from rayseq.data.paths import DATA_DIR_ENV
from rayseq.data.vocab import Vocab

PathLike = str | os.PathLike[str]

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def tokenize_caption(caption: str) -> list[str]:
    """Karpathy's caption tokenization: lowercase, delete ASCII punctuation, split on whitespace."""
    return caption.lower().translate(_PUNCTUATION).split()


@dataclass(frozen=True)
class CaptionTaskSpec:
    """How to find and prepare a captioning task's data."""

    name: str
    """Registry key; also the subfolder name under ``$RAYSEQ_DATA_DIR``."""
    file_pattern: str
    """Annotation file name per split, ``{split}`` = file stem; ``.gz`` optional."""
    splits: tuple[tuple[str, str], ...]
    """(split name, file stem) pairs."""
    min_freq: int
    """Caption tokens seen fewer times than this in the training captions become ``<unk>``."""
    max_len: int
    """Training captions with more tokens are dropped (references keep every caption)."""
    feature_dim: int
    """Size D of an image feature (the actor's source)."""
    features_dir: str = "features"
    """The feature store's folder inside the data folder."""
    vocab_split: str = "train"
    """Split the vocabulary is built from."""
    prepare_hint: str = ""
    """What to do when the data is missing."""

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(s for s, _ in self.splits)


COCO = CaptionTaskSpec(
    name="coco",
    file_pattern="captions_karpathy_{split}.json",
    splits=(("train", "restval"), ("valid", "val"), ("test", "test")),
    min_freq=5,  # Karpathy's / neuraltalk2's count threshold
    max_len=16,  # neuraltalk2's max caption length
    feature_dim=2048,  # ResNet-101 pooled feature
    prepare_hint=(
        "Make a data folder with `rayseq data surrogate-features --annotations ../shared/data/coco --out DIR` "
        "(surrogate features; for real ones add `rayseq data extract-features --images val2014/ --weights "
        "resnet101.pth --out DIR/features`), then pass --data-dir DIR or set RAYSEQ_DATA_DIR so that "
        "$RAYSEQ_DATA_DIR/coco is DIR."
    ),
)


class FeatureSourceVocab:
    """The "source vocabulary" of a captioning task: none (sources are feature vectors).

    ``len()`` is 0 — the convention (``envs.pairs.PairData``, ``Seq2SeqConfig``) for feature sources.
    """

    @property
    def itos(self) -> list[str]:
        """No source tokens."""
        return []

    def __len__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureSourceVocab)

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "FeatureSourceVocab()"

    def encode(self, tokens: Any) -> np.ndarray:
        raise DataError(
            "this actor reads image features, not source text: caption images with "
            "`rayseq eval RUN --split test` on a captioning task's data folder."
        )


# ----------------------------------------------------------------------------- annotations


def _read_json(path: Path) -> Any:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found.") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read it ({e}); re-download or recreate it.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a COCO annotation file: not valid JSON ({e}).") from None


def _check_coco_format(path: Path, data: Any) -> None:
    """DataError naming the file and the offending entry unless ``data`` is a COCO caption file."""
    expected = 'expected a COCO caption annotation file: {"images": [{"id": ...}], "annotations": [{"id", "image_id", "caption"}]}'
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        got = f"keys {sorted(data)[:6]}" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise DataError(f"{path}: not a COCO annotation file ({got}); {expected}.")
    image_ids: set[int] = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not isinstance(img.get("id"), int):
            raise DataError(f"{path}: images[{i}] has no integer \"id\" ({str(img)[:80]}); {expected}.")
        image_ids.add(img["id"])
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), int) or not isinstance(ann.get("caption"), str):
            raise DataError(
                f"{path}: annotations[{i}] (id {ann.get('id') if isinstance(ann, dict) else None}) lacks an integer "
                f"\"image_id\" or a string \"caption\" ({str(ann)[:80]}); {expected}."
            )
        if not isinstance(ann.get("id"), int):
            raise DataError(f"{path}: annotations[{i}] (image id {ann['image_id']}) has no integer \"id\"; {expected}.")
        if ann["image_id"] not in image_ids:
            raise DataError(
                f"{path}: annotation id {ann['id']} refers to image id {ann['image_id']}, which is not in \"images\"."
            )


def load_annotations(path: PathLike) -> Any:
    """A pycocotools ``COCO`` of a caption annotation file (plain or ``.gz``), its format checked first."""
    from pycocotools.coco import COCO as PyCOCO

    path = Path(path)
    data = _read_json(path)
    _check_coco_format(path, data)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        if path.suffix == ".gz":
            coco = PyCOCO()
            coco.dataset = data
            coco.createIndex()
        else:
            coco = PyCOCO(os.fspath(path))
    return coco


@dataclass
class ImageCaptions:
    """The captions of one split, per image: raw tokens after the surrogate caption is removed."""

    image_ids: list[int]
    captions: list[list[list[str]]]
    """Per image, every kept caption as tokens (annotation id order)."""


def read_split_captions(path: Path, removed: dict[int, int]) -> ImageCaptions:
    """Tokenized captions per image of an annotation file, without the ``removed`` annotation ids."""
    coco = load_annotations(path)
    ids, caps = [], []
    for image_id in sorted(coco.getImgIds()):
        anns = sorted(coco.imgToAnns.get(image_id, []), key=lambda a: a["id"])
        drop = removed.get(image_id)
        tokens = [t for a in anns if a["id"] != drop and (t := tokenize_caption(a["caption"]))]
        if not tokens:
            why = " once its surrogate caption is removed" if drop is not None else ""
            raise DataError(f"{path}: image id {image_id} has no non-empty caption{why}; every image needs a reference.")
        ids.append(int(image_id))
        caps.append(tokens)
    if not ids:
        raise DataError(f"{path}: no images.")
    return ImageCaptions(ids, caps)


# ----------------------------------------------------------------------------- the task


@dataclass
class CaptionCorpus:
    """One split: features as sources, captions as targets, every caption of the image as references."""

    src: list[np.ndarray]
    """float32 ``[D]`` image feature per entry (memory-mapped rows of the store)."""
    tgt: list[np.ndarray]
    """int64 caption token ids per entry (no bos/eos)."""
    tgt_text: list[list[str]]
    """The caption's tokens."""
    refs: list[list[list[str]]]
    """Every kept caption of the entry's image, as tokens: the references for evaluation."""
    image_ids: list[int]
    """COCO image id per entry."""
    features_kind: str
    """``resnet101`` or ``surrogate`` (the store's kind)."""
    name: str = ""

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.src[i], self.tgt[i]


@dataclass(eq=False)
class CaptionTask:
    """A captioning task's vocabulary, feature store and lazily loaded splits (read-only)."""

    spec: CaptionTaskSpec
    data_dir: Path
    paths: dict[str, Path]
    """Split name -> annotation file."""
    features: FeatureStore
    tgt_vocab: Vocab
    src_vocab: FeatureSourceVocab = field(default_factory=FeatureSourceVocab)
    _captions: dict[str, ImageCaptions] = field(default_factory=dict, repr=False)
    _corpora: dict[str, CaptionCorpus] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def features_kind(self) -> str:
        return self.features.kind

    def captions(self, name: str) -> ImageCaptions:
        """Tokenized captions per image of split ``name`` (cached)."""
        if name not in self.paths:
            raise DataError(f"task {self.spec.name!r} has no split {name!r}; choose from {list(self.paths)}.")
        if name not in self._captions:
            self._captions[name] = read_split_captions(self.paths[name], self.features.removed_caption_ids)
        return self._captions[name]

    def split(self, name: str) -> CaptionCorpus:
        """``train``: one entry per (image, caption ≤ max_len); ``valid``/``test``: one per image."""
        with self._lock:
            if name not in self._corpora:
                self._corpora[name] = self._build(name)
            return self._corpora[name]

    def _build(self, name: str) -> CaptionCorpus:
        caps = self.captions(name)
        where = os.fspath(self.paths[name])
        src, tgt, text, refs, ids = [], [], [], [], []
        for image_id, image_caps in zip(caps.image_ids, caps.captions):
            feat = self.features.row(image_id, needed_by=where)
            chosen = [c for c in image_caps if len(c) <= self.spec.max_len] if name == self.spec.vocab_split else image_caps[:1]
            for c in chosen:
                src.append(feat)
                tgt.append(self.tgt_vocab.encode(c))
                text.append(c)
                refs.append(image_caps)
                ids.append(image_id)
        if not src:
            raise DataError(f"{where}: no caption of at most {self.spec.max_len} tokens; nothing to train on.")
        return CaptionCorpus(src, tgt, text, refs, ids, self.features.kind, name=f"{self.spec.name}/{name}")

    def __getstate__(self) -> dict[str, object]:
        """Picklable (e.g. for Ray workers): no lock, no loaded splits (reloaded on demand)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_corpora", "_captions")}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _corpora={}, _captions={})


def annotation_file(spec: CaptionTaskSpec, root: Path, stem: str) -> Path | None:
    """The annotation file of split ``stem`` under ``root`` (plain or ``.gz``), or None."""
    path = root / spec.file_pattern.format(split=stem)
    for p in (path, path.with_name(path.name + ".gz")):
        if p.is_file():
            return p
    return None


def resolve_caption_dir(spec: CaptionTaskSpec, data_dir: PathLike | None) -> Path:
    """The folder holding ``spec``'s files: ``data_dir`` (or its ``<name>`` subfolder), else ``$RAYSEQ_DATA_DIR/<name>``."""
    if data_dir is None:
        env = os.environ.get(DATA_DIR_ENV)
        if not env:
            raise DataError(f"task {spec.name!r} needs a data directory: pass --data-dir DIR (data_dir=DIR). {spec.prepare_hint}")
        root, origin = Path(env).expanduser() / spec.name, f"(from ${DATA_DIR_ENV}={env})"
    else:
        root, origin = Path(data_dir).expanduser(), "(from data_dir / --data-dir)"
    if not root.is_dir():
        raise DataError(f"{root}: data directory for task {spec.name!r} {origin} not found. {spec.prepare_hint}")
    vocab_stem = dict(spec.splits)[spec.vocab_split]
    if annotation_file(spec, root, vocab_stem) is None and (root / spec.name).is_dir():
        root = root / spec.name
    return root.resolve()


def load_caption_task(spec: CaptionTaskSpec, data_dir: PathLike | None) -> CaptionTask:
    """The captioning task ``spec`` from ``data_dir`` (cached per task and folder)."""
    return _load_cached(spec, resolve_caption_dir(spec, data_dir))


@functools.cache
def _load_cached(spec: CaptionTaskSpec, root: Path) -> CaptionTask:
    paths: dict[str, Path] = {}
    missing = []
    for split, stem in spec.splits:
        found = annotation_file(spec, root, stem)
        if found is None:
            missing.append(spec.file_pattern.format(split=stem) + "[.gz]")
        else:
            paths[split] = found
    if missing:
        raise DataError(f"{root}: task {spec.name!r} is missing {', '.join(missing)}. {spec.prepare_hint}")
    store = open_store(root / spec.features_dir, expected_dim=spec.feature_dim)
    task = CaptionTask(spec, root, paths, store, Vocab(["<pad>", "<unk>", "<bos>", "<eos>"]))
    train = task.captions(spec.vocab_split)
    task.tgt_vocab = Vocab.build(
        (c for caps in train.captions for c in caps if len(c) <= spec.max_len), min_freq=spec.min_freq
    )
    return task


def clear_cache() -> None:
    """Forget every cached captioning task."""
    _load_cached.cache_clear()
