"""One CoSA training iteration as a plain function (official `main.py:114-252`).

Order (all of it as the official loop, `usegmm`/`use_cammix`/`aux_seg2cam` off, PAR off):
1. teacher `multi_scale_camseg(wimg)` under `no_grad`, in whatever mode the teacher is (the
   official teacher is never switched to eval);
2. student forward on `simg`; `cls_loss`, `cls_loss_aux` (multi-label soft margin);
3. `mask = cam2mask(cam_validation(teacher cam))` with the high/low thresholds, and with
   `aux_cam2seg` the aux mask from the teacher aux CAM with the aux thresholds;
4. the student seg logits upsampled bilinear to the mask size (before the seg **and** the
   energy loss); `seg_loss` (combined 0.5/0.5 with the aux mask);
5. `reg_loss = energy_loss(simg, seg, mask, img_box)` (shape (1,), non-aux mask);
6. `cam_loss(student cam, seg_refine_by_label(teacher seg))` (v1);
7. loss = cls + cls_aux + w_seg seg + w_cam cam + w_reg reg, the last three weighted 0.0 while
   `n_iter <= warmup_iters`; backward; AdamW step at the LRs of `global_step`; EMA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CpclError
from .energy import energy_loss
from .losses import cam_loss, cls_loss, seg_loss
from .optim import cosa_lrs, ema_update, loss_weights, set_lrs
from .pseudo import cam2mask, cam_validation, multi_scale_camseg, seg_refine_by_label

__all__ = [
    "COSA_SETTINGS",
    "CoSAStepSettings",
    "cosa_forward_loss",
    "cosa_settings",
    "cosa_train_step",
]

EnergyFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CoSAStepSettings:
    """The official arguments one iteration reads (VOC values from `run_voc.sh` by default)."""

    lr: float = 6e-5
    lrscale: float = 10.0
    max_iters: int = 32000
    min_mult: float = 0.0
    warmup_iters: int = 6000  # loss warm-up (the LR warm-up is the fixed 1500)
    high_thre: float = 0.7
    low_thre: float = 0.25
    high_thre_aux: float = 0.7
    low_thre_aux: float = 0.25
    pseudo_scales: Sequence[float] = (1.0, 0.5, 1.5)
    par_downscale: int = 2
    segfg_alpha: float = 0.5
    aux_cam2seg: bool = True
    aux_cam2seg_alpha: float = 0.5
    seg_softmaxtemp: float = 0.01
    after_softmax: bool = False
    seg_weight: float = 0.1
    cam_weight: float = 0.05
    reg_weight: float = 0.05
    momentum: float = 0.9994


# Official settings per dataset: VOC = `args.py` overridden by `run_voc.sh` (max_iters 32000,
# aux_layer -4), COCO = `args_coco.py` (aux_layer -3). aux_layer is a network setting.
COSA_SETTINGS: dict[str, CoSAStepSettings] = {
    "voc": CoSAStepSettings(),
    "coco": CoSAStepSettings(max_iters=60000, warmup_iters=10000, high_thre=0.65),
}


def cosa_settings(dataset: str, **overrides: object) -> CoSAStepSettings:
    """The official step settings of `dataset` ('voc' or 'coco') with `overrides` applied."""
    if dataset not in COSA_SETTINGS:
        raise CpclError(f"CoSA settings for {dataset!r}: expected one of {sorted(COSA_SETTINGS)}")
    try:
        return replace(COSA_SETTINGS[dataset], **overrides)
    except TypeError as err:
        raise CpclError(f"CoSA settings override {sorted(overrides)}: {err}") from err


def cosa_forward_loss(
    student: nn.Module,
    teacher: nn.Module,
    wimg: torch.Tensor,
    simg: torch.Tensor,
    cls_label: torch.Tensor,
    img_box: torch.Tensor,
    n_iter: int,
    settings: CoSAStepSettings = CoSAStepSettings(),
    *,
    energy_fn: EnergyFn | None = None,
) -> dict[str, torch.Tensor]:
    """Steps 1-7 of one iteration without the update: the forwards and losses.

    `n_iter` is the 0-based loop index (loss warm-up). `energy_fn(img, logit, label, img_box)`
    defaults to `cpcl.methods.cosa.energy.energy_loss`. Returns `loss` (shape (1,), as the
    official one, with its graph), the detached loss parts, the masks, the teacher pseudo labels
    and the student outputs (detached).
    """
    s = settings
    if wimg.shape != simg.shape:
        raise CpclError(f"CoSA step: wimg {tuple(wimg.shape)} and simg {tuple(simg.shape)} differ")
    energy = energy_fn if energy_fn is not None else energy_loss

    cam_ps, cam_aux_ps, seg_ps = multi_scale_camseg(teacher, wimg, s.pseudo_scales)
    cls, cls_aux, _, seg_pred, cam_pred, cam_aux_pred = student(simg, cam_only=False)
    loss_cls = cls_loss(cls, cls_label)
    loss_cls_aux = cls_loss(cls_aux, cls_label)

    def pseudo_mask(cam: torch.Tensor, high: float, low: float) -> torch.Tensor:
        # `images` only gives the shape; the official passes the denormalised simg.
        with torch.no_grad():
            valid = cam_validation(cam, cls_label)
            return cam2mask(simg, img_box, valid, cls_label, high, low, downscale=s.par_downscale)

    mask = pseudo_mask(cam_ps, s.high_thre, s.low_thre)
    seg_up = F.interpolate(seg_pred, size=mask.shape[1:], mode="bilinear", align_corners=False)
    loss_seg = seg_loss(seg_up, mask, fg_alpha=s.segfg_alpha)
    mask_aux, loss_seg_aux = None, None
    if s.aux_cam2seg:
        mask_aux = pseudo_mask(cam_aux_ps, s.high_thre_aux, s.low_thre_aux)
        loss_seg_aux = seg_loss(seg_up, mask_aux, fg_alpha=s.segfg_alpha)
        loss_seg = (1 - s.aux_cam2seg_alpha) * loss_seg + s.aux_cam2seg_alpha * loss_seg_aux

    loss_reg = energy(simg, seg_up, mask, img_box)
    with torch.no_grad():
        seg_refined = seg_refine_by_label(
            seg_ps, cls_label, softmaxtemp=s.seg_softmaxtemp, after_softmax=s.after_softmax
        )
    loss_cam = cam_loss(cam_pred, seg_refined)

    w = loss_weights(
        n_iter, s.warmup_iters, seg_weight=s.seg_weight, cam_weight=s.cam_weight,
        reg_weight=s.reg_weight,
    )  # fmt: skip
    loss = (
        w["cls"] * loss_cls
        + w["cls_aux"] * loss_cls_aux
        + w["seg"] * loss_seg
        + w["cam"] * loss_cam
        + w["reg"] * loss_reg
    )
    out: dict[str, torch.Tensor] = {
        "loss": loss,
        "cls_loss": loss_cls.detach(),
        "cls_loss_aux": loss_cls_aux.detach(),
        "seg_loss": loss_seg.detach(),
        "cam_loss": loss_cam.detach(),
        "reg_loss": loss_reg.detach(),
        "mask": mask,
        "teacher_cam": cam_ps,
        "teacher_cam_aux": cam_aux_ps,
        "teacher_seg": seg_ps,
        "student_cls": cls.detach(),
        "student_cls_aux": cls_aux.detach(),
        "student_seg": seg_pred.detach(),
        "student_cam": cam_pred.detach(),
        "student_cam_aux": cam_aux_pred.detach(),
    }
    if mask_aux is not None:
        out["mask_aux"] = mask_aux
        out["seg_loss_aux"] = loss_seg_aux.detach()
    return out


def cosa_train_step(
    student: nn.Module,
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
    wimg: torch.Tensor,
    simg: torch.Tensor,
    cls_label: torch.Tensor,
    img_box: torch.Tensor,
    n_iter: int,
    global_step: int,
    settings: CoSAStepSettings = CoSAStepSettings(),
    *,
    energy_fn: EnergyFn | None = None,
) -> dict[str, torch.Tensor | list[float]]:
    """Run one iteration in place (student update + EMA teacher); return its values.

    `student` may be a DDP wrapper (its `.module` is used for the EMA, as `main.py:251`).
    `n_iter` is the 0-based loop index (loss warm-up), `global_step` the optimiser's step count
    before this step (LR schedule); the official loop has them equal. The forwards and losses are
    `cosa_forward_loss`. Returns its values (`loss` detached) and `lr_used`.
    """
    s = settings
    out: dict[str, torch.Tensor | list[float]] = dict(
        cosa_forward_loss(
            student, teacher, wimg, simg, cls_label, img_box, n_iter, s, energy_fn=energy_fn
        )
    )
    loss = out["loss"]
    optimizer.zero_grad()
    loss.backward()
    lrs = cosa_lrs(global_step, s.lr, s.max_iters, lrscale=s.lrscale, min_mult=s.min_mult)
    set_lrs(optimizer, lrs)
    optimizer.step()
    ema_update(teacher, getattr(student, "module", student), s.momentum)
    out["loss"] = loss.detach()
    out["lr_used"] = lrs
    return out
