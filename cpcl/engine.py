"""The generic training engine: one iteration of any method (`train_step`), the epoch loop
(`train_one_epoch`), the whole run (`fit`) and the command line of `exp_*/train.py` (`main`).

The method (`cpcl.methods`, chosen by `C.method`) supplies its data view, networks,
optimisers, learning-rate schedule, forwards and losses; this module does the rest once for
all methods: autocast, backward, gradient sync, optimiser steps, the loop, snapshots, exact
resume, SIGTERM, the NaN stop and logging of whatever the method reports. Nothing in
`train_step` syncs with the host, so logging decides when to read values. (The one exception
is amp="fp16": `GradScaler.step` reads its inf/NaN check back to the host.)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import random
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import __version__
from .amp import check_amp
from .config import apply_overrides, describe_sources, finalize, key_help, to_plain
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
from .errors import CpclError
from .fileio import ensure_writable_dir, remove_stale_temps
from .methods import Method, StepInfo, get_method, method_names
from .models import Network  # noqa: F401  (re-export: engine.Network)
from .optim import set_lr
from .runlog import Scalars, setup_logger, write_run_info
from .snapshots import load_training_state, rng_state, save_training_state, snapshot_due

AMP_MODES = ("none", "bf16", "fp16")
# Snapshots that are always complete (resume reads them), whatever C.snapshot_weights_only says.
RESUME_NAMES = ("epoch-last.pth", "interrupted.pth")
# The keys `train_step` returns when called the old way (method given by name): every term of
# sup/CPS/CPCL, 0 where it does not apply.
LEGACY_KEYS = (
    "loss",
    "loss_sup_1",
    "loss_sup_2",
    "loss_unsup",
    "loss_unsup_inter",
    "loss_unsup_union",
    "loss_cps",
    "overlap",
)


def _autocast(amp: str, device_type: str) -> contextlib.AbstractContextManager:
    """The autocast context of `amp` for the forwards (loss maths stays in float32)."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)


def _check_args(method: Method, amp: str, scaler: Any, batch: Mapping[str, Tensor]) -> None:
    if amp not in AMP_MODES:
        raise CpclError(f"amp={amp!r}: expected one of {', '.join(AMP_MODES)}")
    if amp == "fp16" and scaler is None:
        raise CpclError("amp='fp16' needs a GradScaler (scaler=torch.amp.GradScaler(...))")
    if amp != "fp16" and scaler is not None:
        raise CpclError(f"scaler is only used with amp='fp16', got amp={amp!r}")
    needed = method.batch_keys
    missing = [k for k in needed if k not in batch]
    if missing:
        raise CpclError(
            f"batch is missing {missing} for method {method.name!r}; expected keys {list(needed)}"
        )


def _method_by_name(
    name: str, sup_criterion: nn.Module | None, unsup_weight: float | None, fused_teacher: bool
) -> Method:
    """A sup/CPS/CPCL method object from the old keyword arguments of `train_step`."""
    if sup_criterion is None or unsup_weight is None:
        raise CpclError(
            f"train_step(method={name!r}) needs sup_criterion= and unsup_weight= "
            "(or pass a Method object built with from_config)"
        )
    cls = get_method(name)
    return cls(sup_criterion=sup_criterion, unsup_weight=unsup_weight, fused_teacher=fused_teacher)


