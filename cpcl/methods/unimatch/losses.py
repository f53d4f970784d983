"""The losses of one UniMatch iteration (`unimatch.py:68-75, 139-140, 157-188, 201-202`).

Official semantics (LiheYoung/UniMatch@0324f3d), reproduced here on given logits:

* pseudo-labels: `conf = softmax(pred).max(1)`, `mask = pred.argmax(1)` of the detached weak
  prediction `pred_u_w` (train-mode forward) and of `pred_u_w_mix` (the official loop takes it
  from a separate `model.eval()` forward under `no_grad`);
* inside CutMix box k, the pseudo-label, the confidence **and the ignore mask** come from the
  mixing image; the FP loss and `mask_ratio` use the unmixed ones;
* each unlabeled loss is `sum(CE * (conf >= thr) * (ignore != 255)) / count(ignore != 255)`:
  the denominator counts every non-ignored pixel, confident or not; `>=`; the CE has no
  ignore_index of its own (pseudo-labels are class ids);
* total = `(loss_x + 0.25*loss_u_s1 + 0.25*loss_u_s2 + 0.5*loss_u_w_fp) / 2`;
* `conf_thresh` is 0.95 on Pascal/COCO and 0 on Cityscapes;
* supervised criterion: `CrossEntropyLoss(ignore_index=255)` (Pascal), or
  `ProbOhemCrossEntropy2d(255, thresh=0.7, min_kept=200000)` **without class weights**
  (Cityscapes), see `build_criterion_l`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import CpclError
from ...losses import ProbOhemCrossEntropy2d

__all__ = [
    "OFFICIAL_LOSS_WEIGHTS",
    "UniMatchLoss",
    "UniMatchLossWeights",
    "build_criterion_l",
    "check_loss_inputs",
    "confident_ce",
    "criterion_from_config",
    "cutmix_targets",
    "pseudo_labels",
    "unimatch_loss",
]

IGNORE = 255  # the ignore value of UniMatch's masks (crop padding of unlabeled images)


class UniMatchLossWeights(NamedTuple):
    """`loss = (x*loss_x + s1*loss_u_s1 + s2*loss_u_s2 + fp*loss_u_w_fp) / divisor`."""

    x: float = 1.0
    s1: float = 0.25
    s2: float = 0.25
    fp: float = 0.5
    divisor: float = 2.0


OFFICIAL_LOSS_WEIGHTS = UniMatchLossWeights()


@dataclass
class UniMatchLoss:
    """The total loss, its parts, and the intermediates of one iteration (for logs and tests).

    Denominators and selected counts are 0-dim int64 tensors (no host sync); `mask_ratio` is a
    0-dim float tensor (`unimatch.py:201`).
    """

    loss: Tensor
    loss_x: Tensor
    loss_u_s1: Tensor
    loss_u_s2: Tensor
    loss_u_w_fp: Tensor
    mask_ratio: Tensor
    conf_u_w: Tensor
    mask_u_w: Tensor
    conf_u_w_mix: Tensor
    mask_u_w_mix: Tensor
    mask_u_w_cutmixed1: Tensor
    conf_u_w_cutmixed1: Tensor
    ignore_mask_cutmixed1: Tensor
    mask_u_w_cutmixed2: Tensor
    conf_u_w_cutmixed2: Tensor
    ignore_mask_cutmixed2: Tensor
    denom_s1: Tensor
    denom_s2: Tensor
    denom_fp: Tensor
    num_selected_s1: Tensor
    num_selected_s2: Tensor
    num_selected_fp: Tensor

    def parts(self) -> dict[str, Tensor]:
        """The logged scalars, detached."""
        names = ("loss", "loss_x", "loss_u_s1", "loss_u_s2", "loss_u_w_fp", "mask_ratio")
        return {n: getattr(self, n).detach() for n in names}


def build_criterion_l(name: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """The supervised criterion of an official config (`criterion: {name, kwargs}`).

    "CELoss": `nn.CrossEntropyLoss(**kwargs)` (Pascal: `ignore_index=255`).
    "OHEM": `ProbOhemCrossEntropy2d(ignore_index, thresh=0.7, min_kept=256)` defaults of
    `util/ohem.py`, with `use_weight=False` (UniMatch never sets it).
    """
    kwargs = dict(kwargs or {})
    if name == "CELoss":
        try:
            return nn.CrossEntropyLoss(**kwargs)
        except TypeError as err:
            raise CpclError(f"UniMatch criterion CELoss kwargs={kwargs}: {err}") from None
    if name == "OHEM":
        allowed = {"ignore_index", "thresh", "min_kept", "reduction", "use_weight"}
        unknown = sorted(set(kwargs) - allowed)
        if unknown or kwargs.get("use_weight", False):
            raise CpclError(
                f"UniMatch criterion OHEM kwargs={kwargs}: expected keys among {sorted(allowed)} "
                f"(use_weight=False, as in UniMatch)"
            )
        return ProbOhemCrossEntropy2d(
            ignore_label=int(kwargs.get("ignore_index", IGNORE)),
            reduction=kwargs.get("reduction", "mean"),
            thresh=float(kwargs.get("thresh", 0.7)),
            min_kept=int(kwargs.get("min_kept", 256)),
            use_weight=False,
        )
    raise CpclError(f"UniMatch criterion name={name!r}: expected 'CELoss' or 'OHEM'")


def pseudo_labels(pred: Tensor) -> tuple[Tensor, Tensor]:
    """(confidence, label) = (max softmax, argmax) over dim 1 of detached logits (B,C,H,W)."""
    pred = pred.detach()
    return pred.softmax(dim=1).max(dim=1)[0], pred.argmax(dim=1)


def cutmix_targets(
    box: Tensor, own: tuple[Tensor, ...], mix: tuple[Tensor, ...]
) -> tuple[Tensor, ...]:
    """Each tensor of `own` with the matching tensor of `mix` pasted where `box == 1`.

    Official lines 161-172: pseudo-label, confidence and ignore mask of the mixing image inside
    the box (all (B,H,W)); the inputs are not modified.
    """
    inside = box == 1
    return tuple(torch.where(inside, m, o) for o, m in zip(own, mix, strict=True))


def confident_ce(
    pred: Tensor, target: Tensor, conf: Tensor, ignore_mask: Tensor, conf_thresh: float
) -> tuple[Tensor, Tensor, Tensor]:
    """UniMatch's unlabeled loss: `sum(CE * (conf >= thr) * valid) / count(valid)`.

    `valid = ignore_mask != 255`. Returns (loss, denominator, number of selected pixels). The
    denominator counts every valid pixel (unconfident ones dilute the loss); an all-ignored
    batch divides by 0 as the official code does.
    """
    valid = ignore_mask != IGNORE
    selected = (conf >= conf_thresh) & valid
    ce = F.cross_entropy(pred, target, reduction="none")
    denom = valid.sum()
    return (ce * selected).sum() / denom, denom, selected.sum()


def criterion_from_config(C: Any, per_rank_batch: int) -> nn.Module:
    """The supervised criterion `C.sup_loss` names: OHEM (`ohem_thresh`, and
    `ohem_min_kept_per_image` x the images one process sees) or plain CE; both ignore
    `C.ignore_index` (UniMatch and UniMatch V2)."""
    ignore = int(C.get("ignore_index", 255))
    if C.sup_loss == "ohem":
        kwargs = {
            "ignore_index": ignore,
            "thresh": float(C.get("ohem_thresh", 0.7)),
            "min_kept": int(C.get("ohem_min_kept_per_image", 100000)) * per_rank_batch,
        }
        return build_criterion_l("OHEM", kwargs)
    return build_criterion_l("CELoss", {"ignore_index": ignore})


def check_loss_inputs(where: str, preds: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
    """CpclError (prefixed `where`) unless every prediction but `pred_x` has the (B,C,H,W)
    shape of `pred_u_w` and every mask is (B,H,W) of it (UniMatch and UniMatch V2 losses)."""
    ref = preds["pred_u_w"].shape
    if len(ref) != 4:
        raise CpclError(f"{where}: pred_u_w has shape {tuple(ref)}; expected (B,C,H,W)")
    for name, t in preds.items():
        if name != "pred_x" and t.shape != ref:
            raise CpclError(
                f"{where}: {name} has shape {tuple(t.shape)}; expected {tuple(ref)} like pred_u_w"
            )
    for name, t in masks.items():
        if t.shape != (ref[0], *ref[2:]):
            raise CpclError(
                f"{where}: {name} has shape {tuple(t.shape)}; expected "
                f"{(ref[0], *ref[2:])} (B,H,W of pred_u_w)"
            )


def unimatch_loss(
    pred_x: Tensor,
    mask_x: Tensor,
    pred_u_w: Tensor,
    pred_u_w_mix: Tensor,
    pred_u_s1: Tensor,
    pred_u_s2: Tensor,
    pred_u_w_fp: Tensor,
    cutmix_box1: Tensor,
    cutmix_box2: Tensor,
    ignore_mask: Tensor,
    ignore_mask_mix: Tensor,
    *,
    criterion_l: nn.Module,
    conf_thresh: float,
    weights: UniMatchLossWeights = OFFICIAL_LOSS_WEIGHTS,
) -> UniMatchLoss:
    """The loss of one UniMatch iteration from the network outputs.

    Args:
        pred_x, mask_x: labeled logits (B_l,C,H,W) and labels (B_l,H,W), 255 = ignore.
        pred_u_w: weak-view logits of the train-mode forward (detached here).
        pred_u_w_mix: weak-view logits of the mixing images (official: eval mode, no_grad).
        pred_u_s1, pred_u_s2: logits of the two (CutMixed) strong views.
        pred_u_w_fp: logits of the feature-perturbed weak view.
        cutmix_box1, cutmix_box2: (B,H,W) 0/1 boxes of the strong views.
        ignore_mask, ignore_mask_mix: (B,H,W) 0/255 crop-padding masks of the unlabeled and
            mixing images.
        criterion_l: supervised criterion (`build_criterion_l`).
        conf_thresh: pseudo-label confidence threshold (0.95 Pascal/COCO, 0 Cityscapes).
        weights: loss weights (official by default).
    """
    if not 0.0 <= float(conf_thresh) <= 1.0:
        raise CpclError(f"unimatch_loss conf_thresh={conf_thresh!r}: expected 0 <= value <= 1")
    check_loss_inputs(
        "unimatch_loss",
        {
            "pred_x": pred_x,
            "pred_u_w": pred_u_w,
            "pred_u_w_mix": pred_u_w_mix,
            "pred_u_s1": pred_u_s1,
            "pred_u_s2": pred_u_s2,
            "pred_u_w_fp": pred_u_w_fp,
        },
        {
            "cutmix_box1": cutmix_box1,
            "cutmix_box2": cutmix_box2,
            "ignore_mask": ignore_mask,
            "ignore_mask_mix": ignore_mask_mix,
        },
    )
    conf_u_w, mask_u_w = pseudo_labels(pred_u_w)
    conf_mix, mask_mix = pseudo_labels(pred_u_w_mix)
    own, mix = (mask_u_w, conf_u_w, ignore_mask), (mask_mix, conf_mix, ignore_mask_mix)
    mask1, conf1, ign1 = cutmix_targets(cutmix_box1, own, mix)
    mask2, conf2, ign2 = cutmix_targets(cutmix_box2, own, mix)

    loss_x = criterion_l(pred_x, mask_x)
    loss_s1, denom_s1, sel_s1 = confident_ce(pred_u_s1, mask1, conf1, ign1, conf_thresh)
    loss_s2, denom_s2, sel_s2 = confident_ce(pred_u_s2, mask2, conf2, ign2, conf_thresh)
    loss_fp, denom_fp, sel_fp = confident_ce(
        pred_u_w_fp, mask_u_w, conf_u_w, ignore_mask, conf_thresh
    )
    w = weights
    loss = (w.x * loss_x + w.s1 * loss_s1 + w.s2 * loss_s2 + w.fp * loss_fp) / w.divisor
    return UniMatchLoss(
        loss=loss,
        loss_x=loss_x,
        loss_u_s1=loss_s1,
        loss_u_s2=loss_s2,
        loss_u_w_fp=loss_fp,
        mask_ratio=sel_fp / denom_fp,
        conf_u_w=conf_u_w,
        mask_u_w=mask_u_w,
        conf_u_w_mix=conf_mix,
        mask_u_w_mix=mask_mix,
        mask_u_w_cutmixed1=mask1,
        conf_u_w_cutmixed1=conf1,
        ignore_mask_cutmixed1=ign1,
        mask_u_w_cutmixed2=mask2,
        conf_u_w_cutmixed2=conf2,
        ignore_mask_cutmixed2=ign2,
        denom_s1=denom_s1,
        denom_s2=denom_s2,
        denom_fp=denom_fp,
        num_selected_s1=sel_s1,
        num_selected_s2=sel_s2,
        num_selected_fp=sel_fp,
    )
