"""One training iteration of any method: `train_step` (autocast, `method.forward_loss`,
backward, gradient sync, optimiser steps, `method.after_step`).

Nothing here syncs with the host, so the loop decides when to read values. (The one exception
is amp="fp16": `GradScaler.step` reads its inf/NaN check back to the host.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CpclError
from ..methods import Method, StepInfo
from ..optim import set_lr
from .graphs import GraphedIteration

AMP_MODES = ("none", "bf16", "fp16")


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


def train_step(
    model: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    batch: Mapping[str, Tensor],
    lr: float | None = None,
    *,
    method: Method,
    amp: str = "none",
    scaler: torch.amp.GradScaler | None = None,
    grad_sync: Callable[[], None] | None = None,
    step: StepInfo | None = None,
    aux: dict[str, Tensor] | None = None,
    graph: GraphedIteration | None = None,
) -> dict[str, Tensor]:
    """Run one training iteration of `method` and update the model.

    Args:
        model: the method's network (`method.build_model()`) in train mode.
        optimizers: the method's optimisers (`method.build_optimizers(model)`).
        batch: tensors already on the model's device, with the keys of the method's data view
            (at least `method.batch_keys`).
        lr: a learning rate written into every parameter group, or None when the caller has
            already set the rates (the loop calls `method.set_lr` just before).
        method: the `cpcl.methods.Method` object (e.g. `get_method("cpcl").from_config(C, ...)`).
        amp: "none" (float32, faithful), "bf16" (autocast bfloat16, no scaler) or "fp16"
            (autocast float16 with `scaler`, one GradScaler shared by all optimisers).
        scaler: the GradScaler for amp="fp16".
        grad_sync: called once between backward and the optimiser steps (e.g. the DDP gradient
            all-reduce). With fp16 the gradients it sees are still scaled.
        step: epoch / iteration of this step (default: the first iteration).
        aux: optional dict that receives diagnostic tensors of the method (e.g. mixed
            images, logits, pseudo labels); for tests and debugging.
        graph: `--cuda_graphs` (`cpcl.engine.graphs.GraphedIteration`): forwards, losses and
            backward are captured once and replayed; the rest of the iteration stays eager.

    Returns detached 0-dim tensors without a host sync: `loss` and the method's named logs.
    """
    _check_args(method, amp, scaler, batch)
    step = step if step is not None else StepInfo()
    if graph is not None and aux is not None:
        raise CpclError("train_step: aux (diagnostics) cannot be read from a CUDA-graph replay")

    for opt in optimizers:
        if lr is not None:
            set_lr(opt, lr)
        if graph is None:  # a graph owns its gradients (it overwrites them each replay)
            opt.zero_grad(set_to_none=True)

    if graph is not None:
        loss, logs = graph.run(batch, step, scaler)
    else:
        # One autocast region for all forwards so each weight is cast to the low-precision
        # dtype once per iteration (the cast cache lives until the outermost region exits). A
        # method whose first forwards run in grad mode (the supervised ones) fills the cache
        # with casts that carry gradients, which later no-grad teacher and student forwards
        # reuse.
        with _autocast(amp, next(iter(batch.values())).device.type):
            loss, logs = method.forward_loss(model, batch, step, aux)
        (scaler.scale(loss) if amp == "fp16" else loss).backward()
    if grad_sync is not None:
        grad_sync()
    for opt in optimizers:
        if amp == "fp16":
            scaler.step(opt)
        else:
            opt.step()
    if amp == "fp16":
        scaler.update()
    method.after_step(model, step)

    return {"loss": loss.detach(), **{k: v.detach() for k, v in logs.items()}}
