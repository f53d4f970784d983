"""CutMix box masks: bit-exact official masks, distribution, box geometry, toggling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import golden_cases, load_golden

from cpcl.config import load_preset
from cpcl.data.cutmix import BoxMaskSettings, box_masks, generate_params
from cpcl.data.views import CutMixView, TransformSettings
from cpcl.errors import CpclError


def _torch_masks(n: int, shape: tuple[int, int], seed: int, **kw) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    return box_masks(n, shape, generator=gen, **kw).numpy()


# --------------------------------------------------------------------------- golden


def _official_masks(golden_dir) -> list[tuple[str, np.ndarray, int]]:
    """(name, stored mask, numpy seed) of every official CutMix mask in the fixtures."""
    out = [
        (name, case["mask"].numpy(), case["seed"])
        for name, case in golden_cases(load_golden(golden_dir, "loss_cpcl.pt")).items()
    ]
    step = load_golden(golden_dir, "step_voc_r50.pt")
    out.append(("step_voc_r50", step["mask"].numpy(), step["mask_seed"]))
    return out


def test_golden_masks_bit_exact(golden_dir):
    """generate_params(B, (H, W), RandomState(seed)) reproduces each stored mask bit for bit."""
    for name, want, seed in _official_masks(golden_dir):
        b, _, h, w = want.shape
        got = generate_params(b, (h, w), rng=np.random.RandomState(seed)).astype(np.float32)
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_golden_mask_statistics(golden_dir):
    """Independent of our generator: binary, at most 3 boxes of at most ~1/6 of the area each."""
    for _, m, _ in _official_masks(golden_dir):
        assert set(np.unique(m)) <= {0.0, 1.0}
        area = m.mean(axis=(1, 2, 3))
        # Each box covers at most 0.5/3 of the image (plus rounding), three boxes at most ~0.5+.
        assert np.all(area > 0.0) and np.all(area <= 0.5 + 0.05)
        # The 1-region is a union of axis-aligned boxes: every row of 1s is made of at most
        # 3 runs (an XOR of 3 intervals has at most 3 runs of ones).
        for img in m[:, 0]:
            for row in np.concatenate([img, img.T]):
                starts = np.sum(np.diff(np.concatenate([[0.0], row])) == 1)
                assert starts <= 3


# --------------------------------------------------------------------------- distribution


def test_mean_area_numpy_and_torch_agree_with_reference_value():
    # Reference value measured once with 20000 numpy masks at 64x64: 0.2514 (std 0.069).
    ref = generate_params(3000, (64, 64), rng=np.random.RandomState(0)).mean(axis=(1, 2, 3))
    tor = _torch_masks(3000, (64, 64), seed=0).mean(axis=(1, 2, 3))
    for a in (ref, tor):
        assert abs(a.mean() - 0.2514) < 0.006  # ~5 standard errors
        assert abs(a.std() - 0.069) < 0.01
        assert a.min() > 0.0 and a.max() < 0.5 + 0.03


def test_single_box_is_a_rectangle_with_bounded_area_and_inside_image():
    s = BoxMaskSettings(n_boxes=1)
    h, w = 40, 60
    for m in (
        generate_params(300, (h, w), rng=np.random.RandomState(1), settings=s)[:, 0],
        _torch_masks(300, (h, w), seed=1, settings=s)[:, 0],
    ):
        fracs = []
        for mi in m:
            ys, xs = np.nonzero(mi)
            bh, bw = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
            assert mi.sum() == bh * bw  # filled rectangle: no hole, no second part
            assert bh <= h and bw <= w
            fracs.append((bh * bw) / (h * w))
            # Height fraction in [p, 1] * 1 for p in [0.25, 0.5]; rounded to whole pixels.
            assert 0.25 - 0.5 / 40 <= bh / h <= 1.0 and 0.25 - 0.5 / 60 <= bw / w <= 1.0
        fracs = np.array(fracs)
        # Area ~ p with p ~ U(0.25, 0.5) up to rounding of both sides.
        assert fracs.min() > 0.25 - 0.04 and fracs.max() < 0.5 + 0.04
        assert abs(fracs.mean() - 0.375) < 0.02


def test_overlapping_boxes_toggle():
    # On a 1x1 image every box covers the one pixel (size round(sqrt(1/n)) = 1 for n <= 3; for
    # n = 4, round(0.5) = 0 in numpy's half-to-even), so the pixel is the parity of the boxes.
    for n_boxes, want in ((1, 1.0), (2, 0.0), (3, 1.0)):
        s = BoxMaskSettings(prop_range=(1.0, 1.0), n_boxes=n_boxes)
        a = generate_params(5, (1, 1), rng=np.random.RandomState(0), settings=s)
        b = _torch_masks(5, (1, 1), seed=0, settings=s)
        assert np.all(a == want) and np.all(b == want), n_boxes
        s_noinv = BoxMaskSettings(prop_range=(1.0, 1.0), n_boxes=n_boxes, invert=False)
        a = generate_params(5, (1, 1), rng=np.random.RandomState(0), settings=s_noinv)
        b = _torch_masks(5, (1, 1), seed=0, settings=s_noinv)
        assert np.all(a == 1 - want) and np.all(b == 1 - want)


def test_two_full_size_boxes_cancel_everywhere():
    # Proportion 1 by size with 2 boxes on a 1x7 image: each box is round(0.707) = 1 row by
    # round(4.95) = 5 columns starting at column 0, 1 or 2. Overlapping columns must be 0, so
    # the mask is the symmetric difference of two 5-wide intervals: 0, 2 or 4 columns.
    s = BoxMaskSettings(prop_range=(1.0, 1.0), n_boxes=2, prop_by_area=False)
    for m in (
        generate_params(50, (1, 7), rng=np.random.RandomState(2), settings=s)[:, 0, 0],
        _torch_masks(50, (1, 7), seed=2, settings=s)[:, 0, 0],
    ):
        assert set(m.sum(axis=1).tolist()) <= {0.0, 2.0, 4.0}
        assert 0.0 in m.sum(axis=1).tolist()  # identical positions cancel completely


def test_torch_masks_reproducible_and_binary():
    a = _torch_masks(4, (33, 47), seed=5)
    b = _torch_masks(4, (33, 47), seed=5)
    c = _torch_masks(4, (33, 47), seed=6)
    assert a.dtype == np.float32 and a.shape == (4, 1, 33, 47)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert set(np.unique(a)) <= {0.0, 1.0}


# --------------------------------------------------------------------------- config, collate


def test_settings_from_config_negate_the_flags():
    C = load_preset("voc")
    s = BoxMaskSettings.from_config(C)
    assert s == BoxMaskSettings((0.25, 0.5), 3, True, True, True, True)
    C.cutmix_boxmask_no_invert = True
    C.cutmix_boxmask_outside_bounds = True
    C.cutmix_mask_prop_range = 0.3
    s = BoxMaskSettings.from_config(C)
    assert s.invert is False and s.within_bounds is False and s.prop_range == (0.3, 0.3)
    C.cutmix_mask_prop_range = (0.6, 0.2)
    with pytest.raises(CpclError, match="cutmix_mask_prop_range"):
        BoxMaskSettings.from_config(C)


def test_cutmix_view_collate_adds_the_masks_of_its_generator():
    settings = TransformSettings((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (8, 10), None)
    view = CutMixView(settings, BoxMaskSettings())
    img = torch.stack([torch.full((3, 8, 10), float(i)) for i in range(3)])
    out = view.collate({"img": img}, torch.Generator().manual_seed(0))
    assert out["img"] is img
    assert out["mask"].shape == (3, 1, 8, 10) and out["mask"].dtype == torch.float32
    want = box_masks(3, (8, 10), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["mask"], want)