def train_step(
    model: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    batch: Mapping[str, Tensor],
    lr: float | None = None,
    *,
    method: Method | str = "cpcl",
    sup_criterion: nn.Module | None = None,
    unsup_weight: float | None = None,
    amp: str = "none",
    scaler: torch.amp.GradScaler | None = None,
    grad_sync: Callable[[], None] | None = None,
    fused_teacher: bool = False,
    step: StepInfo | None = None,
    aux: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Run one training iteration of `method` and update the model.

    Args:
        model: the method's network in train mode (for sup/CPS/CPCL a two-branch
            `cpcl.models.Network`).
        optimizers: the method's optimisers (sup/CPS/CPCL: `(opt1, opt2)` from
            `cpcl.optim.build_optimizers`).
        batch: tensors already on the model's device, with the keys of the method's data view
            (sup: `img` (B,3,H,W), `gt` (B,H,W) int64; CPS/CPCL also `img_u0`, `img_u1`
            (B,3,H,W) and `mask` (B,1,H,W), 1 = take from u1).
        lr: a learning rate written into every parameter group, or None when the caller has
            already set the rates (the loop calls `method.set_lr` just before).
        method: a `cpcl.methods.Method` object, or the name "cpcl" (official), "cps" or
            "sup" together with `sup_criterion`, `unsup_weight` (and `fused_teacher`).
        sup_criterion, unsup_weight, fused_teacher: sup/CPS/CPCL settings when `method` is a
            name (see `cpcl.methods.two_branch`; fused_teacher is a NON-faithful speed opt-in).
        amp: "none" (float32, faithful), "bf16" (autocast bfloat16, no scaler) or "fp16"
            (autocast float16 with `scaler`, one GradScaler shared by all optimisers).
        scaler: the GradScaler for amp="fp16".
        grad_sync: called once between backward and the optimiser steps (e.g. the DDP gradient
            all-reduce). With fp16 the gradients it sees are still scaled.
        step: epoch / iteration of this step (default: the first iteration).
        aux: optional dict that receives diagnostic tensors of the method (for CPS/CPCL the
            mixed image, the 8 logits, pseudo labels, class weights); for tests and debugging.

    Returns detached 0-dim tensors without a host sync: `loss` and the method's named logs.
    With `method` given by name the dict has every key of `LEGACY_KEYS`, 0 where a term does
    not apply (for cps, `overlap` is the plain fraction of pixels where the teachers agree).
    """
    by_name = isinstance(method, str)
    if by_name:
        method = _method_by_name(method, sup_criterion, unsup_weight, fused_teacher)
    _check_args(method, amp, scaler, batch)
    step = step if step is not None else StepInfo()

    for opt in optimizers:
        if lr is not None:
            set_lr(opt, lr)
        opt.zero_grad(set_to_none=True)

    # One autocast region for all forwards so each weight is cast to the low-precision dtype
    # once per iteration (the cast cache lives until the outermost region exits). For
    # CPS/CPCL the cache is first filled by the supervised forwards, in grad mode, so the
    # casts that the no-grad teachers and then the students reuse still carry gradients.
    with _autocast(amp, next(iter(batch.values())).device.type):
        loss, logs = method.forward_loss(model, batch, step, aux)
    if amp == "fp16":
        scaler.scale(loss).backward()
        if grad_sync is not None:
            grad_sync()
        for opt in optimizers:
            scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        if grad_sync is not None:
            grad_sync()
        for opt in optimizers:
            opt.step()
    method.after_step(model, step)

    out = {"loss": loss.detach(), **{k: v.detach() for k, v in logs.items()}}
    if by_name:
        zero = torch.zeros((), device=loss.device, dtype=torch.float32)
        out = {k: out.get(k, zero) for k in LEGACY_KEYS}
    return out


# ---------------------------------------------------------------------------------------------
# The loop: train_one_epoch, fit, and the command-line entry used by exp_*/train.py
# ---------------------------------------------------------------------------------------------


def epoch_label(epoch: int, nepochs: int) -> str:
    """`epoch-1 (2/2)`: the 0-based number of the snapshot name epoch-N.pth, then the progress."""
    return f"epoch-{epoch} ({epoch + 1}/{nepochs})"


class NonFiniteLossError(CpclError):
    """A loss became NaN or inf; the message names the iteration and every loss part."""


@dataclass(frozen=True)
class LoopSettings:
    """The config values the loop reads (from a finalized config, once)."""

    nepochs: int
    niters_per_epoch: int
    display_iter: int = 50
    amp: str = "none"
    channels_last: bool = False

    @classmethod
    def from_config(cls, C: Any) -> LoopSettings:
        """Read `nepochs`, `niters_per_epoch`, `display_iter`, `amp`, `channels_last`."""
        return cls(
            int(C.nepochs),
            int(C.niters_per_epoch),
            int(C.display_iter),
            str(C.amp),
            bool(C.channels_last),
        )


@dataclass
class TrainState:
    """Everything `train_one_epoch` needs besides the model and the data."""

    method: Method
    optimizers: tuple[torch.optim.Optimizer, ...]
    loop: LoopSettings
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


def _short(key: str) -> str:
    """Progress-bar name of a log key: loss_unsup_inter -> inter, loss_sup_1 -> sup_1."""
    return key.removeprefix("loss_unsup_").removeprefix("loss_") if key != "loss" else key


class _Meter:
    """Per-key sums of the step outputs, kept on the device (one stack per iteration).

    The keys are those of the first step; the host reads the values only when asked.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.keys: list[str] = []
        self.sums = self.window = self.bad_parts = None
        self.bad_iter = torch.full((), -1, dtype=torch.int64, device=device)
        self.seen = self.in_window = 0

    def add(self, out: Mapping[str, Tensor], it: int) -> None:
        if not self.keys:
            self.keys = list(out)
            self.sums = torch.zeros(len(self.keys), dtype=torch.float64, device=self.device)
            self.window = torch.zeros_like(self.sums)
            self.bad_parts = torch.zeros_like(self.sums)
        elif list(out) != self.keys:
            raise CpclError(f"train_step returned keys {list(out)}; earlier {self.keys}")
        parts = torch.stack([v.double() for v in out.values()])
        newly_bad = (~torch.isfinite(parts).all()) & (self.bad_iter < 0)
        self.bad_iter = torch.where(newly_bad, torch.full_like(self.bad_iter, it), self.bad_iter)
        self.bad_parts = torch.where(newly_bad, parts, self.bad_parts)
        self.sums += parts
        self.window += parts
        self.seen += 1
        self.in_window += 1

    def window_means(self) -> dict[str, float]:
        """Means since the last call (host sync)."""
        means = (self.window / max(self.in_window, 1)).tolist()
        self.window.zero_()
        self.in_window = 0
        return dict(zip(self.keys, means, strict=True))

    def epoch_means(self) -> dict[str, float]:
        """Means over the epoch (host sync)."""
        if not self.keys:
            return {}
        return dict(zip(self.keys, (self.sums / max(self.seen, 1)).tolist(), strict=True))

    def check_finite(self, niters: int) -> None:
        """Raise NonFiniteLossError naming the first bad iteration and its values."""
        it = int(self.bad_iter)
        if it >= 0:
            values = ", ".join(
                f"{k}={v:.6g}" for k, v in zip(self.keys, self.bad_parts.tolist(), strict=True)
            )
            raise NonFiniteLossError(
                f"non-finite loss at iteration {it} (epoch-{it // niters}, iteration "
                f"{it % niters + 1} of {niters}): {values}. Training stopped; the last saved "
                "checkpoint is kept. Try a lower C.lr, amp=none, or check the labels."
            )


