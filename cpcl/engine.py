"""Training: one CPCL / CPS / supervised-only iteration (`train_step`), the epoch loop
(`train_one_epoch`), the whole run (`fit`) and the command line of `exp_*/train.py` (`main`).

The iteration reproduces the official loop body of `exp_voc/train.py` (forward order, BN
running statistics, losses, one backward, two SGD steps) while keeping everything on the
device: nothing in `train_step` syncs with the host, so logging decides when to call `.item()`.
(The one exception is amp="fp16": `GradScaler.step` reads its inf/NaN check back to the host.)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import __version__
from .checkpoint import load_checkpoint, load_weights, save_checkpoint
from .config import apply_overrides, finalize, to_plain
from .data.datasets import build_dataset
from .data.loaders import build_train_loader
from .data.splits import check_disjoint
from .dist import (
    DistInfo,
    StopFlag,
    allreduce_grads,
    broadcast_module,
    cleanup,
    init_distributed,
    maybe_sync_batchnorm,
)
from .errors import CheckpointError, CpclError
from .losses import at_least_float32, build_sup_criterion, cpcl_pseudo_supervision, cps_loss
from .models import Network
from .optim import WarmUpPolyLR, build_optimizers, set_lr
from .runlog import Scalars, setup_logger, write_run_info

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
    zero = torch.zeros((), device=img.device, dtype=torch.promote_types(sup_1.dtype, torch.float32))
    terms = {
        "loss_sup_1": sup_criterion(at_least_float32(sup_1), gt),
        "loss_sup_2": sup_criterion(at_least_float32(sup_2), gt),
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
        # Mix the teacher LOGITS with the same mask, in float32 (float64 for a float64 model)
        # as the official code.
        m = mask.to(torch.promote_types(tu0_1.dtype, torch.float32))
        t1 = at_least_float32(tu0_1) * (1 - m) + at_least_float32(tu1_1) * m
        t2 = at_least_float32(tu0_2) * (1 - m) + at_least_float32(tu1_2) * m
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


# ---------------------------------------------------------------------------------------------
# The loop: train_one_epoch, fit, and the command-line entry used by exp_*/train.py
# ---------------------------------------------------------------------------------------------

LOG_KEYS = ("loss", "loss_sup_1", "loss_sup_2", "loss_unsup_inter", "loss_unsup_union", "overlap")
_SHORT = {
    "loss": "loss",
    "loss_sup_1": "sup1",
    "loss_sup_2": "sup2",
    "loss_unsup_inter": "inter",
    "loss_unsup_union": "union",
    "overlap": "overlap",
}


class NonFiniteLossError(CpclError):
    """A loss became NaN or inf; the message names the iteration and every loss part."""


@dataclass
class TrainState:
    """Everything `train_one_epoch` needs besides the model and the data."""

    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer]
    scheduler: WarmUpPolyLR
    sup_criterion: nn.Module
    C: Any
    device: torch.device
    scaler: torch.amp.GradScaler | None = None
    grad_sync: Callable[[], None] | None = None
    stop: StopFlag | None = None
    scalars: Scalars | None = None
    is_main: bool = True


def _to_device(batch: Mapping[str, Tensor], device: torch.device, channels_last: bool) -> dict:
    out = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        if channels_last and value.dim() == 4 and value.shape[1] == 3:
            value = value.contiguous(memory_format=torch.channels_last)
        out[key] = value
    return out


def train_one_epoch(
    model: nn.Module, loader: Any, state: TrainState, *, epoch: int, start_iter: int = 0
) -> tuple[dict[str, float], int]:
    """Train one epoch (from `start_iter`); return the epoch's mean losses and iterations done.

    Scalars stay on the device: the host reads them only every `C.display_iter` iterations
    and at the end, where the non-finite check also happens. A stop request (signal) ends
    the epoch early at an iteration boundary; the caller sees `done < len(loader)`.
    """
    C = state.C
    niters = len(loader)
    model.train()
    loader.set_epoch(epoch, start_iter)
    sums = torch.zeros(len(LOG_KEYS), dtype=torch.float64, device=state.device)
    window = torch.zeros_like(sums)
    bad_iter = torch.full((), -1, dtype=torch.int64, device=state.device)
    bad_parts = torch.zeros_like(sums)
    bar = tqdm(
        total=niters,
        initial=start_iter,
        desc=f"epoch {epoch + 1}/{C.nepochs}",
        disable=not state.is_main,
        dynamic_ncols=True,
        leave=True,
    )
    done = start_iter
    seen = 0
    in_window = 0
    for batch in loader:
        it = epoch * niters + done
        lr = state.scheduler.get_lr(it)
        out = train_step(
            model,
            state.optimizers,
            _to_device(batch, state.device, C.channels_last),
            lr,
            sup_criterion=state.sup_criterion,
            unsup_weight=C.unsup_weight,
            method=C.method,
            amp=C.amp,
            scaler=state.scaler,
            grad_sync=state.grad_sync,
            fused_teacher=C.fused_teacher,
        )
        parts = torch.stack(
            [out.get(k, torch.zeros((), device=state.device)).double() for k in LOG_KEYS]
        )
        newly_bad = (~torch.isfinite(parts).all()) & (bad_iter < 0)
        bad_iter = torch.where(newly_bad, torch.full_like(bad_iter, it), bad_iter)
        bad_parts = torch.where(newly_bad, parts, bad_parts)
        sums += parts
        window += parts
        done += 1
        seen += 1
        in_window += 1
        bar.update(1)
        last = done == niters
        if done % C.display_iter == 0 or last:
            _check_finite(bad_iter, bad_parts, niters)
            means = (window / in_window).tolist()
            window.zero_()
            in_window = 0
            bar.set_postfix_str(
                " ".join(f"{_SHORT[k]}={v:.4f}" for k, v in zip(LOG_KEYS, means, strict=True))
                + f" lr={lr:.2e}",
                refresh=False,
            )
            if state.scalars is not None:
                state.scalars.add(
                    {f"train/{k}": v for k, v in zip(LOG_KEYS, means, strict=True)}, it
                )
                state.scalars.add({"train/lr": lr}, it)
        if not last and state.stop is not None and state.stop.should_stop():
            break
    bar.close()
    _check_finite(bad_iter, bad_parts, niters)
    epoch_means = (sums / max(seen, 1)).tolist()
    return dict(zip(LOG_KEYS, epoch_means, strict=True)), done


def _check_finite(bad_iter: Tensor, bad_parts: Tensor, niters: int) -> None:
    it = int(bad_iter)
    if it >= 0:
        values = ", ".join(
            f"{k}={v:.6g}" for k, v in zip(LOG_KEYS, bad_parts.tolist(), strict=True)
        )
        raise NonFiniteLossError(
            f"non-finite loss at iteration {it} (epoch {it // niters + 1}, iteration "
            f"{it % niters + 1} of the epoch): {values}. Training stopped; the last saved "
            "checkpoint is kept. Try a lower C.lr, amp=none, or check the labels."
        )


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def snapshot_due(epoch: int, nepochs: int, snapshot_iter: int) -> bool:
    """The official schedule: `epoch > nepochs // 6 and epoch % snapshot_iter == 0`, or last."""
    return (epoch > nepochs // 6 and epoch % snapshot_iter == 0) or epoch == nepochs - 1


def _save(
    path: str,
    model: nn.Module,
    state: TrainState,
    *,
    epoch: int,
    next_epoch: int,
    next_iter: int,
    rng: list[Any],
) -> None:
    C = state.C
    save_checkpoint(
        path,
        model,
        optimizer_1=state.optimizers[0],
        optimizer_2=state.optimizers[1],
        epoch=epoch,  # official meaning: the (0-based) epoch these weights finished
        iteration=next_epoch * C.niters_per_epoch + next_iter,
        next_epoch=next_epoch,
        next_iter=next_iter,
        scaler=state.scaler.state_dict() if state.scaler is not None else None,
        rng=rng,
        config=to_plain(C),
        cpcl_version=__version__,
    )


def _resume(
    path: str, model: nn.Module, state: TrainState, rank: int, log: logging.Logger
) -> tuple[int, int]:
    ckpt = load_checkpoint(path)
    load_weights(model, ckpt)
    for i, opt in enumerate(state.optimizers, 1):
        if ckpt.get(f"optimizer_{i}") is None:
            raise CheckpointError(
                f"{path}: no 'optimizer_{i}' state; cannot resume training from it"
            )
        opt.load_state_dict(ckpt[f"optimizer_{i}"])
    if state.scaler is not None and ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt.get("rng")
    if rng and rank < len(rng):
        _set_rng_state(rng[rank])
    # Official snapshots store the finished epoch only: continue with the next one.
    next_epoch = int(ckpt.get("next_epoch", int(ckpt.get("epoch", -1)) + 1))
    next_iter = int(ckpt.get("next_iter", 0))
    old = ckpt.get("config") or {}
    for key in ("nepochs", "niters_per_epoch", "batch_size", "lr", "method", "backbone"):
        if key in old and old[key] != state.C[key]:
            log.warning(
                "resuming with %s=%r (the checkpoint was trained with %r)",
                key,
                state.C[key],
                old[key],
            )
    log.info("resumed from %s: epoch %d, iteration %d of it", path, next_epoch + 1, next_iter)
    return next_epoch, next_iter


def fit(
    C: Any, *, root: str | None = None, resume: str | None = None, argv: list[str] | None = None
) -> dict[str, Any]:
    """Train a CPCL model as configured by `C` (official key names); return a summary dict.

    Runs as one process (GPU 0 or CPU) or as one rank of a torchrun job. Snapshots go to
    `C.snapshot_dir` on the official schedule plus `epoch-last.pth` every epoch; SIGINT and
    SIGTERM write `interrupted.pth` and return normally.
    """
    info = init_distributed(None if C.device == "auto" else C.device)
    try:
        return _fit(C, info, root=root, resume=resume, argv=argv)
    finally:
        cleanup()


def _fit(
    C: Any, info: DistInfo, *, root: str | None, resume: str | None, argv: list[str] | None
) -> dict[str, Any]:
    base = finalize(C, root=root)
    labeled = build_dataset(base, "labeled")
    unlabeled = build_dataset(base, "unlabeled")
    check_disjoint(labeled.entries, unlabeled.entries, names=(base.train_source, base.unsup_source))
    C = finalize(C, root=root, n_labeled=len(labeled), n_unlabeled=len(unlabeled))
    log = setup_logger(C.log_dir, is_main=info.is_main)
    if info.is_main:
        write_run_info(C.log_dir, C, argv)
    loader = build_train_loader(
        C, rank=info.rank, world_size=info.world_size, labeled=labeled, unlabeled=unlabeled
    )
    per_rank_batch = C.batch_size // info.world_size

    random.seed(C.seed)
    np.random.seed(C.seed)
    torch.manual_seed(C.seed)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(C.cudnn_benchmark)
    model = Network(
        C.num_classes,
        C.backbone,
        pretrained=C.pretrained_model,
        bn_eps=C.bn_eps,
        bn_momentum=C.bn_momentum,
    )
    model, warning = maybe_sync_batchnorm(model, info)
    if warning and info.is_main:
        log.warning(warning)
    model.to(info.device)
    if C.channels_last:
        model.to(memory_format=torch.channels_last)
    broadcast_module(model)
    opt1, opt2 = build_optimizers(model, C.lr, C.momentum, C.weight_decay)
    total_iters = C.nepochs * C.niters_per_epoch
    state = TrainState(
        optimizers=(opt1, opt2),
        scheduler=WarmUpPolyLR(C.lr, C.lr_power, total_iters, C.warm_up_epoch * C.niters_per_epoch),
        sup_criterion=build_sup_criterion(C, per_rank_batch).to(info.device),
        C=C,
        device=info.device,
        scaler=torch.amp.GradScaler(info.device.type) if C.amp == "fp16" else None,
        grad_sync=(lambda: allreduce_grads(model)) if info.distributed else None,
        stop=StopFlag(),
        scalars=Scalars(C.log_dir if info.is_main else None),
        is_main=info.is_main,
    )
    start_epoch, start_iter = (0, 0)
    if resume:
        start_epoch, start_iter = _resume(resume, model, state, info.rank, log)
    run_model = torch.compile(model) if C.compile else model
    log.info(
        "training %s %s on %s x%d: %d labeled / %d unlabeled images, batch %d, %d epochs x %d iterations",
        C.method,
        C.backbone,
        info.device,
        info.world_size,
        len(labeled),
        len(unlabeled),
        C.batch_size,
        C.nepochs,
        C.niters_per_epoch,
    )

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        for sig in previous:
            signal.signal(sig, state.stop.set)
    summary: dict[str, Any] = {"epochs": [], "interrupted": False}
    try:
        for epoch in range(start_epoch, C.nepochs):
            means, done = train_one_epoch(
                run_model, loader, state, epoch=epoch, start_iter=start_iter
            )
            start_iter = 0
            rng = state.stop.gather_objects(_rng_state())
            if done < len(loader):
                if info.is_main:
                    path = os.path.join(C.snapshot_dir, "interrupted.pth")
                    _save(
                        path,
                        model,
                        state,
                        epoch=epoch - 1,
                        next_epoch=epoch,
                        next_iter=done,
                        rng=rng,
                    )
                    log.info(
                        "stop requested: wrote %s (epoch %d, iteration %d); resume with -c",
                        path,
                        epoch + 1,
                        done,
                    )
                summary["interrupted"] = True
                break
            log.info(
                "epoch %d/%d: %s",
                epoch + 1,
                C.nepochs,
                " ".join(f"{k}={v:.4f}" for k, v in means.items()),
            )
            summary["epochs"].append(means)
            if info.is_main:
                names = ["epoch-last.pth"]
                if snapshot_due(epoch, C.nepochs, C.snapshot_iter):
                    names.append(f"epoch-{epoch}.pth")
                for name in names:
                    path = os.path.join(C.snapshot_dir, name)
                    _save(
                        path, model, state, epoch=epoch, next_epoch=epoch + 1, next_iter=0, rng=rng
                    )
            if C.eval_every and (epoch + 1) % C.eval_every == 0:
                summary["last_eval"] = _evaluate_during_training(model, C, info, state, epoch, log)
            if epoch + 1 < C.nepochs and state.stop.should_stop():
                # The request came during the epoch's last iteration: stop at the boundary.
                if info.is_main:
                    path = os.path.join(C.snapshot_dir, "interrupted.pth")
                    _save(
                        path, model, state, epoch=epoch, next_epoch=epoch + 1, next_iter=0, rng=rng
                    )
                    log.info(
                        "stop requested: wrote %s (end of epoch %d); resume with -c",
                        path,
                        epoch + 1,
                    )
                summary["interrupted"] = True
                break
    finally:
        if in_main_thread:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        state.scalars.close()
    summary["snapshot_dir"] = C.snapshot_dir
    summary["log_dir"] = C.log_dir
    return summary


def _evaluate_during_training(
    model: nn.Module, C: Any, info: DistInfo, state: TrainState, epoch: int, log: logging.Logger
) -> dict[str, Any]:
    from .evaluate import eval_settings, evaluate_dataset  # late: optional during training

    result = evaluate_dataset(
        model,
        build_dataset(C, "val"),
        device=info.device,
        rank=info.rank,
        world_size=info.world_size,
        progress=info.is_main,
        **eval_settings(C),
    )
    log.info("epoch %d: val mIoU %.2f%%", epoch + 1, 100 * result["miou"])
    if state.scalars is not None:
        state.scalars.add({"val/mIoU": result["miou"]}, epoch)
    return {"epoch": epoch, "miou": result["miou"]}


def main(C: Any, argv: list[str] | None = None) -> int:
    """Command-line entry of `exp_*/train.py`: `[-c CKPT] [--key=value ...]`; returns the exit code."""
    parser = argparse.ArgumentParser(
        description="Train CPCL. Any config key can be set with --key=value (see config.py).",
        allow_abbrev=False,
    )
    parser.add_argument(
        "-c", "--continue", dest="resume", metavar="CKPT", help="resume from this checkpoint"
    )
    args, rest = parser.parse_known_args(argv)
    try:
        C = apply_overrides(C, rest)
        summary = fit(C, root=os.getcwd(), resume=args.resume, argv=[sys.argv[0], *(argv or [])])
    except CpclError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if summary["interrupted"]:
        print(
            "training interrupted; resume with: -c "
            + os.path.join(summary["snapshot_dir"], "interrupted.pth")
        )
    return 0
