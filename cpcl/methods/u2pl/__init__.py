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
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ...checkpoint import unwrap
from ...data.views import LabeledView, Loaded, RngFor, TransformSettings
from ...errors import CheckpointError, ConfigError
from ...evaluate.settings import EvalSettings
from ...losses import at_least_float32
from ..base import Method, OfficialEvaluator, StepInfo
from .eval import EVAL_MODES, evaluate_u2pl
from .losses import (
    ContraSettings,
    U2PLSupLoss,
    check_percent,
    contra_memobank_loss,
    contrastive_masks,
    reduce_contra_loss,
    split_teacher_outputs,
    unreliable_unsup_loss,
)
from .memory import OFFICIAL_QUEUE_SIZE, OFFICIAL_QUEUE_SIZE_CLASS0, ClassMemoryBank
from .mix import check_apply_aug, strong_mix, teacher_pseudo_labels
from .net import U2PLNet, load_u2pl_imagenet
from .presets import U2PL_PRESETS, U2PLPreset
from .schedule import (
    TeacherSchedule,
    build_u2pl_optimizer,
    contra_alpha_t,
    drop_percent,
    match_layout,
    set_poly_lr,
)

EVAL_NETS = ("auto", "teacher", "student")
_CONTRA = ContraSettings()

# New config keys (official VOC 1464 `ours` values; `defaults` sets the Cityscapes ones).
CONFIG_KEYS: dict[str, Any] = {
    "u2pl_sup_only_epoch": 1,  # epochs trained on labeled images only (VOC 1, Cityscapes 0)
    "u2pl_ema_decay": 0.99,  # cap of the EMA decay min(1 - 1/(k+1), ema_decay)
    "u2pl_lr_head_times": 10.0,  # decoder (and aux) lr multiplier (VOC 10, Cityscapes 1)
    "u2pl_aux_loss_weight": 0.0,  # > 0 builds the layer3 aux head (Cityscapes 0.4)
    "u2pl_ohem_min_kept": 100000,  # OHEM min_kept per process (sup_loss=ohem)
    "u2pl_drop_percent": 80.0,  # start of the drop-percent schedule (80 -> 100)
    "u2pl_unsup_weight": 1.0,
    "u2pl_apply_aug": "cutmix",  # cutmix | classmix | cutout | none
    "u2pl_contra_weight": _CONTRA.loss_weight,
    "u2pl_negative_high_entropy": _CONTRA.negative_high_entropy,
    "u2pl_low_rank": _CONTRA.low_rank,
    "u2pl_high_rank": _CONTRA.high_rank,
    "u2pl_current_class_threshold": _CONTRA.current_class_threshold,
    "u2pl_current_class_negative_threshold": _CONTRA.current_class_negative_threshold,
    "u2pl_low_entropy_threshold": _CONTRA.low_entropy_threshold,
    "u2pl_num_negatives": _CONTRA.num_negatives,
    "u2pl_num_queries": _CONTRA.num_queries,
    "u2pl_temperature": _CONTRA.temperature,
    "u2pl_onehot": _CONTRA.onehot,  # official (batch into image 0) | corrected
    "u2pl_queue_size": OFFICIAL_QUEUE_SIZE,  # memory-bank keys per class (classes 1..)
    "u2pl_queue_size_class0": OFFICIAL_QUEUE_SIZE_CLASS0,
    "u2pl_eval_net": "auto",  # auto (official: student in sup-only epochs) | teacher | student
    "u2pl_eval_mode": "whole",  # --eval_protocol=official: whole (VOC) | sliding (Cityscapes)
    "u2pl_eval_base_size": None,  # sliding: long side at scale 1 (Cityscapes 2048; None: as is)
}