def _next_batch(batches: Any, stop: StopFlag | None) -> Any:
    """The next batch, or None at the end of the epoch or when a stop request killed a worker.

    Workers ignore SIGINT/SIGTERM (`cpcl.data.loaders.ignore_stop_signals`), but one killed
    anyway (e.g. by a signal sent before it could ignore it on another platform) makes the
    loader raise RuntimeError; after a stop request that simply ends the epoch early.
    """
    try:
        return next(batches)
    except StopIteration:
        return None
    except RuntimeError:
        if stop is not None and stop.local:
            return None
        raise


def train_one_epoch(
    model: nn.Module, loader: Any, state: TrainState, *, epoch: int, start_iter: int = 0
) -> tuple[dict[str, float], int]:
    """Train one epoch (from `start_iter`); return the epoch's mean logs and iterations done.

    Logs stay on the device: the host reads them only every `display_iter` iterations and at
    the end, where the non-finite check also happens. A stop request (signal) ends the epoch
    early at an iteration boundary; the caller sees `done < len(loader)`.
    """
    loop, method = state.loop, state.method
    niters = len(loader)
    model.train()
    loader.set_epoch(epoch, start_iter)
    meter = _Meter(state.device)
    bar = tqdm(
        total=niters,
        initial=start_iter,
        desc=epoch_label(epoch, loop.nepochs),
        disable=not state.is_main,
        dynamic_ncols=True,
        leave=True,
    )
    done = start_iter
    batches = iter(loader)
    while (batch := _next_batch(batches, state.stop)) is not None:
        it = epoch * niters + done
        step = StepInfo(epoch, it, niters, loop.nepochs * niters)
        lr = method.set_lr(state.optimizers, step)
        out = train_step(
            model,
            state.optimizers,
            _to_device(batch, state.device, loop.channels_last),
            None,  # the rates were just set by the method's schedule
            method=method,
            amp=loop.amp,
            scaler=state.scaler,
            grad_sync=state.grad_sync,
            step=step,
        )
        meter.add(out, it)
        done += 1
        bar.update(1)
        last = done == niters
        if done % loop.display_iter == 0 or last:
            meter.check_finite(niters)
            means = meter.window_means()
            bar.set_postfix_str(
                " ".join(f"{_short(k)}={v:.4f}" for k, v in means.items()) + f" lr={lr:.2e}",
                refresh=False,
            )
            if state.scalars is not None:
                state.scalars.add({f"train/{k}": v for k, v in means.items()}, it)
                state.scalars.add({"train/lr": lr}, it)
        if not last and state.stop is not None and state.stop.should_stop():
            break
    bar.close()
    meter.check_finite(niters)
    return meter.epoch_means(), done


