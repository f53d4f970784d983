"""CoSA energy loss and the permutohedral lattice it filters with (`cpcl.ops.permutohedral`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import golden_cases, load_golden, max_rel_diff

from cpcl.errors import CpclError
from cpcl.methods.cosa import energy as energy_mod
from cpcl.methods.cosa.energy import energy_loss
from cpcl.ops import PermutohedralLattice, bilateral_features, bilateral_filter
from cpcl.ops.permutohedral import _elevate, _simplex, _vertex_keys, lattice_alpha

ENERGY_TOL = 1e-3  # README: loss_reg and grad_logit, 1e-3 relative

# Output of the official compiled `bilateralfilter_batch` (swig build of CoSA's
# utils/bilateralfilter, x86-64, gcc -O3) on `_padding_case()`: 5x7 = 35 pixels, so the x86
# init pads the last block of 4 with one zero feature vector whose vertices join the lattice.
OFFICIAL_5X7 = [
    0.58033198, 0.9881078, 1.5198567, 0.69697368, 1.5350385, 0.88953948, 1.8605319,
    0.86064154, 0.81351954, 1.9126954, 0.87376517, 2.3555334, 0.93083262, 1.783146,
    1.2441955, 0.79086137, 2.4001281, 0.55417734, 2.4802008, 0.75036579, 1.4653205,
    1.6622987, 0.88937783, 2.312727, 0.79211634, 2.0154817, 0.71637201, 1.2005215,
    1.6273248, 0.71995944, 1.8519738, 0.81409061, 1.5728912, 0.54206437, 0.17661451,
]  # fmt: skip


def _run_energy(case: dict, filt=None, dtype=torch.float32, device="cpu"):
    """(loss, d loss / d logit) of a `cosa_losses.pt` case, settings from the case."""
    logit = case["logit"].to(device=device, dtype=dtype, copy=True).requires_grad_(True)
    saved = energy_mod.bilateral_filter
    if filt is not None:
        energy_mod.bilateral_filter = filt
    try:
        loss = energy_loss(
            case["simg"].to(device=device, dtype=dtype),
            logit,
            case["mask"].to(device),
            case["img_box"],
            weight=case["energy_weight"],
            sigma_rgb=case["sigma_rgb"],
            sigma_xy=case["sigma_xy"],
            scale_factor=case["energy_scale"],
        )
    finally:
        energy_mod.bilateral_filter = saved
    loss.backward()
    return loss, logit.grad


@pytest.fixture(scope="module")
def loss_cases(golden_dir):
    return golden_cases(load_golden(golden_dir, "cosa_losses.pt"))


def test_energy_loss_matches_official(loss_cases):
    for name, case in loss_cases.items():
        loss, grad = _run_energy(case)
        assert loss.shape == (1,) and loss.dtype == torch.float32, name
        d_loss = max_rel_diff(loss.reshape(()), case["loss_reg"])
        d_grad = max_rel_diff(grad, case["grad_logit"])
        assert d_loss < ENERGY_TOL, (name, d_loss)
        assert d_grad < ENERGY_TOL, (name, d_grad)


def test_energy_loss_float64_filters_in_float32(loss_cases):
    # The official swig filter takes float32 only; the rest of the float64 run stays float64.
    for name, case in loss_cases.items():
        loss, grad = _run_energy(case, dtype=torch.float64)
        assert loss.dtype == torch.float64 and grad.dtype == torch.float64, name
        assert max_rel_diff(loss.reshape(()), case["loss_reg"]) < ENERGY_TOL, name
        assert max_rel_diff(grad, case["grad_logit"]) < ENERGY_TOL, name


def _dense_gaussian(image, values, sigma_rgb, sigma_xy, **_):
    """The exact Gaussian the lattice approximates: Σ_j exp(-|f_i - f_j|² / 2) v_j."""
    f = bilateral_features(image, sigma_rgb, sigma_xy).double()
    b, c, h, w = values.shape
    kernel = torch.exp(-0.5 * torch.cdist(f, f) ** 2)
    out = torch.einsum("bij,bcj->bci", kernel, values.double().reshape(b, c, h * w))
    return out.reshape(b, c, h, w).float()


def test_dense_gaussian_is_not_the_official_filter(loss_cases):
    # Even with the best global scale, an exact Gaussian misses the fixture by far more than 1e-3:
    # the fixture needs the lattice itself (splat/blur/slice).
    for name, case in loss_cases.items():
        _, grad = _run_energy(case, filt=_dense_gaussian)
        g, ref = grad.double(), case["grad_logit"].double()
        best = (g * ref).sum() / (g * g).sum()
        assert max_rel_diff(best * g, ref) > 20 * ENERGY_TOL, name


def test_energy_loss_gradient_formula():
    # dL/dp_scaled = -2·AS·gate/N·crop·weight with AS and gate constant: check through a
    # scale factor of 1 (no resize), where p_scaled = softmax(logit).
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(2, 3, 6, 10, generator=gen)
    logit = torch.randn(2, 4, 6, 10, generator=gen, dtype=torch.float64).requires_grad_(True)
    label = torch.randint(0, 4, (2, 6, 10), generator=gen)
    label[0, :2] = 255
    box = [[1, 6, 0, 8], [0, 6, 2, 10]]
    loss = energy_loss(img.double(), logit, label, box, weight=0.5, scale_factor=1.0)
    p = torch.softmax(logit.detach(), 1)
    crop = torch.zeros(2, 6, 10, dtype=torch.float64)
    for i, (y0, y1, x0, x1) in enumerate(box):
        crop[i, y0:y1, x0:x1] = 1
    gate = (crop - p.max(1)[0]).masked_fill(label == 255, 1).clamp(min=0)
    mean = torch.tensor(energy_mod.IMAGENET_MEAN, dtype=torch.float64).reshape(1, 3, 1, 1)
    std = torch.tensor(energy_mod.IMAGENET_STD, dtype=torch.float64).reshape(1, 3, 1, 1)
    s = p * crop[:, None]
    image = img.double() * std + mean
    a_s = bilateral_filter(image, s.float(), 15.0, 100.0).double() * gate[:, None]
    assert torch.allclose(loss, 0.5 * -(s * a_s).sum().reshape(1) / 2, rtol=1e-6)
    (grad_p,) = torch.autograd.grad(loss, logit, retain_graph=True)
    p_var = torch.softmax(logit, 1)
    (expected,) = torch.autograd.grad(p_var, logit, -2 * a_s / 2 * crop[:, None] * 0.5)
    assert torch.allclose(grad_p, expected, rtol=1e-6, atol=1e-12)


def _padding_case():
    """Integer-valued 5x7 image (dark, so the padding's zero feature is a lattice neighbour)."""
    i = torch.arange(35, dtype=torch.float32).reshape(1, 1, 5, 7)
    img = (37 * i + 11 * torch.arange(3.0).reshape(1, 3, 1, 1)) % 64
    return img, ((13 * i) % 17) / 16


def test_filter_matches_official_with_sse_padding():
    img, val = _padding_case()
    ref = torch.tensor(OFFICIAL_5X7).reshape(1, 1, 5, 7)
    assert max_rel_diff(bilateral_filter(img, val, 15.0, 3.0), ref) < 1e-5
    # Without the padding vertices of the x86 init the result is measurably different.
    assert max_rel_diff(bilateral_filter(img, val, 15.0, 3.0, sse_padding=False), ref) > 1e-3


def test_elevation_is_the_adams_embedding():
    # E (d+1 x d): column k (1-based) has s_k on rows 0..k-1 and -k·s_k on row k, with
    # s_k = sqrt(2/3)(d+1)/sqrt(k(k+1)); columns are orthogonal with squared norm 2/3 (d+1)².
    gen = torch.Generator().manual_seed(1)
    for d in (1, 2, 5):
        f = torch.randn(64, d, generator=gen) * 3
        e = torch.zeros(d + 1, d, dtype=torch.float64)
        for k in range(1, d + 1):
            s = math.sqrt(2 / 3) * (d + 1) / math.sqrt(k * (k + 1))
            e[:k, k - 1] = s
            e[k, k - 1] = -k * s
        got = _elevate(f).double()
        assert torch.allclose(got, f.double() @ e.T, rtol=1e-5, atol=1e-5), d
        assert torch.allclose(got.sum(1), torch.zeros(64, dtype=torch.float64), atol=1e-4)


def test_barycentric_weights_interpolate_the_enclosing_simplex():
    gen = torch.Generator().manual_seed(2)
    for d in (1, 2, 3, 5):
        y = _elevate(torch.randn(200, d, generator=gen) * 4)
        rem0, rank, bary = _simplex(y)
        keys = _vertex_keys(rem0, rank)  # (P, d+1, d): first d coordinates of each vertex
        full = torch.cat([keys, -keys.sum(-1, keepdim=True)], dim=-1)  # on the plane Σ = 0
        r = torch.arange(d + 1).reshape(1, d + 1, 1)
        assert bool(((full - r) % (d + 1) == 0).all()), "vertex r must be a remainder-r point"
        assert bool((bary >= -1e-6).all()), "the point must lie inside its simplex"
        assert torch.allclose(bary.sum(1), torch.ones(200), atol=1e-5)
        recon = (bary.double()[:, :, None] * full.double()).sum(1)
        assert torch.allclose(recon, y.double(), atol=1e-4), d


def test_rounding_ties_go_to_even():
    # The official x86 init rounds with _mm_cvtps_epi32 (MXCSR round-to-nearest-even): a point
    # exactly halfway between two remainder-0 points picks the even one (0.5 -> 0, 1.5 -> 2).
    rem0, _, bary = _simplex(torch.tensor([[1.0, -1.0], [3.0, -3.0], [-1.0, 1.0]]))
    assert rem0.tolist() == [[0, 0], [4, -4], [0, 0]]
    assert torch.allclose(bary.sum(1), torch.ones(3))


def _reference_1d(pos: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """A d=1 lattice, written independently: vertices are the integers k of the scaled line
    y = 2/sqrt(3)·f, hat weights max(0, 1-|y-k|), two passes of v += ½(v[k-1]+v[k+1]) over the
    vertices some point touches (absent vertices hold 0), slice with alpha = 1/(1+½)."""
    y = 2 / math.sqrt(3) * pos
    lo = np.floor(y).astype(int)
    grid: dict[int, float] = {}
    for yi, k, v in zip(y, lo, vals, strict=True):
        grid[k] = grid.get(k, 0.0) + (1 - (yi - k)) * v
        grid[k + 1] = grid.get(k + 1, 0.0) + (yi - k) * v
    for _ in range(2):
        grid = {k: v + 0.5 * (grid.get(k - 1, 0.0) + grid.get(k + 1, 0.0)) for k, v in grid.items()}
    alpha = 1 / 1.5
    return np.array(
        [
            alpha * ((1 - (yi - k)) * grid[k] + (yi - k) * grid[k + 1])
            for yi, k in zip(y, lo, strict=True)
        ]
    )


def test_one_dimensional_lattice_exact():
    rng = np.random.default_rng(3)
    # two clusters far apart (no vertex in between) plus isolated points
    pos = np.concatenate([rng.uniform(0, 6, 40), rng.uniform(20, 23, 20), [40.3, 47.7, 60.1, 61.2]])
    vals = rng.uniform(-1, 2, pos.size)
    lattice = PermutohedralLattice(torch.tensor(pos, dtype=torch.float32).reshape(1, -1, 1))
    got = lattice.filter(torch.tensor(vals, dtype=torch.float32).reshape(1, -1, 1))
    ref = _reference_1d(pos.astype(np.float32).astype(np.float64), vals)
    assert max_rel_diff(got.reshape(-1), torch.from_numpy(ref)) < 1e-5
    assert lattice_alpha(1) == pytest.approx(2 / 3)


def test_filter_is_linear_and_images_do_not_share_vertices():
    gen = torch.Generator().manual_seed(4)
    img = torch.rand(2, 3, 9, 11, generator=gen) * 255
    img[1] = img[0]  # same image twice: sharing vertices would double the output
    x = torch.randn(2, 4, 9, 11, generator=gen)
    y = torch.randn(2, 4, 9, 11, generator=gen)
    both = bilateral_filter(img, x, 15.0, 5.0)
    for i in range(2):
        alone = bilateral_filter(img[i : i + 1], x[i : i + 1], 15.0, 5.0)
        assert max_rel_diff(both[i : i + 1], alone) < 1e-6
    lin = bilateral_filter(img, 2 * x - 3 * y, 15.0, 5.0)
    ref = 2 * both - 3 * bilateral_filter(img, y, 15.0, 5.0)
    assert max_rel_diff(lin, ref) < 1e-5
    # one lattice reused for every channel = each channel filtered alone
    one = bilateral_filter(img, x[:, 2:3], 15.0, 5.0)
    assert max_rel_diff(both[:, 2:3], one) < 1e-6


def test_constant_image_invariants():
    # A constant image: only positions matter. Far-apart rgb clusters never interact, and a
    # translation of every feature by a lattice vector leaves the output unchanged.
    gen = torch.Generator().manual_seed(5)
    img = torch.full((1, 3, 8, 8), 100.0)
    vals = torch.rand(1, 2, 8, 8, generator=gen)
    flat = vals.reshape(1, 2, 64).transpose(1, 2)
    split = img.clone()
    split[:, :, :, 4:] += 200.0  # right half 20 sigmas away in colour
    feats = bilateral_features(split, 10.0, 3.0)
    whole = PermutohedralLattice(feats, sse_padding=False).filter(flat)
    right = torch.arange(64) % 8 >= 4
    for part in (right, ~right):
        alone = PermutohedralLattice(feats[:, part], sse_padding=False).filter(flat[:, part])
        assert max_rel_diff(whole[:, part], alone) < 1e-6
    joined = PermutohedralLattice(bilateral_features(img, 10.0, 3.0), sse_padding=False)
    assert max_rel_diff(joined.filter(flat), whole) > 1e-2  # the halves do interact when close
    # Colour first, so that E's first column moves the red feature: a shift by (d+1)/s_1 with
    # s_1 = sqrt(2/3)(d+1)/sqrt(2) moves every elevated point by the lattice vector (6,-6,0,..).
    feats = bilateral_features(img, 10.0, 3.0)[:, :, [2, 3, 4, 0, 1]]
    shift = torch.zeros(5)
    shift[0] = 6 / (math.sqrt(2 / 3) * 6 / math.sqrt(2))
    a = PermutohedralLattice(feats, sse_padding=False).filter(flat)
    b = PermutohedralLattice(feats + shift, sse_padding=False).filter(flat)
    assert max_rel_diff(b, a) < 1e-4


def test_bad_inputs_raise_clear_errors():
    img = torch.rand(1, 3, 4, 4)
    with pytest.raises(CpclError, match="image must be"):
        bilateral_filter(torch.rand(1, 4, 4, 4), torch.rand(1, 2, 4, 4), 15.0, 5.0)
    with pytest.raises(CpclError, match="values must be"):
        bilateral_filter(img, torch.rand(1, 2, 4, 5), 15.0, 5.0)
    with pytest.raises(CpclError, match="sigma_xy"):
        bilateral_filter(img, torch.rand(1, 2, 4, 4), 15.0, 0.0)
    with pytest.raises(CpclError, match="NaN"):
        PermutohedralLattice(torch.full((1, 3, 2), float("nan")))
    with pytest.raises(CpclError, match="too far"):
        PermutohedralLattice(torch.tensor([[[0.0] * 5, [1e7] * 5]]))
    with pytest.raises(CpclError, match="img_box"):
        energy_loss(img, torch.rand(1, 2, 4, 4), torch.zeros(1, 4, 4), [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu(loss_cases):
    gen = torch.Generator().manual_seed(6)
    img = torch.rand(2, 3, 37, 53, generator=gen) * 255  # 37*53 pixels: padding in play
    vals = torch.rand(2, 21, 37, 53, generator=gen)
    cpu = bilateral_filter(img, vals, 15.0, 50.0)
    gpu = bilateral_filter(img.cuda(), vals.cuda(), 15.0, 50.0)
    assert gpu.is_cuda and max_rel_diff(gpu.cpu(), cpu) < 1e-5
    for name, case in loss_cases.items():
        loss, grad = _run_energy(case, device="cuda")
        assert loss.is_cuda and grad.is_cuda, name
        assert max_rel_diff(loss.reshape(()).cpu(), case["loss_reg"]) < ENERGY_TOL, name
        assert max_rel_diff(grad.cpu(), case["grad_logit"]) < ENERGY_TOL, name
