"""COCO captioning data: tokenization, pycocotools loading, vocabulary, references, errors."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from coco_tiny import annotation_file, make_tiny_coco, write_tiny_annotations

from rayseq.data.coco import COCO, load_annotations, tokenize_caption
from rayseq.data.errors import DataError
from rayseq.data.features import StoreWriter
from rayseq.data.tasks import TASKS, clear_task_cache, load_task

SHARED_COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco"


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_task_cache()
    yield
    clear_task_cache()


def test_karpathy_tokenization() -> None:
    assert tokenize_caption("A man's dog, running on the BEACH!") == ["a", "mans", "dog", "running", "on", "the", "beach"]
    assert tokenize_caption("  two  black-and-white cats.\n") == ["two", "blackandwhite", "cats"]
    assert tokenize_caption("...") == []


@pytest.mark.parametrize("gz", [False, True])
def test_pycocotools_reads_a_small_annotation_file(tmp_path: Path, gz: bool) -> None:
    write_tiny_annotations(tmp_path, (3, 2, 2), gz=gz)
    name = "captions_karpathy_val.json" + (".gz" if gz else "")
    coco = load_annotations(tmp_path / name)
    assert type(coco).__module__ == "pycocotools.coco"
    assert sorted(coco.getImgIds()) == [103, 104]
    assert [len(coco.imgToAnns[i]) for i in (103, 104)] == [5, 5]
    assert coco.imgToAnns[103][0]["caption"].endswith(".")


def _tiny_task(tmp_path: Path):
    return load_task("coco", make_tiny_coco(tmp_path))


def test_vocabulary_length_cap_and_all_references(tmp_path: Path) -> None:
    ann = write_tiny_annotations(tmp_path / "ann", (12, 3, 3))
    # one long training caption (17 tokens > max_len 16) made of a word seen 17 times nowhere else
    data = json.loads(gzip.decompress((ann / "captions_karpathy_restval.json.gz").read_bytes()))
    data["annotations"].append({"id": 999, "image_id": 100, "caption": " ".join(["zebra"] * 17)})
    data["annotations"].append({"id": 1000, "image_id": 101, "caption": "A quokka smiles."})  # seen once
    (ann / "captions_karpathy_restval.json.gz").write_bytes(gzip.compress(json.dumps(data).encode()))
    from rayseq.commands.features import make_surrogate_data

    make_surrogate_data(ann, tmp_path / "coco", noise=0.1, progress=False)
    task = load_task("coco", tmp_path / "coco")
    vocab = set(task.tgt_vocab.itos)
    assert "zebra" not in vocab  # only in a caption over the length cap
    assert "quokka" not in vocab  # fewer than min_freq = 5 occurrences
    assert {"a", "dog", "park"} <= vocab or {"a", "park"} <= vocab
    train = task.split("train")
    assert max(len(t) for t in train.tgt) <= COCO.max_len
    removed = task.features.removed_caption_ids
    # every remaining caption of an image is one training pair; the surrogate's caption is not
    caps = [c for image_caps in task.captions("train").captions for c in image_caps]
    long_kept = removed[100] != 999  # unless the surrogate used it, the 17-token caption is a caption
    assert any(len(c) > COCO.max_len for c in caps) == long_kept
    assert len(train) == len(caps) - long_kept  # ... but never a training pair
    for split in ("valid", "test"):
        corpus = task.split(split)
        assert len(corpus) == 3 and len(set(corpus.image_ids)) == 3  # one entry per image
        for image_id, refs in zip(corpus.image_ids, corpus.refs):
            assert len(refs) == 4  # 5 captions, one became the surrogate feature
            assert image_id in removed
        assert corpus.features_kind == "surrogate"
    # the refs of an image never hold its surrogate caption (its tokens are a whole caption)
    coco = load_annotations(task.paths["valid"])
    for image_id, refs in zip(task.split("valid").image_ids, task.split("valid").refs):
        used = next(a for a in coco.imgToAnns[image_id] if a["id"] == removed[image_id])
        others = sorted(coco.imgToAnns[image_id], key=lambda a: a["id"])
        assert refs == [tokenize_caption(a["caption"]) for a in others if a is not used]


def test_task_registry_and_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "coco" in TASKS
    monkeypatch.delenv("RAYSEQ_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="needs a data directory.*surrogate-features"):
        load_task("coco")
    data = make_tiny_coco(tmp_path)
    monkeypatch.setenv("RAYSEQ_DATA_DIR", str(tmp_path))
    assert load_task("coco") is load_task("coco", data)  # $RAYSEQ_DATA_DIR/coco
    assert load_task("coco", tmp_path) is load_task("coco", data)  # a parent holding coco/


@pytest.mark.parametrize(
    "content,expect",
    [
        ({"foo": 1}, r"not a COCO annotation file \(keys \['foo'\]\)"),
        ([1, 2], r"not a COCO annotation file \(a JSON list\)"),
        ({"images": [{"id": 1}], "annotations": [{"id": 7, "image_id": 1}]}, r"annotations\[0\] \(id 7\) lacks .*caption"),
        ({"images": [{"id": 1}], "annotations": [{"id": 7, "image_id": 2, "caption": "x"}]}, r"annotation id 7 refers to image id 2"),
        ({"images": [{"name": "a"}], "annotations": []}, r"images\[0\] has no integer \"id\""),
    ],
)
def test_non_coco_annotation_file_is_one_clear_error(tmp_path: Path, content, expect: str) -> None:
    path = tmp_path / "captions_karpathy_val.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=expect) as err:
        load_annotations(path)
    assert str(path) in str(err.value)
    path.write_text("{not json")
    with pytest.raises(DataError, match=f"{path}: not a COCO annotation file: not valid JSON"):
        load_annotations(path)


def test_image_without_features_names_the_store_and_the_id(tmp_path: Path) -> None:
    data = make_tiny_coco(tmp_path)
    # a val image the store does not have
    val = data / "captions_karpathy_val.json.gz"
    d = json.loads(gzip.decompress(val.read_bytes()))
    d["images"].append({"id": 4242})
    d["annotations"].append({"id": 9999, "image_id": 4242, "caption": "a dog in a park"})
    val.write_bytes(gzip.compress(json.dumps(d).encode()))
    task = load_task("coco", data)
    with pytest.raises(DataError, match=r"features/image_ids\.npy: image id 4242 \(needed by .*captions_karpathy_val\.json\.gz\) has no features"):
        task.split("valid")


def test_feature_store_of_the_wrong_dimension_names_the_file(tmp_path: Path) -> None:
    data = make_tiny_coco(tmp_path)
    store = data / "features"
    ids = np.load(store / "image_ids.npy")
    removed = np.load(store / "removed_caption_ids.npy")
    import shutil

    shutil.rmtree(store)
    w = StoreWriter(store, ids, 16, {"kind": "surrogate"})
    w.write(np.zeros((len(ids), 16), dtype=np.float32))
    w.finish({"removed_caption_ids.npy": removed})
    with pytest.raises(DataError, match=r"features/features\.npy: features of dimension 16, but the model reads 2048-d"):
        load_task("coco", data)


def test_missing_annotation_file(tmp_path: Path) -> None:
    data = make_tiny_coco(tmp_path)
    (data / "captions_karpathy_test.json.gz").unlink()
    with pytest.raises(DataError, match=r"missing captions_karpathy_test\.json\[\.gz\].*surrogate-features"):
        load_task("coco", data)


def test_shared_karpathy_split_loads_with_pycocotools() -> None:
    if not SHARED_COCO.is_dir():
        pytest.skip(f"{SHARED_COCO} is absent")
    coco = load_annotations(SHARED_COCO / "captions_karpathy_val.json.gz")
    assert len(coco.getImgIds()) == 5000 and len(coco.getAnnIds()) == 25010
    assert min(len(coco.imgToAnns[i]) for i in coco.getImgIds()) >= 5
    assert tokenize_caption(coco.anns[1]["caption"]) == ["a", "large", "cow", "walks", "over", "a", "fox", "in", "the", "grass"]


def test_annotation_file_builder_is_coco_format() -> None:
    d = annotation_file(2, 10, seed=0)
    assert [i["id"] for i in d["images"]] == [10, 11] and len(d["annotations"]) == 10