def fit(
    C: Any, *, root: str | None = None, resume: str | None = None, argv: list[str] | None = None
) -> dict[str, Any]:
    """Train the method `C.method` as configured by `C` (official key names); return a summary.

    Runs as one process (GPU 0 or CPU) or as one rank of a torchrun job. Snapshots go to
    `C.snapshot_dir` on the official schedule plus `epoch-last.pth` every epoch; SIGINT and
    SIGTERM write `interrupted.pth` and return normally.
    """
    info = init_distributed(None if C.device == "auto" else C.device)
    try:
        return _fit(C, info, root=root, resume=resume, argv=argv)
    finally:
        cleanup()


def _prepare_model(model: nn.Module, C: Any, info: DistInfo, log: logging.Logger) -> nn.Module:
    """SyncBN under DDP, the device, channels_last, and the same weights on every rank."""
    model, warning = maybe_sync_batchnorm(model, info)
    if warning and info.is_main:
        log.warning(warning)
    model.to(info.device)
    if C.channels_last:
        model.to(memory_format=torch.channels_last)
    broadcast_module(model)
    return model


@contextlib.contextmanager
def _stop_on_signals(stop: StopFlag) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop` (the loop then ends at an iteration boundary)."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        for sig in previous:
            signal.signal(sig, stop.set)
    try:
        yield
    finally:
        if in_main_thread:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _build(
    C: Any, info: DistInfo, log: logging.Logger, labeled: Any, unlabeled: Any
) -> tuple[nn.Module, Any, TrainState]:
    """The method's model (on its device), the loader of its data view, and the loop state."""
    check_amp(C.amp, info.device)  # bf16 without native support: refused before any work
    method = get_method(C.method).from_config(C, per_rank_batch=C.batch_size // info.world_size)
    loader = build_train_loader(
        C,
        rank=info.rank,
        world_size=info.world_size,
        labeled=labeled,
        unlabeled=unlabeled,
        view=method.data_view(),
    )
    random.seed(C.seed)
    np.random.seed(C.seed)
    torch.manual_seed(C.seed)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(C.cudnn_benchmark)
    model = _prepare_model(method.build_model(), C, info, log)
    optimizers = tuple(method.build_optimizers(model))
    method.setup(model)
    state = TrainState(
        method=method,
        optimizers=optimizers,
        loop=LoopSettings.from_config(C),
        device=info.device,
        scaler=torch.amp.GradScaler(info.device.type) if C.amp == "fp16" else None,
        grad_sync=(lambda: allreduce_grads(model)) if info.distributed else None,
        stop=StopFlag(),
        scalars=Scalars(C.log_dir if info.is_main else None),
        is_main=info.is_main,
    )
    return model, loader, state


def _save(
    C: Any,
    model: nn.Module,
    state: TrainState,
    name: str,
    *,
    epoch: int,
    next_epoch: int,
    next_iter: int,
    rng: list[Any],
) -> str:
    """Write snapshot `name` into `C.snapshot_dir`; return its path."""
    path = os.path.join(C.snapshot_dir, name)
    save_training_state(
        path,
        model,
        state.optimizers,
        epoch=epoch,
        next_epoch=next_epoch,
        next_iter=next_iter,
        iters_per_epoch=C.niters_per_epoch,
        rng=rng,
        scaler=state.scaler,
        method_state=state.method.state_dict(),
        config=to_plain(C),
        version=__version__,
        # Numbered snapshots may be weights-only; epoch-last.pth / interrupted.pth resume.
        weights_only=bool(C.snapshot_weights_only) and name not in RESUME_NAMES,
    )
    return path


def _fit(
    C: Any, info: DistInfo, *, root: str | None, resume: str | None, argv: list[str] | None
) -> dict[str, Any]:
    C, labeled, unlabeled = resolve_run_config(C, root=root)
    if info.is_main:
        # Before any work: a read-only or forbidden output folder is a named error now, not
        # a raw OSError after the first epoch (setup_logger checks the log folder).
        ensure_writable_dir(C.snapshot_dir, "snapshot folder (C.snapshot_dir)")
    log = setup_logger(C.log_dir, is_main=info.is_main)
    if info.is_main:
        remove_stale_temps(C.snapshot_dir)  # left by a save that was killed (logged)
        write_run_info(C.log_dir, C, argv)
        log.info("config values not from the dataset preset: %s", describe_sources(C, argv))
    model, loader, state = _build(C, info, log, labeled, unlabeled)
    start_epoch, start_iter = (0, 0)
    if resume:
        start_epoch, start_iter, method_state = load_training_state(
            resume, model, state.optimizers, rank=info.rank, scaler=state.scaler, config=C, log=log
        )
        state.method.load_state_dict(method_state)
    log.info(
        "training %s %s on %s x%d: %d labeled / %d unlabeled images, batch %d, %d epochs x %d iterations",
        C.method,
        C.backbone,
        info.device,
        info.world_size,
        C.num_train_imgs,
        C.num_unsup_imgs,
        C.batch_size,
        C.nepochs,
        C.niters_per_epoch,
    )
    try:
        with _stop_on_signals(state.stop):
            summary = _run_epochs(C, info, log, model, loader, state, start_epoch, start_iter)
    finally:
        state.scalars.close()
    summary["snapshot_dir"] = C.snapshot_dir
    summary["log_dir"] = C.log_dir
    return summary


def _run_epochs(
    C: Any,
    info: DistInfo,
    log: logging.Logger,
    model: nn.Module,
    loader: Any,
    state: TrainState,
    start_epoch: int,
    start_iter: int,
) -> dict[str, Any]:
    """The epochs from `start_epoch` (inside it from `start_iter`): train, log, snapshot,
    evaluate, and stop with `interrupted.pth` when a signal came."""
    run_model = torch.compile(model) if C.compile else model
    summary: dict[str, Any] = {"epochs": [], "interrupted": False}
    for epoch in range(start_epoch, C.nepochs):
        means, done = train_one_epoch(run_model, loader, state, epoch=epoch, start_iter=start_iter)
        start_iter = 0
        rng = state.stop.gather_objects(rng_state())
        if done < len(loader):
            if info.is_main:
                path = _save(
                    C,
                    model,
                    state,
                    "interrupted.pth",
                    epoch=epoch - 1,
                    next_epoch=epoch,
                    next_iter=done,
                    rng=rng,
                )
                log.info(
                    "stop requested: wrote %s (%s, iteration %d of %d); resume with -c",
                    path,
                    epoch_label(epoch, C.nepochs),
                    done,
                    len(loader),
                )
            summary["interrupted"] = True
            break
        log.info(
            "%s: %s",
            epoch_label(epoch, C.nepochs),
            " ".join(f"{k}={v:.4f}" for k, v in means.items()),
        )
        summary["epochs"].append(means)
        if info.is_main:
            names = ["epoch-last.pth"]
            if snapshot_due(epoch, C.nepochs, C.snapshot_iter):
                names.append(f"epoch-{epoch}.pth")
            for name in names:
                _save(
                    C, model, state, name, epoch=epoch, next_epoch=epoch + 1, next_iter=0, rng=rng
                )
            log.info("saved %s in %s", ", ".join(names), C.snapshot_dir)
            summary["last_snapshot"] = os.path.join(C.snapshot_dir, names[-1])
        if C.eval_every and (epoch + 1) % C.eval_every == 0:
            summary["last_eval"] = _evaluate_during_training(
                state.method.eval_net(model), C, info, state, epoch, log
            )
        if epoch + 1 < C.nepochs and state.stop.should_stop():
            # The request came during the epoch's last iteration: stop at the boundary.
            if info.is_main:
                path = _save(
                    C,
                    model,
                    state,
                    "interrupted.pth",
                    epoch=epoch,
                    next_epoch=epoch + 1,
                    next_iter=0,
                    rng=rng,
                )
                log.info(
                    "stop requested: wrote %s (end of %s); resume with -c",
                    path,
                    epoch_label(epoch, C.nepochs),
                )
            summary["interrupted"] = True
            break
    return summary


def resolve_run_config(C: Any, *, root: str | None) -> tuple[Any, Any, Any]:
    """Finalize `C` with the sizes of the split lists actually read.

    Returns `(C, labeled, unlabeled)` datasets (lists only; no image is decoded here). The
    two lists must be disjoint.
    """
    base = finalize(C, root=root)
    labeled = build_dataset(base, "labeled")
    unlabeled = build_dataset(base, "unlabeled")
    check_disjoint(labeled.entries, unlabeled.entries, names=(base.train_source, base.unsup_source))
    # From the user's C again: values derived from the official image counts (max_samples,
    # niters_per_epoch) must be derived from the counts actually read instead.
    C = finalize(C, root=root, n_labeled=len(labeled), n_unlabeled=len(unlabeled))
    return C, labeled, unlabeled


def _evaluate_during_training(
    net: nn.Module, C: Any, info: DistInfo, state: TrainState, epoch: int, log: logging.Logger
) -> dict[str, Any]:
    """Evaluate the method's `eval_net` (a plain segmenter) on the val split."""
    from .evaluate import EvalSettings, evaluate_dataset  # late: optional during training

    # The official memory layout: channels-last would convert the LIVE weights in place for the
    # evaluation (and back), which is not worth the risk for storage shared with a teacher or a
    # DDP reducer; the eval CLI, which owns its model, uses it.
    settings = dataclasses.replace(EvalSettings.from_config(C), channels_last=False)
    result = evaluate_dataset(
        net,
        build_dataset(C, "val"),
        settings,
        device=info.device,
        rank=info.rank,
        world_size=info.world_size,
        progress=info.is_main,
    )
    log.info("epoch-%d: val mIoU %.2f%%", epoch, 100 * result["miou"])
    if state.scalars is not None:
        state.scalars.add({"val/mIoU": result["miou"]}, epoch)
    return {"epoch": epoch, "miou": result["miou"]}


def _help_config(C: Any, argv: Sequence[str]) -> str:
    """The config table of `--help`, with the defaults of the method asked for (if valid)."""
    methods = [a.split("=", 1)[1] for a in argv if a.startswith("--method=")]
    # An unknown method is reported when training starts; here C is shown as it is.
    with contextlib.suppress(CpclError):
        C = apply_overrides(C, [f"--method={m}" for m in methods[-1:]])
    return key_help(C)


def _finished(summary: dict[str, Any], rest: Sequence[str]) -> str:
    """Where the snapshots went and the command that evaluates the last one."""
    last = summary.get("last_snapshot")
    lines = [f"snapshots: {summary['snapshot_dir']} (epoch-N.pth: N = 0-based epoch)"]
    if last:
        script = os.path.join(os.path.dirname(sys.argv[0]), "eval.py")
        lines.append("evaluate:  " + shlex.join([sys.executable, script, "-e", last, *rest]))
    return "\n".join(lines)


def main(C: Any, argv: list[str] | None = None) -> int:
    """Command-line entry of `exp_*/train.py`: `[-c CKPT] [--key=value ...]`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        description="Train a segmentation method (C.method: "
        + ", ".join(method_names())
        + "). Any config key below can be set with --key=value; values come from config.py. "
        "Snapshots are named epoch-N.pth with N the 0-based epoch (official), plus "
        "epoch-last.pth.",
        epilog="config keys (--key=value; [current value]):\n" + _help_config(C, argv),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "-c", "--continue", dest="resume", metavar="CKPT", help="resume from this checkpoint"
    )
    args, rest = parser.parse_known_args(argv)
    try:
        C = apply_overrides(C, rest)
        summary = fit(C, root=os.getcwd(), resume=args.resume, argv=[sys.argv[0], *argv])
    except CpclError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if summary["interrupted"]:
        print(
            "training interrupted; resume with: -c "
            + os.path.join(summary["snapshot_dir"], "interrupted.pth")
        )
    else:
        print(_finished(summary, rest))
    return 0
