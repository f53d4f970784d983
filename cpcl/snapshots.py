"""Training snapshots: what a checkpoint holds so that a run resumes exactly, and the
official snapshot schedule.

Layout (official keys first): `model`, `optimizer_1`, `optimizer_2`, ... (one per optimiser
of the method), `epoch` (the 0-based epoch the weights finished, official meaning),
`iteration`, then `next_epoch`, `next_iter` (where a resume continues, also mid-epoch),
`scaler`, `rng` (every rank's Python/NumPy/torch generator states), `method_state` (the
method's extra state, e.g. an EMA teacher; absent when empty), `config`, `cpcl_version`.
A weights-only snapshot (`C.snapshot_weights_only`, numbered snapshots only) has
`weights_only: True` and no optimiser, scaler or RNG states.
Checkpoints written before `method_state` existed load unchanged.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint, load_weights, save_checkpoint
from .errors import CheckpointError

# Keys compared with the checkpoint's config on resume (a difference is only a warning).
# A resume with other values of these keys is allowed with a warning line (e.g. fine-tuning at
# another crop size: the weights do not depend on it). Another `method` is refused instead
# (`cpcl.engine.run.check_resume_method`, before any weight is loaded).
RESUME_CHECKED_KEYS = (
    "nepochs",
    "niters_per_epoch",
    "batch_size",
    "lr",
    "backbone",
    "image_height",
    "image_width",
)


def rng_state() -> dict[str, Any]:
    """The global generators' states (Python, NumPy, torch, CUDA) as checkpointable data."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore `rng_state()`."""
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


def save_training_state(
    path: str,
    model: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    *,
    epoch: int,
    next_epoch: int,
    next_iter: int,
    iters_per_epoch: int,
    rng: list[Any],
    scaler: torch.amp.GradScaler | None = None,
    method_state: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    version: str = "",
    weights_only: bool = False,
) -> None:
    """Write a resumable checkpoint (see the module docstring for the layout).

    `weights_only=True` leaves out the optimiser, GradScaler and RNG states (about half the
    file: SGD keeps one momentum buffer per weight) and marks the file `weights_only`; it
    evaluates like any snapshot but cannot resume training.
    """
    extra: dict[str, Any] = {f"optimizer_{i}": opt for i, opt in enumerate(optimizers, 1)}
    if weights_only:
        extra = {"weights_only": True}
        scaler, rng = None, None
    if method_state:  # kept: it may hold weights (e.g. an EMA teacher that is evaluated)
        extra["method_state"] = dict(method_state)
    save_checkpoint(
        path,
        model,
        **extra,
        epoch=epoch,  # official meaning: the (0-based) epoch these weights finished
        iteration=next_epoch * iters_per_epoch + next_iter,
        next_epoch=next_epoch,
        next_iter=next_iter,
        scaler=scaler.state_dict() if scaler is not None else None,
        rng=rng,
        config=config,
        cpcl_version=version,
    )


def load_training_state(
    path: str,
    model: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    *,
    rank: int,
    scaler: torch.amp.GradScaler | None = None,
    config: Mapping[str, Any] | None = None,
    log: logging.Logger | None = None,
) -> tuple[int, int, dict[str, Any]]:
    """Restore weights, optimisers, scaler and this rank's generators from `path`.

    Returns `(next_epoch, next_iter, method_state)`. Official snapshots store only the
    finished epoch: the run continues with the next one.
    """
    ckpt = load_checkpoint(path)
    if ckpt.get("weights_only"):
        raise CheckpointError(
            f"{path} is a weights-only snapshot (C.snapshot_weights_only): it has no optimiser "
            "state to resume from; resume from epoch-last.pth or interrupted.pth of that run"
        )
    load_weights(model, ckpt)
    for i, opt in enumerate(optimizers, 1):
        if ckpt.get(f"optimizer_{i}") is None:
            raise CheckpointError(
                f"{path}: no 'optimizer_{i}' state; cannot resume training from it"
            )
        opt.load_state_dict(ckpt[f"optimizer_{i}"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt.get("rng")
    if rng and rank < len(rng):
        set_rng_state(rng[rank])
    next_epoch = int(ckpt.get("next_epoch", int(ckpt.get("epoch", -1)) + 1))
    next_iter = int(ckpt.get("next_iter", 0))
    old = ckpt.get("config") or {}
    if log is not None and config is not None:
        for key in RESUME_CHECKED_KEYS:
            if key in old and old[key] != config.get(key):
                log.warning(
                    "resuming with %s=%r (the checkpoint was trained with %r)",
                    key,
                    config.get(key),
                    old[key],
                )
        log.info("resumed from %s: epoch-%d, iteration %d of it", path, next_epoch, next_iter)
    return next_epoch, next_iter, dict(ckpt.get("method_state") or {})
