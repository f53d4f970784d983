"""Training: one CPCL / CPS / supervised-only iteration (`train_step`).

The iteration reproduces the official loop body of `exp_voc/train.py` (forward order, BN
running statistics, losses, one backward, two SGD steps) while keeping everything on the
device: nothing in `train_step` syncs with the host, so logging decides when to call `.item()`.
(The one exception is amp="fp16": `GradScaler.step` reads its inf/NaN check back to the host.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .errors import CpclError
from .losses import cpcl_pseudo_supervision, cps_loss
from .optim import set_lr

METHODS = ("cpcl", "cps", "sup")
AMP_MODES = ("none", "bf16", "fp16")
BATCH_KEYS_SUP = ("img", "gt")
BATCH_KEYS_UNSUP = ("img_u0", "img_u1", "mask")


def _autocast(amp: str, device_type: str) -> contextlib.AbstractContextManager:
    """The autocast context of `amp` for the forwards (loss maths stays in float32)."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)


def _logits(out: Tensor | tuple | list) -> Tensor:
    """Logits from a forward that returns either the logits or `(feature, logits)`."""
    return out[-1] if isinstance(out, (tuple, list)) else out


def _check_args(method: str, amp: str, scaler: Any, batch: Mapping[str, Tensor]) -> None:
    if method not in METHODS:
        raise CpclError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    if amp not in AMP_MODES:
        raise CpclError(f"amp={amp!r}: expected one of {', '.join(AMP_MODES)}")
    if amp == "fp16" and scaler is None:
        raise CpclError("amp='fp16' needs a GradScaler (scaler=torch.amp.GradScaler(...))")
    if amp != "fp16" and scaler is not None:
        raise CpclError(f"scaler is only used with amp='fp16', got amp={amp!r}")
    needed = BATCH_KEYS_SUP + (BATCH_KEYS_UNSUP if method != "sup" else ())
    missing = [k for k in needed if k not in batch]
    if missing:
        raise CpclError(f"batch is missing {missing}; expected keys {list(needed)}")


def _teacher_logits(
    model: nn.Module, u0: Tensor, u1: Tensor, step: int, fused: bool
) -> tuple[Tensor, Tensor]:
    """Teacher logits on u0 and u1 (caller holds no_grad; the model stays in train mode).

    `fused=True` runs u0 and u1 as one batch: faster, but BN then normalises with the
    statistics of both batches together and updates its running statistics once instead of
    twice, so the result is NOT the official one.
    """
    if fused:
        both = _logits(model(torch.cat([u0, u1], dim=0), step=step))
        return both[: u0.shape[0]], both[u0.shape[0] :]
    return _logits(model(u0, step=step)), _logits(model(u1, step=step))


def _forward_and_losses(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    sup_criterion: nn.Module,
    unsup_weight: float,
    method: str,
    fused_teacher: bool,
    aux: dict[str, Tensor] | None,
) -> dict[str, Tensor]:
    """The 8 (or 2 for "sup") forwards in the official order and the loss terms."""
    img, gt = batch["img"], batch["gt"]
    # The official call order fixes how the BN running statistics evolve: sup 1, sup 2,
    # teacher 1 (u0, u1), teacher 2 (u0, u1), student 1, student 2.
    sup_1 = _logits(model(img, step=1))
    sup_2 = _logits(model(img, step=2))
    zero = torch.zeros((), device=img.device, dtype=torch.float32)
    terms = {
        "loss_sup_1": sup_criterion(sup_1.float(), gt),
        "loss_sup_2": sup_criterion(sup_2.float(), gt),
        "loss_unsup": zero,
        "loss_unsup_inter": zero,
        "loss_unsup_union": zero,
        "loss_cps": zero,
        "overlap": zero.double(),
    }
    if aux is not None:
        aux.update(logits_sup_1=sup_1.detach(), logits_sup_2=sup_2.detach())
    if method == "sup":
        return terms

    u0, u1, mask = batch["img_u0"], batch["img_u1"], batch["mask"]
    mask = mask.to(u0.dtype)
    mixed = u0 * (1 - mask) + u1 * mask
    with torch.no_grad():
        tu0_1, tu1_1 = _teacher_logits(model, u0, u1, 1, fused_teacher)
        tu0_2, tu1_2 = _teacher_logits(model, u0, u1, 2, fused_teacher)
        # Mix the teacher LOGITS with the same mask, in float32 as the official code.
        m = mask.float()
        t1 = tu0_1.float() * (1 - m) + tu1_1.float() * m
        t2 = tu0_2.float() * (1 - m) + tu1_2.float() * m
    stu_1 = _logits(model(mixed, step=1))
    stu_2 = _logits(model(mixed, step=2))
    if method == "cpcl":
        out = cpcl_pseudo_supervision(t1, t2, stu_1, stu_2, num_classes=t1.shape[1])
        terms["loss_unsup_inter"] = out["loss_inter"]
        terms["loss_unsup_union"] = out["loss_union"]
        terms["overlap"] = out["overlap"]
        terms["loss_unsup"] = unsup_weight * (out["loss_inter"] + out["loss_union"])
        if aux is not None:
            aux.update({k: v for k, v in out.items() if not k.startswith("loss")})
    else:
        terms["loss_cps"] = cps_loss(t1, t2, stu_1, stu_2)
        with torch.no_grad():
            terms["overlap"] = (t1.argmax(1) == t2.argmax(1)).double().mean()
        terms["loss_unsup"] = unsup_weight * terms["loss_cps"]
    if aux is not None:
        aux.update(
            unsup_imgs_mixed=mixed,
            logits_u0_tea_1=tu0_1,
            logits_u1_tea_1=tu1_1,
            logits_u0_tea_2=tu0_2,
            logits_u1_tea_2=tu1_2,
            logits_cons_tea_1=t1,
            logits_cons_tea_2=t2,
            logits_cons_stu_1=stu_1.detach(),
            logits_cons_stu_2=stu_2.detach(),
        )
    return terms


