"""What sup, CPS and CPCL share: the official two-branch network, its two SGD optimisers
with the furnace parameter groups and WarmUpPolyLR, the supervised forwards, the CutMix
teacher/student forwards, and the branch selection for evaluation.

The forward order is the official one of `exp_voc/train.py` (it fixes how the BN running
statistics evolve): sup 1, sup 2, teacher 1 (u0, u1), teacher 2 (u0, u1), student 1, student 2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..data.cutmix import BoxMaskSettings
from ..data.views import CutMixView, LabeledView, TransformSettings
from ..errors import ConfigError, CpclError
from ..evaluate.branch import select_branch
from ..losses import at_least_float32, build_sup_criterion
from ..models import ModelSettings, build_model
from ..optim import WarmUpPolyLR, build_optimizers, set_lr
from .base import Method, StepInfo

EVAL_BRANCHES = ("1", "2", "avg")


def logits_of(out: Tensor | tuple | list) -> Tensor:
    """Logits from a forward that returns either the logits or `(feature, logits)`."""
    return out[-1] if isinstance(out, (tuple, list)) else out


def check_logits(names: Sequence[str], tensors: Sequence[Tensor], num_classes: int | None) -> None:
    """Every tensor is (B,C,H,W) like the first; C == num_classes when given."""
    ref = tensors[0]
    for name, t in zip(names, tensors, strict=True):
        if t.dim() != 4 or t.shape != ref.shape:
            raise CpclError(
                f"{name} has shape {tuple(t.shape)}; expected (B,C,H,W) equal to "
                f"{names[0]} {tuple(ref.shape)}"
            )
    if num_classes is not None and ref.shape[1] != num_classes:
        raise CpclError(f"logits have {ref.shape[1]} channels but num_classes={num_classes}")


@dataclass(frozen=True)
class OptimSettings:
    """SGD and schedule values of the official CPCL recipe."""

    lr: float
    momentum: float
    weight_decay: float
    lr_power: float
    total_iters: int
    warmup_iters: int = 0


def teacher_logits(
    model: nn.Module, u0: Tensor, u1: Tensor, step: int, fused: bool
) -> tuple[Tensor, Tensor]:
    """Teacher logits on u0 and u1 (caller holds no_grad; the model stays in train mode).

    `fused=True` runs u0 and u1 as one batch: faster, but BN then normalises with the
    statistics of both batches together and updates its running statistics once instead of
    twice, so the result is NOT the official one.
    """
    if fused:
        both = logits_of(model(torch.cat([u0, u1], dim=0), step=step))
        return both[: u0.shape[0]], both[u0.shape[0] :]
    return logits_of(model(u0, step=step)), logits_of(model(u1, step=step))


class TwoBranchMethod(Method):
    """Base of sup / CPS / CPCL: everything but the unsupervised loss."""

    uses_unlabeled: ClassVar[bool] = True
    capturable: ClassVar[bool] = True  # no host sync in the iteration (tests/test_cuda_graphs.py)
    batch_keys: ClassVar[tuple[str, ...]] = ("img", "gt", "img_u0", "img_u1", "mask")

    def __init__(
        self,
        *,
        sup_criterion: nn.Module,
        unsup_weight: float,
        fused_teacher: bool = False,
        eval_branch: str = "1",
        model: ModelSettings | None = None,
        optim: OptimSettings | None = None,
        transform: TransformSettings | None = None,
        cutmix: Any = None,
    ) -> None:
        if eval_branch not in EVAL_BRANCHES:
            raise ConfigError(
                f"C.eval_branch = {eval_branch!r}: expected one of {', '.join(EVAL_BRANCHES)}"
            )
        self.sup_criterion = sup_criterion
        self.unsup_weight = unsup_weight
        self.fused_teacher = fused_teacher
        self.eval_branch = eval_branch
        self.model_settings, self.optim, self.transform, self.cutmix = (
            model,
            optim,
            transform,
            cutmix,
        )
        self.schedule = (
            WarmUpPolyLR(optim.lr, optim.lr_power, optim.total_iters, optim.warmup_iters)
            if optim is not None
            else None
        )

    @classmethod
    def check_config(cls, C: Any) -> None:
        """The evaluated network is branch 1, branch 2 or their mean (`C.eval_branch`)."""
        check_eval_branch(C)

    @classmethod
    def from_config(cls, C: Any, *, per_rank_batch: int) -> TwoBranchMethod:
        """Read the official CPCL keys of a finalized config."""

        return cls(
            sup_criterion=build_sup_criterion(C, per_rank_batch),
            unsup_weight=float(C.unsup_weight),
            fused_teacher=bool(C.fused_teacher),
            eval_branch=str(C.eval_branch),
            model=ModelSettings.from_config(C),
            optim=OptimSettings(
                lr=float(C.lr),
                momentum=float(C.momentum),
                weight_decay=float(C.weight_decay),
                lr_power=float(C.lr_power),
                total_iters=int(C.nepochs * C.niters_per_epoch),
                warmup_iters=int(C.warm_up_epoch * C.niters_per_epoch),
            ),
            transform=TransformSettings.from_config(C),
            cutmix=BoxMaskSettings.from_config(C) if cls.uses_unlabeled else None,
        )

    def _need(self, value: Any, what: str) -> Any:
        if value is None:
            raise ConfigError(
                f"method {self.name!r} was built without {what}; build it with "
                "from_config(C, per_rank_batch=...)"
            )
        return value

    def data_view(self) -> LabeledView | CutMixView:
        """Labeled crops (sup) or the CutMix triple (CPS, CPCL), official transform."""
        transform = self._need(self.transform, "transform settings")
        if not self.uses_unlabeled:
            return LabeledView(transform)
        return CutMixView(transform, self._need(self.cutmix, "CutMix settings"))

    def build_model(self, *, pretrained: bool = True) -> nn.Module:
        """The official two-branch network (`branch1`, `branch2`)."""
        settings = self._need(self.model_settings, "model settings")
        if not pretrained:
            settings = dataclasses.replace(settings, pretrained=None)
        return build_model("two_branch", settings)

    def build_optimizers(self, model: nn.Module) -> tuple[torch.optim.Optimizer, ...]:
        """One SGD per branch with the official parameter groups."""
        o = self._need(self.optim, "optimiser settings")
        return build_optimizers(model, o.lr, o.momentum, o.weight_decay)

    def set_lr(self, optimizers: Sequence[torch.optim.Optimizer], step: StepInfo) -> float:
        """The furnace WarmUpPolyLR value, written into every group before the step."""
        lr = self._need(self.schedule, "optimiser settings").get_lr(step.iteration)
        for opt in optimizers:
            set_lr(opt, lr)
        return lr

    def eval_net(self, model: nn.Module) -> nn.Module:
        """Branch 1 (official), branch 2 or their mean, per `C.eval_branch`."""

        return select_branch(model, self.eval_branch)

    def supervised(
        self, model: nn.Module, batch: Mapping[str, Tensor], aux: dict[str, Tensor] | None
    ) -> tuple[Tensor, Tensor]:
        """Both branches on the labeled batch: `(loss_sup_1, loss_sup_2)`."""
        img, gt = batch["img"], batch["gt"]
        sup_1 = logits_of(model(img, step=1))
        sup_2 = logits_of(model(img, step=2))
        loss_1 = self.sup_criterion(at_least_float32(sup_1), gt)
        loss_2 = self.sup_criterion(at_least_float32(sup_2), gt)
        if aux is not None:
            aux.update(logits_sup_1=sup_1.detach(), logits_sup_2=sup_2.detach())
        return loss_1, loss_2

    def mixed_forwards(
        self, model: nn.Module, batch: Mapping[str, Tensor], aux: dict[str, Tensor] | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Teachers on u0/u1 (no grad), logits mixed with the CutMix mask, students on the
        mixed image: `(t1, t2, s1, s2)`."""
        u0, u1, mask = batch["img_u0"], batch["img_u1"], batch["mask"]
        mask = mask.to(u0.dtype)
        mixed = u0 * (1 - mask) + u1 * mask
        with torch.no_grad():
            tu0_1, tu1_1 = teacher_logits(model, u0, u1, 1, self.fused_teacher)
            tu0_2, tu1_2 = teacher_logits(model, u0, u1, 2, self.fused_teacher)
            # Mix the teacher LOGITS with the same mask, in float32 (float64 for a float64
            # model) as the official code.
            m = mask.to(torch.promote_types(tu0_1.dtype, torch.float32))
            t1 = at_least_float32(tu0_1) * (1 - m) + at_least_float32(tu1_1) * m
            t2 = at_least_float32(tu0_2) * (1 - m) + at_least_float32(tu1_2) * m
        stu_1 = logits_of(model(mixed, step=1))
        stu_2 = logits_of(model(mixed, step=2))
        if aux is not None:
            aux.update(
                unsup_imgs_mixed=mixed,
                logits_u0_tea_1=tu0_1,
                logits_u1_tea_1=tu1_1,
                logits_u0_tea_2=tu0_2,
                logits_u1_tea_2=tu1_2,
                logits_cons_tea_1=t1,
                logits_cons_tea_2=t2,
                logits_cons_stu_1=stu_1.detach(),
                logits_cons_stu_2=stu_2.detach(),
            )
        return t1, t2, stu_1, stu_2


def check_eval_branch(C: Any) -> None:
    """`C.eval_branch` must name a branch of the two-branch network."""
    if C.get("eval_branch", "1") not in EVAL_BRANCHES:
        raise ConfigError(
            f"C.eval_branch = {C.eval_branch!r}: expected one of {', '.join(EVAL_BRANCHES)}"
        )
