"""The forwards of one UniMatch iteration (`unimatch.py:135-188`), without backward or step.

Order and modes as in the official loop:

1. `model.eval()`, `no_grad`: `pred_u_w_mix = model(img_u_w_mix)` (BN running statistics);
2. CutMix of the strong images: inside box k, `img_u_sk` takes `img_u_sk_mix` (the mixing
   sample's own strong view k);
3. `model.train()`: one forward with feature perturbation on `cat(img_x, img_u_w)`
   (BN batch statistics over labeled and unlabeled images; the FP outputs of the labeled
   images are dropped);
4. one forward on `cat(img_u_s1, img_u_s2)`;
5. `unimatch_loss` on the results.

The FP dropout masks are drawn from the torch global RNG during step 3, as in the official code.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ...errors import CpclError
from .losses import (
    OFFICIAL_LOSS_WEIGHTS,
    UniMatchLoss,
    UniMatchLossWeights,
    unimatch_loss,
)
from .views import UNLABELED_KEYS

__all__ = ["BATCH_KEYS", "cutmix_images", "unimatch_forward_loss"]

BATCH_KEYS = ("img_x", "mask_x", *UNLABELED_KEYS)


def cutmix_images(img: Tensor, img_mix: Tensor, box: Tensor) -> Tensor:
    """`img` (B,3,H,W) with `img_mix` pasted where `box` (B,H,W) is 1 (a new tensor)."""
    if box.shape != (img.shape[0], *img.shape[2:]) or img_mix.shape != img.shape:
        raise CpclError(
            f"cutmix_images: image {tuple(img.shape)}, mixing image {tuple(img_mix.shape)} and "
            f"box {tuple(box.shape)} do not fit; expected (B,3,H,W), (B,3,H,W), (B,H,W)"
        )
    return torch.where(box.unsqueeze(1) == 1, img_mix, img)


def unimatch_forward_loss(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    *,
    criterion_l: nn.Module,
    conf_thresh: float,
    weights: UniMatchLossWeights = OFFICIAL_LOSS_WEIGHTS,
) -> UniMatchLoss:
    """Forwards and losses of one iteration; `model(x, need_fp)` is UniMatch's network (or DDP).

    `batch` holds `BATCH_KEYS`: normalised images (B,3,H,W), `mask_x` (B,H,W) int64, the 0/255
    ignore masks and the 0/1 boxes (B,H,W). The model is left in train mode.
    """
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise CpclError(f"unimatch_forward_loss: batch lacks {missing}")
    b = batch
    with torch.no_grad():
        model.eval()
        pred_u_w_mix = model(b["img_u_w_mix"]).detach()
    img_u_s1 = cutmix_images(b["img_u_s1"], b["img_u_s1_mix"], b["cutmix_box1"])
    img_u_s2 = cutmix_images(b["img_u_s2"], b["img_u_s2_mix"], b["cutmix_box2"])
    model.train()
    num_lb, num_ulb = b["img_x"].shape[0], b["img_u_w"].shape[0]
    preds, preds_fp = model(torch.cat((b["img_x"], b["img_u_w"])), True)
    pred_x, pred_u_w = preds.split([num_lb, num_ulb])
    pred_u_w_fp = preds_fp[num_lb:]
    pred_u_s1, pred_u_s2 = model(torch.cat((img_u_s1, img_u_s2))).chunk(2)
    return unimatch_loss(
        pred_x,
        b["mask_x"],
        pred_u_w,
        pred_u_w_mix,
        pred_u_s1,
        pred_u_s2,
        pred_u_w_fp,
        b["cutmix_box1"],
        b["cutmix_box2"],
        b["ignore_mask"],
        b["ignore_mask_mix"],
        criterion_l=criterion_l,
        conf_thresh=conf_thresh,
        weights=weights,
    )
