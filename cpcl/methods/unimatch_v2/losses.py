"""The losses of one UniMatch V2 iteration (`unimatch_v2.py:93-100, 170-204, 213`).

Official semantics (LiheYoung/UniMatch-V2@f6afb4d), reproduced here on given logits:

* pseudo-labels: `conf = softmax(pred_u_w).max(1)`, `mask = pred_u_w.argmax(1)` of the EMA
  teacher's weak-view logits (`:170-173`);
* CutMix partner = the batch flipped along dim 0 (`:181-190`): inside box k the pseudo-label,
  the confidence **and the ignore mask** come from image `B-1-i` (an odd batch maps its middle
  image onto itself); there is no separate mixing batch as in UniMatch V1;
* each unlabeled loss is `sum(CE * (conf >= thr) * (ignore != 255)) / count(ignore != 255)`
  (`:194-200`, the V1 rule `cpcl.methods.unimatch.losses.confident_ce`): the denominator counts
  every non-ignored pixel; an all-ignored batch divides by 0 and gives NaN, as officially;
* `loss = (loss_x + (loss_u_s1 + loss_u_s2) / 2) / 2` (`:202-204`); no feature-perturbation
  branch;
* `mask_ratio` (`:213`) from the **un-mixed** confidence and ignore mask;
* supervised criterion: `CrossEntropyLoss(ignore_index=255)`, or for Cityscapes
  `ProbOhemCrossEntropy2d(255, thresh=0.7, min_kept=200000)` without class weights (V1's
  `build_criterion_l`, the same `util/ohem.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ...errors import CpclError
from ..unimatch.losses import (
    IGNORE,
    build_criterion_l,
    check_loss_inputs,
    confident_ce,
    cutmix_targets,
    pseudo_labels,
)

__all__ = ["UniMatchV2Loss", "build_criterion_l", "flip_cutmix_targets", "unimatch_v2_loss"]

LOG_NAMES = ("loss_x", "loss_u_s1", "loss_u_s2", "loss_u_s", "mask_ratio")


@dataclass
class UniMatchV2Loss:
    """The total loss, its parts and the intermediates of one iteration (for logs and tests).

    Denominators and selected counts are 0-dim int64 tensors (no host sync); `mask_ratio` is a
    0-dim float tensor.
    """

    loss: Tensor
    loss_x: Tensor
    loss_u_s1: Tensor
    loss_u_s2: Tensor
    loss_u_s: Tensor
    mask_ratio: Tensor
    conf_u_w: Tensor
    mask_u_w: Tensor
    mask_u_w_cutmixed1: Tensor
    conf_u_w_cutmixed1: Tensor
    ignore_mask_cutmixed1: Tensor
    mask_u_w_cutmixed2: Tensor
    conf_u_w_cutmixed2: Tensor
    ignore_mask_cutmixed2: Tensor
    denom_s1: Tensor
    denom_s2: Tensor
    num_selected_s1: Tensor
    num_selected_s2: Tensor

    def logs(self) -> dict[str, Tensor]:
        """The logged scalars (0-dim, detached)."""
        return {n: getattr(self, n).detach() for n in LOG_NAMES}


def flip_cutmix_targets(box: Tensor, *own: Tensor) -> tuple[Tensor, ...]:
    """Each (B,H,W) tensor of `own` with its `flip(0)` pasted where `box == 1` (`:181-190`)."""
    return cutmix_targets(box, own, tuple(t.flip(0) for t in own))


def unimatch_v2_loss(
    pred_x: Tensor,
    mask_x: Tensor,
    pred_u_w: Tensor,
    pred_u_s1: Tensor,
    pred_u_s2: Tensor,
    cutmix_box1: Tensor,
    cutmix_box2: Tensor,
    ignore_mask: Tensor,
    *,
    criterion_l: nn.Module,
    conf_thresh: float,
) -> UniMatchV2Loss:
    """The loss of one UniMatch V2 iteration from the network outputs.

    Args:
        pred_x, mask_x: labeled logits (B_l,C,H,W) and labels (B_l,H,W), 255 = ignore.
        pred_u_w: the EMA teacher's weak-view logits (detached here).
        pred_u_s1, pred_u_s2: the student's logits of the two CutMixed strong views (the two
            halves of the `comp_drop` forward).
        cutmix_box1, cutmix_box2: (B,H,W) 0/1 boxes of the strong views.
        ignore_mask: (B,H,W) 0/255 crop-padding mask of the unlabeled images.
        criterion_l: supervised criterion (`build_criterion_l`).
        conf_thresh: pseudo-label confidence threshold (0.95 in every official config).
    """
    if not 0.0 <= float(conf_thresh) <= 1.0:
        raise CpclError(f"unimatch_v2_loss conf_thresh={conf_thresh!r}: expected 0 <= value <= 1")
    check_loss_inputs(
        "unimatch_v2_loss",
        {"pred_u_w": pred_u_w, "pred_u_s1": pred_u_s1, "pred_u_s2": pred_u_s2},
        {"cutmix_box1": cutmix_box1, "cutmix_box2": cutmix_box2, "ignore_mask": ignore_mask},
    )
    conf_u_w, mask_u_w = pseudo_labels(pred_u_w)
    mask1, conf1, ign1 = flip_cutmix_targets(cutmix_box1, mask_u_w, conf_u_w, ignore_mask)
    mask2, conf2, ign2 = flip_cutmix_targets(cutmix_box2, mask_u_w, conf_u_w, ignore_mask)

    loss_x = criterion_l(pred_x, mask_x)
    loss_s1, denom_s1, sel_s1 = confident_ce(pred_u_s1, mask1, conf1, ign1, conf_thresh)
    loss_s2, denom_s2, sel_s2 = confident_ce(pred_u_s2, mask2, conf2, ign2, conf_thresh)
    loss_u_s = (loss_s1 + loss_s2) / 2.0
    valid = ignore_mask != IGNORE
    mask_ratio = ((conf_u_w >= conf_thresh) & valid).sum() / valid.sum()
    return UniMatchV2Loss(
        loss=(loss_x + loss_u_s) / 2.0,
        loss_x=loss_x,
        loss_u_s1=loss_s1,
        loss_u_s2=loss_s2,
        loss_u_s=loss_u_s,
        mask_ratio=mask_ratio,
        conf_u_w=conf_u_w,
        mask_u_w=mask_u_w,
        mask_u_w_cutmixed1=mask1,
        conf_u_w_cutmixed1=conf1,
        ignore_mask_cutmixed1=ign1,
        mask_u_w_cutmixed2=mask2,
        conf_u_w_cutmixed2=conf2,
        ignore_mask_cutmixed2=ign2,
        denom_s1=denom_s1,
        denom_s2=denom_s2,
        num_selected_s1=sel_s1,
        num_selected_s2=sel_s2,
    )
