"""Feature stores: round trip, ResNet-101 extraction (random weights), resume, bad images, surrogates."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from coco_tiny import write_tiny_annotations
from PIL import Image

from rayseq.data.errors import DataError
from rayseq.data.features import (
    FEATURES_FILE,
    StoreWriter,
    extract_features,
    load_image,
    open_store,
)
from rayseq.models.resnet import FEATURE_DIM, ResNet101, load_resnet101

SIZE = 64  # small crops keep ResNet-101 on 2 cores at a fraction of a second per image


def test_store_round_trip_is_memory_mapped(tmp_path: Path) -> None:
    ids = [30, 10, 20]
    feats = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    w = StoreWriter(tmp_path / "s", ids, 8, {"kind": "resnet101"})
    w.write(feats[:2])
    with pytest.raises(DataError, match=r"incomplete \(2 of 3 images\).*resume"):
        open_store(tmp_path / "s")
    w.write(feats[2:])
    w.finish()
    store = open_store(tmp_path / "s", expected_dim=8)
    assert store.kind == "resnet101" and store.dim == 8 and len(store) == 3 and not store.is_surrogate
    for i, image_id in enumerate(ids):
        np.testing.assert_array_equal(store.row(image_id), feats[i])
    assert isinstance(store.array, np.memmap)
    assert len(pickle.dumps(store)) < feats.nbytes + 2000  # pickles without the features...
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(store)).row(20), feats[2])  # ...and reopens them
    with pytest.raises(DataError, match=r"image_ids\.npy: image id 99 .*has no features"):
        store.row(99)
    with pytest.raises(DataError, match=r"features\.npy: features of dimension 8, but the model reads 2048-d"):
        open_store(tmp_path / "s", expected_dim=2048)


def test_resnet101_has_torchvisions_layout() -> None:
    model = ResNet101()
    names = dict(model.named_parameters())
    assert sum(p.numel() for p in model.parameters()) == 44_549_160  # torchvision's resnet101
    assert names["layer3.22.conv3.weight"].shape == (1024, 256, 1, 1)
    assert names["layer4.0.downsample.0.weight"].shape == (2048, 1024, 1, 1)
    assert "layer4.0.downsample.1.running_var" in model.state_dict()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "resnet101-random.pth"
    torch.save(ResNet101().state_dict(), path)
    return path


def _images(folder: Path, ids: list[int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id in ids:
        arr = rng.integers(0, 255, size=(50 + image_id % 30, 80, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"COCO_val2014_{image_id:012d}.jpg")
    return folder


def test_extraction_with_random_weights_resumes_after_a_bad_image(tmp_path: Path, weights: Path) -> None:
    images = _images(tmp_path / "img", [5, 7, 9])
    bad = images / "COCO_val2014_000000000011.jpg"
    bad.write_bytes(b"not a jpeg at all")
    out = tmp_path / "features"
    with pytest.raises(DataError, match=rf"{bad}: image id 11 cannot be decoded.*resumes where it stopped"):
        extract_features(images, weights, out, batch_size=2, image_size=SIZE, progress=False)
    assert json.loads((out / "progress.json").read_text())["done"] == 2  # the first batch is kept
    with pytest.raises(DataError, match="incomplete"):
        open_store(out)
    first_rows = np.load(out / FEATURES_FILE)[:2].copy()
    Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8)).save(bad)  # the user replaces the file
    result = extract_features(images, weights, out, batch_size=2, image_size=SIZE, progress=False)
    assert result["resumed_from"] == 2 and result["images"] == 4
    store = open_store(out, expected_dim=FEATURE_DIM)
    assert store.kind == "resnet101" and list(store.image_ids) == [5, 7, 9, 11]
    np.testing.assert_array_equal(store.array[:2], first_rows)  # not recomputed
    model = load_resnet101(weights)
    with torch.no_grad():
        expect = model.features(torch.from_numpy(np.stack([load_image(p, i, SIZE) for i, p in
                                                           [(9, images / "COCO_val2014_000000000009.jpg"), (11, bad)]])))
    np.testing.assert_allclose(store.array[2:], expect.numpy(), rtol=1e-4, atol=1e-5)
    # a finished store is not redone; another image set in the same folder is refused
    assert extract_features(images, weights, out, batch_size=2, image_size=SIZE, progress=False)["resumed_from"] == 4
    _images(images, [13])
    with pytest.raises(DataError, match="different set of images"):
        extract_features(images, weights, out, batch_size=2, image_size=SIZE, progress=False)


def test_bad_weights_and_image_folders(tmp_path: Path) -> None:
    junk = tmp_path / "w.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, junk)
    with pytest.raises(DataError, match=r"w\.pth: not a ResNet-101 state dict"):
        load_resnet101(junk)
    with pytest.raises(DataError, match="file not found"):
        load_resnet101(tmp_path / "missing.pth")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "cat.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"cat\.jpg: no image id in the file name"):
        extract_features(tmp_path / "img", junk, tmp_path / "out")


def test_surrogate_store_is_labelled_and_deterministic(tmp_path: Path) -> None:
    from rayseq.commands.features import make_surrogate_data

    ann = write_tiny_annotations(tmp_path / "ann", (4, 2, 2))
    a = make_surrogate_data(ann, tmp_path / "a", noise=0.1, progress=False)
    make_surrogate_data(ann, tmp_path / "b", noise=0.1, progress=False)
    assert a["kind"] == "surrogate" and a["images"] == 8
    meta = json.loads((tmp_path / "a" / "features" / "meta.json").read_text())
    assert meta["kind"] == "surrogate" and "SURROGATE" in meta["note"] and meta["complete"]
    sa, sb = open_store(tmp_path / "a" / "features"), open_store(tmp_path / "b" / "features")
    np.testing.assert_array_equal(sa.array, sb.array)
    assert sa.removed_caption_ids == sb.removed_caption_ids and len(sa.removed_caption_ids) == 8
    # features carry signal: images with the same caption words get closer features
    assert sorted((tmp_path / "a").glob("captions_karpathy_*.json.gz"))


def test_data_commands_on_the_command_line(tmp_path: Path, capsys) -> None:
    from rayseq.cli import main

    ann = write_tiny_annotations(tmp_path / "ann", (3, 2, 2))
    assert main(["data", "surrogate-features", "--annotations", str(ann), "--out", str(tmp_path / "coco"), "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "surrogate" and out["images"] == 7 and out["dim"] == FEATURE_DIM
    assert main(["data", "extract-features", "--images", str(tmp_path / "none"), "--weights", "w.pth", "--out", str(tmp_path / "f")]) == 2
    assert "--images" in capsys.readouterr().err and not (tmp_path / "f").exists()
    assert main(["data", "surrogate-features", "--annotations", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert "folder not found" in capsys.readouterr().err and not (tmp_path / "x").exists()
