"""The snapshots the loop writes (`save_snapshot`): model, optimisers, method state, RNG."""

from __future__ import annotations

import logging
import os
from typing import Any

from torch import nn

from .. import __version__
from ..config import to_plain
from ..snapshots import save_training_state, snapshot_due

# Snapshots that are always complete (resume reads them), whatever C.snapshot_weights_only says.
RESUME_NAMES = ("epoch-last.pth", "interrupted.pth")


def save_snapshot(
    C: Any,
    model: nn.Module,
    state: Any,
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


def save_epoch(
    C: Any, log: logging.Logger, model: nn.Module, state: Any, epoch: int, rng: list[Any]
) -> str:
    """After epoch `epoch`: `epoch-last.pth`, plus `epoch-N.pth` when the schedule says so;
    return the path of the last one written."""
    names = ["epoch-last.pth"]
    if snapshot_due(epoch, C.nepochs, C.snapshot_iter):
        names.append(f"epoch-{epoch}.pth")
    for name in names:
        save_snapshot(
            C, model, state, name, epoch=epoch, next_epoch=epoch + 1, next_iter=0, rng=rng
        )
    log.info("saved %s in %s", ", ".join(names), C.snapshot_dir)
    return os.path.join(C.snapshot_dir, names[-1])


def save_interrupted(
    C: Any,
    log: logging.Logger,
    model: nn.Module,
    state: Any,
    position: tuple[int, int, int],
    rng: list[Any],
    where: str,
) -> str:
    """`interrupted.pth` after a stop request; `position` is (last finished epoch, next
    epoch, next iteration), `where` says in the log where training stopped."""
    epoch, next_epoch, next_iter = position
    path = save_snapshot(
        C,
        model,
        state,
        "interrupted.pth",
        epoch=epoch,
        next_epoch=next_epoch,
        next_iter=next_iter,
        rng=rng,
    )
    log.info("stop requested: wrote %s (%s); resume with -c", path, where)
    return path
