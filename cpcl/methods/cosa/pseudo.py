"""CoSA's teacher pseudo labels (official `utils/seg_helper.py:232-274, 547-568, 721-797`).

* `multi_scale_camseg`: multi-scale + flip teacher CAMs (max over the flip, ReLU, summed over
  scales, min-max normalised with `+1e-5`), aux CAMs (**last scale only** - the official list
  is re-assigned, not appended) and seg logits (summed over scales and the flip, no softmax).
* `cam_validation`: CAM channels times the 0/1 image labels.
* `cam2mask`: [threshold map, CAMs] at half resolution, softmax over [bg, present classes],
  the **probabilities** upsampled bilinear, argmax; 255 outside `img_box`; high/low merge.
  The output is float32, as the official one.
* `seg_refine_by_label`: absent-class logits set to -1e5, then `softmax(seg / temp)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ...errors import CpclError

__all__ = [
    "cam2mask",
    "cam_validation",
    "minmax_normalise",
    "multi_scale_camseg",
    "seg_refine_by_label",
]


def minmax_normalise(cam: torch.Tensor) -> torch.Tensor:
    """Per (image, class): subtract the min, divide by the max + 1e-5 (`seg_helper.py:264-266`)."""
    cam = cam + F.adaptive_max_pool2d(-cam, (1, 1))
    return cam / (F.adaptive_max_pool2d(cam, (1, 1)) + 1e-5)


def multi_scale_camseg(
    model: Callable[..., tuple[torch.Tensor, ...]],
    imgs: torch.Tensor,
    scales: Sequence[float],
    *,
    aux_all_scales: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher `(cam, cam_aux, seg)` at the input size, under `no_grad` (model mode untouched).

    `aux_all_scales=True` sums the aux CAM over every scale (the evident intent); the default
    reproduces the official code, where `cam_aux` comes from the last scale only.
    """
    scales = [float(s) for s in scales]
    if 1.0 not in scales:
        raise CpclError(f"multi_scale_camseg scales {scales}: 1.0 must be among them")
    b, _, h, w = imgs.shape
    cam_list, cam_aux_list, seg_list = [], [], []
    with torch.no_grad():
        for s in scales:
            if s != 1.0:
                size = (int(s * h), int(s * w))
                imgs_ = F.interpolate(imgs, size=size, mode="bilinear", align_corners=False)
            else:
                imgs_ = imgs
            _, _, _, seg, cam, cam_aux = model(torch.cat([imgs_, imgs_.flip(-1)], dim=0))
            cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)
            cam = torch.max(cam[:b], cam[b:].flip(-1))
            cam_aux = F.interpolate(cam_aux, size=(h, w), mode="bilinear", align_corners=False)
            cam_aux = torch.max(cam_aux[:b], cam_aux[b:].flip(-1))
            cam_list.append(F.relu(cam))
            if aux_all_scales:
                cam_aux_list.append(F.relu(cam_aux))
            else:
                cam_aux_list = [F.relu(cam_aux)]  # official quirk: re-assigned each scale
            seg = F.interpolate(seg, size=(h, w), mode="bilinear", align_corners=False)
            seg_list.append(torch.stack([seg[:b], seg[b:].flip(-1)], dim=0).sum(dim=0))
        cam = minmax_normalise(torch.stack(cam_list, dim=0).sum(dim=0))
        cam_aux = minmax_normalise(torch.stack(cam_aux_list, dim=0).sum(dim=0))
        seg = torch.stack(seg_list, dim=0).sum(dim=0)
    return cam, cam_aux, seg


def cam_validation(cam: torch.Tensor, cls_label: torch.Tensor) -> torch.Tensor:
    """CAM (B,C-1,H,W) times the 0/1 labels (B,C-1)."""
    if cls_label.shape != cam.shape[:2]:
        raise CpclError(
            f"cam_validation: labels {tuple(cls_label.shape)} do not fit CAM {tuple(cam.shape)}"
        )
    return cls_label[:, :, None, None] * cam


