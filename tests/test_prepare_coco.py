"""scripts/prepare_coco.py on a tiny synthetic COCO-2014 download (instances json + JPEGs)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpcl.data.datasets import read_label
from cpcl.errors import DataError
from cpcl.methods.cosa.data import COCO_CLASSES, CocoDataset
from cpcl.methods.cosa.image_labels import read_cls_labels_npy

REPO = Path(__file__).resolve().parents[1]
H, W = 12, 16
# The 80 COCO category ids (1..90 with gaps), in the order of CoSA's class_list.
COCO_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]


def _module():
    spec = importlib.util.spec_from_file_location("prepare_coco", REPO / "scripts/prepare_coco.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _rect(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    """A polygon whose COCO rasterisation is exactly rows y0..y1-1, columns x0..x1-1."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _rle(mask: np.ndarray, compressed: bool) -> dict:
    flat = mask.T.ravel().astype(np.int8)  # column-major runs, starting with zeros
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    runs = np.diff(np.concatenate([[0], edges])).tolist()
    if not compressed:
        return {"size": [H, W], "counts": runs}
    text = ""
    for i, x in enumerate(runs):  # COCO's string code (the inverse of rle_counts)
        if i > 2:
            x -= runs[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            text += chr(c + 48)
    return {"size": [H, W], "counts": text}


def _coco(root: Path) -> dict[str, np.ndarray]:
    """train2014 (3 images, one without annotations), val2014 (2), instances json; expected masks."""
    cats = [{"id": cid, "name": COCO_CLASSES[k]} for k, cid in enumerate(COCO_IDS, start=1)]
    disc = np.zeros((H, W), bool)
    disc[2:9, 5:12] = True
    disc[4, 5] = False
    expected = {}
    spec = {
        "train2014": [
            # a big person and a small dog on top of it: the smaller area is painted first
            (9, [(1, _rect(0, 0, 10, 10), 100.0, 0), (18, _rect(2, 2, 5, 5), 9.0, 0)]),
            (25, [(90, _rle(disc, compressed=True), float(disc.sum()), 1)]),  # crowd toothbrush
            (30, []),  # no annotation: not listed
        ],
        "val2014": [
            (42, [(3, _rle(disc, compressed=False), float(disc.sum()), 0)]),
            (73, [(1, _rect(10, 4, 16, 12), 48.0, 0), (2, _rect(10, 4, 16, 12), 48.0, 0)]),
        ],
    }
    rng = np.random.default_rng(0)
    ann_id = 1
    for split, items in spec.items():
        images, anns = [], []
        (root / split).mkdir(parents=True)
        for image_id, objs in items:
            name = f"COCO_{split}_{image_id:012d}"
            Image.fromarray(rng.integers(0, 256, (H, W, 3), np.uint8)).save(
                root / split / f"{name}.jpg"
            )
            images.append({"id": image_id, "file_name": f"{name}.jpg", "height": H, "width": W})
            mask = np.zeros((H, W), np.uint8)
            for cat, segm, area, crowd in objs:
                anns.append({"id": ann_id, "image_id": image_id, "category_id": cat,
                             "segmentation": segm if isinstance(segm, dict) else [segm],
                             "area": area, "iscrowd": crowd})  # fmt: skip
                ann_id += 1
            if objs:
                expected[name] = mask
        (root / "annotations").mkdir(exist_ok=True)
        data = {"images": images, "annotations": anns, "categories": cats}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    k = {cid: i for i, cid in enumerate(COCO_IDS, start=1)}
    e = expected
    e["COCO_train2014_000000000009"][0:10, 0:10] = k[1]
    e["COCO_train2014_000000000009"][2:5, 2:5] = k[18]  # dog (smaller) stays on top
    e["COCO_train2014_000000000025"][disc] = k[90]  # crowd counts as its class
    e["COCO_val2014_000000000042"][disc] = k[3]
    e["COCO_val2014_000000000073"][4:12, 10:16] = k[1]  # equal areas: the first in the file
    return e


def test_prepare_coco_writes_the_official_layout(tmp_path: Path) -> None:
    prep = _module()
    src, dst = tmp_path / "coco", tmp_path / "out"
    expected = _coco(src)
    counts = prep.prepare_coco(src, dst)
    assert counts["train2014"] == 2 and counts["val2014"] == 2
    assert (dst / "train.txt").read_text().split() == [
        "COCO_train2014_000000000009",
        "COCO_train2014_000000000025",
    ]
    val = (dst / "val.txt").read_text().split()
    assert val == ["COCO_val2014_000000000042", "COCO_val2014_000000000073"]
    assert (dst / "val_part.txt").read_text().split() == val  # first 5000 of val
    for name, mask in expected.items():
        split = name.split("_")[1]
        got = read_label(dst / "SegmentationClass" / split / f"{name}.png", num_classes=81)
        np.testing.assert_array_equal(got, mask, err_msg=name)
    labels = read_cls_labels_npy(dst / "cls_labels_onehot.npy", 81)
    assert sorted(labels) == sorted(expected)
    # person (id 1) = class 1, dog (id 18) = class 17: columns 0 and 16
    assert np.flatnonzero(labels["COCO_train2014_000000000009"]).tolist() == [0, 16]
    assert np.flatnonzero(labels["COCO_train2014_000000000025"]).tolist() == [79]
    # The layout as the project's COCO reader (CoSA's layout) opens it.
    ds = CocoDataset(dst, dst / "val_part.txt")
    img, _, name = ds.load(1)
    assert img.shape == (H, W, 3) and name == "COCO_val2014_000000000073"
    assert (dst / "train2014").is_symlink()
    assert prep.check_layout(dst) == {"train.txt": 2, "val.txt": 2, "val_part.txt": 2}
    # In place (the default --dst) and again: the same files.
    prep.prepare_coco(src)
    prep.prepare_coco(src)
    for f in ("train.txt", "val.txt", "val_part.txt"):
        assert (src / f).read_bytes() == (dst / f).read_bytes()


def test_rle_codes_and_polygons_follow_coco(tmp_path: Path) -> None:
    prep = _module()
    rng = np.random.default_rng(3)
    for _ in range(20):
        m = rng.random((H, W)) < rng.random()
        m[0, 0] = rng.random() < 0.5
        for compressed in (False, True):
            np.testing.assert_array_equal(prep.rle_mask(_rle(m, compressed), H, W), m)
    # Polygons rasterised by pycocotools 2.0.11 (`decode(merge(frPyObjects(...)))`), each row
    # written as a 16-bit number (column 0 = the highest bit).
    for poly, rows in (
        ([1.2, 1.7, 9.6, 2.1, 4.4, 10.3], [0, 0, 32640, 16256, 16128, 7680, 7680, 7168, 3072, 2048, 0, 0]),
        ([14.7, 0.2, 15.9, 11.8, 3.3, 6.6, 8.1, 5.5], [2, 6, 14, 30, 126, 254, 4094, 1023, 255, 31, 7, 1]),
    ):  # fmt: skip
        bits = (np.asarray(rows)[:, None] >> np.arange(W - 1, -1, -1)) & 1
        np.testing.assert_array_equal(prep.polygon_mask([poly], H, W), bits.astype(bool))
    with pytest.raises(DataError, match="runs sum"):
        prep.rle_mask({"size": [H, W], "counts": [3, 4]}, H, W)


def test_prepare_coco_names_missing_inputs_and_dry_run_writes_nothing(tmp_path: Path) -> None:
    prep = _module()
    with pytest.raises(DataError) as err:
        prep.prepare_coco(tmp_path / "coco")
    assert "train2014" in str(err.value) and "instances_val2014.json" in str(err.value)
    src = tmp_path / "coco"
    _coco(src)
    counts = prep.prepare_coco(src, tmp_path / "out", dry_run=True)
    assert counts["train.txt"] == 2 and not (tmp_path / "out").exists()
    (src / "val2014" / "COCO_val2014_000000000073.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of 2 annotated val2014 images missing"):
        prep.prepare_coco(src, tmp_path / "out")
    assert prep.main(["--coco", str(src), "--dst", str(tmp_path / "o")]) == 2


def test_prepare_coco_copies_official_lists_after_checking_them(tmp_path: Path) -> None:
    prep = _module()
    src, lists = tmp_path / "coco", tmp_path / "lists"
    _coco(src)
    lists.mkdir()
    (lists / "val_part.txt").write_text("COCO_val2014_000000000073\n")
    counts = prep.prepare_coco(src, tmp_path / "out", lists=lists)
    assert counts["val_part.txt"] == 1
    assert (tmp_path / "out/val_part.txt").read_text() == "COCO_val2014_000000000073\n"
    (lists / "train.txt").write_text("COCO_train2014_000000000030\n")  # has no annotation
    with pytest.raises(DataError, match=r"train\.txt: 1 names have no annotated image"):
        prep.prepare_coco(src, tmp_path / "out", lists=lists)
