"""Dense CRF post-processing (`cpcl.ops.dense_crf`) against pydensecrf, CoSA's evaluation CRF."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import max_rel_diff

from cpcl.errors import CpclError
from cpcl.methods.cosa.evaluate import OFFICIAL_CRF_PARAMS as COSA_EVAL_CRF
from cpcl.ops.dense_crf import DenseCRFParams, dense_crf, unary_from_softmax

# `DenseCRF2D(5, 5, 3)` of pydensecrf2 1.1 (Krähenbühl's densecrf, x86-64 build) on `_case()`:
# setUnaryEnergy(unary_from_softmax(p)), addPairwiseGaussian(pos_xy_std, pos_w),
# addPairwiseBilateral(bi_xy_std, bi_rgb_std, img, bi_w), inference(iterations); Q as (C, H, W).
PYDENSECRF_COSA_1IT = [
    0.048015509, 0.12025297, 0.08436805, 0.8633737, 0.14255549, 0.047318529,
    0.8477329, 0.2688787, 0.073500626, 0.71909606, 0.1670616, 0.065241627,
    0.13918638, 0.22761576, 0.84281403, 0.13189735, 0.12715599, 0.81212497,
    0.12666443, 0.052279163, 0.85149926, 0.077075839, 0.058389638, 0.15473247,
    0.086362369, 0.235267, 0.84765154, 0.13771553, 0.027903287, 0.82724094,
    0.24035405, 0.028923925, 0.67711198, 0.35755527, 0.044230886, 0.12613356,
    0.39401472, 0.78533608, 0.13802925, 0.045842584, 0.79554874, 0.21448243,
    0.032308966, 0.83870161, 0.25991967, 0.026936131, 0.1322055, 0.29673916,
    0.80121213, 0.14429814, 0.71671754, 0.032095436, 0.77791643, 0.10872298,
    0.030203549, 0.71232736, 0.1233432, 0.054009281, 0.56894416, 0.23667306,
    0.70680487, 0.54074365, 0.075477511, 0.63435501, 0.11134337, 0.072553895,
    0.65836155, 0.1555661, 0.034633927, 0.68780118, 0.12156463, 0.79071867,
    0.64487123, 0.044055354, 0.76933944,
]  # fmt: skip
PYDENSECRF_OTHER_3IT = [
    0.031097775, 0.0065107699, 0.031387731, 0.86953288, 0.0046354276, 0.0080205947,
    0.92789924, 0.17934628, 0.0061045876, 0.44500378, 0.035861325, 0.0026944042,
    0.019695709, 0.4190881, 0.65594763, 0.0057043433, 0.018601151, 0.31085739,
    0.0029120666, 0.0081504434, 0.96918899, 0.027343908, 0.0089623034, 0.053054292,
    0.0098806527, 0.20588793, 0.98819309, 0.064893425, 0.011453848, 0.99384451,
    0.19853237, 0.0084407786, 0.68013543, 0.89290088, 0.058280345, 0.023615839,
    0.96766692, 0.85713553, 0.0566843, 0.080057807, 0.98590368, 0.16992705,
    0.011216819, 0.99529678, 0.15835129, 0.0045352378, 0.077351004, 0.66983873,
    0.86401564, 0.013093065, 0.76301426, 0.0052961418, 0.90371889, 0.11901327,
    0.0015200765, 0.79344708, 0.063659973, 0.14051828, 0.10099457, 0.49671593,
    0.94052285, 0.029638618, 0.12316872, 0.52422756, 0.26399451, 0.0083919568,
    0.81147182, 0.67792583, 0.0017910685, 0.83349824, 0.026275784, 0.89530516,
    0.32119894, 0.082930036, 0.97702628,
]  # fmt: skip
OTHER = DenseCRFParams(
    iterations=3, pos_w=3.0, pos_xy_std=2.0, bi_w=5.0, bi_xy_std=3.0, bi_rgb_std=13.0
)


def _case() -> tuple[np.ndarray, np.ndarray]:
    """Integer-built 5x5 uint8 image (H, W, 3) and 3-class float32 probabilities (C, H, W).

    25 pixels: the x86 lattice init pads them to 28 with zero features (dark pixel 0 is close).
    """
    i = np.arange(25).reshape(5, 5)
    img = np.stack([(37 * i + 11 * c) % 256 for c in range(3)], -1).astype(np.uint8)
    logits = np.stack([((7 * i + 3 * k) % 11) / 4.0 for k in range(3)])
    return img, (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)


def _ours(img: np.ndarray, probs: np.ndarray, params: DenseCRFParams) -> torch.Tensor:
    image = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()
    return dense_crf(image, torch.from_numpy(probs)[None], params)[0]


@pytest.mark.parametrize(
    ("params", "expected"),
    [(COSA_EVAL_CRF, PYDENSECRF_COSA_1IT), (OTHER, PYDENSECRF_OTHER_3IT)],
)
def test_dense_crf_matches_stored_pydensecrf(params, expected):
    img, probs = _case()
    ref = torch.tensor(expected).reshape(3, 5, 5)
    assert max_rel_diff(_ours(img, probs, params), ref) < 1e-5


def test_cosa_eval_parameters():
    # utils/seg_helper.py:989-996 (crf_inference_infv2)
    assert (
        DenseCRFParams(iterations=1, pos_w=1, pos_xy_std=1, bi_w=4, bi_xy_std=121, bi_rgb_std=5)
        == COSA_EVAL_CRF
    )


def test_zero_iterations_and_zero_weights_return_the_clipped_unary_softmax():
    img, probs = _case()
    probs[0, 0, 0], probs[1, 0, 0] = 0.0, 1.0  # clipped at 1e-5 before the log
    expected = torch.softmax(-unary_from_softmax(torch.from_numpy(probs)), dim=0)
    for params in (
        DenseCRFParams(0, 3.0, 1.0, 4.0, 50.0, 5.0),
        DenseCRFParams(4, 0.0, 1.0, 0.0, 50.0, 5.0),
    ):
        assert max_rel_diff(_ours(img, probs, params), expected) < 1e-6


def test_batch_images_are_independent():
    gen = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (2, 3, 9, 13), generator=gen, dtype=torch.uint8)
    probs = torch.softmax(torch.randn(2, 4, 9, 13, generator=gen), dim=1)
    both = dense_crf(img, probs, OTHER)
    for k in range(2):
        assert (
            max_rel_diff(both[k : k + 1], dense_crf(img[k : k + 1], probs[k : k + 1], OTHER)) < 1e-6
        )


def test_dense_crf_bad_inputs():
    probs = torch.full((1, 2, 4, 5), 0.5)
    with pytest.raises(CpclError, match="uint8"):
        dense_crf(torch.zeros(1, 3, 4, 5), probs, COSA_EVAL_CRF)
    with pytest.raises(CpclError, match="image must be"):
        dense_crf(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), probs, COSA_EVAL_CRF)


def test_dense_crf_matches_pydensecrf_random():
    dcrf = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf is not installed")
    from pydensecrf.utils import unary_from_softmax as pd_unary

    rng = np.random.default_rng(1)
    for (c, h, w), params in (((21, 23, 31), COSA_EVAL_CRF), ((5, 17, 19), OTHER)):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        logits = 2 * rng.normal(size=(c, h, w))
        probs = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
        crf = dcrf.DenseCRF2D(w, h, c)
        crf.setUnaryEnergy(np.ascontiguousarray(pd_unary(probs)))
        crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
        crf.addPairwiseBilateral(
            sxy=params.bi_xy_std, srgb=params.bi_rgb_std, rgbim=img, compat=params.bi_w
        )
        ref = torch.from_numpy(np.array(crf.inference(params.iterations)).reshape(c, h, w))
        assert max_rel_diff(_ours(img, probs, params), ref) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_dense_crf_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(2)
    img = torch.randint(0, 256, (2, 3, 33, 47), generator=gen, dtype=torch.uint8)
    probs = torch.softmax(torch.randn(2, 21, 33, 47, generator=gen), dim=1)
    cpu = dense_crf(img, probs, COSA_EVAL_CRF)
    gpu = dense_crf(img.cuda(), probs.cuda(), COSA_EVAL_CRF)
    assert gpu.is_cuda and max_rel_diff(gpu.cpu(), cpu) < 1e-5
