"""U2PL (Wang et al., CVPR 2022) as `--method=u2pl`: the official `ours` training
(`train_semi.py`, commit ab3d2be) on the generic engine.

One iteration follows the order documented in `cpcl.methods.u2pl.presets` (poly lr before
the step is `set_lr`; the rest is `forward_loss` and `after_step`):

* supervised-only epochs (`epoch < u2pl_sup_only_epoch`): the student on the labeled images,
  the supervised loss, then a train-mode teacher forward on the labeled images only to move
  the teacher's BN buffers; the unsupervised and contrastive terms are `0 * rep.sum()`;
* otherwise: the teacher-copy aliasing (`TeacherSchedule.before_iteration`), eval-mode
  teacher pseudo-labels on the unmixed unlabeled images, `strong_mix`, the student on
  `cat(labeled, mixed unlabeled)`, the supervised loss, a no-grad train-mode teacher forward
  on the same batch, the unreliable-pixel unsupervised loss, the contrastive masks and the
  memory-bank contrastive loss, `reduce_contra_loss`; `sup + unsup + contra` is returned;
* `after_step`: the EMA update (`TeacherSchedule.after_step`).

The teacher (built in `setup`) is a separate network outside the engine's model, so it is
neither optimised, nor gradient-synchronised, nor SyncBN-converted. That is the official
setup: `train_semi.py` converts only the student to SyncBatchNorm and wraps the teacher, with
plain BatchNorm, in its own DistributedDataParallel. DDP's default `broadcast_buffers=True`
copies rank 0's BN buffers to every rank at the start of a forward that follows a
grad-enabled one; `_TeacherBuffers` reproduces exactly that (the official teacher forwards
run with grad enabled, except the train-mode one of a semi-supervised iteration).

Random draws use the global generators as officially (numpy: the mixing coin and the CutMix
boxes; torch: Dropout2d of the train-mode teacher and the contrastive anchor/negative
indices); the engine saves and restores them in snapshots, so a resume is exact.

Official quirk kept: the contrastive loss is averaged over ranks with an in-place
all_reduce, which averages its value but leaves its gradient local / world_size; after the
engine's gradient average the contrastive term therefore weighs 1/world_size of the others
(`reduce_contra_loss`). Faithful by default; `--u2pl_contra_weight` can compensate.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...checkpoint import unwrap
from ...errors import CheckpointError, ConfigError
from ...evaluate.settings import EvalSettings
from ...losses import at_least_float32
from ..base import Method, OfficialEvaluator, StepInfo
from .eval import evaluate_u2pl
from .losses import (
    U2PLSupLoss,
    contra_memobank_loss,
    contrastive_masks,
    reduce_contra_loss,
    split_teacher_outputs,
    unreliable_unsup_loss,
)
from .memory import ClassMemoryBank
from .mix import strong_mix, teacher_pseudo_labels
from .net import U2PLNet, load_u2pl_imagenet
from .presets import U2PL_PRESETS
from .schedule import (
    TeacherSchedule,
    build_u2pl_optimizer,
    contra_alpha_t,
    drop_percent,
    match_layout,
    set_poly_lr,
)
from .settings import (
    CONFIG_HELP,
    CONFIG_KEYS,
    MIN_IMAGES_PER_RANK,
    U2PLSettings,
    check_u2pl_config,
    config_value,
    preset_defaults,
    settings_from_config,
)
from .teacher import TeacherBuffers, U2PLEvalNet
from .view import U2PLView


class U2PL(Method):
    """U2PL: EMA teacher, unreliable-pixel pseudo-labels, memory-bank contrastive loss."""

    name = "u2pl"
    batch_keys: ClassVar[tuple[str, ...]] = ("img", "gt", "img_u")
    defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        ds: preset_defaults(p) for ds, p in U2PL_PRESETS.items()
    }
    config_keys: ClassVar[Mapping[str, Any]] = CONFIG_KEYS
    config_help: ClassVar[Mapping[str, str]] = CONFIG_HELP
    min_images_per_rank: ClassVar[int] = MIN_IMAGES_PER_RANK
    not_capturable_because: ClassVar[str] = (
        "host reads in the contrastive loss (boolean-mask anchors and keys, per-class counts, "
        "percentiles, CPU random draws bounded by device counts; docs/gpu.md)"
    )

    @classmethod
    def check_config(cls, C: Any) -> None:
        """Named errors for settings U2PL cannot run with (`check_u2pl_config`)."""
        check_u2pl_config(C)

    @classmethod
    def from_config(cls, C: Any, *, per_rank_batch: int) -> U2PL:
        """Read the U2PL settings of a finalized config (`per_rank_batch` is not needed:
        the official OHEM `min_kept` is per process, not per image)."""
        cls.check_config(C)
        return cls(settings_from_config(C))

    def __init__(self, settings: U2PLSettings) -> None:
        self.s = settings
        self.sup_loss = U2PLSupLoss(
            settings.sup_loss,
            settings.aux_loss_weight,
            thresh=settings.ohem_thresh,
            min_kept=settings.ohem_min_kept,
        )
        self.schedule = TeacherSchedule(
            settings.sup_only_epoch, settings.iters_per_epoch, settings.ema_decay
        )
        self.base_lrs: list[float] | None = None
        self.teacher: nn.Module | None = None
        self.bank: ClassMemoryBank | None = None
        self.buffers = TeacherBuffers()
        self.last_epoch = -1  # the epoch of the last trained iteration (eval_net "auto")

    # --- data, model, optimiser --------------------------------------------------------------

    def data_view(self) -> U2PLView:
        """Labeled pair + one unlabeled image, the project's training transform."""
        return U2PLView(self.s.transform)

    def build_model(self, *, pretrained: bool = True) -> nn.Module:
        """The student `U2PLNet` (+ aux head when `u2pl_aux_loss_weight > 0`); the ImageNet
        file `C.pretrained_model` is loaded into its encoder."""
        net = U2PLNet(self.s.num_classes, self.s.backbone, aux_loss=self.s.aux_loss_weight > 0)
        if pretrained and self.s.pretrained:
            load_u2pl_imagenet(net, self.s.pretrained)
        return net

    def build_optimizers(self, model: nn.Module) -> tuple[torch.optim.Optimizer, ...]:
        """One SGD over the official groups (encoder; aux, decoder at x lr_head_times)."""
        opt, self.base_lrs = build_u2pl_optimizer(
            model, self.s.lr, self.s.momentum, self.s.weight_decay, self.s.lr_head_times
        )
        return (opt,)

    def set_lr(self, optimizers: Sequence[torch.optim.Optimizer], step: StepInfo) -> float:
        """Poly lr of this iteration, written before the step; returns the encoder lr."""
        if self.base_lrs is None:
            raise ConfigError("U2PL.set_lr before build_optimizers: no base learning rates")
        total = self.s.nepochs * step.iters_per_epoch
        return set_poly_lr(optimizers[0], self.base_lrs, step.iteration, total, self.s.lr_power)[0]

    def setup(self, model: nn.Module) -> None:
        """The teacher (plain BN, same weights and buffers as the student, not trained by
        the optimiser) and empty memory banks (gathered over ranks)."""
        student = unwrap(model)
        teacher = self.build_model(pretrained=False)
        teacher.load_state_dict(student.state_dict())
        device = next(student.parameters()).device
        teacher.to(device)
        # Same layout as the student (channels-last or not) from the start, as after the
        # teacher-copy epoch: a resumed run then computes exactly as an uninterrupted one.
        match_layout(teacher, student)
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher
        self.bank = ClassMemoryBank(self.s.queue_sizes, 256)
        self.buffers = TeacherBuffers()
        self.last_epoch = -1

    def _ready(self) -> tuple[nn.Module, ClassMemoryBank]:
        if self.teacher is None or self.bank is None:
            raise ConfigError("U2PL used before setup(model): no teacher / memory bank")
        return self.teacher, self.bank

    # --- one iteration -----------------------------------------------------------------------

    def _sup(self, out: Mapping[str, Tensor], gt: Tensor, n: int | None = None) -> Tensor:
        size = gt.shape[-2:]
        pred = F.interpolate(out["pred"][:n], size, mode="bilinear", align_corners=True)
        aux = None
        if self.s.aux_loss_weight > 0:
            aux = F.interpolate(out["aux"][:n], size, mode="bilinear", align_corners=True)
            aux = at_least_float32(aux)
        return self.sup_loss(at_least_float32(pred), gt, aux)

    def forward_loss(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        step: StepInfo,
        aux: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One official iteration (see the module docstring); logs `loss_sup`,
        `loss_unsup`, `loss_contra`, `drop_percent`, `alpha_t` and `mixed` (1 when the
        strong mix was applied)."""
        teacher, _ = self._ready()
        self.last_epoch = step.epoch
        img, gt = batch["img"], batch["gt"]
        percent, _ = drop_percent(step.epoch, self.s.nepochs, self.s.drop_percent)
        alpha_t = contra_alpha_t(step.epoch, self.s.nepochs, self.s.contra.low_entropy_threshold)
        if self.schedule.phase(step.epoch) == "sup_only":
            out = model(img)
            loss_sup = self._sup(out, gt)
            # Only to move the teacher's BN buffers (official, grad-enabled forward).
            self.buffers.forward(teacher, img, train=True, official_grad=True)
            loss_unsup = loss_contra = 0 * out["rep"].sum()
            mixed = False
        else:
            loss_sup, loss_unsup, loss_contra, mixed = self._semi(
                model, batch, step, percent, alpha_t, aux
            )
        loss = loss_sup + loss_unsup + loss_contra
        ref = loss.detach()
        logs = {
            "loss_sup": loss_sup,
            "loss_unsup": loss_unsup,
            "loss_contra": loss_contra,
            "drop_percent": torch.full_like(ref, percent),
            "alpha_t": torch.full_like(ref, alpha_t),
            "mixed": torch.full_like(ref, float(mixed)),
        }
        return loss, logs

    def _semi(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        step: StepInfo,
        percent: float,
        alpha_t: float,
        aux: dict[str, Tensor] | None,
    ) -> tuple[Tensor, Tensor, Tensor, bool]:
        teacher, bank = self._ready()
        img, gt, img_u = batch["img"], batch["gt"], batch["img_u"]
        size = tuple(gt.shape[-2:])
        n_l = img.shape[0]
        self.schedule.before_iteration(teacher, model, step.epoch)
        # Pseudo-labels: eval-mode teacher on the unmixed unlabeled images.
        pred_u_t = self.buffers.forward(teacher, img_u, train=False, official_grad=True)["pred"]
        conf_u, label_u, _ = teacher_pseudo_labels(at_least_float32(pred_u_t), size)
        img_u_aug, label_u_aug, _, mixed, _ = strong_mix(img_u, label_u, conf_u, self.s.apply_aug)
        image_all = torch.cat((img, img_u_aug))
        out = model(image_all)
        pred_all, rep_all = at_least_float32(out["pred"]), at_least_float32(out["rep"])
        loss_sup = self._sup(out, gt, n_l)
        out_t = self.buffers.forward(teacher, image_all, train=True, official_grad=False)
        pred_all_t, rep_all_t = at_least_float32(out_t["pred"]), at_least_float32(out_t["rep"])
        prob_l_t, prob_u_t, pred_u_large_t = split_teacher_outputs(pred_all_t, n_l, size)
        pred_u_large = F.interpolate(pred_all[n_l:], size, mode="bilinear", align_corners=True)
        loss_unsup, _ = unreliable_unsup_loss(
            pred_u_large, label_u_aug.clone(), percent, pred_u_large_t
        )
        loss_unsup = loss_unsup * self.s.unsup_weight
        c = self.s.contra
        masks = contrastive_masks(
            pred_u_large_t,
            gt,
            label_u_aug,
            tuple(pred_all.shape[2:]),
            alpha_t,
            self.s.num_classes,
            negative_high_entropy=c.negative_high_entropy,
            onehot=c.onehot,
        )
        loss_contra = contra_memobank_loss(
            rep_all,
            masks["label_l_small"].long(),
            masks["label_u_small"].long(),
            prob_l_t,
            prob_u_t,
            masks["low_mask_all"],
            masks["high_mask_all"],
            rep_all_t,
            bank,
            c,
        )
        loss_contra = reduce_contra_loss(loss_contra, c.loss_weight)
        if aux is not None:
            aux.update(
                image_u_aug=img_u_aug,
                label_u_aug=label_u_aug,
                pred_all=pred_all.detach(),
                pred_all_teacher=pred_all_t,
            )
        return loss_sup, loss_unsup, loss_contra, mixed

    def after_step(self, model: nn.Module, step: StepInfo) -> None:
        """The EMA teacher update (none in supervised-only epochs)."""
        teacher, _ = self._ready()
        self.schedule.after_step(teacher, model, step.epoch, step.iteration)

    # --- evaluation and checkpoints ----------------------------------------------------------

    def eval_net(self, model: nn.Module) -> nn.Module:
        """Official validation: the student while the last trained epoch is supervised-only,
        the teacher afterwards (`u2pl_eval_net` can force either), logits upsampled."""
        choice = self.s.eval_net
        if choice == "auto":
            sup_only = self.schedule.phase(max(self.last_epoch, 0)) == "sup_only"
            choice = "student" if sup_only else "teacher"
        if choice == "student":
            return U2PLEvalNet(unwrap(model))
        teacher, _ = self._ready()
        return U2PLEvalNet(teacher)

    @classmethod
    def official_evaluator(cls, C: Any) -> OfficialEvaluator:
        """U2PL's own protocol (`u2pl_eval.evaluate_u2pl`, mode `C.u2pl_eval_mode`) with the
        crop, stride and scales of `C.eval_*` (official: the val crop, 2/3, (1.0,))."""

        e = EvalSettings.from_config(C)
        mode, base = config_value(C, "u2pl_eval_mode"), config_value(C, "u2pl_eval_base_size")
        if e.flip or (mode == "whole" and tuple(e.scales) != (1.0,)):
            raise ConfigError(
                f"C.eval_flip = {e.flip}, C.eval_scale_array = {tuple(e.scales)}: U2PL's "
                f"'{mode}' protocol has no flip{' and one scale' if mode == 'whole' else ''}"
            )
        crop = "x".join(map(str, e.crop_size))
        if mode == "whole":
            label = f"u2pl official: whole image, padded / centre crop {crop} (train_semi.py)"
        else:
            label = (
                f"u2pl official: sliding windows {crop}, stride rate {e.stride_rate:.3g}, "
                f"scales {tuple(e.scales)}, base size {base or 'image'} (eval.py)"
            )
        kwargs = {
            "num_classes": e.num_classes,
            "mode": mode,
            "crop_size": e.crop_size,
            "mean": e.mean,
            "std": e.std,
            "stride_rate": e.stride_rate,
            "scales": e.scales,
            "base_size": base,
        }
        return OfficialEvaluator(label, functools.partial(evaluate_u2pl, **kwargs))

    def state_dict(self) -> dict[str, Any]:
        """Teacher weights and buffers, memory banks (+ pointers), the buffer-sync flag and
        the last trained epoch."""
        teacher, bank = self._ready()
        return {
            "teacher": {k: v.detach().clone() for k, v in teacher.state_dict().items()},
            "bank": bank.state_dict(),
            "teacher_sync_pending": bool(self.buffers.pending),
            "last_epoch": int(self.last_epoch),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()`; an empty state (a checkpoint of a fresh model) keeps the
        teacher that `setup` built."""
        if not state:
            return
        teacher, bank = self._ready()
        missing = [k for k in ("teacher", "bank") if k not in state]
        if missing:
            raise CheckpointError(
                f"U2PL method_state lacks {missing}; has {sorted(state)} (is this a checkpoint "
                "of another method?)"
            )
        # Never copy into parameters that alias the student's (teacher-copy epoch).
        for p in teacher.parameters():
            p.data = p.data.clone()
        try:
            teacher.load_state_dict(state["teacher"])
        except RuntimeError as err:
            raise CheckpointError(f"U2PL teacher weights do not fit: {err}") from None
        bank.load_state_dict(state["bank"])
        self.buffers.pending = bool(state.get("teacher_sync_pending", True))
        self.last_epoch = int(state.get("last_epoch", -1))
