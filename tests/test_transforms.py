"""Training transforms: official values (normalisation, crop bounds, padding) on known arrays."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cpcl.data.transforms import (
    TrainTransform,
    crop_pad,
    normalize,
    random_crop_pos,
    random_mirror,
    random_scale,
)
from cpcl.errors import DataError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SCALES = (0.5, 0.75, 1, 1.5, 1.75, 2.0)


def _official_like(img, gt, rng, crop, scales):
    """A straightforward re-statement of the official TrainPre pipeline, same draw order.

    Whole-image float64 normalisation, then crop at a position drawn with the inclusive
    `randint(0, size - crop + 1)`, then cv2.copyMakeBorder centred padding, CHW, float32.
    """
    if rng.random() >= 0.5:
        img = img[:, ::-1].copy()
        gt = None if gt is None else gt[:, ::-1].copy()
    s = scales[int(rng.integers(len(scales)))]
    sh, sw = int(img.shape[0] * s), int(img.shape[1] * s)
    img = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_LINEAR)
    if gt is not None:
        gt = cv2.resize(gt, (sw, sh), interpolation=cv2.INTER_NEAREST)
    img = (img.astype(np.float32) / 255.0 - np.array(MEAN)) / np.array(STD)
    pos = [0, 0]
    for ax in (0, 1):
        if img.shape[ax] > crop[ax]:
            pos[ax] = int(rng.integers(0, img.shape[ax] - crop[ax] + 2))

    def cp(a, value):
        a = a[pos[0] : pos[0] + crop[0], pos[1] : pos[1] + crop[1]]
        ph, pw = max(crop[0] - a.shape[0], 0), max(crop[1] - a.shape[1], 0)
        return cv2.copyMakeBorder(
            a, ph // 2, ph - ph // 2, pw // 2, pw - pw // 2, cv2.BORDER_CONSTANT, value=value
        )

    out = np.ascontiguousarray(cp(img, 0).transpose(2, 0, 1)).astype(np.float32)
    return out, (None if gt is None else cp(gt, 255).astype(np.int64))


def _sample(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    gt = rng.integers(0, 21, (h, w), dtype=np.uint8)
    gt[rng.random((h, w)) < 0.1] = 255
    return img, gt


def test_normalize_exact_values():
    img = np.array([[[0, 255, 128], [51, 102, 204]]], dtype=np.uint8)
    got = normalize(img, MEAN, STD)
    assert got.dtype == np.float32 and got.shape == (1, 2, 3)
    want = ((img.astype(np.float32) / 255.0 - np.array(MEAN)) / np.array(STD)).astype(np.float32)
    np.testing.assert_array_equal(got, want)
    assert got[0, 0, 0] == np.float32(-0.485 / 0.229)
    assert got[0, 0, 1] == np.float32((1.0 - 0.456) / 0.224)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("hw", [(375, 500), (200, 180), (96, 64)])
def test_train_transform_matches_official_pipeline(seed, hw):
    img, gt = _sample(*hw, seed=seed)
    crop = (128, 160)
    t = TrainTransform(MEAN, STD, crop, SCALES)
    a_img, a_gt = t(img, gt, rng=np.random.default_rng(seed))
    b_img, b_gt = _official_like(img, gt, np.random.default_rng(seed), crop, SCALES)
    assert a_img.dtype == np.float32 and a_img.shape == (3, *crop)
    assert a_gt.dtype == np.int64 and a_gt.shape == crop
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_gt, b_gt)
    # Unlabeled: the same image transform from the same draws.
    u_img, u_gt = t(img, None, rng=np.random.default_rng(seed))
    assert u_gt is None
    np.testing.assert_array_equal(u_img, a_img)


def test_crop_pos_inclusive_official_bounds():
    rng = np.random.default_rng(0)
    draws = np.array([random_crop_pos((10, 7), (8, 8), rng) for _ in range(4000)])
    # Rows: size 10 > crop 8 -> randint(0, 3) inclusive; columns: 7 <= 8 -> always 0.
    assert set(draws[:, 0].tolist()) == {0, 1, 2, 3}
    assert set(draws[:, 1].tolist()) == {0}
    counts = np.bincount(draws[:, 0], minlength=4) / len(draws)
    np.testing.assert_allclose(counts, 0.25, atol=0.03)
    assert random_crop_pos((8, 8), (8, 8), rng) == (0, 0)


def test_crop_pad_known_array():
    a = np.arange(15, dtype=np.uint8).reshape(3, 5)
    # Window of 3 rows x 4 columns at (0, 1); 2 rows of padding -> 1 on top, 1 at the bottom.
    out = crop_pad(a, (0, 1), (5, 4), 255)
    want = np.array(
        [
            [255, 255, 255, 255],
            [1, 2, 3, 4],
            [6, 7, 8, 9],
            [11, 12, 13, 14],
            [255, 255, 255, 255],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(out, want)
    # Odd padding: 3 rows and 3 columns -> top/left 1, bottom/right 2.
    out = crop_pad(np.ones((2, 2, 3), np.float32), (0, 0), (5, 5), 0.0)
    assert out.shape == (5, 5, 3)
    np.testing.assert_array_equal(out[:, :, 0].nonzero(), ([1, 1, 2, 2], [1, 2, 1, 2]))
    # The official crop may start one past the last full crop: one short row padded at bottom.
    out = crop_pad(np.arange(10, dtype=np.uint8).reshape(10, 1), (3, 0), (8, 1), 255)
    np.testing.assert_array_equal(out[:, 0], [3, 4, 5, 6, 7, 8, 9, 255])


def test_small_image_is_centred_zero_padded():
    img, gt = _sample(20, 30, seed=1)
    t = TrainTransform(MEAN, STD, 40, (1.0,))
    out, lab = t(img, gt, rng=np.random.default_rng(3))
    # 20 rows -> pad 10 above and 10 below; 30 columns -> 5 left and 5 right.
    assert np.all(out[:, :10] == 0) and np.all(out[:, 30:] == 0)
    assert np.all(out[:, :, :5] == 0) and np.all(out[:, :, 35:] == 0)
    assert np.all(lab[:10] == 255) and np.all(lab[30:] == 255) and np.all(lab[:, 35:] == 255)
    inner = lab[10:30, 5:35]
    assert np.array_equal(inner, gt) or np.array_equal(inner, gt[:, ::-1])


def test_mirror_flips_image_and_label_together_half_the_time():
    img, _ = _sample(6, 9, seed=2)
    gt = img[..., 0].copy()  # a label that is a function of the image
    rng = np.random.default_rng(0)
    flips = 0
    for _ in range(2000):
        a, b = random_mirror(img, gt, rng)
        np.testing.assert_array_equal(a[..., 0], b)
        flipped = not np.array_equal(a, img)
        if flipped:
            np.testing.assert_array_equal(a, img[:, ::-1])
        flips += flipped
    assert abs(flips / 2000 - 0.5) < 0.05


def test_scale_sizes_and_uniform_choice():
    img, gt = _sample(375, 500, seed=3)
    rng = np.random.default_rng(0)
    seen = {}
    for _ in range(1200):
        a, b, s = random_scale(img, gt, SCALES, rng)
        assert a.shape[:2] == (int(375 * s), int(500 * s)) == b.shape
        seen[s] = seen.get(s, 0) + 1
    assert set(seen) == set(map(float, SCALES))
    assert all(abs(c / 1200 - 1 / 6) < 0.04 for c in seen.values())
    # Nearest for labels: no new label values appear.
    _, b, _ = random_scale(img, gt, (1.75,), rng)
    assert set(np.unique(b)) <= set(np.unique(gt))


def test_label_alignment_after_full_pipeline():
    # With scale 1 the cropped label must sit on the same pixels as the cropped image.
    img, _ = _sample(50, 70, seed=4)
    gt = (img[..., 0] // 2).astype(np.uint8)  # values < 128, a function of channel 0
    t = TrainTransform(MEAN, STD, (32, 48), (1,))
    for seed in range(20):
        out, lab = t(img, gt, rng=np.random.default_rng(seed))
        raw0 = np.rint((out[0] * STD[0] + MEAN[0]) * 255).astype(np.int64)
        valid = lab != 255
        np.testing.assert_array_equal(raw0[valid] // 2, lab[valid])


def test_errors_name_the_problem():
    t = TrainTransform(MEAN, STD, 8, SCALES)
    with pytest.raises(DataError, match="HxWx3 uint8"):
        t(np.zeros((4, 4), np.uint8), rng=np.random.default_rng(0))
    with pytest.raises(DataError, match="same height and width"):
        t(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint8), rng=np.random.default_rng(0))
    with pytest.raises(DataError, match="train_scale_array"):
        TrainTransform(MEAN, STD, 8, (0.0, 1.0))
    with pytest.raises(DataError, match="image_mean"):
        TrainTransform((0.5,), STD, 8, SCALES)