def preset_defaults(p: U2PLPreset) -> dict[str, Any]:
    """The project's config keys for one official U2PL preset (see docs/methods/u2pl.md)."""
    return {
        "backbone": p.backbone,
        "pretrained_model": f"DATA/pytorch-weight/u2pl/{p.backbone}.pth",  # `model_urls`
        "lr": p.lr,
        "momentum": p.momentum,
        "weight_decay": p.weight_decay,
        "lr_power": p.lr_power,
        "batch_size": p.batch_size_per_gpu * p.official_gpus,
        "nepochs": p.epochs,
        "image_height": p.crop_size[0],
        "image_width": p.crop_size[1],
        "sup_loss": p.sup_loss,
        "ohem_thresh": p.ohem_thresh,
        "eval_crop_size": p.eval_crop_size[0] if p.eval_crop_size else p.crop_size[0],
        "u2pl_sup_only_epoch": p.sup_only_epoch,
        "u2pl_ema_decay": p.ema_decay,
        "u2pl_lr_head_times": float(p.lr_head_times),
        "u2pl_aux_loss_weight": p.aux_loss_weight,
        "u2pl_ohem_min_kept": p.ohem_min_kept,
        "u2pl_drop_percent": p.drop_percent,
        "u2pl_unsup_weight": p.unsup_loss_weight,
        "u2pl_apply_aug": p.apply_aug,
        "u2pl_eval_mode": p.eval_mode,
        "u2pl_eval_base_size": p.eval_base_size,
    }


class U2PLView(LabeledView):
    """Labeled `img`, `gt` and one unlabeled `img_u`, each with its own draw of the same
    training transform (U2PL's unlabeled loader uses the labeled one's transform)."""

    streams = ("labeled", "unlabeled")
    keys = ("img", "gt", "img_u")

    def sample(self, loaded: Sequence[Loaded], rng: RngFor) -> dict[str, Any]:
        """The labeled pair and the unlabeled image (its label, if any, is not read)."""
        out = super().sample(loaded, rng)
        out["img_u"] = self.transform(loaded[1][0], None, rng=rng(1))[0]
        return out


