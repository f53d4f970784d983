"""UniMatch V2's optimiser, learning-rate rule and EMA teacher update (`unimatch_v2.py:67-73,
88-91, 127, 206-226`).

* AdamW(betas (0.9, 0.999), eps 1e-8, weight_decay 0.01) with two groups: the trainable
  encoder parameters (`model.backbone`) at `lr`, every parameter whose name lacks `backbone`
  at `lr * lr_multi` (40 in every official config). **No parameter is exempt from weight
  decay** (norms, biases, `pos_embed`, `cls_token`, LayerScale `gamma`). With `lock_backbone`
  (ADE20K) group 0 is empty.
* Poly 0.9 written **after** `optimizer.step()`, as in UniMatch V1: iteration `t` (0-based,
  global) runs at `lr` for t = 0 and `lr * (1 - (t-1)/total_iters) ** 0.9` after that
  (`cpcl.methods.unimatch.optim.lr_for_step`, the same rule); `total_iters =
  len(trainloader_u) * epochs`.
* EMA teacher: `ema_ratio(t) = min(1 - 1/(t+1), 0.996)` (0 at t = 0: the teacher becomes a copy
  of the student after the first step), applied after the step of iteration `t` to every
  parameter **and buffer** in `zip` order: `p_ema = p_ema * r + p * (1 - r)`. Parameters
  without a gradient (the unused `mask_token`, `refinenet4.resConfUnit1`) are skipped by AdamW
  but still averaged.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import CpclError
from ..unimatch.optim import lr_after_step, lr_for_step, set_unimatch_lr
from .net import param_groups

__all__ = [
    "ADAMW_BETAS",
    "ADAMW_WEIGHT_DECAY",
    "EMA_RATIO_CAP",
    "build_unimatch_v2_optimizer",
    "ema_ratio",
    "ema_update",
    "lr_after_step",
    "lr_for_step",
    "set_unimatch_v2_lr",
]

ADAMW_BETAS = (0.9, 0.999)
ADAMW_WEIGHT_DECAY = 0.01
EMA_RATIO_CAP = 0.996


def build_unimatch_v2_optimizer(
    model: nn.Module,
    lr: float,
    lr_multi: float,
    *,
    betas: tuple[float, float] = ADAMW_BETAS,
    weight_decay: float = ADAMW_WEIGHT_DECAY,
) -> torch.optim.AdamW:
    """The official `AdamW([encoder at lr, the rest at lr * lr_multi], lr=lr, betas, wd)`."""
    if lr <= 0 or lr_multi <= 0:
        raise CpclError(f"UniMatch V2 optimiser lr={lr!r}, lr_multi={lr_multi!r}: expected > 0")
    if not isinstance(getattr(model, "backbone", None), nn.Module):
        raise CpclError(
            f"UniMatch V2 optimiser: {type(model).__name__} has no `backbone` sub-module"
        )
    groups = param_groups(model, lr, lr_multi)
    grouped = {id(p) for g in groups for p in g["params"]}
    # Official membership: a trainable parameter outside both groups would silently never train.
    lost = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in grouped]
    if lost:
        raise CpclError(
            f"UniMatch V2 optimiser: trainable parameters {lost[:3]} are in no group (a name "
            "outside `.backbone` contains 'backbone')"
        )
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)


def set_unimatch_v2_lr(optimizer: torch.optim.Optimizer, lr: float, lr_multi: float) -> None:
    """Write `lr` into group 0 (encoder) and `lr * lr_multi` into group 1 (`:218-219`)."""
    set_unimatch_lr(optimizer, lr, lr_multi)


def ema_ratio(iteration: int, cap: float = EMA_RATIO_CAP) -> float:
    """`min(1 - 1 / (iters + 1), 0.996)` of 0-based global iteration `iteration` (`:221`)."""
    if iteration < 0:
        raise CpclError(f"UniMatch V2 ema_ratio: iteration {iteration} < 0")
    return min(1 - 1 / (iteration + 1), cap)


@torch.no_grad()
def ema_update(model_ema: nn.Module, model: nn.Module, ratio: float) -> None:
    """`x_ema <- x_ema * ratio + x * (1 - ratio)` for every parameter, then every buffer, in
    `zip` order (`:223-226`); the two modules must have the same structure."""
    pairs = (
        (list(model.parameters()), list(model_ema.parameters()), "parameters"),
        (list(model.buffers()), list(model_ema.buffers()), "buffers"),
    )
    for src, dst, what in pairs:
        if len(src) != len(dst):
            raise CpclError(
                f"UniMatch V2 EMA: the student has {len(src)} {what}, the teacher {len(dst)}"
            )
        for x, x_ema in zip(src, dst, strict=True):
            x_ema.copy_(x_ema * ratio + x.detach() * (1 - ratio))
