"""CoSA's optimiser, LR schedule, loss warm-up and EMA (official `main.py:47-71, 238-252`,
`utils/torch_helper.py:261-293`).

* `PolyWarmupAdamW` is AdamW (eps 1e-8, betas 0.9/0.999) over the four `get_param_groups`
  groups at lr, lr, lrscale*lr, lrscale*lr, weight decay wt_dec, wt_dec*wt_dec_mult, wt_dec,
  wt_dec. Its `step()` first writes the LR computed from `global_step` (the count **before** the
  update), then increments it:
  - t < warmup_iter (1500, hard-coded in `main.py:67`): `lr0 (1 - (1 - t/1500)(1 - 1e-6))`;
  - warmup_iter <= t < max_iter: `lr0 max((1 - t/max_iter)^0.9, min_mult)`;
  - t >= both: the LR is left unchanged (the last value written stays).
  Here this is a pure function (`cosa_lrs`) plus a plain `torch.optim.AdamW`.
* Loss warm-up: iteration `n` (0-based) trains cls + cls_aux only while `n <= warmup_iters`
  (note `<=`); the other terms are still computed and multiplied by 0.0.
* EMA: `teacher = m teacher + (1 - m) student` over `parameters()` in registration order (all
  parameters, incl. the frozen `pos_embed` and the unused `encoder.head`), after each step.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import CpclError

__all__ = [
    "LR_WARMUP_ITERS",
    "LR_WARMUP_RATIO",
    "build_cosa_optimizer",
    "cosa_lr_mult",
    "cosa_lrs",
    "ema_update",
    "loss_weights",
    "set_lrs",
]

LR_WARMUP_ITERS = 1500  # `main.py:67`, independent of the loss warm-up
LR_WARMUP_RATIO = 1e-6


def cosa_lr_mult(
    step: int,
    max_iters: int,
    *,
    warmup_iter: int = LR_WARMUP_ITERS,
    warmup_ratio: float = LR_WARMUP_RATIO,
    power: float = 0.9,
    min_mult: float = 0.0,
) -> float:
    """The LR multiplier `PolyWarmupAdamW.step()` uses when its `global_step` is `step`."""
    if step < 0 or max_iters <= 0:
        raise CpclError(f"CoSA lr: step={step!r}, max_iters={max_iters!r}; expected >= 0 and > 0")
    # Past both ranges the official step writes nothing: the last written value stays.
    end = max(warmup_iter, max_iters)
    if step >= end:
        step = end - 1
    if step < warmup_iter:
        return 1 - (1 - step / warmup_iter) * (1 - warmup_ratio)
    return max((1 - step / max_iters) ** power, min_mult)


def cosa_lrs(
    step: int,
    lr: float,
    max_iters: int,
    *,
    lrscale: float = 10.0,
    min_mult: float = 0.0,
    warmup_iter: int = LR_WARMUP_ITERS,
) -> list[float]:
    """The 4 group LRs (encoder, encoder norms, classifiers, decoder) of optimiser step `step`."""
    mult = cosa_lr_mult(step, max_iters, warmup_iter=warmup_iter, min_mult=min_mult)
    # Each group's initial lr times the multiplier, as `self.__init_lr[i] * lr_mult`.
    return [base * mult for base in (lr, lr, lrscale * lr, lrscale * lr)]


def build_cosa_optimizer(
    groups: list[list[nn.Parameter]],
    lr: float,
    *,
    lrscale: float = 10.0,
    wt_dec: float = 1e-2,
    wt_dec_mult: float = 1.0,
    foreach: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over the 4 `CoSANet.param_groups()` groups with the official lr / weight decay.

    Parameters without `requires_grad` (`pos_embed`) stay in group 0, as the official code; AdamW
    skips them because they never get a gradient.
    """
    if len(groups) != 4:
        raise CpclError(f"CoSA optimiser: {len(groups)} parameter groups, expected 4")
    if lr <= 0:
        raise CpclError(f"CoSA optimiser lr={lr!r}: expected > 0")
    spec = [
        (lr, wt_dec),
        (lr, wt_dec * wt_dec_mult),
        (lrscale * lr, wt_dec),
        (lrscale * lr, wt_dec),
    ]
    param_groups = [
        {"params": params, "lr": g_lr, "weight_decay": g_wd}
        for params, (g_lr, g_wd) in zip(groups, spec, strict=True)
    ]
    return torch.optim.AdamW(
        param_groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wt_dec, foreach=foreach
    )


def set_lrs(optimizer: torch.optim.Optimizer, lrs: list[float]) -> None:
    """Write one LR per group (the schedule's values) before `optimizer.step()`."""
    if len(lrs) != len(optimizer.param_groups):
        raise CpclError(f"{len(lrs)} LRs for {len(optimizer.param_groups)} parameter groups")
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr


def loss_weights(
    n_iter: int,
    warmup_iters: int,
    *,
    seg_weight: float = 0.1,
    cam_weight: float = 0.05,
    reg_weight: float = 0.05,
) -> dict[str, float]:
    """Weights of (cls, cls_aux, seg, cam, reg) at 0-based iteration `n_iter` (`main.py:240`).

    While `n_iter <= warmup_iters` seg/cam/reg get 0.0: they are still computed and multiplied,
    so a NaN in them still propagates, as the official code.
    """
    if n_iter <= warmup_iters:
        return {"cls": 1.0, "cls_aux": 1.0, "seg": 0.0, "cam": 0.0, "reg": 0.0}
    return {"cls": 1.0, "cls_aux": 1.0, "seg": seg_weight, "cam": cam_weight, "reg": reg_weight}


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float = 0.9994) -> None:
    """`teacher = m teacher + (1 - m) student`, parameters zipped in registration order."""
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise CpclError(
            f"CoSA EMA: teacher has {len(t_params)} parameters, student {len(s_params)}"
        )
    if t_params and t_params[0].is_cuda:
        # Multi-tensor kernels on CUDA: the same multiply, product and add per element
        # (no fused `alpha=`), so bitwise the loop below in far fewer launches.
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(
            t_params, torch._foreach_mul([p.detach() for p in s_params], 1 - momentum)
        )
        return
    for p_t, p_s in zip(t_params, s_params, strict=True):
        # Same operation order as `param_a.data.mul_(m).add_((1 - m) * param_o)`.
        p_t.mul_(momentum).add_((1 - momentum) * p_s.detach())
