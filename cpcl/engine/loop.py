"""The training loop: `train_one_epoch` (iterations) and `run_epochs` (epochs, snapshots,
evaluation, stop requests), each readable top to bottom.

The method (`cpcl.methods`, chosen by `C.method`) supplies its data view, networks,
optimisers, learning-rate schedule, forwards and losses; `train_step` (`cpcl.engine.step`)
runs one iteration of it. Logs stay on the device; the host reads them every `display_iter`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..dist import DistInfo, StopFlag
from ..methods import Method, StepInfo, TrainEvalContext
from ..runlog import Scalars
from ..snapshots import rng_state
from .graphs import GraphedIteration
from .meter import Meter, format_means
from .signals import next_batch
from .snapshot import save_epoch, save_interrupted
from .step import train_step
from .validate import evaluate_during_training


def epoch_label(epoch: int, nepochs: int) -> str:
    """`epoch-1 (2/2)`: the 0-based number of the snapshot name epoch-N.pth, then the progress."""
    return f"epoch-{epoch} ({epoch + 1}/{nepochs})"


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
    graph: GraphedIteration | None = None  # --cuda_graphs (cpcl.engine.graphs)


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
    """Train one epoch (from `start_iter`); return the epoch's mean logs and iterations done.

    Logs stay on the device: the host reads them only every `display_iter` iterations and at
    the end, where the non-finite check also happens. A stop request (signal) ends the epoch
    early at an iteration boundary; the caller sees `done < len(loader)`.
    """
    loop, method = state.loop, state.method
    niters = len(loader)
    model.train()
    loader.set_epoch(epoch, start_iter)
    meter = Meter(state.device)
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
    while (batch := next_batch(batches, state.stop)) is not None:
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
            graph=state.graph,
        )
        meter.add(out, it)
        done += 1
        bar.update(1)
        last = done == niters
        if done % loop.display_iter == 0 or last:
            meter.check_finite(niters)
            meter.show_window(bar, lr, it, state.scalars)
        if not last and state.stop is not None and state.stop.should_stop():
            break
    bar.close()
    meter.check_finite(niters)
    return meter.epoch_means(), done


def run_epochs(
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
        if done < len(loader):  # stopped inside the epoch: resume at iteration `done`
            where = f"{epoch_label(epoch, C.nepochs)}, iteration {done} of {len(loader)}"
            if info.is_main:
                save_interrupted(C, log, model, state, (epoch - 1, epoch, done), rng, where)
            summary["interrupted"] = True
            break
        log.info("%s: %s", epoch_label(epoch, C.nepochs), format_means(means))
        summary["epochs"].append(means)
        if info.is_main:
            summary["last_snapshot"] = save_epoch(C, log, model, state, epoch, rng)
        if C.eval_every and (epoch + 1) % C.eval_every == 0:
            ctx = _eval_context(C, info, log, state, epoch)
            result = state.method.train_evaluation(model, ctx)
            if result is None:  # the engine's: eval_net with the project's evaluator
                net = state.method.eval_net(model)
                result = evaluate_during_training(net, C, info, state, epoch, log)
            summary["last_eval"] = result
        if epoch + 1 < C.nepochs and state.stop.should_stop():
            # The request came during the epoch's last iteration: stop at the boundary.
            where = f"end of {epoch_label(epoch, C.nepochs)}"
            if info.is_main:
                save_interrupted(C, log, model, state, (epoch, epoch + 1, 0), rng, where)
            summary["interrupted"] = True
            break
    if not summary["interrupted"] and start_epoch < C.nepochs:
        final = state.method.final_evaluation(model, _eval_context(C, info, log, state, epoch))
        if final is not None:
            summary["final_eval"] = final
    return summary


def _eval_context(
    C: Any, info: DistInfo, log: logging.Logger, state: TrainState, epoch: int
) -> TrainEvalContext:
    """The `TrainEvalContext` after epoch `epoch` (a method's own evaluation hooks)."""
    return TrainEvalContext(
        C=C,
        epoch=epoch,
        iteration=(epoch + 1) * int(C.niters_per_epoch),
        device=info.device,
        log=log,
        rank=info.rank,
        world_size=info.world_size,
        is_main=info.is_main,
        scalars=state.scalars,
        snapshot_dir=C.snapshot_dir,
    )
