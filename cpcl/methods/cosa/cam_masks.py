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
from torch import Tensor

from .pseudo import cam2mask

__all__ = ["EVAL_BOX", "cam_threshold_mask", "pseudo_pair"]

IGNORE_INDEX = 255
EVAL_BOX = (0, -1, 0, -1)  # the box the official evaluation passes (`evaluation_engine.py:139`)


@torch.no_grad()
def cam_threshold_mask(
    cams: Tensor,
    cls_label: Tensor,
    threshold: float,
    *,
    downscale: int = 2,
    box: tuple[int, int, int, int] = EVAL_BOX,
) -> Tensor:
    """`pseudo.cam2mask(images, [box], cams, cls_label, 1 - threshold, threshold)` (no refinement
    network, the training pseudo labels' function), for one image: `cams` (1,C-1,H,W) already multiplied by `cls_label` (1,C-1);
    returns the (H,W) float mask (class ids, 255 uncertain / outside the box)."""
    box_t = torch.tensor([box], device=cams.device)
    return cam2mask(cams, box_t, cams, cls_label, 1 - threshold, threshold, downscale=downscale)[0]


def pseudo_pair(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """(pred, gt) as `pseudo_scores` counts them: where the pseudo label is 255 the ground
    truth becomes 255 (not counted) and the prediction 0."""
    uncertain = pred == IGNORE_INDEX
    gt = torch.where(uncertain, torch.full_like(gt, IGNORE_INDEX), gt)
    return torch.where(uncertain, torch.zeros_like(pred), pred), gt