class U2PLEvalNet(nn.Module):
    """`net(x)["pred"]` upsampled to the input size (bilinear, align_corners=True, as
    U2PL's `eval.py` and validation): `x (B,3,H,W) -> logits (B,C,H,W)`."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        """Logits at the input size."""
        pred = self.net(x)["pred"]
        return F.interpolate(pred, size=x.shape[-2:], mode="bilinear", align_corners=True)


class _TeacherBuffers:
    """The buffer broadcast of the official DDP-wrapped teacher.

    DDP (`broadcast_buffers=True`) copies rank 0's buffers to all ranks before a forward
    when the previous forward ran with grad enabled (and before the first one). The official
    teacher forwards are grad-enabled except the no-grad train-mode one of a
    semi-supervised iteration; `pending` carries that flag between forwards (and resumes).
    """

    def __init__(self) -> None:
        self.pending = True

    def forward(self, teacher: nn.Module, x: Tensor, *, train: bool, official_grad: bool):
        """`teacher(x)` under no_grad in the given mode, after the official buffer sync."""
        if self.pending and dist.is_available() and dist.is_initialized():
            with torch.no_grad():
                for buf in teacher.buffers():
                    dist.broadcast(buf, 0)
        teacher.train(train)
        with torch.no_grad():
            out = teacher(x)
        self.pending = official_grad
        return out


@dataclass(frozen=True)
class U2PLSettings:
    """Everything `U2PL` reads from the config (see `CONFIG_KEYS` and `preset_defaults`)."""

    num_classes: int
    backbone: str
    pretrained: str | None
    lr: float
    momentum: float
    weight_decay: float
    lr_power: float
    lr_head_times: float
    nepochs: int
    iters_per_epoch: int
    sup_only_epoch: int
    ema_decay: float
    sup_loss: str
    ohem_thresh: float
    ohem_min_kept: int
    aux_loss_weight: float
    drop_percent: float
    unsup_weight: float
    apply_aug: str | None
    contra: ContraSettings
    queue_sizes: tuple[int, ...]
    eval_net: str
    transform: TransformSettings


def _key(C: Any, key: str) -> Any:
    return C.get(key, CONFIG_KEYS[key])


def _contra_from_config(C: Any) -> ContraSettings:
    names = {
        "negative_high_entropy": "u2pl_negative_high_entropy",
        "low_rank": "u2pl_low_rank",
        "high_rank": "u2pl_high_rank",
        "current_class_threshold": "u2pl_current_class_threshold",
        "current_class_negative_threshold": "u2pl_current_class_negative_threshold",
        "low_entropy_threshold": "u2pl_low_entropy_threshold",
        "num_negatives": "u2pl_num_negatives",
        "num_queries": "u2pl_num_queries",
        "temperature": "u2pl_temperature",
        "loss_weight": "u2pl_contra_weight",
        "onehot": "u2pl_onehot",
    }
    try:
        return ContraSettings(**{field: _key(C, key) for field, key in names.items()})
    except ConfigError as err:
        raise ConfigError(f"U2PL contrastive settings (C.u2pl_*): {err}") from None


def _queue_sizes(C: Any) -> tuple[int, ...]:
    for key in ("u2pl_queue_size", "u2pl_queue_size_class0"):
        value = _key(C, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"C.{key} = {value!r}: expected an integer >= 1 (memory-bank keys)")
    n = int(C.num_classes)
    return (int(_key(C, "u2pl_queue_size_class0")),) + (int(_key(C, "u2pl_queue_size")),) * (n - 1)


def _number(C: Any, key: str, low: float, high: float | None = None) -> float:
    value = _key(C, key)
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if bad or value < low or (high is not None and value > high):
        span = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"C.{key} = {value!r}: expected a number {span}")
    return float(value)


class U2PL(Method):
    """U2PL: EMA teacher, unreliable-pixel pseudo-labels, memory-bank contrastive loss."""

    name = "u2pl"
    batch_keys: ClassVar[tuple[str, ...]] = ("img", "gt", "img_u")
    defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        ds: preset_defaults(p) for ds, p in U2PL_PRESETS.items()
    }
    config_keys: ClassVar[Mapping[str, Any]] = CONFIG_KEYS
    config_help: ClassVar[Mapping[str, str]] = {
        "u2pl_sup_only_epoch": "epochs trained on labeled images only (VOC 1, Cityscapes 0)",
        "u2pl_ema_decay": "cap of the EMA teacher decay min(1 - 1/(k+1), ema_decay)",
        "u2pl_lr_head_times": "decoder (and aux head) lr multiplier (VOC 10, Cityscapes 1)",
        "u2pl_aux_loss_weight": "weight of the layer3 aux head loss; > 0 builds it (Cityscapes 0.4)",
        "u2pl_ohem_min_kept": "OHEM min_kept per process when sup_loss=ohem",
        "u2pl_drop_percent": "start of the unreliable-pixel drop schedule (80 -> 100 over training)",
        "u2pl_unsup_weight": "weight of the unsupervised loss",
        "u2pl_apply_aug": "mixing of unlabeled images: cutmix | classmix | cutout | none",
        "u2pl_contra_weight": "weight of the contrastive loss (official default 1)",
        "u2pl_negative_high_entropy": "negatives from high-entropy pixels only (official True)",
        "u2pl_low_rank": "rank from which a class counts as a negative candidate (official 3)",
        "u2pl_high_rank": "rank up to which a class counts as a negative candidate (official 20)",
        "u2pl_current_class_threshold": "teacher probability above which a pixel is an anchor",
        "u2pl_current_class_negative_threshold": "probability bound of negative pixels",
        "u2pl_low_entropy_threshold": "percentile of reliable (low-entropy) pixels, scheduled",
        "u2pl_num_negatives": "negatives drawn per anchor from the memory bank",
        "u2pl_num_queries": "anchors drawn per class",
        "u2pl_temperature": "temperature of the contrastive softmax",
        "u2pl_onehot": "label one-hot: official (whole batch into image 0) | corrected (opt-in)",
        "u2pl_queue_size": "memory-bank keys kept per class (classes 1..C-1)",
        "u2pl_queue_size_class0": "memory-bank keys kept for class 0",
        "u2pl_eval_net": "auto (student in sup-only epochs, then teacher) | teacher | student",
        "u2pl_eval_mode": "U2PL's own protocol (--eval_protocol=official): whole (VOC) | sliding (Cityscapes)",
        "u2pl_eval_base_size": "sliding protocol: long side at scale 1 (Cityscapes 2048; None: the image's)",
    }

    @classmethod
    def check_config(cls, C: Any) -> None:
        """Named errors for settings U2PL cannot run with."""
        try:
            check_apply_aug(_key(C, "u2pl_apply_aug"))
        except ConfigError as err:
            raise ConfigError(f"C.u2pl_apply_aug: {err}") from None
        try:
            check_percent("C.u2pl_drop_percent", _key(C, "u2pl_drop_percent"))
        except ConfigError as err:
            raise ConfigError(str(err)) from None
        sup_only = _key(C, "u2pl_sup_only_epoch")
        if isinstance(sup_only, bool) or not isinstance(sup_only, int) or sup_only < 0:
            raise ConfigError(f"C.u2pl_sup_only_epoch = {sup_only!r}: expected an integer >= 0")
        _number(C, "u2pl_ema_decay", 0.0, 1.0)
        _number(C, "u2pl_lr_head_times", 0.0)
        _number(C, "u2pl_aux_loss_weight", 0.0)
        _number(C, "u2pl_unsup_weight", 0.0)
        min_kept = _key(C, "u2pl_ohem_min_kept")
        if isinstance(min_kept, bool) or not isinstance(min_kept, int) or min_kept < 1:
            raise ConfigError(f"C.u2pl_ohem_min_kept = {min_kept!r}: expected an integer >= 1")
        if _key(C, "u2pl_eval_net") not in EVAL_NETS:
            raise ConfigError(
                f"C.u2pl_eval_net = {_key(C, 'u2pl_eval_net')!r}: expected one of "
                f"{', '.join(EVAL_NETS)}"
            )
        if _key(C, "u2pl_eval_mode") not in EVAL_MODES:
            raise ConfigError(
                f"C.u2pl_eval_mode = {_key(C, 'u2pl_eval_mode')!r}: expected one of "
                f"{', '.join(EVAL_MODES)}"
            )
        base = _key(C, "u2pl_eval_base_size")
        if base is not None and (isinstance(base, bool) or not isinstance(base, int) or base < 1):
            raise ConfigError(
                f"C.u2pl_eval_base_size = {base!r}: expected a positive integer or None"
            )
        _contra_from_config(C)
        _queue_sizes(C)

    @classmethod
    def from_config(cls, C: Any, *, per_rank_batch: int) -> U2PL:
        """Read the U2PL settings of a finalized config (`per_rank_batch` is not needed:
        the official OHEM `min_kept` is per process, not per image)."""
        cls.check_config(C)
        return cls(
            U2PLSettings(
                num_classes=int(C.num_classes),
                backbone=str(C.backbone),
                pretrained=C.get("pretrained_model"),
                lr=float(C.lr),
                momentum=float(C.momentum),
                weight_decay=float(C.weight_decay),
                lr_power=float(C.lr_power),
                lr_head_times=float(C.u2pl_lr_head_times),
                nepochs=int(C.nepochs),
                iters_per_epoch=int(C.niters_per_epoch),
                sup_only_epoch=int(C.u2pl_sup_only_epoch),
                ema_decay=float(C.u2pl_ema_decay),
                sup_loss=str(C.sup_loss),
                ohem_thresh=float(C.get("ohem_thresh", 0.7)),
                ohem_min_kept=int(C.u2pl_ohem_min_kept),
                aux_loss_weight=float(C.u2pl_aux_loss_weight),
                drop_percent=float(C.u2pl_drop_percent),
                unsup_weight=float(C.u2pl_unsup_weight),
                apply_aug=check_apply_aug(C.u2pl_apply_aug),
                contra=_contra_from_config(C),
                queue_sizes=_queue_sizes(C),
                eval_net=str(C.u2pl_eval_net),
                transform=TransformSettings.from_config(C),
            )
        )

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
        self.buffers = _TeacherBuffers()
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
        self.buffers = _TeacherBuffers()
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
        mode, base = _key(C, "u2pl_eval_mode"), _key(C, "u2pl_eval_base_size")
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


METHOD = U2PL

__all__ = ["CONFIG_KEYS", "EVAL_NETS", "METHOD", "U2PL", "U2PLEvalNet", "U2PLView"]
