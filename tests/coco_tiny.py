"""A tiny COCO-format captioning data set for tests: synthetic scenes, 5 captions per image."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

COLORS = ["red", "blue", "green", "black", "white"]
THINGS = ["dog", "cat", "horse", "bus", "man", "bird"]
ACTIONS = ["running", "sitting", "standing", "sleeping"]
PLACES = ["park", "street", "field", "beach"]


def captions_for(rng: np.random.Generator) -> list[str]:
    """Five raw (cased, punctuated) captions of one random scene."""
    c, t, a, p = (str(rng.choice(x)) for x in (COLORS, THINGS, ACTIONS, PLACES))
    return [
        f"A {c} {t} is {a} in the {p}.",
        f"The {c} {t} {a} on a {p}!",
        f"a {t}, {c}, {a} in a {p}",
        f"There is a {c} {t} {a} near the {p}.",
        f"{c.capitalize()} {t} {a} at the {p}",
    ]


def annotation_file(n_images: int, first_id: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for k in range(n_images):
        image_id = first_id + k
        images.append({"id": image_id, "file_name": f"COCO_val2014_{image_id:012d}.jpg"})
        for cap in captions_for(rng):
            anns.append({"id": len(anns) + 1, "image_id": image_id, "caption": cap})
    return {"info": {"description": "tiny synthetic captions"}, "images": images, "annotations": anns}


def write_tiny_annotations(folder: Path, sizes: tuple[int, int, int] = (40, 8, 8), gz: bool = True) -> Path:
    """captions_karpathy_{restval,val,test}.json[.gz] with ``sizes`` images each; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    first = 100
    for i, (stem, n) in enumerate(zip(("restval", "val", "test"), sizes)):
        data = json.dumps(annotation_file(n, first, seed=i)).encode()
        first += n
        name = f"captions_karpathy_{stem}.json"
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


def make_tiny_coco(root: Path, sizes: tuple[int, int, int] = (40, 8, 8)) -> Path:
    """A complete tiny coco data folder (annotations + surrogate features) under ``root``; returns it."""
    from rayseq.commands.features import make_surrogate_data

    ann = write_tiny_annotations(root / "ann", sizes)
    data = root / "coco"
    make_surrogate_data(ann, data, noise=0.1, progress=False)
    return data
