"""CoSA's dense energy (CRF) loss: `get_energy_loss` + `DenseEnergyLoss` (`utils/seg_helper.py`).

Official semantics (youshyee/CoSA, `seg_helper.py:191-230, 864-903`), reproduced without the
compiled swig extension (the bilateral filter is `cpcl.ops.permutohedral`, the same lattice):

1. p = softmax(logit); the crop mask is 1 inside each image's `img_box` (y0, y1, x0, x1);
2. the image is denormalised (`img * std + mean` per channel, no clamping);
3. image, crop mask and label (cast to uint8) are resized **nearest** and p **bilinear**
   (align_corners=False), all by `scale_factor` with `recompute_scale_factor=True`;
4. gate = crop - max_k p, set to 1 where the label is 255, then clamped at >= 0;
5. S = p * crop; AS = bilateral filter of S (float32, sigma_rgb, sigma_xy * scale_factor);
6. loss = weight * (-sum(S * AS * gate) / N), a shape-(1,) tensor (N = batch size);
7. backward: dL/dp = -2 * AS * gate / N * crop * weight; gate and AS are constants (no gradient
   through max p or through the filter's input).

The official swig wrapper accepts float32 arrays only, so the filter always runs in float32;
with float64 inputs the rest (gate, product, sum) is float64 built from the float32 AS, as in
the official float64 run of the golden fixtures.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

from ...errors import CpclError
from ...ops.permutohedral import bilateral_filter

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "energy_loss"]

# `get_energy_loss` defaults: the ImageNet statistics in 0..255 pixel units.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class _DenseEnergy(Function):
    """`DenseEnergyLossFunction`: value -Σ S·AS·gate / N, gradient -2·AS·gate/N·crop."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        images: Tensor,
        probs: Tensor,
        sigma_rgb: float,
        sigma_xy: float,
        crop: Tensor,
        unlabeled: Tensor,
    ) -> Tensor:
        n = probs.shape[0]
        gate = crop - probs.max(dim=1)[0]
        gate[unlabeled] = 1
        gate[gate < 0] = 0
        crop_k = crop.unsqueeze(1)
        segs = probs * crop_k
        # The official wrapper filters float32 copies (swig takes float32 arrays only).
        filtered = bilateral_filter(images.float(), segs.float(), sigma_rgb, sigma_xy)
        weighted = filtered.to(probs.dtype) * gate.unsqueeze(1)
        loss = -(segs * weighted).sum() / n
        ctx.save_for_backward(weighted, crop_k)
        return loss.reshape(1)

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        weighted, crop_k = ctx.saved_tensors
        n = weighted.shape[0]
        grad = -2 * grad_output * weighted / n
        return None, grad * crop_k, None, None, None, None


def _check_inputs(img: Tensor, logit: Tensor, label: Tensor, img_box: Tensor | Sequence) -> None:
    if logit.dim() != 4:
        raise CpclError(f"energy_loss: logit must be (B, C, H, W), got {tuple(logit.shape)}")
    b, _, h, w = logit.shape
    if img.dim() != 4 or img.shape[1] != 3 or img.shape[0] != b or img.shape[2:] != logit.shape[2:]:
        raise CpclError(
            f"energy_loss: img must be ({b}, 3, {h}, {w}) like the logit, got {tuple(img.shape)}"
        )
    if tuple(label.shape) != (b, h, w):
        raise CpclError(f"energy_loss: label must be ({b}, {h}, {w}), got {tuple(label.shape)}")
    if len(img_box) != b:
        raise CpclError(f"energy_loss: img_box must hold {b} boxes (y0, y1, x0, x1), got {img_box}")


def energy_loss(
    img: Tensor,
    logit: Tensor,
    label: Tensor,
    img_box: Tensor | Sequence,
    *,
    weight: float = 1e-7,
    sigma_rgb: float = 15.0,
    sigma_xy: float = 100.0,
    scale_factor: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """`get_energy_loss(img, logit, label, img_box, DenseEnergyLoss(weight, σrgb, σxy, scale))`.

    `img` (B, 3, H, W) normalised image, `logit` (B, C, H, W) segmentation logits at the same
    size, `label` (B, H, W) pseudo label (255 = unlabelled; cast to uint8 like the official),
    `img_box` B boxes (y0, y1, x0, x1) of the valid crop. Returns a shape-(1,) tensor in the
    logit's dtype on the logit's device; it back-propagates into `logit` only.
    """
    _check_inputs(img, logit, label, img_box)
    probs = F.softmax(logit, dim=1)
    crop = torch.zeros_like(probs[:, 0])
    boxes = img_box.tolist() if isinstance(img_box, Tensor) else [list(b) for b in img_box]
    for idx, (y0, y1, x0, x1) in enumerate(boxes):
        crop[idx, y0:y1, x0:x1] = 1
    std_t = torch.tensor(std, dtype=img.dtype, device=img.device).reshape(1, 3, 1, 1)
    mean_t = torch.tensor(mean, dtype=img.dtype, device=img.device).reshape(1, 3, 1, 1)
    image = img * std_t + mean_t

    kw = {"scale_factor": scale_factor, "recompute_scale_factor": True}
    images_s = F.interpolate(image, **kw)
    probs_s = F.interpolate(probs, mode="bilinear", align_corners=False, **kw)
    crop_s = F.interpolate(crop.unsqueeze(1), **kw).squeeze(1)
    # The official interpolates the uint8 label; nearest on its float copy picks the same pixels.
    label_s = F.interpolate(label.to(torch.uint8).unsqueeze(1).float(), mode="nearest", **kw)
    unlabeled = (label_s.long() == 255).squeeze(1)
    return weight * _DenseEnergy.apply(
        images_s, probs_s, sigma_rgb, sigma_xy * scale_factor, crop_s, unlabeled
    )
