"""Datasets: RGB images, palette vs grayscale labels, labelId mapping, label policies, every data
error naming its file, `build_dataset` from a config, and the Cityscapes preparation script."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cpcl.config import load_preset
from cpcl.data.datasets import (
    SegDataset,
    build_dataset,
    cityscapes_id_lut,
    class_names,
    palette_for,
    read_image,
    read_label,
)
from cpcl.data.splits import read_split
from cpcl.engine.resolve import finalize
from cpcl.errors import DataError

REPO = Path(__file__).resolve().parents[1]
H, W = 8, 16


def _save_gray(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), mode="L").save(path)
    return path


def _save_palette(path: Path, arr: np.ndarray, palette: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette(palette.reshape(-1).tolist())
    im.save(path)
    return path


def _save_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def _label(num_classes: int = 21) -> np.ndarray:
    arr = (np.arange(H * W).reshape(H, W) % num_classes).astype(np.uint8)
    arr[0, :3] = 255
    return arr


def test_palette_and_grayscale_pngs_give_the_same_indices(tmp_path: Path) -> None:
    arr = _label()
    gray = read_label(_save_gray(tmp_path / "g.png", arr), num_classes=21)
    pal = read_label(_save_palette(tmp_path / "p.png", arr, palette_for("voc")), num_classes=21)
    assert gray.dtype == np.uint8 and gray.shape == (H, W)
    np.testing.assert_array_equal(gray, arr)
    np.testing.assert_array_equal(pal, arr)
    # The luminance read that the official cv2.IMREAD_GRAYSCALE does would differ here.
    lum = cv2.imread(str(tmp_path / "p.png"), cv2.IMREAD_GRAYSCALE)
    assert not np.array_equal(lum, arr)


def test_palettes_and_names() -> None:
    voc = palette_for("voc")
    assert voc.shape == (256, 3) and voc.dtype == np.uint8
    assert voc[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert voc[15].tolist() == [192, 128, 128] and voc[20].tolist() == [0, 64, 128]
    assert voc[255].tolist() == [224, 224, 192]
    city = palette_for("cityscapes")
    assert city[0].tolist() == [128, 64, 128] and city[18].tolist() == [119, 11, 32]
    assert not city[19:].any()
    assert len(class_names("voc")) == 21 and class_names("voc")[15] == "person"
    names = class_names("cityscapes")
    assert len(names) == 19 and names[6] == "traffic light" and names[18] == "bicycle"
    with pytest.raises(DataError, match="dataset_name='ade'"):
        palette_for("ade")


def test_cityscapes_label_ids_map_to_train_ids(tmp_path: Path) -> None:
    lut = cityscapes_id_lut()
    assert lut.shape == (256,) and lut.dtype == np.uint8
    ids = np.array([[0, 1, 6, 7, 8, 9, 10, 11], [24, 26, 33, 34, 30, 31, 255, 17]], np.uint8)
    expected = np.array(
        [[255, 255, 255, 0, 1, 255, 255, 2], [11, 13, 18, 255, 255, 16, 255, 5]], np.uint8
    )
    np.testing.assert_array_equal(lut[ids], expected)
    assert sorted(set(lut.tolist()) - {255}) == list(range(19))
    p = _save_gray(tmp_path / "x_gtFine_labelIds.png", ids)
    np.testing.assert_array_equal(read_label(p, num_classes=19, id_map=lut), expected)


def test_out_of_range_labels_error_or_ignore(tmp_path: Path) -> None:
    arr = _label()
    arr[1, 1], arr[2, 2] = 21, 200
    p = _save_gray(tmp_path / "bad_label.png", arr)
    with pytest.raises(DataError, match=r"bad_label\.png holds values \[21, 200\] outside 0\.\.20"):
        read_label(p, num_classes=21)
    fixed = read_label(p, num_classes=21, policy="ignore")
    assert fixed[1, 1] == 255 and fixed[2, 2] == 255
    np.testing.assert_array_equal(fixed[3:], arr[3:])
    with pytest.raises(DataError, match="label policy 'drop'"):
        read_label(p, num_classes=21, policy="drop")


def test_label_and_image_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"label not found: .*nolabel\.png"):
        read_label(tmp_path / "nolabel.png", num_classes=21)
    rgb = _save_rgb(tmp_path / "colour_label.png", np.zeros((H, W, 3), np.uint8))
    with pytest.raises(DataError, match=r"colour_label\.png has PIL mode 'RGB'"):
        read_label(rgb, num_classes=21)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot decode label .*junk\.png"):
        read_label(junk, num_classes=21)
    with pytest.raises(DataError, match=r"cannot decode image .*junk\.png"):
        read_image(junk)
    with pytest.raises(DataError, match=r"image not found: .*noimg\.jpg"):
        read_image(tmp_path / "noimg.jpg")


def test_read_image_returns_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200  # pure red
    rgb[:, :4, 2] = 50
    img = read_image(_save_rgb(tmp_path / "red.png", rgb))
    assert img.dtype == np.uint8 and img.shape == (H, W, 3) and img.flags.c_contiguous
    np.testing.assert_array_equal(img, rgb)


def _voc_root(tmp_path: Path, ids: list[str], folder: str = "train_aug") -> Path:
    root = tmp_path / "voc"
    rng = np.random.default_rng(0)
    for i in ids:
        _save_rgb(root / folder / "image" / f"{i}.jpg", rng.integers(0, 256, (H, W, 3), np.uint8))
        _save_palette(root / folder / "label" / f"{i}.png", _label(), palette_for("voc"))
    return root


def test_seg_dataset_loads_voc_entries(tmp_path: Path) -> None:
    ids = ["2007_000032", "2007_000039"]
    root = _voc_root(tmp_path, ids)
    lst = root / "subset_train_aug" / "train_aug_labeled_1-8.txt"
    lst.parent.mkdir()
    lst.write_text("\r\n".join(ids))
    ds = SegDataset(root, lst, num_classes=21)
    assert len(ds) == 2 and ds.names == ids and ds.format == "cps-voc"
    assert ds.entries[1] == (
        os.path.join(root, "train_aug/image/2007_000039.jpg"),
        os.path.join(root, "train_aug/label/2007_000039.png"),
    )
    img, label, name = ds.load(1)
    assert img.shape == (H, W, 3) and name == "2007_000039"
    np.testing.assert_array_equal(label, _label())
    unlab = SegDataset(root, lst, num_classes=21, with_labels=False)
    assert unlab.entries[0][1] is None and unlab.load(0)[1] is None


def test_seg_dataset_errors_name_root_list_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset root not found: .*missing_root") as exc:
        SegDataset(
            tmp_path / "missing_root", tmp_path / "l.txt", num_classes=21, dataset_name="voc"
        )
    assert "train_aug/image/<id>.jpg" in str(exc.value)
    with pytest.raises(DataError) as exc:
        SegDataset(tmp_path / "nope", tmp_path / "l.txt", num_classes=19, dataset_name="cityscapes")
    assert "segmentation/{train,val}/<name>_gtFine.png" in str(exc.value)

    root = _voc_root(tmp_path, ["a_1", "b_2"])
    with pytest.raises(
        DataError, match=rf"split list not found: .*gone\.txt \(dataset root {root}\)"
    ):
        SegDataset(root, root / "gone.txt", num_classes=21)
    lst = root / "train.txt"
    lst.write_text("a_1\n\nc_3\nd_4\n")
    with pytest.raises(DataError) as exc:
        SegDataset(root, lst, num_classes=21)
    msg = str(exc.value)
    assert "image not found:" in msg and "train_aug/image/c_3.jpg" in msg
    assert f"listed in {lst}, line 3" in msg and "2 of 3 images missing" in msg

    os.remove(root / "train_aug/label/b_2.png")
    lst.write_text("a_1\nb_2\n")
    with pytest.raises(
        DataError, match=rf"label not found: .*b_2\.png \(listed in {lst}, line 2\)"
    ):
        SegDataset(root, lst, num_classes=21)
    assert SegDataset(root, lst, num_classes=21, with_labels=False).names == ["a_1", "b_2"]

    # Size mismatch names both files; a bad label value names the label and the list line.
    _save_gray(root / "train_aug/label/b_2.png", np.zeros((H + 1, W), np.uint8))
    big = _label()
    big[0, 0] = 99
    _save_gray(root / "train_aug/label/a_1.png", big)
    ds = SegDataset(root, lst, num_classes=21)
    with pytest.raises(DataError) as exc:
        ds.load(1)
    msg = str(exc.value)
    assert "b_2.jpg is 8x16 but label" in msg and "b_2.png is 9x16" in msg and "line 2" in msg
    with pytest.raises(DataError, match=rf"values \[99\] .*listed in {lst}, line 1"):
        ds.load(0)
    assert SegDataset(root, lst, num_classes=21, label_policy="ignore").load(0)[1][0, 0] == 255

    uni = root / "uni.txt"
    uni.write_text("train_aug/image/a_1.jpg None\n")
    with pytest.raises(DataError, match=rf"{uni}, line 1: no label path"):
        SegDataset(root, uni, num_classes=21)


def test_u2pl_voc_root_is_detected(tmp_path: Path) -> None:
    root = tmp_path / "u2pl"
    _save_rgb(root / "JPEGImages/2007_000032.jpg", np.zeros((H, W, 3), np.uint8))
    _save_gray(root / "SegmentationClassAug/2007_000032.png", _label())
    lst = root / "labeled.txt"
    lst.write_text("2007_000032")
    ds = SegDataset(root, lst, num_classes=21)
    assert ds.format == "u2pl-voc"
    np.testing.assert_array_equal(ds.load(0)[1], _label())


def _fake_cityscapes(src: Path) -> dict[str, np.ndarray]:
    """A tiny official-layout Cityscapes tree: 4 train and 2 val 8x16 images with labelIds."""
    rng = np.random.default_rng(1)
    ids = {}
    for split, names in (
        ("train", ["aachen_000000_000019", "aachen_000001_000019", "bremen_000000_000019"]),
        ("val", ["lindau_000000_000019", "lindau_000001_000019"]),
    ):
        if split == "train":
            names.append("bremen_000001_000019")
        for name in names:
            city = name.split("_")[0]
            _save_rgb(
                src / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png",
                rng.integers(0, 256, (H, W, 3), np.uint8),
            )
            lab = rng.integers(0, 34, (H, W)).astype(np.uint8)
            _save_gray(src / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", lab)
            ids[name] = lab
    return ids


def _prepare_module():
    path = REPO / "scripts/prepare_cityscapes.py"
    spec = importlib.util.spec_from_file_location("prepare_cityscapes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cityscapes_label_ids_are_auto_detected(tmp_path: Path) -> None:
    src = tmp_path / "cs"
    ids = _fake_cityscapes(src)
    lst = tmp_path / "u2pl.txt"
    lst.write_text("leftImg8bit/val/lindau/lindau_000001_000019_leftImg8bit.png\n")
    # U2PL derives *_labelTrainIds.png; point a pairs list at the raw labelIds instead.
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(
        "leftImg8bit/val/lindau/lindau_000001_000019_leftImg8bit.png "
        "gtFine/val/lindau/lindau_000001_000019_gtFine_labelIds.png\n"
    )
    ds = SegDataset(src, pairs, num_classes=19)
    _, label, name = ds.load(0)
    assert name == "lindau_000001_000019_leftImg8bit"
    np.testing.assert_array_equal(label, cityscapes_id_lut()[ids["lindau_000001_000019"]])
    with pytest.raises(DataError, match=r"label not found: .*_gtFine_labelTrainIds\.png"):
        SegDataset(src, lst, num_classes=19)


@pytest.mark.parametrize("copy", [False, True])
def test_prepare_cityscapes_writes_the_cps_layout(tmp_path: Path, copy: bool) -> None:
    prep = _prepare_module()
    src, dst = tmp_path / "cs", tmp_path / "city"
    ids = _fake_cityscapes(src)
    lists = prep.prepare_cityscapes(src, dst, copy=copy, seed=0, ratios=(2, 4))
    train = read_split(dst / "config_new/train.txt")
    assert train == lists["train"] and len(train) == 4
    assert train[0] == (
        "images/train/aachen_000000_000019.png",
        "segmentation/train/aachen_000000_000019_gtFine.png",
    )
    img_path = dst / "images/train/aachen_000000_000019.png"
    assert img_path.is_symlink() != copy
    for split in ("labeled", "unlabeled"):
        assert (dst / f"config_new/subset_train/train_aug_{split}_1-4.txt").is_file()
    lab = read_split(dst / "config_new/subset_train/train_aug_labeled_1-2.txt")
    unlab = read_split(dst / "config_new/subset_train/train_aug_unlabeled_1-2.txt")
    assert len(lab) == 2 and sorted(lab + unlab) == sorted(train)
    assert len(read_split(dst / "config_new/subset_train/train_aug_labeled_1-4.txt")) == 1
    ds = SegDataset(dst, dst / "config_new/val.txt", num_classes=19, dataset_name="cityscapes")
    assert ds.names == ["lindau_000000_000019", "lindau_000001_000019"]
    img, label, _ = ds.load(1)
    np.testing.assert_array_equal(label, cityscapes_id_lut()[ids["lindau_000001_000019"]])
    np.testing.assert_array_equal(
        img, read_image(src / "leftImg8bit/val/lindau/lindau_000001_000019_leftImg8bit.png")
    )


def test_prepare_cityscapes_uses_given_lists_and_reports_errors(tmp_path: Path) -> None:
    prep = _prepare_module()
    src, dst = tmp_path / "cs", tmp_path / "city"
    _fake_cityscapes(src)
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train_aug_labeled_1-2.txt").write_text(
        "/images/train/bremen_000001_000019.png\t/segmentation/train/bremen_000001_000019_gtFine.png\n"
    )
    # UniMatch-style lines work too: images are matched by name.
    (splits / "train_aug_unlabeled_1-2.txt").write_text(
        "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png None\n"
        "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png None\n"
        "leftImg8bit/train/bremen/bremen_000000_000019_leftImg8bit.png None\n"
    )
    lists = prep.prepare_cityscapes(src, dst, splits_dir=splits, ratios=(2,))
    assert [Path(i).stem for i, _ in lists["labeled_1-2"]] == ["bremen_000001_000019"]
    written = (dst / "config_new/subset_train/train_aug_unlabeled_1-2.txt").read_text()
    assert written.splitlines()[0] == (
        "/images/train/aachen_000000_000019.png\t/segmentation/train/aachen_000000_000019_gtFine.png"
    )
    with pytest.raises(DataError, match=r"train_aug_labeled_1-4\.txt not found"):
        prep.prepare_cityscapes(src, dst, splits_dir=splits, ratios=(4,))
    (splits / "train_aug_labeled_1-2.txt").write_text(
        "/images/train/zz.png\t/segmentation/train/zz_gtFine.png\n"
    )
    with pytest.raises(DataError, match=r"train_aug_labeled_1-2\.txt: image zz is not among the 4"):
        prep.prepare_cityscapes(src, dst, splits_dir=splits, ratios=(2,))
    os.remove(src / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png")
    with pytest.raises(DataError, match=r"no label for .*lindau_000000_000019_leftImg8bit\.png"):
        prep.prepare_cityscapes(src, dst, ratios=(2,))
    assert prep.main(["--src", str(tmp_path / "nothing"), "--dst", str(dst)]) == 2


def test_build_dataset_from_a_finalized_config(tmp_path: Path) -> None:
    ids = ["2007_000032", "2007_000039", "2007_000042"]
    root = _voc_root(tmp_path, ids)
    _voc_root(tmp_path, ["2007_000033"], folder="val")
    sub = root / "subset_train_aug"
    sub.mkdir()
    (sub / "train_aug_labeled_1-8.txt").write_text("2007_000032\n")
    (sub / "train_aug_unlabeled_1-8.txt").write_text("2007_000039\n2007_000042\n")
    (root / "val.txt").write_text("2007_000033\n")
    C = load_preset("voc")
    C.dataset_path = str(root)
    C = finalize(C, root=str(tmp_path))
    lab, unlab, val = (build_dataset(C, s) for s in ("labeled", "unlabeled", "val"))
    assert lab.names == ["2007_000032"] and lab.load(0)[1] is not None
    assert unlab.names == ids[1:] and all(e[1] is None for e in unlab.entries)
    assert val.entries == [
        (str(root / "val/image/2007_000033.jpg"), str(root / "val/label/2007_000033.png"))
    ]
    with pytest.raises(DataError, match="split='test'"):
        build_dataset(C, "test")
    C.dataset_path = str(tmp_path / "absent")
    with pytest.raises(DataError, match=r"dataset root not found(.|\n)*train_aug/label"):
        build_dataset(C, "val")


def test_resolve_class_names_for_other_class_counts():
    from cpcl.config import ConfigError
    from cpcl.data.datasets import resolve_class_names

    assert resolve_class_names("voc", 3) == ("background", "aeroplane", "bicycle")
    names = resolve_class_names("cityscapes", 21)
    assert len(names) == 21 and names[18] == "bicycle" and names[19:] == ("class_19", "class_20")
    assert resolve_class_names("voc", 2, ["bg", "disc"]) == ("bg", "disc")
    with pytest.raises(ConfigError, match=r"C\.class_names has 1 names but C\.num_classes = 2"):
        resolve_class_names("voc", 2, ["bg"])
