"""Toy datasets: exact CPS layouts, complete and disjoint splits, determinism, label encodings."""

from __future__ import annotations

import filecmp
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpcl.data.datasets import voc_palette
from cpcl.data.splits import read_split
from cpcl.data.toy import DIFFICULTY, RATIOS, is_complete, make_toy_cityscapes, make_toy_voc
from cpcl.errors import CpclError

SMALL = dict(n_train=16, n_val=4, height=40, width=48, num_classes=4, seed=3)


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    make_toy_voc(root, **SMALL)
    return root


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_voc_layout_and_splits(voc):
    ids = (voc / "train_aug.txt").read_text().split()
    assert len(ids) == 16 and len((voc / "val.txt").read_text().split()) == 4
    for i in ids:
        assert (voc / "train_aug" / "image" / f"{i}.jpg").is_file()
        assert (voc / "train_aug" / "label" / f"{i}.png").is_file()
    for r in RATIOS:
        lab = read_split(voc / "subset_train_aug" / f"train_aug_labeled_1-{r}.txt", root=voc)
        unl = read_split(voc / "subset_train_aug" / f"train_aug_unlabeled_1-{r}.txt", root=voc)
        assert len(lab) == 16 // r and len(lab) + len(unl) == 16
        images = {img for img, _ in lab} | {img for img, _ in unl}
        assert len(images) == 16  # disjoint and complete
        assert lab[0][0].endswith(".jpg") and "train_aug/image/" in lab[0][0]
    assert is_complete(voc)


def test_voc_labels_are_palette_pngs_with_every_class(voc):
    seen = {"train_aug": set(), "val": set()}
    for split in seen:
        for png in (voc / split / "label").glob("*.png"):
            img = Image.open(png)
            assert img.mode == "P"
            assert bytes(img.getpalette()[:12]) == voc_palette()[:4].tobytes()
            values = np.array(img)
            assert values.max() < 4
            seen[split] |= set(np.unique(values).tolist())
            jpg = voc / split / "image" / (png.stem + ".jpg")
            rgb = Image.open(jpg)
            assert rgb.mode == "RGB" and rgb.size == img.size
            assert 36 <= rgb.size[1] <= 44 and 43 <= rgb.size[0] <= 53  # +-10% of 40x48
    assert seen["train_aug"] == seen["val"] == {0, 1, 2, 3}


def test_generation_is_deterministic_and_seeded(voc, tmp_path):
    make_toy_voc(tmp_path / "again", **SMALL)
    assert _files(voc) == _files(tmp_path / "again")
    data = [str(p) for p in _files(voc) if p.name != "toy_meta.json"]  # meta records the root
    _, mismatch, errors = filecmp.cmpfiles(voc, tmp_path / "again", data, shallow=False)
    assert mismatch == [] and errors == [] and len(data) == 2 * 20 + 2 * len(RATIOS) + 2
    meta = [json.loads((d / "toy_meta.json").read_text()) for d in (voc, tmp_path / "again")]
    assert meta[0]["params"] == meta[1]["params"] and meta[0]["files"] == meta[1]["files"]
    make_toy_voc(tmp_path / "other", **{**SMALL, "seed": 4})
    first = "train_aug/image/toy_train_00000.jpg"
    assert (voc / first).read_bytes() != (tmp_path / "other" / first).read_bytes()


def test_difficulty_changes_scenes_and_is_checked(voc, tmp_path):
    make_toy_voc(tmp_path / "easy", **SMALL, difficulty="easy")
    first = "train_aug/image/toy_train_00000.jpg"
    assert (voc / first).read_bytes() != (tmp_path / "easy" / first).read_bytes()
    assert not is_complete(tmp_path / "easy", {"dataset": "voc", **SMALL, "vary_size": True})
    assert set(DIFFICULTY) == {"standard", "easy"}
    with pytest.raises(CpclError, match="difficulty='hard': expected one of standard, easy"):
        make_toy_voc(tmp_path / "bad", **SMALL, difficulty="hard")


def test_incomplete_dataset_is_detected(voc, tmp_path):
    make_toy_voc(tmp_path / "v", **SMALL)
    assert is_complete(tmp_path / "v")
    (tmp_path / "v" / "val" / "label" / "toy_val_00001.png").unlink()
    assert not is_complete(tmp_path / "v")


def test_cityscapes_layout_lists_and_labels(tmp_path):
    root = tmp_path / "city"
    make_toy_cityscapes(root, n_train=16, n_val=4, height=48, width=96, num_classes=6, seed=0)
    lines = (
        (root / "config_new" / "subset_train" / "train_aug_labeled_1-4.txt")
        .read_text()
        .splitlines()
    )
    assert len(lines) == 4
    img, lbl = lines[0].split("\t")
    assert img.startswith("/images/train/") and lbl.startswith("/segmentation/train/")
    assert lbl.endswith("_gtFine.png")
    label = np.array(Image.open(root / lbl.lstrip("/")))
    assert label.ndim == 2 and set(np.unique(label).tolist()) <= set(range(6)) | {255}
    assert len((root / "config_new" / "val.txt").read_text().splitlines()) == 4


def test_make_toy_data_script_keeps_a_complete_dataset(voc, capsys):
    path = Path(__file__).resolve().parents[1] / "scripts" / "make_toy_data.py"
    spec = importlib.util.spec_from_file_location("make_toy_data", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = [
        "--root",
        str(voc),
        "--n-train",
        "16",
        "--n-val",
        "4",
        "--num-classes",
        "4",
        "--seed",
        "3",
    ]
    assert script.main([*args, "--difficulty", "standard"]) == 0
    assert "already present" in capsys.readouterr().out
    assert script.main(["--root", str(voc / "x"), "--n-train", "3"]) == 2
    assert "n_train=3" in capsys.readouterr().err


def test_voc_toy_scene_in_memory_labels_and_errors():
    from cpcl.data.toy import voc_toy_scene

    img, label = voc_toy_scene(np.random.default_rng(5), 64, 80, [7, 12, 20], "easy")
    assert img.shape == (64, 80, 3) and img.dtype == np.uint8 and label.shape == (64, 80)
    values = set(np.unique(label).tolist())
    assert 7 in values and values <= {0, 7, 12, 20}  # the first object is always placed
    again = voc_toy_scene(np.random.default_rng(5), 64, 80, [7, 12, 20], "easy")
    assert np.array_equal(again[0], img) and np.array_equal(again[1], label)
    with pytest.raises(CpclError, match=r"objects=\[0, 3\]: expected ids in 1\.\.20"):
        voc_toy_scene(np.random.default_rng(0), 64, 64, [0, 3])
    with pytest.raises(CpclError, match="difficulty='hard'"):
        voc_toy_scene(np.random.default_rng(0), 64, 64, [1], "hard")
