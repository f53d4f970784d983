"""The forwards of one UniMatch V2 iteration (`unimatch_v2.py:166-204`), without backward, step
or EMA update (the engine and `schedule` do those).

Order as in the official loop:

1. the EMA teacher (eval mode, `no_grad`) on the weak view: `pred_u_w`;
2. CutMix of the strong images with the batch flipped along dim 0 (`img[box] = img.flip(0)[box]`
   on every channel);
3. the student on the labeled images: `pred_x`;
4. the student on `cat(img_u_s1, img_u_s2)` with `comp_drop=True` (complementary channel
   dropout of pairs (s1_i, s2_i); draws from `generator`, or `drop_masks` given), split in two;
5. `unimatch_v2_loss`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ...errors import CpclError
from ..unimatch.step import cutmix_images
from .losses import UniMatchV2Loss, unimatch_v2_loss
from .views import BATCH_KEYS

__all__ = ["unimatch_v2_forward_loss"]


def unimatch_v2_forward_loss(
    model: nn.Module,
    teacher: nn.Module,
    batch: Mapping[str, Tensor],
    *,
    criterion_l: nn.Module,
    conf_thresh: float,
    generator: torch.Generator | None = None,
    drop_masks: Tensor | None = None,
) -> UniMatchV2Loss:
    """Forwards and losses of one iteration.

    `model(x, comp_drop=..., generator=..., drop_masks=...)` is the student (UniMatch V2's
    network, or a wrapper passing the keywords on), `teacher` the EMA network. `batch` holds
    `views.BATCH_KEYS`: normalised images (B,3,H,W), `gt` (B,H,W) int64, the 0/255 ignore mask
    and the 0/1 boxes (B,H,W).
    """
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise CpclError(f"unimatch_v2_forward_loss: batch lacks {missing}")
    b = batch
    with torch.no_grad():
        pred_u_w = teacher(b["img_u_w"]).detach()
    img_u_s1 = cutmix_images(b["img_u_s1"], b["img_u_s1"].flip(0), b["cutmix_box1"])
    img_u_s2 = cutmix_images(b["img_u_s2"], b["img_u_s2"].flip(0), b["cutmix_box2"])
    pred_x = model(b["img"])
    strong = model(
        torch.cat((img_u_s1, img_u_s2)), comp_drop=True, generator=generator, drop_masks=drop_masks
    )
    pred_u_s1, pred_u_s2 = strong.chunk(2)
    return unimatch_v2_loss(
        pred_x,
        b["gt"],
        pred_u_w,
        pred_u_s1,
        pred_u_s2,
        b["cutmix_box1"],
        b["cutmix_box2"],
        b["ignore_mask"],
        criterion_l=criterion_l,
        conf_thresh=conf_thresh,
    )
