"""U2PL schedules: drop percent, alpha_t, the EMA teacher, poly lr and the optimiser.

Official code: `train_semi.py:98-159` (param groups, optimiser, scheduler), `276-279` (lr set
before the step), `288-315` (supervised-only epochs and the teacher copy), `377-379` (drop
percent), `397-399` (alpha_t), `531-548` (EMA), `u2pl/utils/lr_helper.py:42-113`.

Teacher semantics reproduced here (golden `u2pl_schedules.json`, `ema_toy`):

* epochs `< sup_only_epoch` (VOC: epoch 0; Cityscapes: none) are supervised only; the teacher
  runs a train-mode forward on the labeled images just to update its own BN buffers;
* during the whole epoch `== sup_only_epoch`, every iteration starts with `t.data = s.data`
  for every parameter: teacher and student SHARE storage, so the in-place optimiser step moves
  both, and the EMA right after it (`t = d*t + (1-d)*s`, a new tensor) leaves t ~= s;
* from then on `t = d*t + (1-d)*s` after every step with
  `d = min(1 - 1/(i_iter - iters_per_epoch*sup_only_epoch + 1), ema_decay)`;
* only `parameters()` are averaged; BN buffers are the teacher's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ...checkpoint import unwrap
from ...errors import ConfigError


def drop_percent(epoch: int, epochs: int, drop_percent_cfg: float = 80) -> tuple[float, float]:
    """`(drop_percent, percent_unreliable)` of an epoch (`train_semi.py:377-379`).

    Pixels whose entropy is at or above the `drop_percent` percentile are dropped from the
    unsupervised loss: 80 at epoch 0 rising linearly towards 100."""
    if epochs < 1 or not 0 <= epoch <= epochs:
        raise ConfigError(f"epoch {epoch} of {epochs}: expected 0 <= epoch <= epochs, epochs >= 1")
    if not 0 <= drop_percent_cfg <= 100:
        raise ConfigError(f"drop_percent = {drop_percent_cfg!r}: expected a percent in [0, 100]")
    percent_unreliable = (100 - drop_percent_cfg) * (1 - epoch / epochs)
    return 100 - percent_unreliable, percent_unreliable


def contra_alpha_t(epoch: int, epochs: int, low_entropy_threshold: float = 20) -> float:
    """`alpha_t` (`train_semi.py:397-399`): the low-entropy percentile; high uses 100 - it."""
    if epochs < 1 or not 0 <= epoch <= epochs:
        raise ConfigError(f"epoch {epoch} of {epochs}: expected 0 <= epoch <= epochs, epochs >= 1")
    return low_entropy_threshold * (1 - epoch / epochs)


def _paired_parameters(teacher: nn.Module, student: nn.Module):
    t_named = list(unwrap(teacher).named_parameters())
    s_named = list(unwrap(student).named_parameters())
    if [n for n, _ in t_named] != [n for n, _ in s_named]:
        raise ConfigError("EMA teacher and student have different parameter names")
    return [(t, s) for (_, t), (_, s) in zip(t_named, s_named, strict=True)]


@torch.no_grad()
def alias_teacher_params(teacher: nn.Module, student: nn.Module) -> None:
    """`t.data = s.data` for every parameter (official teacher copy: shared storage)."""
    for t, s in _paired_parameters(teacher, student):
        t.data = s.data


@torch.no_grad()
def match_layout(teacher: nn.Module, student: nn.Module) -> None:
    """Give every teacher parameter the memory layout (strides) of its student twin, values
    unchanged. The teacher-copy epoch hands the teacher the student's storage, so without
    this a channels-last student gives an NCHW teacher before that epoch and a channels-last
    one after it, and a teacher rebuilt on resume would run its convolutions in the other
    layout (float32 sums in another order: ~1e-7 differences)."""
    for t, s in _paired_parameters(teacher, student):
        t.data = torch.empty_like(s.data).copy_(t.data)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """`t.data = decay * t.data + (1 - decay) * s.data` (new tensors, parameters only)."""
    for t, s in _paired_parameters(teacher, student):
        t.data = decay * t.data + (1 - decay) * s.data


@dataclass(frozen=True)
class TeacherSchedule:
    """When the teacher is trained how: `sup_only_epoch` (VOC 1, Cityscapes 0), `ema_decay`
    (0.99) and the iterations per epoch (`len(loader_l)`)."""

    sup_only_epoch: int
    iters_per_epoch: int
    ema_decay: float = 0.99

    def __post_init__(self) -> None:
        if self.sup_only_epoch < 0:
            raise ConfigError(f"sup_only_epoch = {self.sup_only_epoch!r}: expected >= 0")
        if self.iters_per_epoch < 1:
            raise ConfigError(f"iters_per_epoch = {self.iters_per_epoch!r}: expected >= 1")
        if not 0 <= self.ema_decay <= 1:
            raise ConfigError(f"ema_decay = {self.ema_decay!r}: expected in [0, 1]")

    def phase(self, epoch: int) -> str:
        """ "sup_only", "alias" (the teacher-copy epoch, semi-supervised) or "ema"."""
        if epoch < self.sup_only_epoch:
            return "sup_only"
        return "alias" if epoch == self.sup_only_epoch else "ema"

    def decay(self, i_iter: int) -> float:
        """EMA decay after global iteration `i_iter` (only for epochs >= sup_only_epoch)."""
        k = i_iter - self.iters_per_epoch * self.sup_only_epoch
        if k < 0:
            raise ConfigError(f"EMA decay asked at iteration {i_iter}, a supervised-only one")
        return min(1 - 1 / (k + 1), self.ema_decay)

    def before_iteration(self, teacher: nn.Module, student: nn.Module, epoch: int) -> None:
        """At the start of an iteration: alias the teacher during the teacher-copy epoch."""
        if self.phase(epoch) == "alias":
            alias_teacher_params(teacher, student)

    def after_step(
        self, teacher: nn.Module, student: nn.Module, epoch: int, i_iter: int
    ) -> float | None:
        """After the optimiser step: the EMA update; returns the decay (None when none)."""
        if self.phase(epoch) == "sup_only":
            return None
        decay = self.decay(i_iter)
        ema_update(teacher, student, decay)
        return decay


def poly_lr(base_lr: float, i_iter: int, max_iter: int, power: float = 0.9) -> float:
    """`base_lr * (1 - i_iter/max_iter) ** power` (official `LRScheduler`, mode poly)."""
    if max_iter < 1 or not 0 <= i_iter <= max_iter:
        raise ConfigError(f"poly lr at iteration {i_iter} of {max_iter}: out of range")
    return base_lr * ((1 - float(i_iter) / max_iter) ** power)


def set_poly_lr(
    optimizer: torch.optim.Optimizer,
    base_lrs: Sequence[float],
    i_iter: int,
    max_iter: int,
    power: float = 0.9,
) -> list[float]:
    """Write iteration `i_iter`'s lr into each group (before its step) and return them.

    `max_iter = epochs * len(loader_l)`; iteration 0 uses the base lrs."""
    if len(base_lrs) != len(optimizer.param_groups):
        raise ConfigError(
            f"{len(base_lrs)} base lrs for {len(optimizer.param_groups)} parameter groups"
        )
    lrs = [poly_lr(b, i_iter, max_iter, power) for b in base_lrs]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    return lrs


def u2pl_param_groups(model: nn.Module, lr: float, head_lr_times: float) -> list[dict]:
    """Official groups: `encoder` at lr, then (`auxor`,) `decoder` at `lr * head_lr_times`
    (10 on VOC, 1 on Cityscapes). Weight decay comes from the optimiser defaults (all)."""
    net = unwrap(model)
    groups = [{"params": list(net.encoder.parameters()), "lr": lr, "name": "encoder"}]
    if getattr(net, "auxor", None) is not None:
        groups.append(
            {"params": list(net.auxor.parameters()), "lr": lr * head_lr_times, "name": "auxor"}
        )
    groups.append(
        {"params": list(net.decoder.parameters()), "lr": lr * head_lr_times, "name": "decoder"}
    )
    covered = {id(p) for g in groups for p in g["params"]}
    missing = [n for n, p in net.named_parameters() if id(p) not in covered]
    if missing:
        raise ConfigError(f"parameters outside encoder/decoder/auxor: {missing[:5]}")
    return groups


def build_u2pl_optimizer(
    model: nn.Module,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    head_lr_times: float = 10,
) -> tuple[torch.optim.SGD, list[float]]:
    """One SGD over the official groups, and the groups' base lrs for `set_poly_lr`."""
    for key, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"U2PL {key} = {value!r}: expected a non-negative number")
    groups = u2pl_param_groups(model, float(lr), float(head_lr_times))
    opt = torch.optim.SGD(
        groups, lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay)
    )
    return opt, [g["lr"] for g in opt.param_groups]
