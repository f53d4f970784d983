"""Fully connected CRF mean-field inference (Krähenbühl & Koltun 2011) on our permutohedral lattice.

Reproduces `pydensecrf.densecrf.DenseCRF2D` as CoSA's evaluation uses it
(`utils/seg_helper.py:961-996`, `DenseCRF.__call__`, called by `evaluation_engine.py:204-211`),
without a compiled extension:

* unary = -log(clip(softmax, 1e-5, 1)) (`pydensecrf.utils.unary_from_softmax`);
* `addPairwiseGaussian(sxy, compat)`: features (x/sxy, y/sxy); `addPairwiseBilateral(sxy, srgb,
  rgbim, compat)`: features (x/sxy, y/sxy, r/srgb, g/srgb, b/srgb) of the uint8 image;
* both kernels are `DIAG_KERNEL` with `NORMALIZE_SYMMETRIC`: K(Q) = n · lattice(n · Q) with
  n = 1/sqrt(lattice(1) + 1e-20), where the lattice is the same permutohedral lattice as the CoSA
  energy loss (densecrf's `permutohedral.cpp`, x86 SSE init, forward blur order);
* Potts compatibility w: the pairwise message is -w·K(Q), so each mean-field step is
  Q = softmax(-unary + Σ_k w_k K_k(Q)) over classes, starting from Q = softmax(-unary).

Everything is float32 like densecrf; the image index of a batch is a lattice key digit, so images
never interact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import CpclError
from .permutohedral import PermutohedralLattice, bilateral_features, position_features

__all__ = ["DenseCRFParams", "dense_crf", "unary_from_softmax"]


@dataclass(frozen=True)
class DenseCRFParams:
    """Parameters of `DenseCRF(iter_max, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std)`."""

    iterations: int
    pos_w: float
    pos_xy_std: float
    bi_w: float
    bi_xy_std: float
    bi_rgb_std: float
    clip: float = 1e-5  # unary_from_softmax's default


def unary_from_softmax(probs: Tensor, clip: float = 1e-5) -> Tensor:
    """`-log(clip(probs, clip, 1))` in float32 (pydensecrf.utils.unary_from_softmax)."""
    return -torch.log(probs.to(torch.float32).clamp(min=clip, max=1.0))


class _SymmetricKernel:
    """A DIAG_KERNEL with NORMALIZE_SYMMETRIC over given features: n · lattice(n · Q)."""

    def __init__(self, features: Tensor) -> None:
        self.lattice = PermutohedralLattice(features)
        ones = features.new_ones(features.shape[0], features.shape[1], 1)
        self.norm = 1.0 / torch.sqrt(self.lattice.filter(ones) + 1e-20)

    def __call__(self, q: Tensor) -> Tensor:
        return self.lattice.filter(q * self.norm) * self.norm


def _check(image: Tensor, probs: Tensor, params: DenseCRFParams) -> None:
    if probs.dim() != 4:
        raise CpclError(f"dense CRF: probs must be (B, C, H, W), got {tuple(probs.shape)}")
    b, _, h, w = probs.shape
    if image.dim() != 4 or tuple(image.shape) != (b, 3, h, w):
        raise CpclError(
            f"dense CRF: image must be ({b}, 3, {h}, {w}) like probs, got {tuple(image.shape)}"
        )
    if image.dtype != torch.uint8:
        raise CpclError(
            f"dense CRF: image must be uint8 (pydensecrf takes the 0..255 image), got {image.dtype}"
        )
    if params.iterations < 0:
        raise CpclError(f"dense CRF: iterations must be >= 0, got {params.iterations}")


def dense_crf(image: Tensor, probs: Tensor, params: DenseCRFParams) -> Tensor:
    """Mean-field marginals Q (B, C, H, W) float32 of the dense CRF.

    `image` (B, 3, H, W) uint8 RGB, `probs` (B, C, H, W) class probabilities (softmax output).
    Equals `DenseCRF2D(W, H, C)` with `setUnaryEnergy(unary_from_softmax(p))`,
    `addPairwiseGaussian(pos_xy_std, pos_w)`, `addPairwiseBilateral(bi_xy_std, bi_rgb_std,
    image, bi_w)` and `inference(iterations)`, one image at a time.
    """
    _check(image, probs, params)
    b, c, h, w = probs.shape
    unary = unary_from_softmax(probs, params.clip).reshape(b, c, h * w).transpose(1, 2)
    rgb = image.to(probs.device).float()
    with torch.no_grad():
        # densecrf's order: the Gaussian kernel is added first, then the bilateral one.
        gaussian = _SymmetricKernel(position_features(b, h, w, params.pos_xy_std, probs.device))
        bilateral = _SymmetricKernel(bilateral_features(rgb, params.bi_rgb_std, params.bi_xy_std))
        kernels = [(params.pos_w, gaussian), (params.bi_w, bilateral)]
        q = torch.softmax(-unary, dim=-1)
        for _ in range(params.iterations):
            logits = -unary
            for weight, kernel in kernels:
                logits = logits + weight * kernel(q)  # -= the Potts message -w·K(Q)
            q = torch.softmax(logits, dim=-1)
    return q.transpose(1, 2).reshape(b, c, h, w)
