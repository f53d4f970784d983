"""CoSA's thresholded CAM pseudo masks as the official evaluation scores them
(``--eval_threshold_filters``, `evaluation_engine.py:135-159`, `utils/seg_helper.py:721-797`).

For each threshold t the class-filtered CAM (C-1,H,W) of an image becomes a pseudo mask with
`cam2mask` (no refinement network, ``downscale=2``): the CAM stack is extended by a constant
background channel of value ``1 - t`` ("high") and of value ``t`` ("low"), both stacks are
resized to half size (bilinear), restricted to the background and the image's classes, soft-maxed
over the channels, resized back (bilinear), argmaxed and mapped to class ids. Pixels that the
high stack calls foreground keep that class; background of the high stack is 255 (uncertain)
unless the low stack also says background, then 0. The evaluation passes the box
``[0, -1, 0, -1]``, so the last row and column stay 255.

Scoring (`utils/evaluation.py:44-59`, `pseudo_scores`): pixels whose pseudo label is 255 are
left out (their ground truth is set to 255); the rest as `evaluate.cosa_scores`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["EVAL_BOX", "cam_threshold_mask", "pseudo_pair"]

IGNORE_INDEX = 255
EVAL_BOX = (0, -1, 0, -1)  # the box the official evaluation passes (`evaluation_engine.py:139`)


def _half(x: Tensor, downscale: int) -> Tensor:
    h, w = x.shape[-2:]
    if not downscale:
        return x
    size = [h // downscale, w // downscale]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def cam_threshold_mask(
    cams: Tensor,
    cls_label: Tensor,
    threshold: float,
    *,
    downscale: int = 2,
    box: tuple[int, int, int, int] = EVAL_BOX,
) -> Tensor:
    """`cam2mask(images, [box], cams, cls_label, 1 - threshold, threshold)` without a refinement
    network, for one image: `cams` (1,C-1,H,W) already multiplied by `cls_label` (1,C-1);
    returns the (H,W) float mask (class ids, 255 uncertain / outside the box)."""
    _, _, h, w = cams.shape
    ones = torch.ones((1, 1, h, w), device=cams.device)
    stacks = [torch.cat([ones * t, cams], dim=1) for t in (1 - threshold, threshold)]
    with_bkg = torch.cat([torch.ones((1, 1), device=cls_label.device), cls_label], dim=1)
    present = torch.nonzero(with_bkg[0, ...])[:, 0]
    masks = []
    for stack in stacks:
        active = _half(stack, downscale)[0, present, ...].unsqueeze(0).softmax(dim=1)
        label = F.interpolate(active, size=(h, w), mode="bilinear", align_corners=False)
        label = present[label.argmax(dim=1)]
        mask = ones.squeeze(1) * IGNORE_INDEX
        y0, y1, x0, x1 = box
        mask[0, y0:y1, x0:x1] = label[0, y0:y1, x0:x1].to(mask.dtype)
        masks.append(mask)
    high, low = masks
    out = high.clone()
    out[high == 0] = IGNORE_INDEX
    out[(high + low) == 0] = 0
    return out[0]


def pseudo_pair(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """(pred, gt) as `pseudo_scores` counts them: where the pseudo label is 255 the ground
    truth becomes 255 (not counted) and the prediction 0."""
    uncertain = pred == IGNORE_INDEX
    gt = torch.where(uncertain, torch.full_like(gt, IGNORE_INDEX), gt)
    return torch.where(uncertain, torch.zeros_like(pred), pred), gt
