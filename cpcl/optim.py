"""Optimisers and the learning-rate schedule of the official CPCL training.

Two SGD optimisers, one per branch, each with the furnace `group_weight` parameter groups,
and the furnace `WarmUpPolyLR` schedule (without re-basing after the warm-up).
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import CpclError

# Parameters of these layers never get weight decay (official: BatchNorm and GroupNorm; the
# other norms are included so that SyncBatchNorm or a LayerNorm variant behave the same way).
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def group_weight(module: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Two SGD parameter groups for `module`: [decay, no-decay].

    Decay: conv and linear weights (any non-norm parameter not named `bias`).
    No decay (`weight_decay=0`): all parameters of norm layers and every bias.
    Within a group the order is that of `module.modules()`, weight before bias, as in
    furnace `group_weight`.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for m in module.modules():
        is_norm = isinstance(m, _NORM_TYPES)
        for name, p in m.named_parameters(recurse=False):
            if is_norm or name == "bias":
                no_decay.append(p)
            else:
                decay.append(p)
    total = sum(1 for _ in module.parameters())
    if total != len(decay) + len(no_decay):
        # Only happens with a parameter shared between two sub-modules.
        raise CpclError(
            f"group_weight: {type(module).__name__} has {total} parameters but "
            f"{len(decay) + len(no_decay)} were grouped (shared parameters are not supported)"
        )
    return [
        {"params": decay, "lr": lr, "weight_decay": weight_decay},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0},
    ]


def branch_param_groups(branch: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """The 6 official groups of one branch: backbone, head, classifier x [decay, no-decay]."""
    groups: list[dict] = []
    for part in ("backbone", "head", "classifier"):
        sub = getattr(branch, part, None)
        if not isinstance(sub, nn.Module):
            raise CpclError(
                f"{type(branch).__name__} has no sub-module {part!r}; "
                "expected a SingleNetwork with .backbone, .head and .classifier"
            )
        groups.extend(group_weight(sub, lr, weight_decay))
    covered = {id(p) for g in groups for p in g["params"]}
    missing = [n for n, p in branch.named_parameters() if id(p) not in covered]
    if missing:
        raise CpclError(
            f"parameters outside backbone/head/classifier would not be optimised: {missing[:5]}"
        )
    return groups


def build_optimizers(
    model: nn.Module, lr: float, momentum: float, weight_decay: float
) -> tuple[torch.optim.SGD, torch.optim.SGD]:
    """One SGD per branch (`model.branch1`, `model.branch2`) with the official groups.

    Group order per optimiser: backbone decay, backbone no-decay, head decay, head no-decay,
    classifier decay, classifier no-decay.
    """
    for key, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if not isinstance(value, (int, float)) or value < 0:
            raise CpclError(f"{key} = {value!r}: expected a non-negative number")
    opts = []
    for name in ("branch1", "branch2"):
        branch = getattr(model, name, None)
        if not isinstance(branch, nn.Module):
            raise CpclError(f"{type(model).__name__} has no {name!r}; expected a cpcl Network")
        groups = branch_param_groups(branch, float(lr), float(weight_decay))
        opts.append(
            torch.optim.SGD(
                groups, lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay)
            )
        )
    return opts[0], opts[1]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write `lr` into every parameter group (the official loop does this every iteration)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


class WarmUpPolyLR:
    """Linear warm-up, then poly decay `start_lr * (1 - it/total_iters) ** lr_power`.

    As in furnace, the poly part is not re-based after the warm-up, so the lr steps down at
    `it == warmup_steps` (e.g. 0.0098 -> 0.009549 for start 0.01, 50 warm-up of 1000 iters).
    """

    def __init__(
        self, start_lr: float, lr_power: float, total_iters: int, warmup_steps: int = 0
    ) -> None:
        if total_iters <= 0:
            raise CpclError(f"WarmUpPolyLR total_iters={total_iters!r}: expected > 0")
        if warmup_steps < 0:
            raise CpclError(f"WarmUpPolyLR warmup_steps={warmup_steps!r}: expected >= 0")
        self.start_lr = float(start_lr)
        self.lr_power = float(lr_power)
        self.total_iters = float(total_iters)
        self.warmup_steps = warmup_steps

    def get_lr(self, cur_iter: int) -> float:
        """The learning rate at 0-based iteration `cur_iter` (0 <= cur_iter <= total_iters)."""
        if cur_iter < 0 or cur_iter > self.total_iters:
            # Past the end the official formula raises a negative number to a fractional power.
            raise CpclError(
                f"WarmUpPolyLR: iteration {cur_iter} is outside [0, {int(self.total_iters)}]"
            )
        if cur_iter < self.warmup_steps:
            return self.start_lr * (cur_iter / self.warmup_steps)
        return self.start_lr * ((1 - float(cur_iter) / self.total_iters) ** self.lr_power)
