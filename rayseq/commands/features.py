"""``rayseq data extract-features`` and ``rayseq data surrogate-features``: image features for captioning.

- ``extract-features --images DIR --weights FILE --out DIR``: ResNet-101 pooled features (2048-d) of
  every image in DIR into a feature store; resumes an interrupted run (see :mod:`rayseq.data.features`).
- ``surrogate-features --annotations DIR --out DATA``: a captioning data folder without images: the
  Karpathy-split annotation files of DIR copied to DATA and a *surrogate* feature store in
  ``DATA/features`` (a random projection of one caption per image, that caption removed from the
  references). ``rayseq train --task coco --data-dir DATA`` then trains on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from rayseq.data.coco import (
    COCO,
    CaptionTaskSpec,
    annotation_file,
    load_annotations,
    tokenize_caption,
)
from rayseq.data.errors import DataError
from rayseq.data.features import extract_features, surrogate_features


def make_surrogate_data(
    annotations: str | os.PathLike[str],
    out: str | os.PathLike[str],
    spec: CaptionTaskSpec = COCO,
    noise: float = 0.5,
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Copy ``spec``'s annotation files from ``annotations`` to ``out`` and build ``out/features`` (surrogate)."""
    src_dir, out_dir = Path(annotations), Path(out)
    if not src_dir.is_dir():
        raise DataError(f"--annotations {src_dir}: folder not found; it must hold {spec.file_pattern.format(split='restval')}[.gz] and the others.")
    files = []
    for _, stem in spec.splits:
        f = annotation_file(spec, src_dir, stem)
        if f is None:
            raise DataError(f"--annotations {src_dir}: no {spec.file_pattern.format(split=stem)}[.gz] in this folder.")
        files.append(f)
    for f in files:
        load_annotations(f)  # check every file before writing anything
    out_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in files:
        target = out_dir / f.name
        if target.resolve() != f.resolve():
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(f, tmp)
            os.replace(tmp, target)
        copied.append(target)
    result = surrogate_features(
        copied, out_dir / spec.features_dir, tokenize_caption, load_annotations,
        dim=spec.feature_dim, noise=noise, seed=seed, progress=progress,
    )
    return {**result, "data_dir": os.fspath(out_dir), "annotations": [p.name for p in copied]}


def add_data_commands(dsub: argparse._SubParsersAction) -> None:
    """The two ``rayseq data`` subcommands."""
    e = dsub.add_parser("extract-features", help="ResNet-101 pooled image features (2048-d) into a feature store")
    e.add_argument("--images", required=True, help="folder of images named with their COCO id (COCO_val2014_000000011169.jpg)")
    e.add_argument("--weights", required=True, help="local ResNet-101 state dict (torchvision layout, e.g. resnet101-*.pth)")
    e.add_argument("--out", required=True, help="feature store folder (a captioning data folder's features/)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--image-size", type=int, default=224, help="centre crop size (default 224)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--no-progress", action="store_true")
    s = dsub.add_parser("surrogate-features", help="a captioning data folder with SURROGATE features (no images needed)")
    s.add_argument("--annotations", required=True, help="folder with captions_karpathy_{restval,val,test}.json[.gz]")
    s.add_argument("--out", required=True, help="data folder to write (annotation files + features/)")
    s.add_argument("--noise", type=float, default=0.5, help="std of the Gaussian noise added to each feature")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-progress", action="store_true")


def run_data_command(args: argparse.Namespace) -> int:
    """Run one of :func:`add_data_commands`' subcommands; prints one JSON line."""
    progress = False if args.no_progress else None
    if args.data == "extract-features":
        result = extract_features(args.images, args.weights, args.out, args.batch_size, args.image_size, progress, args.device)
    else:
        result = make_surrogate_data(args.annotations, args.out, noise=args.noise, seed=args.seed, progress=progress)
    print(json.dumps(result))
    return 0