def train_step(
    model: nn.Module,
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    batch: Mapping[str, Tensor],
    lr: float,
    *,
    sup_criterion: nn.Module,
    unsup_weight: float,
    method: str = "cpcl",
    amp: str = "none",
    scaler: torch.amp.GradScaler | None = None,
    grad_sync: Callable[[], None] | None = None,
    fused_teacher: bool = False,
    aux: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Run one training iteration and update both branches.

    Args:
        model: a two-branch `cpcl.models.Network` in train mode (`model(x, step=1|2)`).
        optimizers: `(opt1, opt2)` for branch 1 and branch 2 (see `cpcl.optim.build_optimizers`).
        batch: tensors already on the model's device: `img` (B,3,H,W), `gt` (B,H,W) int64, and
            for cpcl/cps `img_u0`, `img_u1` (B,3,H,W) and `mask` (B,1,H,W), 1 = take from u1.
        lr: learning rate written into every parameter group.
        sup_criterion: supervised loss, e.g. `CrossEntropyLoss(ignore_index=255)` or OHEM.
        unsup_weight: factor of the unsupervised loss (VOC 1, Cityscapes 5).
        method: "cpcl" (official), "cps" (cross pseudo supervision baseline) or "sup"
            (labelled images only; the unlabelled forwards are skipped).
        amp: "none" (float32, faithful), "bf16" (autocast bfloat16, no scaler) or "fp16"
            (autocast float16 with `scaler`, one GradScaler shared by both optimisers).
        scaler: the GradScaler for amp="fp16".
        grad_sync: called once between backward and the optimiser steps (e.g. the DDP gradient
            all-reduce). With fp16 the gradients it sees are still scaled.
        fused_teacher: NON-faithful speed opt-in: u0 and u1 go through each teacher in one
            forward, which changes the BN batch statistics and the running-statistics updates.
            Ignored for method "sup" (no teachers).
        aux: optional dict that receives diagnostic tensors (mixed image, the 8 logits,
            pseudo labels, class weights); for tests and debugging.

    Returns detached 0-dim tensors (no host sync): `loss`, `loss_sup_1`, `loss_sup_2`,
    `loss_unsup` (weighted), `loss_unsup_inter`, `loss_unsup_union`, `loss_cps`, `overlap`.
    Terms that do not apply to `method` are 0 (for cps, `overlap` is the plain fraction of
    pixels where the two teachers agree).
    """
    _check_args(method, amp, scaler, batch)
    opt1, opt2 = optimizers

    for opt in (opt1, opt2):
        set_lr(opt, lr)
        opt.zero_grad(set_to_none=True)

    # One autocast region for all forwards so each weight is cast to the low-precision dtype
    # once per iteration (the cast cache lives until the outermost region exits). The cache
    # is first filled by the supervised forwards, in grad mode, so the casts that the no-grad
    # teachers and then the students reuse still carry gradients back to the fp32 weights.
    # The loss maths casts its inputs to float32, so autocast leaves it untouched.
    with _autocast(amp, batch["img"].device.type):
        terms = _forward_and_losses(
            model, batch, sup_criterion, unsup_weight, method, fused_teacher, aux
        )
    loss_sup_1, loss_sup_2, unsup = terms["loss_sup_1"], terms["loss_sup_2"], terms["loss_unsup"]
    loss = loss_sup_1 + loss_sup_2 + unsup
    if amp == "fp16":
        scaler.scale(loss).backward()
        if grad_sync is not None:
            grad_sync()
        scaler.step(opt1)
        scaler.step(opt2)
        scaler.update()
    else:
        loss.backward()
        if grad_sync is not None:
            grad_sync()
        opt1.step()
        opt2.step()

    return {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}
