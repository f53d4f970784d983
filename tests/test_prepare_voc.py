"""scripts/prepare_voc.py on a tiny synthetic copy of the original VOC2012 + SBD downloads."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cpcl.config import load_preset
from cpcl.data.datasets import build_dataset, read_label, voc_palette
from cpcl.engine.resolve import apply_overrides, finalize
from cpcl.errors import DataError

REPO = Path(__file__).resolve().parents[1]
H, W = 12, 16
TRAIN = ["2007_000032", "2007_000039"]  # VOC train (have SegmentationClass)
VAL = ["2007_000033", "2007_000042"]  # VOC val
SBD_ONLY = ["2008_000002", "2008_000003", "2008_000007", "2008_000008"]  # SBD, not in VOC seg
TRAIN_AUG = sorted(TRAIN + SBD_ONLY)


def _module():
    spec = importlib.util.spec_from_file_location("prepare_voc", REPO / "scripts/prepare_voc.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _label(i: int) -> np.ndarray:
    lab = (np.arange(H * W).reshape(H, W) + i) % 21
    lab[0, :] = 255  # VOC's boundary band
    return lab.astype(np.uint8)


def _originals(root: Path, *, aug: bool, sbd: bool) -> dict[str, np.ndarray]:
    """VOC2012 (+ SegmentationClassAug PNGs and/or SBD .mat files) under `root`."""
    voc = root / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    labels = {}
    for k, i in enumerate(TRAIN + VAL + SBD_ONLY + ["2012_999999"]):  # + an unrelated JPEG
        (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (H, W, 3), np.uint8)).save(
            voc / "JPEGImages" / f"{i}.jpg"
        )
        labels[i] = _label(k)
    (voc / "SegmentationClass").mkdir(parents=True)
    for i in TRAIN + VAL:  # palette PNGs, as VOC ships them
        im = Image.fromarray(labels[i], mode="P")
        im.putpalette(voc_palette().reshape(-1).tolist())
        im.save(voc / "SegmentationClass" / f"{i}.png")
    seg = voc / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True)
    (seg / "train.txt").write_text("\n".join(TRAIN) + "\n")
    (seg / "val.txt").write_text("\n".join(VAL) + "\n")
    if aug:
        (voc / "SegmentationClassAug").mkdir()
        for i in TRAIN + VAL + SBD_ONLY:  # grayscale index PNGs
            Image.fromarray(labels[i], mode="L").save(voc / "SegmentationClassAug" / f"{i}.png")
    if sbd:
        scipy_io = pytest.importorskip("scipy.io")
        ds = root / "benchmark_RELEASE" / "dataset"
        (ds / "cls").mkdir(parents=True)
        for i in SBD_ONLY + VAL[:1]:  # SBD holds some VOC val ids too: they must stay out
            seg_sbd = np.where(labels[i] == 255, 0, labels[i]).astype(np.uint8)  # SBD: no 255
            labels[i] = seg_sbd if i in SBD_ONLY else labels[i]
            scipy_io.savemat(ds / "cls" / f"{i}.mat", {"GTcls": {"Segmentation": seg_sbd}})
        (ds / "train.txt").write_text("\n".join(SBD_ONLY[:3]) + "\n")
        (ds / "val.txt").write_text("\n".join([SBD_ONLY[3], VAL[0]]) + "\n")
    return labels


def _splits(root: Path) -> Path:
    d = root / "splits"
    d.mkdir()
    (d / "train_aug_labeled_1-8.txt").write_text("\r\n".join(TRAIN_AUG[:1]))  # CRLF, no final \n
    (d / "train_aug_unlabeled_1-8.txt").write_text("\n".join(TRAIN_AUG[1:]) + "\n")
    return d


@pytest.mark.parametrize("source", ["aug", "sbd"])
def test_prepare_voc_builds_a_layout_train_py_accepts(tmp_path: Path, source: str) -> None:
    prep = _module()
    labels = _originals(tmp_path, aug=source == "aug", sbd=source == "sbd")
    voc, dst = tmp_path / "VOCdevkit" / "VOC2012", tmp_path / "pascal_voc"
    sbd = tmp_path / "benchmark_RELEASE" / "dataset" if source == "sbd" else None
    splits = _splits(tmp_path)
    counts = prep.prepare_voc(voc, dst, sbd=sbd, splits=splits)
    assert counts["train_aug"] == len(TRAIN_AUG) and counts["val"] == len(VAL)
    assert (dst / "train_aug.txt").read_text().split() == TRAIN_AUG
    assert (dst / "val.txt").read_text().split() == VAL
    assert (dst / "train.txt").read_text().split() == TRAIN
    assert (dst / "subset_train_aug/train_aug_labeled_1-8.txt").read_bytes() == (
        splits / "train_aug_labeled_1-8.txt"
    ).read_bytes()
    for i in TRAIN_AUG:  # palette PNGs and .mat files became the same class indices
        np.testing.assert_array_equal(
            read_label(dst / "train_aug/label" / f"{i}.png", num_classes=21), labels[i]
        )
        assert Image.open(dst / "train_aug/label" / f"{i}.png").mode == "L"
    np.testing.assert_array_equal(
        read_label(dst / "val/label" / f"{VAL[1]}.png", num_classes=21), labels[VAL[1]]
    )
    assert (dst / "train_aug/image" / f"{TRAIN[0]}.jpg").is_symlink()
    # The layout as exp_voc/train.py resolves it: default lists under dataset_path.
    C = finalize(apply_overrides(load_preset("voc"), [f"--dataset_path={dst}"]))
    for split, n in (("labeled", 1), ("unlabeled", len(TRAIN_AUG) - 1), ("val", len(VAL))):
        ds = build_dataset(C, split)
        assert len(ds) == n
        img, lab, _ = ds.load(0)
        assert img.shape == (H, W, 3) and (lab is None) == (split == "unlabeled")
    # CoSA trains on the whole train_aug.txt and validates on val.txt of the same folder.
    C = finalize(apply_overrides(load_preset("voc"), ["--method=cosa", f"--dataset_path={dst}"]))
    assert len(build_dataset(C, "labeled")) == len(TRAIN_AUG)
    assert prep.check_layout(dst)["train_aug.txt"] == len(TRAIN_AUG)


def test_prepare_voc_is_idempotent_and_dry_run_writes_nothing(tmp_path: Path) -> None:
    prep = _module()
    _originals(tmp_path, aug=True, sbd=False)
    voc, dst = tmp_path / "VOCdevkit" / "VOC2012", tmp_path / "out"
    planned = prep.prepare_voc(voc, dst, splits=_splits(tmp_path), dry_run=True)
    assert not dst.exists() and planned["train_aug"] == len(TRAIN_AUG)
    prep.prepare_voc(voc, dst, splits=tmp_path / "splits", layout="u2pl", copy=True)
    first = {p: p.read_bytes() for p in sorted(dst.rglob("*")) if p.is_file()}
    prep.prepare_voc(voc, dst, splits=tmp_path / "splits", layout="u2pl", copy=True)
    assert {p: p.read_bytes() for p in sorted(dst.rglob("*")) if p.is_file()} == first
    assert (dst / "JPEGImages" / f"{VAL[0]}.jpg").is_file()
    assert (dst / "SegmentationClassAug" / f"{SBD_ONLY[0]}.png").is_file()
    # Without public lists: seeded partitions of train_aug (1/8 of 6 -> 1 labeled).
    out2 = tmp_path / "out2"
    (tmp_path / "nolists").mkdir()
    prep.prepare_voc(voc, out2, splits=tmp_path / "nolists")
    lab = (out2 / "subset_train_aug/train_aug_labeled_1-8.txt").read_text().split()
    unlab = (out2 / "subset_train_aug/train_aug_unlabeled_1-8.txt").read_text().split()
    assert len(lab) == 1 and sorted(lab + unlab) == TRAIN_AUG


def test_prepare_voc_names_missing_inputs(tmp_path: Path) -> None:
    prep = _module()
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    with pytest.raises(DataError) as err:
        prep.prepare_voc(voc, tmp_path / "out")
    msg = str(err.value)
    assert "JPEGImages" in msg and "SegmentationClass" in msg and "--aug" in msg
    _originals(tmp_path, aug=True, sbd=False)
    (voc / "JPEGImages" / f"{SBD_ONLY[1]}.jpg").unlink()
    with pytest.raises(DataError, match=rf"image .*{SBD_ONLY[1]}\.jpg"):
        prep.prepare_voc(voc, tmp_path / "out")
    assert prep.main(["--voc", str(voc), "--dst", str(tmp_path / "o")]) == 2


def test_prepare_voc_rejects_a_split_id_it_did_not_prepare(tmp_path: Path) -> None:
    prep = _module()
    _originals(tmp_path, aug=True, sbd=False)
    splits = _splits(tmp_path)
    (splits / "train_aug_unlabeled_1-8.txt").write_text(f"{TRAIN_AUG[1]}\n{VAL[0]}\n")
    with pytest.raises(DataError, match=rf"unlabeled_1-8\.txt, line 2: image {VAL[0]}"):
        prep.prepare_voc(tmp_path / "VOCdevkit" / "VOC2012", tmp_path / "o", splits=splits)
