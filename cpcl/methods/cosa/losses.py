"""CoSA's loss terms (official `main.py:127-233`, `utils/seg_helper.py:593-602, 800-813`).

* `cls_loss`: `multilabel_soft_margin_loss(logits, labels)` (main and aux classifier).
* `seg_loss`: CE split into a background term (labels != 0 ignored) and a foreground term
  (label 0 ignored), each a sum divided by (its non-ignored pixel count + 1e-6), so an empty
  term is exactly 0; `(1 - fg_alpha) bg + fg_alpha fg`.
* `combined_seg_loss`: the `aux_cam2seg` rule `(1 - a) seg_loss(mask) + a seg_loss(mask_aux)`.
* `cam_loss` (v1): foreground channels of the refined teacher seg, resized bilinear to the CAM
  size, are soft targets of `multilabel_soft_margin_loss(relu(cam))` over every pixel.
The energy (CRF) regulariser lives in `energy.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import CpclError

__all__ = ["cam_loss", "cls_loss", "combined_seg_loss", "seg_loss"]


def cls_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss of image logits (B,C-1) against 0/1 labels."""
    if logits.shape != labels.shape:
        raise CpclError(f"cls_loss: logits {tuple(logits.shape)} vs labels {tuple(labels.shape)}")
    return F.multilabel_soft_margin_loss(logits, labels)


def seg_loss(
    seg_pred: torch.Tensor, mask: torch.Tensor, fg_alpha: float = 0.5, ignore_index: int = 255
) -> torch.Tensor:
    """Background/foreground-balanced CE of logits (B,C,H,W) against a mask (B,H,W)."""
    if not 0 <= fg_alpha <= 1:
        raise CpclError(f"seg_loss fg_alpha={fg_alpha!r}: expected in [0, 1]")
    if mask.shape != (seg_pred.shape[0], *seg_pred.shape[2:]):
        raise CpclError(f"seg_loss: mask {tuple(mask.shape)} vs logits {tuple(seg_pred.shape)}")
    bg = mask.clone()
    bg.masked_fill_(mask != 0, ignore_index)  # `bg[mask != 0] = ...` without a host sync
    bg_loss = F.cross_entropy(seg_pred, bg.long(), ignore_index=ignore_index, reduction="sum")
    bg_loss = bg_loss / ((bg != ignore_index).sum() + 1e-6)
    fg = mask.clone()
    fg.masked_fill_(mask == 0, ignore_index)
    fg_loss = F.cross_entropy(seg_pred, fg.long(), ignore_index=ignore_index, reduction="sum")
    fg_loss = fg_loss / ((fg != ignore_index).sum() + 1e-6)
    return (1 - fg_alpha) * bg_loss + fg_alpha * fg_loss


def combined_seg_loss(
    seg_pred: torch.Tensor,
    mask: torch.Tensor,
    mask_aux: torch.Tensor,
    fg_alpha: float = 0.5,
    aux_alpha: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(`(1 - aux_alpha) seg_loss(mask) + aux_alpha seg_loss(mask_aux)`, the aux term)."""
    aux = seg_loss(seg_pred, mask_aux, fg_alpha=fg_alpha)
    return (1 - aux_alpha) * seg_loss(seg_pred, mask, fg_alpha=fg_alpha) + aux_alpha * aux, aux


def cam_loss(cam: torch.Tensor, seg_ps: torch.Tensor, is_relu: bool = True) -> torch.Tensor:
    """v1: soft-target multi-label loss between relu(CAM) (B,C-1,h,w) and seg_ps[:, 1:]."""
    b, c, h, w = cam.shape
    if seg_ps.shape[:2] != (b, c + 1):
        raise CpclError(f"cam_loss: seg_ps {tuple(seg_ps.shape)} vs CAM {tuple(cam.shape)}")
    fg = F.interpolate(seg_ps[:, 1:], size=[h, w], mode="bilinear", align_corners=False)
    fg = fg.permute(0, 2, 3, 1).contiguous().reshape(b * h * w, c)
    if is_relu:
        cam = F.relu(cam)
    cam = cam.permute(0, 2, 3, 1).contiguous().reshape(b * h * w, c)
    return F.multilabel_soft_margin_loss(cam, fg)
