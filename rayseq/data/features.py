"""Image feature stores keyed by COCO image id: CNN extraction and the surrogate stand-in.

A store is a folder::

    features.npy              float32 [N, D], read memory-mapped (np.load(mmap_mode="r"))
    image_ids.npy             int64 [N]: row i holds the features of image image_ids[i]
    meta.json                 {"format", "kind": "resnet101" | "surrogate", "dim", "count", "complete", ...}
    progress.json             rows written so far (extraction resumes from it)
    removed_caption_ids.npy   surrogate stores only: int64 [N], per image the annotation id of the
                              caption its surrogate feature was made from (dropped from its references)

``rayseq data extract-features --images DIR --weights FILE --out DIR``: the 2048-d pooled feature
of a ResNet-101 (torchvision layout, weights from a local file) for every image in DIR, batched,
with a progress bar; rows are written in order and ``progress.json`` advances after each batch, so
running the same command again resumes where it stopped. ``meta.json`` says ``complete: true``
only once every image is done; an incomplete store is refused when read.

``rayseq data surrogate-features``: no COCO images exist here, so for learning checks each image
gets a fixed random projection of the bag of words of one of its captions plus Gaussian noise —
a stand-in with real signal, labelled ``"kind": "surrogate"`` (and reported as such by training
and evaluation). Real features replace it by pointing the task at another store.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayseq.data.atomic import atomic_write_bytes
from rayseq.data.errors import DataError

PathLike = str | os.PathLike[str]

STORE_FORMAT = "rayseq-features/1"
FEATURES_FILE = "features.npy"
IDS_FILE = "image_ids.npy"
META_FILE = "meta.json"
PROGRESS_FILE = "progress.json"
REMOVED_FILE = "removed_caption_ids.npy"
SURROGATE = "surrogate"
RESNET101 = "resnet101"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode("utf-8"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; is {path.parent} a feature store (extract-features / surrogate-features output)?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); recreate the feature store.") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object; recreate the feature store.")
    return data


# ----------------------------------------------------------------------------- reading


@dataclass(eq=False)
class FeatureStore:
    """A complete store, opened read-only and memory-mapped; rows are looked up by image id."""

    path: Path
    """The store's folder."""
    meta: dict[str, Any]
    """``meta.json``: ``kind``, ``dim``, ``count`` and how the features were made."""
    image_ids: np.ndarray
    """int64 [N]: the image id of each row."""
    removed_caption_ids: dict[int, int] = field(default_factory=dict)
    """Surrogate stores: image id -> annotation id of the caption the feature encodes."""
    _index: dict[int, int] = field(default_factory=dict, repr=False)
    _array: np.ndarray | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        """``resnet101`` (real CNN features) or ``surrogate``."""
        return str(self.meta["kind"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def is_surrogate(self) -> bool:
        return self.kind == SURROGATE

    @property
    def array(self) -> np.ndarray:
        """The [N, D] float32 features, memory-mapped (opened on first use, e.g. after unpickling)."""
        if self._array is None:
            self._array = np.load(self.path / FEATURES_FILE, mmap_mode="r")
        return self._array

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: int) -> bool:
        return int(image_id) in self._index

    def row(self, image_id: int, needed_by: str = "") -> np.ndarray:
        """Features ``[D]`` of ``image_id`` (a read-only memory-mapped view)."""
        i = self._index.get(int(image_id))
        if i is None:
            by = f" (needed by {needed_by})" if needed_by else ""
            raise DataError(
                f"{self.path / IDS_FILE}: image id {int(image_id)}{by} has no features in this store "
                f"({len(self)} images). Extract features for the folder of images that holds it, or "
                f"point the task at the store made for these annotations."
            )
        return self.array[i]

    def __getstate__(self) -> dict[str, Any]:
        """Picklable without copying the features: the memory map is reopened on first use."""
        return {**self.__dict__, "_array": None}


def open_store(path: PathLike, expected_dim: int | None = None) -> FeatureStore:
    """Open the store in folder ``path``; DataError naming the file for anything inconsistent.

    ``expected_dim``: the feature size the caller's model reads (e.g. 2048 for ResNet-101); a store
    of another size is refused, naming the file.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(
            f"{root}: feature store folder not found. Create it with `rayseq data extract-features "
            f"--images DIR --weights FILE --out {root}` (or `rayseq data surrogate-features`)."
        )
    meta = _read_json(root / META_FILE)
    if meta.get("format") != STORE_FORMAT:
        raise DataError(f"{root / META_FILE}: format {meta.get('format')!r}, expected {STORE_FORMAT!r}; recreate the store.")
    if not meta.get("complete"):
        done = _read_progress(root)
        raise DataError(
            f"{root}: feature extraction is incomplete ({done} of {meta.get('count')} images); run the same "
            f"`rayseq data extract-features` command again to resume it."
        )
    try:
        arr = np.load(root / FEATURES_FILE, mmap_mode="r")
        ids = np.load(root / IDS_FILE)
    except (OSError, ValueError) as e:
        raise DataError(f"{root}: cannot read {FEATURES_FILE} / {IDS_FILE} ({e}); recreate the store.") from None
    dim = int(meta.get("dim", -1))
    if arr.ndim != 2 or arr.dtype != np.float32 or arr.shape[1] != dim:
        raise DataError(
            f"{root / FEATURES_FILE}: holds {arr.dtype} {tuple(arr.shape)} but {META_FILE} says [N, {dim}] float32; "
            f"the store is damaged, recreate it."
        )
    if expected_dim is not None and dim != expected_dim:
        raise DataError(
            f"{root / FEATURES_FILE}: features of dimension {dim}, but the model reads {expected_dim}-d features "
            f"(ResNet-101 pooled); extract them with `rayseq data extract-features` (or surrogate-features --dim {expected_dim})."
        )
    if ids.ndim != 1 or len(ids) != arr.shape[0]:
        raise DataError(f"{root / IDS_FILE}: {ids.shape} ids for {arr.shape[0]} feature rows; recreate the store.")
    index = {int(x): i for i, x in enumerate(ids.tolist())}
    if len(index) != len(ids):
        raise DataError(f"{root / IDS_FILE}: an image id appears twice; recreate the store.")
    removed: dict[int, int] = {}
    if meta.get("kind") == SURROGATE:
        rem = np.load(root / REMOVED_FILE)
        if rem.shape != ids.shape:
            raise DataError(f"{root / REMOVED_FILE}: {rem.shape} entries for {len(ids)} images; recreate the store.")
        removed = dict(zip(ids.tolist(), rem.tolist()))
    return FeatureStore(root, meta, ids.astype(np.int64), removed, index, arr)


def _read_progress(root: Path) -> int:
    try:
        return int(json.loads((root / PROGRESS_FILE).read_text(encoding="utf-8"))["done"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


# ----------------------------------------------------------------------------- writing


class StoreWriter:
    """Fills a store row by row; a store of the same images and settings is resumed, not restarted."""

    def __init__(self, path: PathLike, image_ids: Sequence[int], dim: int, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        self.meta = {"format": STORE_FORMAT, **meta, "dim": int(dim), "count": len(self.image_ids), "complete": False}
        self.done = 0
        if (self.path / META_FILE).is_file():
            self._resume()
        else:
            self._create()

    def _settings(self, meta: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in meta.items() if k not in ("complete",)}

    def _resume(self) -> None:
        old = _read_json(self.path / META_FILE)
        ids_path = self.path / IDS_FILE
        same_ids = ids_path.is_file() and np.array_equal(np.load(ids_path), self.image_ids)
        if self._settings(old) != self._settings(self.meta) or not same_ids:
            diff = sorted(k for k in set(old) | set(self.meta) if k != "complete" and old.get(k) != self.meta.get(k))
            what = "a different set of images" if not same_ids else f"different settings ({', '.join(diff)})"
            raise DataError(
                f"{self.path}: already holds a feature store made from {what}; pass another --out folder, "
                f"or delete this one to start over."
            )
        if old.get("complete"):
            self.done = len(self.image_ids)
            return
        self.done = _read_progress(self.path)
        self._array = np.load(self.path / FEATURES_FILE, mmap_mode="r+")
        if self._array.shape != (len(self.image_ids), self.meta["dim"]):
            raise DataError(f"{self.path / FEATURES_FILE}: shape {self._array.shape} does not fit the store; delete the folder and start over.")

    def _create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json(self.path / PROGRESS_FILE, {"done": 0})
        self._array = np.lib.format.open_memmap(
            self.path / FEATURES_FILE, mode="w+", dtype=np.float32, shape=(len(self.image_ids), self.meta["dim"])
        )
        atomic_write_bytes(self.path / IDS_FILE, _npy_bytes(self.image_ids))
        _write_json(self.path / META_FILE, self.meta)

    @property
    def complete(self) -> bool:
        return self.done >= len(self.image_ids)

    def write(self, rows: np.ndarray) -> None:
        """Store the next ``len(rows)`` feature rows (in ``image_ids`` order) and record the progress."""
        n = len(rows)
        self._array[self.done : self.done + n] = rows
        self._array.flush()
        self.done += n
        _write_json(self.path / PROGRESS_FILE, {"done": self.done})

    def finish(self, extra_files: dict[str, np.ndarray] | None = None) -> Path:
        """Write ``extra_files`` (name -> array) and mark the store complete."""
        if not self.complete:
            raise DataError(f"{self.path}: only {self.done} of {len(self.image_ids)} images written.")
        for name, arr in (extra_files or {}).items():
            atomic_write_bytes(self.path / name, _npy_bytes(arr))
        _write_json(self.path / META_FILE, {**self.meta, "complete": True})
        return self.path


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


# ----------------------------------------------------------------------------- CNN extraction

_DIGITS = re.compile(r"(\d+)(?!.*\d)")


def list_images(images_dir: PathLike) -> list[tuple[int, Path]]:
    """``(image id, path)`` of every image file in ``images_dir``, by id; the id is the last number
    in the file name (``COCO_val2014_000000011169.jpg`` -> 11169)."""
    root = Path(images_dir)
    if not root.is_dir():
        raise DataError(f"--images {root}: folder not found.")
    found: dict[int, Path] = {}
    for p in sorted(root.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        m = _DIGITS.search(p.stem)
        if m is None:
            raise DataError(f"{p}: no image id in the file name; name images like COCO's (COCO_val2014_000000011169.jpg).")
        image_id = int(m.group(1))
        if image_id in found:
            raise DataError(f"{p}: image id {image_id} also belongs to {found[image_id].name}; keep one file per image.")
        found[image_id] = p
    if not found:
        raise DataError(f"--images {root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder.")
    return sorted(found.items())


def load_image(path: Path, image_id: int, size: int) -> np.ndarray:
    """Decode, resize (shorter side ``size·256/224``), centre-crop ``size`` and normalise: [3, size, size].

    The usual ImageNet evaluation transform. DataError naming the file and image id if the file
    does not decode.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            img = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(
            f"{path}: image id {image_id} cannot be decoded ({e}). Replace or remove the file and run the "
            f"same command again; extraction resumes where it stopped."
        ) from None
    short = round(size * 256 / 224)
    w, h = img.size
    scale = short / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0  # [H, W, 3]
    arr = (arr - np.array(IMAGENET_MEAN, dtype=np.float32)) / np.array(IMAGENET_STD, dtype=np.float32)
    return arr.transpose(2, 0, 1).copy()


def extract_features(
    images_dir: PathLike,
    weights: PathLike,
    out: PathLike,
    batch_size: int = 32,
    image_size: int = 224,
    progress: bool | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """ResNet-101 pooled features of every image in ``images_dir`` into the store ``out``.

    Resumes an incomplete store made from the same images, weights and image size. Returns
    ``{"out", "images", "dim", "resumed_from", "kind"}``.
    """
    import torch
    from tqdm import tqdm

    from rayseq.models.resnet import FEATURE_DIM, load_resnet101

    if batch_size < 1 or image_size < 32:
        raise DataError(f"--batch-size {batch_size} must be >= 1 and --image-size {image_size} >= 32.")
    images = list_images(images_dir)
    weights = Path(weights)
    meta = {"kind": RESNET101, "weights": weights.name, "weights_bytes": weights.stat().st_size if weights.is_file() else None,
            "image_size": image_size, "images_dir": os.fspath(Path(images_dir).resolve())}
    model = load_resnet101(weights).to(device)
    writer = StoreWriter(out, [i for i, _ in images], FEATURE_DIM, meta)
    start = writer.done
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(total=len(images), initial=start, desc="extract-features", unit="img", file=sys.stderr, disable=not progress)
    with torch.no_grad():
        for lo in range(start, len(images), batch_size):
            chunk = images[lo : lo + batch_size]
            batch = torch.from_numpy(np.stack([load_image(p, i, image_size) for i, p in chunk])).to(device)
            writer.write(model.features(batch).float().cpu().numpy())
            bar.update(len(chunk))
    bar.close()
    writer.finish()
    return {"out": os.fspath(out), "images": len(images), "dim": FEATURE_DIM, "resumed_from": start, "kind": RESNET101}


# ----------------------------------------------------------------------------- surrogate


def _word_vector(word: str, dim: int, seed: int, cache: dict[str, np.ndarray]) -> np.ndarray:
    """The fixed random projection of one word: N(0, I_D), seeded by (seed, crc32(word))."""
    v = cache.get(word)
    if v is None:
        rng = np.random.default_rng([seed, zlib.crc32(word.encode("utf-8"))])
        v = cache[word] = rng.standard_normal(dim, dtype=np.float32)
    return v


def surrogate_feature(tokens: Sequence[str], dim: int, seed: int, noise: float, rng: np.random.Generator,
                      cache: dict[str, np.ndarray]) -> np.ndarray:
    """``Σ_w P(w) / sqrt(|caption|) + noise·ε``: a fixed random projection of a bag of words, ε ~ N(0, I_D)."""
    bow = np.zeros(dim, dtype=np.float32)
    for w in tokens:
        bow += _word_vector(w, dim, seed, cache)
    bow /= np.sqrt(max(1, len(tokens)))
    return bow + noise * rng.standard_normal(dim, dtype=np.float32)


def surrogate_features(
    annotation_files: Sequence[PathLike],
    out: PathLike,
    tokenize: Callable[[str], list[str]],
    load: Callable[[PathLike], Any],
    dim: int = 2048,
    noise: float = 0.5,
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, Any]:
    """A surrogate store in ``out`` for every image of ``annotation_files`` (COCO caption format).

    Per image (by id), one caption is drawn with ``default_rng((seed, image_id))``; its feature is
    :func:`surrogate_feature` of the caption's tokens, and its annotation id is stored in
    ``removed_caption_ids.npy`` so the task drops it from that image's references. ``load`` reads
    an annotation file (a pycocotools ``COCO``), ``tokenize`` splits a caption.
    """
    from tqdm import tqdm

    if dim < 1 or noise < 0:
        raise DataError(f"--dim {dim} must be >= 1 and --noise {noise} >= 0.")
    captions: dict[int, list[tuple[int, str]]] = {}
    for f in annotation_files:
        coco = load(f)
        for image_id in coco.getImgIds():
            anns = sorted(coco.imgToAnns.get(image_id, []), key=lambda a: a["id"])
            captions.setdefault(int(image_id), []).extend((int(a["id"]), a["caption"]) for a in anns)
    ids = sorted(captions)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)  # cheap to rebuild, never resumed
    meta = {
        "kind": SURROGATE,
        "note": "SURROGATE features: a fixed random projection of one caption's bag of words plus noise, not image features",
        "noise": noise,
        "seed": seed,
        "annotations": [Path(f).name for f in annotation_files],
    }
    writer = StoreWriter(out, ids, dim, meta)
    cache: dict[str, np.ndarray] = {}
    removed = np.zeros(len(ids), dtype=np.int64)
    if progress is None:
        progress = sys.stderr.isatty()
    block: list[np.ndarray] = []
    for row, image_id in enumerate(tqdm(ids, desc="surrogate-features", unit="img", file=sys.stderr, disable=not progress)):
        rng = np.random.default_rng((seed, image_id))
        usable = [(a, t) for a, t in ((a, tokenize(c)) for a, c in captions[image_id]) if t]
        if len(usable) < 2:
            raise DataError(
                f"image id {image_id}: {len(usable)} non-empty caption(s) in {', '.join(map(os.fspath, annotation_files))}; "
                f"a surrogate feature uses one caption and needs at least one more as a reference."
            )
        ann_id, tokens = usable[int(rng.integers(len(usable)))]
        removed[row] = ann_id
        block.append(surrogate_feature(tokens, dim, seed, noise, rng, cache))
        if len(block) == 1024:
            writer.write(np.stack(block))
            block = []
    if block:
        writer.write(np.stack(block))
    writer.finish({REMOVED_FILE: removed})
    return {"out": os.fspath(out), "images": len(ids), "dim": dim, "kind": SURROGATE}
