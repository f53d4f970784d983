"""UniMatch's optimiser and learning-rate rule (`unimatch.py:54-56, 93, 205-208`).

* Two SGD groups: every `model.backbone` parameter at `lr`, every parameter whose name lacks
  `'backbone'` at `lr * lr_multi` (10 Pascal/COCO, 1 Cityscapes); momentum 0.9 and weight
  decay 1e-4 on **all** parameters (no BN/bias exemption, unlike CPCL).
* Poly with power 0.9, written **after** `optimizer.step()`: after step `t` (0-based, global
  over epochs) the loop sets `lr * (1 - t / total_iters) ** 0.9`, so step `t` runs with
  `lr` for t = 0 and `lr * (1 - (t - 1) / total_iters) ** 0.9` for t >= 1 (steps 0 and 1 both
  use the base lr). `total_iters = len(trainloader_u) * epochs` per process.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import CpclError

__all__ = [
    "build_unimatch_optimizer",
    "lr_after_step",
    "lr_for_step",
    "set_unimatch_lr",
    "unimatch_param_groups",
]


def unimatch_param_groups(model: nn.Module, lr: float, lr_multi: float) -> list[dict]:
    """[backbone at `lr`, the rest at `lr * lr_multi`] (official order and membership)."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise CpclError(
            f"unimatch_param_groups: {type(model).__name__} has no `backbone` sub-module"
        )
    head = [p for name, p in model.named_parameters() if "backbone" not in name]
    groups = [
        {"params": list(backbone.parameters()), "lr": lr},
        {"params": head, "lr": lr * lr_multi},
    ]
    total = sum(1 for _ in model.parameters())
    if total != len(groups[0]["params"]) + len(head):
        # A parameter outside `.backbone` whose name contains 'backbone' would be dropped.
        raise CpclError(
            f"unimatch_param_groups: {total} parameters but "
            f"{len(groups[0]['params']) + len(head)} grouped; a name outside `.backbone` "
            f"contains 'backbone'"
        )
    return groups


def build_unimatch_optimizer(
    model: nn.Module,
    lr: float,
    lr_multi: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
) -> torch.optim.SGD:
    """The official `SGD([...], lr=lr, momentum=0.9, weight_decay=1e-4)`."""
    if lr <= 0 or lr_multi <= 0:
        raise CpclError(f"UniMatch optimiser lr={lr!r}, lr_multi={lr_multi!r}: expected > 0")
    groups = unimatch_param_groups(model, lr, lr_multi)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _check_step(step: int, total_iters: int) -> None:
    if total_iters <= 0:
        raise CpclError(f"UniMatch poly lr: total_iters={total_iters!r}, expected > 0")
    if not 0 <= step <= total_iters:
        raise CpclError(f"UniMatch poly lr: step {step} is outside [0, {total_iters}]")


def lr_after_step(step: int, base_lr: float, total_iters: int, power: float = 0.9) -> float:
    """The lr the official loop writes after step `step` (line 206)."""
    _check_step(step, total_iters)
    return base_lr * (1 - step / total_iters) ** power


def lr_for_step(step: int, base_lr: float, total_iters: int, power: float = 0.9) -> float:
    """The backbone lr that step `step` runs with (base lr at 0, then one step late)."""
    _check_step(step, total_iters)
    return base_lr if step == 0 else lr_after_step(step - 1, base_lr, total_iters, power)


def set_unimatch_lr(optimizer: torch.optim.Optimizer, lr: float, lr_multi: float) -> None:
    """Write `lr` into group 0 (backbone) and `lr * lr_multi` into group 1 (lines 207-208)."""
    if len(optimizer.param_groups) != 2:
        raise CpclError(
            f"set_unimatch_lr: expected the 2 UniMatch groups, found {len(optimizer.param_groups)}"
        )
    optimizer.param_groups[0]["lr"] = lr
    optimizer.param_groups[1]["lr"] = lr * lr_multi
