"""CoSA data: the training transform against a literal copy of the official pipeline, img_box,
image-level labels (official npy vs derived from masks, bad files), COCO layout, the view."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from cpcl.data.aug_rng import AugRng
from cpcl.errors import DataError
from cpcl.methods.cosa.data import (
    CocoDataset,
    CosaView,
    build_cosa_dataset,
    load_image_labels,
    write_toy_cls_labels,
)
from cpcl.methods.cosa.image_labels import (
    ImageLabels,
    class_vector,
    read_cls_labels_npy,
    write_cls_labels_npy,
)
from cpcl.methods.cosa.transforms import (
    STRONG_OPS,
    CosaTrainTransform,
    CosaTransformSettings,
    val_normalize_lut,
)

# ------------------------------------------------------------------ literal official code
# dataloaders/transforms.py, randaug.py, voc.py (VOC12ClsDatasetNew / VOC12SegDatasetNew),
# with torchvision's ToTensor + Normalize and mmcv.solarize written out (not importable here).


def off_img_rescaling(image, label=None, scale=None):
    h, w, _ = image.shape
    new_scale = [int(scale * w), int(scale * h)]
    new_image = Image.fromarray(image.astype(np.uint8)).resize(new_scale, resample=Image.BILINEAR)
    new_image = np.asarray(new_image).astype(np.float32)
    if label is None:
        return new_image
    new_label = Image.fromarray(label).resize(new_scale, resample=Image.NEAREST)
    new_label = np.asarray(new_label)
    return new_image, new_label


def off_random_scaling(image, label=None, scale_range=None):
    min_ratio, max_ratio = scale_range
    ratio = random.uniform(min_ratio, max_ratio)
    return off_img_rescaling(image, label, scale=ratio)


def off_random_fliplr(image, label=None):
    p = random.random()
    if label is None:
        if p > 0.5:
            image = np.fliplr(image)
        return image
    if p > 0.5:
        image = np.fliplr(image)
        label = np.fliplr(label)
    return image, label


def off_random_crop(image, label=None, crop_size=None, mean_rgb=(0, 0, 0), ignore_index=255):
    h, w, _ = image.shape
    H = max(crop_size, h)
    W = max(crop_size, w)
    pad_image = np.zeros((H, W, 3), dtype=np.uint8)
    pad_image[:, :, 0] = mean_rgb[0]
    pad_image[:, :, 1] = mean_rgb[1]
    pad_image[:, :, 2] = mean_rgb[2]
    H_pad = int(np.random.randint(H - h + 1))
    W_pad = int(np.random.randint(W - w + 1))
    pad_image[H_pad : (H_pad + h), W_pad : (W_pad + w), :] = image

    def get_random_cropbox(_label, cat_max_ratio=0.75):
        for _ in range(10):
            H_start = random.randrange(0, H - crop_size + 1, 1)
            H_end = H_start + crop_size
            W_start = random.randrange(0, W - crop_size + 1, 1)
            W_end = W_start + crop_size
            if _label is None:
                return H_start, H_end, W_start, W_end
            temp_label = _label[H_start:H_end, W_start:W_end]
            index, cnt = np.unique(temp_label, return_counts=True)
            cnt = cnt[index != ignore_index]
            if len(cnt > 1) and np.max(cnt) / np.sum(cnt) < cat_max_ratio:
                break
        return H_start, H_end, W_start, W_end

    H_start, H_end, W_start, W_end = get_random_cropbox(label)
    crop_image = pad_image[H_start:H_end, W_start:W_end, :]
    img_H_start = max(H_pad - H_start, 0)
    img_W_start = max(W_pad - W_start, 0)
    img_H_end = min(crop_size, h + H_pad - H_start)
    img_W_end = min(crop_size, w + W_pad - W_start)
    img_box = np.asarray([img_H_start, img_H_end, img_W_start, img_W_end], dtype=np.int16)
    if label is None:
        return crop_image, img_box
    pad_label = np.ones((H, W), dtype=np.uint8) * ignore_index
    pad_label[H_pad : (H_pad + h), W_pad : (W_pad + w)] = label
    label = pad_label[H_start:H_end, W_start:W_end]
    return crop_image, label, img_box


class OffGaussianBlur:
    def __init__(self, p=0.5, radius_min=0.1, radius_max=2.0):
        self.prob, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img):
        do_it = random.random() <= self.prob
        if not do_it:
            return img
        return img.filter(
            ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max))
        )


def int_parameter(level, maxval, max_level=None):
    return int(level * maxval / (10 if max_level is None else max_level))


def float_parameter(level, maxval, max_level=None):
    return float(level) * maxval / (10 if max_level is None else max_level)


class RandAug:
    def __init__(self, prob=1.0, magnitude=10, random_magnitude=True, magnitude_limit=10):
        self.prob, self.magnitude = prob, magnitude
        self.magnitude_limit, self.random_magnitude = magnitude_limit, random_magnitude

    def __call__(self, imgpil):
        if np.random.random() < self.prob:
            magnitude = self.magnitude
            if self.random_magnitude:
                magnitude = np.random.randint(1, magnitude)
            imgpil = self.apply(imgpil, magnitude)
        return imgpil


class Identity(RandAug):
    def apply(self, imgpil, magnitude=None):
        return imgpil


class AutoContrast(RandAug):
    def apply(self, imgpil, magnitude=None):
        return ImageOps.autocontrast(imgpil)


class RandEqualize(RandAug):
    def apply(self, imgpil, magnitude=None):
        return ImageOps.equalize(imgpil)


class RandSolarize(RandAug):
    def apply(self, imgpil, magnitude=None):
        img = np.asarray(imgpil)
        thr = min(int_parameter(magnitude, 256, self.magnitude_limit), 255)
        img = np.where(img < thr, img, 255 - img)  # mmcv.solarize
        return Image.fromarray(img)


class RandEnhance(RandAug):
    op = None

    def apply(self, imgpil, magnitude=None):
        v = float_parameter(magnitude, 1.8, self.magnitude_limit) + 0.1
        return self.op(imgpil).enhance(v)


class RandColor(RandEnhance):
    op = ImageEnhance.Color


class RandContrast(RandEnhance):
    op = ImageEnhance.Contrast


class RandBrightness(RandEnhance):
    op = ImageEnhance.Brightness


class RandSharpness(RandEnhance):
    op = ImageEnhance.Sharpness


class RandPosterize(RandAug):
    def apply(self, imgpil, magnitude=None):
        magnitude = int_parameter(magnitude, 4, self.magnitude_limit)
        return ImageOps.posterize(imgpil, 4 - magnitude)


class OneOf:
    def __init__(self, transforms):
        self.transforms = transforms
        self.chosen = None

    def __call__(self, imgpil):
        choosetrans = np.random.choice(self.transforms)
        self.chosen = type(choosetrans).__name__
        return choosetrans(imgpil)


def off_normalize(pil):
    """torchvision ToTensor() then Normalize(ImageNet mean, std)."""
    arr = np.array(pil, np.uint8, copy=True)
    img = torch.from_numpy(arr).view(pil.size[1], pil.size[0], 3).permute((2, 0, 1)).contiguous()
    img = img.to(dtype=torch.float32).div(255)
    mean = torch.as_tensor((0.485, 0.456, 0.406), dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor((0.229, 0.224, 0.225), dtype=torch.float32).view(-1, 1, 1)
    return img.clone().sub_(mean).div_(std)


def official_sample(image, label, crop_size, scales=(0.5, 2.0)):
    """VOC12ClsDatasetNew.__transforms (label None) / VOC12SegDatasetNew.__transforms."""
    strong = OneOf(
        [
            Identity(),
            AutoContrast(),
            RandEqualize(),
            RandSolarize(),
            RandColor(),
            RandContrast(),
            RandBrightness(),
            RandSharpness(),
            RandPosterize(),
        ]
    )
    if label is None:
        image = off_random_scaling(image, scale_range=scales)
        image = off_random_fliplr(image)
        image, img_box = off_random_crop(image, crop_size=crop_size, mean_rgb=[0, 0, 0])
    else:
        image, label = off_random_scaling(image, label=label, scale_range=scales)
        image, label = off_random_fliplr(image, label=label)
        image, label, img_box = off_random_crop(
            image, label=label, crop_size=crop_size, mean_rgb=[0, 0, 0]
        )
    imagepil = OffGaussianBlur(p=0.5)(Image.fromarray(image))
    weak_img = off_normalize(imagepil)
    strong_img = off_normalize(strong(imagepil))
    return weak_img, strong_img, img_box, label, strong.chosen


# ------------------------------------------------------------------ helpers


def _image(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(seed: int, h: int, w: int, num_classes: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : h // 2, w // 3 :] = rng.integers(1, num_classes)
    mask[: h // 5, : w // 5] = 255
    return mask


def _seeded(seed: int) -> AugRng:
    return AugRng(random.Random(seed), np.random.RandomState(seed), torch.Generator())


@pytest.fixture(scope="module")
def toy_voc(tmp_path_factory) -> Path:
    from cpcl.data.toy import make_toy_voc

    root = tmp_path_factory.mktemp("cosa_toy_voc")
    make_toy_voc(root, n_train=16, n_val=4, height=40, width=48, num_classes=4, seed=0)
    return root


# ------------------------------------------------------------------ transform


@pytest.mark.parametrize("with_mask", [False, True])
def test_transform_matches_official(with_mask: bool) -> None:
    crop = 40
    transform = CosaTrainTransform(CosaTransformSettings(crop_size=crop))
    chosen = set()
    for seed in range(60):
        h, w = (30 + seed % 7 * 5, 36 + seed % 5 * 6)
        img = _image(seed, h, w)
        mask = _mask(seed, h, w) if with_mask else None
        random.seed(seed)
        np.random.seed(seed)
        weak, strong, box, label, op = official_sample(img, mask, crop)
        chosen.add(op)
        out = transform(img, mask, rng=_seeded(seed))
        assert torch.equal(torch.from_numpy(out["wimg"]), weak), seed
        assert torch.equal(torch.from_numpy(out["simg"]), strong), (seed, op)
        assert out["img_box"].tolist() == box.tolist(), seed
        if with_mask:
            assert np.array_equal(out["mask"], label.astype(np.int64)), seed
    assert len(chosen) == len(STRONG_OPS)  # every strong op was compared


def test_img_box_covers_exactly_the_image_pixels() -> None:
    crop = 32
    transform = CosaTrainTransform(CosaTransformSettings(crop_size=crop))
    for seed in range(80):
        h, w = 10 + seed % 9 * 6, 12 + seed % 7 * 7
        img = np.random.default_rng(seed).integers(1, 256, (h, w, 3), dtype=np.uint8)
        out = transform.geometric(img, _mask(seed, h, w), np.random.default_rng(seed))
        y0, y1, x0, x1 = out.img_box.tolist()
        assert 0 <= y0 < y1 <= crop and 0 <= x0 < x1 <= crop
        inside = np.zeros((crop, crop), bool)
        inside[y0:y1, x0:x1] = True
        assert (out.img.min(axis=2) > 0)[inside].all()  # image pixels are never 0 here
        assert (out.img[~inside] == 0).all()  # the padding is 0 before normalisation
        assert (out.mask[~inside] == 255).all()


def test_transform_shapes_and_determinism() -> None:
    transform = CosaTrainTransform(CosaTransformSettings(crop_size=24))
    img = _image(3, 30, 20)
    a = transform(img, rng=np.random.default_rng(7))
    b = transform(img, rng=np.random.default_rng(7))
    c = transform(img, rng=np.random.default_rng(8))
    assert set(a) == {"wimg", "simg", "img_box"}
    assert a["wimg"].shape == a["simg"].shape == (3, 24, 24)
    assert a["wimg"].dtype == a["simg"].dtype == np.float32
    assert a["img_box"].dtype == np.int64 and a["img_box"].shape == (4,)
    for key in a:
        assert np.array_equal(a[key], b[key])
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    restored = pickle.loads(pickle.dumps(transform))
    d = restored(img, rng=np.random.default_rng(7))
    assert all(np.array_equal(a[k], d[k]) for k in a)
    with pytest.raises(DataError, match="uint8"):
        transform(img.astype(np.float32), rng=np.random.default_rng(0))
    with pytest.raises(DataError, match="same height"):
        transform(img, np.zeros((5, 5), np.uint8), rng=np.random.default_rng(0))


def test_val_normalisation_is_official() -> None:
    # dataloaders/transforms.py:43-51 normalize_img on every uint8 value.
    img = np.tile(np.arange(256, dtype=np.uint8)[:, None, None], (1, 1, 3))
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    ref = np.empty_like(img, np.float32)
    for c in range(3):
        ref[..., c] = (img[..., c] - mean[c]) / std[c]
    assert np.array_equal(val_normalize_lut()[:, None, :], ref)


# ------------------------------------------------------------------ image-level labels


def _to_onehot(label_mask, num_classes, ignore_index):
    """Official `VOC12ClsDatasetNew._to_onehot` (voc.py:338-350)."""
    _label = np.unique(label_mask).astype(np.int16)
    _label = _label[_label != ignore_index]
    _label = _label[_label != 0]
    label_onehot = np.zeros(shape=(num_classes), dtype=np.uint8)
    label_onehot[_label] = 1
    return label_onehot


def test_class_vector_is_the_official_rule() -> None:
    for seed in range(10):
        mask = _mask(seed, 20, 30, num_classes=21)
        mask[-1, -1] = 7
        assert np.array_equal(class_vector(mask, 21), _to_onehot(mask, 21, 255)[1:])
    assert class_vector(np.full((3, 3), 255, np.uint8), 5).tolist() == [0, 0, 0, 0]
    with pytest.raises(DataError, match=r"\[9\]"):
        class_vector(np.full((3, 3), 9, np.uint8), 5)


def test_npy_read_and_derived_agree_on_toy(toy_voc: Path) -> None:
    path = write_toy_cls_labels(toy_voc, 4)
    read = ImageLabels.from_npy(path, 4)
    derived = ImageLabels.from_masks(4)
    ds = build_cosa_dataset("voc", toy_voc, toy_voc / "train_aug.txt", num_classes=4)
    assert len(read.table) == 20  # 16 train + 4 val
    read.check_ids(ds.names)
    for i in range(len(ds)):
        _, mask, name = ds.load(i)
        vec = read.vector(name)
        assert vec.dtype == np.float32 and vec.shape == (3,)
        assert np.array_equal(vec, derived.vector(name, mask))
    assert "derived" in derived.description and str(path) in read.description
    assert (
        load_image_labels(None, 4).needs_masks
        and not load_image_labels(path, 4, ds.names).needs_masks
    )


def test_official_voc_npy_reads(tmp_path: Path) -> None:
    official = Path("/work/official/CoSA/dataloaders/voc/cls_labels_onehot.npy")
    if not official.is_file():
        pytest.skip("the official CoSA checkout is not here")
    table = read_cls_labels_npy(official, 21)
    assert len(table) == 12031 and table["2007_000032"].nonzero()[0].tolist() == [0, 14]


def _save(path: Path, obj) -> Path:
    np.save(path, np.array(obj, dtype=object) if isinstance(obj, dict) else obj, allow_pickle=True)
    return path


class _Evil:
    def __reduce__(self):
        import os

        return (os.getcwd, ())


@pytest.mark.parametrize(
    "content, match",
    [
        (np.zeros((3, 20), np.float32), "numeric float32 array"),
        (np.array([1, 2], dtype=object), "ndarray; expected a dict"),
        ({}, "empty dict"),
        ({"a": np.zeros(19, np.float32)}, r"'a': shape \(19,\); expected \(20,\)"),
        ({"a": np.zeros((1, 20), np.float32)}, r"shape \(1, 20\)"),
        ({"a": np.full(20, 0.5, np.float32)}, "only 0 and 1"),
        ({"a": "cat"}, "expected a numeric 1-D array"),
        ({3: np.zeros(20, np.float32)}, "id 3 is a int"),
        ({"a": _Evil()}, "refused global"),
    ],
)
def test_bad_npy_is_a_clear_error(tmp_path: Path, content, match: str) -> None:
    path = _save(tmp_path / "cls_labels_onehot.npy", content)
    with pytest.raises(DataError, match=match) as err:
        read_cls_labels_npy(path, 21)
    assert str(path) in str(err.value)


def test_npy_file_problems(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_cls_labels_npy(tmp_path / "none.npy", 21)
    good = tmp_path / "good.npy"
    write_cls_labels_npy(good, {"a": np.ones(20)})
    cut = tmp_path / "cut.npy"
    cut.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"cannot read image-level labels .*cut\.npy"):
        read_cls_labels_npy(cut, 21)
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(DataError, match=r"text\.npy"):
        read_cls_labels_npy(tmp_path / "text.npy", 21)
    labels = ImageLabels.from_npy(good, 21)
    with pytest.raises(DataError, match=r"no entry for 2 ids of train.txt: 'b', 'c';"):
        labels.check_ids(["a", "b", "c"], "train.txt")
    with pytest.raises(DataError, match="no entry for image 'zz'"):
        labels.vector("zz")
    with pytest.raises(DataError, match="without a segmentation label"):
        ImageLabels.from_masks(21).vector("x", None)


# ------------------------------------------------------------------ datasets and view


def _write_coco(root: Path, split: str, names: list[str]) -> None:
    import cv2

    for k, name in enumerate(names):
        img_dir, lab_dir = root / f"{split}2014", root / "SegmentationClass" / f"{split}2014"
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(img_dir / f"{name}.jpg"), np.full((10, 12), 90 + k, np.uint8))  # grey
        Image.fromarray(np.full((10, 12), 75 + k, np.uint8)).save(lab_dir / f"{name}.png")


def test_coco_layout(tmp_path: Path) -> None:
    names = ["COCO_val2014_000000000042", "COCO_val2014_000000000073"]
    _write_coco(tmp_path, "val", names)
    (tmp_path / "val_part.txt").write_text("\n".join(names) + "\n")
    ds = build_cosa_dataset("coco", tmp_path, tmp_path / "val_part.txt", num_classes=81)
    assert isinstance(ds, CocoDataset) and len(ds) == 2
    img, label, name = ds.load(1)
    assert img.shape == (10, 12, 3) and img.dtype == np.uint8 and name == names[1]
    assert label.max() == 76 and class_vector(label, 81).nonzero()[0].tolist() == [75]
    (tmp_path / "train.txt").write_text("COCO_train2014_000000000009\n")
    with pytest.raises(DataError, match=r"train2014/COCO_train2014_000000000009.jpg.*line 1"):
        build_cosa_dataset("coco", tmp_path, tmp_path / "train.txt", num_classes=81)
    with pytest.raises(DataError, match="expected one of voc, coco"):
        build_cosa_dataset("city", tmp_path, tmp_path / "train.txt", num_classes=81)


@pytest.mark.parametrize("source", ["npy", "masks"])
def test_view_sample(toy_voc: Path, source: str) -> None:
    npy = write_toy_cls_labels(toy_voc, 4) if source == "npy" else None
    ds = build_cosa_dataset(
        "voc", toy_voc, toy_voc / "train_aug.txt", num_classes=4, with_labels=npy is None
    )
    labels = load_image_labels(npy, 4, ds.names)
    view = pickle.loads(pickle.dumps(CosaView(labels, CosaTransformSettings(crop_size=32))))
    assert view.streams == ("labeled",)
    loaded = ds.load(2)
    out = view.sample([loaded], lambda k: np.random.default_rng(100 + k))
    assert set(out) == set(view.keys)
    assert out["wimg"].shape == (3, 32, 32) and out["cls_label"].shape == (3,)
    full = build_cosa_dataset("voc", toy_voc, toy_voc / "train_aug.txt", num_classes=4)
    assert np.array_equal(out["cls_label"], class_vector(full.load(2)[1], 4))
    again = view.sample([loaded], lambda k: np.random.default_rng(100 + k))
    assert all(np.array_equal(out[k], again[k]) for k in out)
    masked = CosaView(labels, CosaTransformSettings(crop_size=32), keep_mask=True)
    assert masked.sample([full.load(2)], lambda k: np.random.default_rng(k))["mask"].shape == (
        32,
        32,
    )