def _check_boxes(img_box: torch.Tensor, b: int) -> None:
    if img_box.dim() != 2 or img_box.shape != (b, 4):
        raise CpclError(
            f"img_box of shape {tuple(img_box.shape)}: expected ({b}, 4) (y0, y1, x0, x1)"
        )


def cam2mask(
    images: torch.Tensor,
    img_box: torch.Tensor,
    cams: torch.Tensor,
    cls_labels: torch.Tensor,
    threshold_high: float,
    threshold_low: float,
    *,
    ignore_index: int = 255,
    downscale: int = 2,
) -> torch.Tensor:
    """Pseudo mask (B,H,W) float32 from validated CAMs (`seg_helper.py:721-797`, no PAR).

    `images` is used for its shape only (the official PAR refiner is off). Inside `img_box`
    (y0, y1, x0, x1) each image gets the argmax class of the softmax over [threshold, present
    CAMs], computed at `1/downscale` resolution and upsampled as probabilities; outside it 255.
    High/low merge: start from high; high == 0 -> 255; high + low == 0 -> 0.
    """
    b, _, h, w = images.shape
    _check_boxes(img_box, b)
    if cams.shape[0] != b or cams.shape[2:] != (h, w):
        raise CpclError(
            f"cam2mask: CAMs {tuple(cams.shape)} do not fit images {tuple(images.shape)}"
        )
    ones = torch.ones((b, 1, h, w), device=cams.device)  # float32, as the official threshold map
    stacks = []
    for thr in (threshold_high, threshold_low):
        stack = torch.cat([ones * thr, cams], dim=1)
        if downscale:
            size = [h // downscale, w // downscale]
            stack = F.interpolate(stack, size=size, mode="bilinear", align_corners=False)
        stacks.append(stack)
    labels_bg = torch.cat([torch.ones((b, 1), device=cls_labels.device), cls_labels], dim=1)
    # Host reads once per call, not once per threshold: the boxes and each image's classes.
    boxes = img_box.tolist()
    presents = [torch.nonzero(labels_bg[i])[:, 0] for i in range(b)]
    masks = []
    for stack in stacks:
        mask = ones.squeeze(1) * ignore_index
        for i, (y0, y1, x0, x1) in enumerate(boxes):
            present = presents[i]
            probs = stack[i, present].unsqueeze(0).softmax(dim=1)
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
            label = present[probs.argmax(dim=1)]
            mask[i, y0:y1, x0:x1] = label[0, y0:y1, x0:x1].to(mask.dtype)
        masks.append(mask)
    high, low = masks
    out = high.clone()
    # masked_fill_, not `out[mask] = v`: the same values without a host sync.
    out.masked_fill_(high == 0, ignore_index)
    out.masked_fill_((high + low) == 0, 0)
    return out


def seg_refine_by_label(
    seg: torch.Tensor, cls_label: torch.Tensor, softmaxtemp: float, after_softmax: bool = False
) -> torch.Tensor:
    """Teacher seg logits (B,C,H,W) -> label-refined probabilities (`seg_helper.py:553-568`).

    Default: absent classes (background always present) get -1e5, then `softmax(seg / temp)`.
    `after_softmax=True`: softmax first, then multiply by the 0/1 labels.
    """
    b, c = seg.shape[:2]
    if cls_label.shape != (b, c - 1):
        raise CpclError(
            f"seg_refine_by_label: labels {tuple(cls_label.shape)} do not fit seg {tuple(seg.shape)}"
        )
    labels_bg = torch.cat(
        [torch.ones(b, 1, dtype=torch.long, device=seg.device), cls_label.long()], 1
    )
    if after_softmax:
        return labels_bg[:, :, None, None] * F.softmax(seg / softmaxtemp, dim=1)
    valid = seg.clone()
    valid.masked_fill_((labels_bg == 0)[:, :, None, None], -1e5)  # no host sync
    return F.softmax(valid / softmaxtemp, dim=1)
