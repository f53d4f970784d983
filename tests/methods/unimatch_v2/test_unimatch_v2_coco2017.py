"""COCO 2017 in UniMatch V2's layout (`--dataset_name=coco2017`): the preset resolves to the
official `configs/coco.yaml`, a tiny tree in the official list format is read with the right
image/mask pairs (PIL decoding, no EXIF rotation), missing files are named before any image
is read, and `--method=unimatch_v2` trains on it end to end."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cpcl.engine as engine
from cpcl.config import load_preset
from cpcl.data.datasets import (
    COCO_CLASSES,
    build_dataset,
    class_names,
    expected_tree,
    palette_for,
    voc_palette,
)
from cpcl.engine.resolve import apply_overrides, finalize
from cpcl.errors import ConfigError, DataError
from cpcl.methods.unimatch_v2 import UniMatchV2
from cpcl.methods.unimatch_v2.presets import UNIMATCH_V2_PRESETS

H, W = 32, 40  # stored pixel size of every synthetic image and mask
# (list, folder, ids): the official 'train2017/<id>.jpg masks/<id>.png' lines.
TREE = {
    "splits/1_512/labeled.txt": ("train2017", [1, 2, 3, 4]),
    "splits/1_512/unlabeled.txt": ("train2017", [5, 6, 7, 8]),
    "splits/val.txt": ("val2017", [9, 10]),
}
EXIF_ID = 3  # carries EXIF orientation 6 (rotate 90°): must NOT be applied (official PIL read)


def _stem(i: int) -> str:
    return f"{i:012d}"


def _write_tree(root: Path) -> dict[str, tuple[int, np.ndarray]]:
    """A few flat-colour JPEGs with masks; returns name -> (grey level, mask)."""
    want = {}
    for rel, (folder, ids) in TREE.items():
        lines = []
        for i in ids:
            grey = 20 * i
            mask = np.full((H, W), i % 4, dtype=np.uint8)
            mask[0, :] = 255  # ignore
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / "masks").mkdir(exist_ok=True)
            img = Image.fromarray(np.full((H, W, 3), grey, dtype=np.uint8))
            exif = Image.Exif()
            if i == EXIF_ID:
                exif[0x0112] = 6
            img.save(root / folder / f"{_stem(i)}.jpg", quality=100, exif=exif)
            Image.fromarray(mask).save(root / "masks" / f"{_stem(i)}.png")
            lines.append(f"{folder}/{_stem(i)}.jpg masks/{_stem(i)}.png")
            want[_stem(i)] = (grey, mask)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("\n".join(lines) + "\n")
    return want


@pytest.fixture(scope="module")
def coco_tree(tmp_path_factory) -> tuple[Path, dict[str, tuple[int, np.ndarray]]]:
    root = tmp_path_factory.mktemp("coco2017")
    return root, _write_tree(root)


TINY = [
    "--backbone=dinov2_toy",
    "--pretrained_model=None",
    "--batch_size=2",
    "--image_height=28",
    "--image_width=28",
    "--nepochs=1",
    "--niters_per_epoch=1",
    "--num_workers=0",
    "--num_classes=4",
    "--display_iter=1",
    "--device=cpu",
]


def _config(root: Path, run: Path, *extra: str):
    args = [*TINY, f"--dataset_path={root}", f"--log_dir={run / 'log'}", *extra]
    return apply_overrides(load_preset("coco2017"), args)


class _NoImages:
    def __call__(self, path, *args, **kwargs):
        raise AssertionError(f"an image was read before the start-up checks: {path}")


def test_preset_is_the_official_coco_config(tmp_path):
    p = UNIMATCH_V2_PRESETS["coco"]
    C = apply_overrides(load_preset("coco2017"), [])
    assert C.method == "unimatch_v2" and C.num_classes == p["nclass"]
    assert C.image_height == C.image_width == p["crop_size"] and C.nepochs == p["epochs"]
    assert C.batch_size == 4 * p["batch_size"] and C.lr == p["lr"]
    assert C.unimatch_v2_lr_multi == p["lr_multi"] and C.sup_loss == "ce"
    assert C.unimatch_v2_eval_mode == p["eval_mode"] == "original"
    assert C.unimatch_v2_lock_backbone is p["lock_backbone"]
    assert C.pretrained_model == f"DATA/pytorch-weight/{p['backbone']}.pth"
    assert UniMatchV2.defaults["coco2017"]["nepochs"] == p["epochs"]
    F = finalize(C, root=str(tmp_path))
    assert F.dataset_path.endswith(os.path.join("DATA", "coco2017"))
    assert F.train_source == os.path.join(F.dataset_path, "splits", "1_512", "labeled.txt")
    assert F.unsup_source == os.path.join(F.dataset_path, "splits", "1_512", "unlabeled.txt")
    assert F.eval_source == os.path.join(F.dataset_path, "splits", "val.txt")


def test_dataset_name_on_the_command_line_switches_the_preset():
    # From exp_voc/ (the VOC preset): the COCO 2017 values, not VOC's under another name.
    want = apply_overrides(load_preset("coco2017"), [])
    C = apply_overrides(load_preset("voc"), ["--dataset_name=coco2017"])
    assert want == C
    voc = load_preset("voc")
    voc.nepochs, voc.num_classes = 3, 4  # set by the experiment config: kept
    C = apply_overrides(voc, ["--dataset_name=coco2017", "--method=unimatch_v2"])
    assert (C.nepochs, C.num_classes, C.image_height) == (3, 4, want.image_height)
    with pytest.raises(ConfigError, match=r"C\.dataset_name = 'coco2018': expected one of"):
        apply_overrides(load_preset("voc"), ["--dataset_name=coco2018"])


def test_names_palette_and_tree():
    names = class_names("coco2017")
    assert len(names) == 81 and names[0] == "void" and names[1:] == COCO_CLASSES[1:]
    assert (palette_for("coco2017") == voc_palette()).all()
    assert "train2017" in expected_tree("coco2017") and "masks/" in expected_tree("coco2017")


def test_other_methods_and_v2_on_cosa_coco_are_refused():
    with pytest.raises(ConfigError, match=r"'cpcl' on C\.dataset_name = 'coco2017'"):
        apply_overrides(load_preset("coco2017"), ["--method=cpcl"])
    with pytest.raises(ConfigError, match="--dataset_name=coco2017"):
        apply_overrides(load_preset("coco"), ["--method=unimatch_v2"])


def test_official_lines_give_the_right_pairs(coco_tree, tmp_path):
    root, want = coco_tree
    C = finalize(_config(root, tmp_path, "--num_classes=81"), root=str(tmp_path))
    for split in ("labeled", "unlabeled", "val"):
        data = build_dataset(C, split)
        assert data.format == "pairs"
        for i in range(len(data)):
            img, label, name = data.load(i)
            grey, mask = want[name]
            # Stored pixels, not EXIF-rotated (EXIF_ID would be 40x32 with cv2).
            assert img.shape == (H, W, 3) and np.abs(img.astype(int) - grey).max() <= 2
            if split == "unlabeled":
                assert label is None
            else:
                assert label is not None and (label == mask).all()
    assert sorted(build_dataset(C, "val").names) == [_stem(9), _stem(10)]


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("splits/1_512/unlabeled.txt", "split list not found: {root}/splits/1_512/unlabeled.txt"),
        ("masks/000000000002.png", "label not found: {root}/masks/000000000002.png"),
        ("", "dataset root not found: {root}/missing"),
    ],
)
def test_missing_files_are_named_before_any_image_is_read(remove, message, tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    _write_tree(root)
    if remove:
        (root / remove).unlink()
    monkeypatch.setattr("cpcl.data.datasets.read_image", _NoImages())
    data = root if remove else root / "missing"
    with pytest.raises(DataError) as info:
        engine.fit(_config(data, tmp_path), root=str(tmp_path))
    text = str(info.value)
    assert message.format(root=root) in text
    if remove != "masks/000000000002.png":  # one file of many: no tree, the line is named
        assert "expected this folder tree" in text and "train2017" in text
    else:
        assert "labeled.txt, line 2" in text


def test_unimatch_v2_trains_on_coco2017(coco_tree, tmp_path):
    root, _ = coco_tree
    out = engine.fit(_config(root, tmp_path, "--unimatch_v2_conf_thresh=0"), root=str(tmp_path))
    assert not out["interrupted"] and len(out["epochs"]) == 1
    logs = out["epochs"][0]
    assert np.isfinite(logs["loss"]) and logs["mask_ratio"] == 1.0 and logs["loss_u_s1"] > 0
    assert (Path(out["snapshot_dir"]) / "epoch-last.pth").exists()
    assert 0.0 <= out["last_eval"]["miou"] <= 100.0
