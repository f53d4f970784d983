"""UniMatch's strong view, CutMix box and per-sample views (cpcl.methods.unimatch.strong_aug / unimatch_views)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import load_golden

from cpcl.errors import CpclError, DataError
from cpcl.methods.unimatch.strong_aug import (
    AugRng,
    StrongAugSettings,
    color_jitter,
    draw_cutmix_box,
    gaussian_blur,
    obtain_cutmix_box,
    random_grayscale,
    strong_view,
)
from cpcl.methods.unimatch.views import (
    crop,
    labeled_view,
    mixing_partner,
    repeat_to_length,
    unimatch_normalize_lut,
    unlabeled_views,
)


class _Recorder:
    """Wraps an RNG and records `[function, args..., result]` like the fixture's rng_calls."""

    def __init__(self, rng, prefix: str, log: list) -> None:
        self._rng, self._prefix, self._log = rng, prefix, log

    def __getattr__(self, name):
        fn = getattr(self._rng, name)

        def call(*args):
            out = fn(*args)
            self._log.append([f"{self._prefix}.{name}", *map(float, args), float(out)])
            return out

        return call


def test_cutmix_box_golden(golden_dir):
    fx = load_golden(golden_dir, "unimatch_cutmix_box.pt")
    for name, case in fx["cases"].items():
        size = case["size"]
        py, npr = random.Random(case["seed"]), np.random.RandomState(case["seed"])
        for i in range(case["n_draws"]):
            log: list = []
            box = draw_cutmix_box(
                size,
                case["p"],
                case["size_min"],
                case["size_max"],
                case["ratio_1"],
                case["ratio_2"],
                py_random=_Recorder(py, "random", log),
                np_random=_Recorder(npr, "np.random", log),
            )
            assert log == case["rng_calls"][i], f"{name} draw {i}"
            assert (box is not None) == case["applied"][i], f"{name} draw {i}"
            if box is None:
                assert case["n_tries"][i] == 0 and case["y0"][i] == -1
                continue
            got = (box.y, box.y + box.h, box.x, box.x + box.w)
            want = tuple(case[k][i] for k in ("y0", "y1", "x0", "x1"))
            assert got == want, f"{name} draw {i}"
            assert (box.x, box.y, box.w, box.h) == tuple(
                case[k][i] for k in ("x", "y", "cutmix_w", "cutmix_h")
            )
            assert box.tries == case["n_tries"][i]
        # The mask form, from the same seeds (same stream), against the official masks.
        py, npr = random.Random(case["seed"]), np.random.RandomState(case["seed"])
        for i in range(case["n_draws"]):
            mask = obtain_cutmix_box(size, case["p"], py_random=py, np_random=npr)
            assert mask.dtype == np.float32 and mask.shape == (size, size)
            assert mask.sum() == case["area"][i]
            if "masks_bool" in case:
                assert np.array_equal(mask == 1, case["masks_bool"][i].numpy()), f"{name} {i}"


def test_cutmix_box_global_rng_equivalence():
    # A seeded random.Random / RandomState behaves like the seeded globals of the official code.
    random.seed(5)
    np.random.seed(5)
    a = obtain_cutmix_box(50, 1.0, py_random=random, np_random=np.random)
    b = obtain_cutmix_box(50, 1.0, py_random=random.Random(5), np_random=np.random.RandomState(5))
    assert np.array_equal(a, b) and a.sum() > 0


def test_cutmix_box_needs_legacy_numpy_stream():
    with pytest.raises(CpclError, match="RandomState"):
        draw_cutmix_box(10, 1.0, py_random=random.Random(0), np_random=np.random.default_rng(0))


def _image(seed: int = 0, h: int = 24, w: int = 24) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


def test_strong_view_extremes_and_dtype():
    img = _image()
    off = StrongAugSettings(jitter_p=0, grayscale_p=0, blur_p=0, cutmix_p=0)
    out, box = strong_view(img, off, AugRng.seeded(0))
    assert out.dtype == np.uint8 and np.array_equal(out, img) and not box.any()
    gray = StrongAugSettings(jitter_p=0, grayscale_p=1, blur_p=0, cutmix_p=1)
    out, box = strong_view(img, gray, AugRng.seeded(0))
    assert out.shape == img.shape and (out[..., 0] == out[..., 1]).all()
    assert (out[..., 1] == out[..., 2]).all() and box.sum() > 0
    # PIL's ITU-R 601-2 luma, 299/587/114 (to within PIL's fixed-point rounding).
    luma = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(out[..., 0] - luma).max() <= 1.0
    # Official defaults: colours change, shape and dtype stay.
    out, _ = strong_view(img, StrongAugSettings(), AugRng.seeded(1))
    assert out.dtype == np.uint8 and out.shape == img.shape


def test_strong_view_deterministic_under_seed():
    img = _image(3)
    a = strong_view(img, StrongAugSettings(jitter_p=1, blur_p=1), AugRng.seeded(7))
    b = strong_view(img, StrongAugSettings(jitter_p=1, blur_p=1), AugRng.seeded(7))
    c = strong_view(img, StrongAugSettings(jitter_p=1, blur_p=1), AugRng.seeded(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_strong_view_draw_order():
    # jitter applied, blur applied, box applied: the three streams advance by the official calls.
    s = StrongAugSettings(jitter_p=1, grayscale_p=0.2, blur_p=1, cutmix_p=1)
    rng = AugRng.seeded(11)
    strong_view(_image(), s, rng)
    ref = AugRng.seeded(11)
    ref.py.random()  # jitter coin
    torch.randperm(4, generator=ref.torch)
    for _ in range(4):
        torch.empty(1).uniform_(0, 1, generator=ref.torch)
    torch.rand(1, generator=ref.torch)  # grayscale coin
    ref.py.random()  # blur coin
    ref.np.uniform(0.1, 2.0)
    draw_cutmix_box(24, 1.0, py_random=ref.py, np_random=ref.np)
    assert rng.py.getstate() == ref.py.getstate()
    assert torch.equal(rng.torch.get_state(), ref.torch.get_state())
    assert rng.np.randint(1 << 30) == ref.np.randint(1 << 30)


def test_color_jitter_ranges():
    img = _image(5)
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        out = color_jitter(img, 0.5, 0, 0, 0, gen)  # brightness only: factor in [0.5, 1.5]
        lo = np.floor(img * 0.5) - 1
        hi = np.minimum(np.ceil(img * 1.5) + 1, 255)
        assert ((out >= lo) & (out <= hi)).all()
        ratio = out[img > 40].astype(np.float64) / img[img > 40]
        assert ratio.min() >= 0.49 and (ratio[out[img > 40] < 255]).max() <= 1.51
    gray = np.full((8, 8, 3), 100, np.uint8)
    # Saturation and hue leave a gray image gray; contrast of a flat image is the identity.
    out = color_jitter(gray, 0, 0.5, 0.5, 0.25, torch.Generator().manual_seed(0))
    assert np.array_equal(out, gray)
    # All-zero settings draw only the permutation and change nothing.
    gen = torch.Generator().manual_seed(0)
    assert np.array_equal(color_jitter(img, 0, 0, 0, 0, gen), img)
    ref = torch.Generator().manual_seed(0)
    torch.randperm(4, generator=ref)
    assert torch.equal(gen.get_state(), ref.get_state())


def test_grayscale_and_blur_single_ops():
    img = _image(9)
    gen = torch.Generator().manual_seed(0)
    assert np.array_equal(random_grayscale(img, 0.0, gen), img)
    blurred = gaussian_blur(img, 1.0, (2.0, 2.0), random.Random(0), np.random.RandomState(0))
    assert blurred.dtype == np.uint8 and blurred.std() < img.std()
    same = gaussian_blur(img, 0.0, (0.1, 2.0), random.Random(0), np.random.RandomState(0))
    assert same is img


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"jitter_p": 1.5}, "jitter_p"),
        ({"hue": 0.7}, "hue"),
        ({"brightness": -0.1}, "brightness"),
        ({"blur_sigma": (2.0, 0.1)}, "blur_sigma"),
        ({"cutmix_area": (0.0, 0.4)}, "cutmix_area"),
        ({"cutmix_ratio": (0.0, 1.0)}, "cutmix_ratio"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(CpclError, match=match):
        StrongAugSettings(**kwargs)


def test_bad_images():
    rng = AugRng.seeded(0)
    with pytest.raises(DataError, match="uint8"):
        strong_view(np.zeros((8, 8, 3), np.float32), StrongAugSettings(), rng)
    with pytest.raises(CpclError, match="square"):
        strong_view(np.zeros((8, 9, 3), np.uint8), StrongAugSettings(), rng)
    with pytest.raises(DataError, match="mask"):
        unlabeled_views(_image(), np.zeros((5, 5), np.uint8), 16, rng)


def test_unlabeled_views_labels_untouched_and_padding_ignored():
    img = _image(2, 30, 40)
    mask = np.random.RandomState(1).randint(0, 21, (30, 40)).astype(np.uint8)
    mask[0, :] = 255  # a dataset ignore pixel is *not* an unlabeled ignore pixel
    for seed in range(6):
        views = unlabeled_views(img, mask, 64, AugRng.seeded(seed))
        for k in ("img_w", "img_s1", "img_s2"):
            assert views[k].dtype == np.uint8 and views[k].shape == (64, 64, 3)
        ign = views["ignore_mask"]
        assert set(np.unique(ign)) <= {0, 255}
        # The crop is larger than every resized image here, so padding is bottom/right only:
        # each padded row/column is all 255 and the image region is all 0.
        rows = (ign == 255).all(axis=1)
        cols = (ign == 255).all(axis=0)
        assert ((ign == 255) == (rows[:, None] | cols[None, :])).all()
        pad_img = views["img_w"][ign == 255]
        assert (pad_img == 0).all()
        # The weak view and ignore mask depend only on the weak draws (same as labeled_view).
        w_img, w_mask = labeled_view(img, mask, 64, AugRng.seeded(seed))
        assert np.array_equal(w_img, views["img_w"])
        assert np.array_equal(w_mask == 255, (ign == 255) | (w_mask == 255))
        for k in ("cutmix_box1", "cutmix_box2"):
            assert views[k].dtype == np.float32 and views[k].shape == (64, 64)
    # Mask values other than 254 never reach the ignore mask; the input arrays are unchanged.
    before = mask.copy()
    unlabeled_views(img, mask, 16, AugRng.seeded(0))
    assert np.array_equal(mask, before)


def test_crop_pads_bottom_right():
    img = np.full((4, 6, 3), 9, np.uint8)
    mask = np.full((4, 6), 3, np.uint8)
    out, m = crop(img, mask, 8, 254, random.Random(0))
    assert out.shape == (8, 8, 3) and (out[:4, :6] == 9).all() and (out[4:] == 0).all()
    assert (m[:, 6:] == 254).all() and (m[:4, :6] == 3).all()


def test_repeat_and_partner():
    assert repeat_to_length(["a", "b"], 5) == ["a", "b", "a", "b", "a"]
    assert repeat_to_length(["a", "b", "c"], 2) == ["a", "b"]
    with pytest.raises(DataError):
        repeat_to_length([], 3)
    py = random.Random(0)
    assert mixing_partner(3, 10, "same", py) == 3
    assert all(mixing_partner(i % 4, 4, "different", py) != i % 4 for i in range(50))
    with pytest.raises(CpclError, match="mode"):
        mixing_partner(0, 4, "other", py)


def test_normalize_lut_is_torchvision_float32():
    # torchvision's ToTensor + Normalize are these torch float32 calls.
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = torch.arange(256, dtype=torch.uint8).view(1, 256, 1).expand(3, 256, 1)
    t = x.to(torch.float32).div(255)
    t = t.sub_(torch.tensor(mean).view(3, 1, 1)).div_(torch.tensor(std).view(3, 1, 1))
    lut = unimatch_normalize_lut(mean, std)
    assert lut.dtype == np.float32 and np.array_equal(lut, t[:, :, 0].T.numpy())
    with pytest.raises(DataError, match="std"):
        unimatch_normalize_lut(mean, (0.2, 0.0, 0.2))
