"""U2PL's configuration: the new config keys (`CONFIG_KEYS`, `CONFIG_HELP`), the keys of
each official preset (`preset_defaults`), the named checks (`check_u2pl_config`) and the
settings object the method holds (`U2PLSettings`, `settings_from_config`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...data.views import TransformSettings
from ...errors import ConfigError
from .eval import EVAL_MODES
from .losses import ContraSettings, check_percent
from .memory import OFFICIAL_QUEUE_SIZE, OFFICIAL_QUEUE_SIZE_CLASS0
from .mix import check_apply_aug
from .presets import U2PLPreset

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

CONFIG_HELP: dict[str, str] = {
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


def config_value(C: Any, key: str) -> Any:
    """`C[key]`, or its default in `CONFIG_KEYS` when `C` lacks it."""
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
        return ContraSettings(**{field: config_value(C, key) for field, key in names.items()})
    except ConfigError as err:
        raise ConfigError(f"U2PL contrastive settings (C.u2pl_*): {err}") from None


def _queue_sizes(C: Any) -> tuple[int, ...]:
    for key in ("u2pl_queue_size", "u2pl_queue_size_class0"):
        value = config_value(C, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"C.{key} = {value!r}: expected an integer >= 1 (memory-bank keys)")
    n = int(C.num_classes)
    return (int(config_value(C, "u2pl_queue_size_class0")),) + (
        int(config_value(C, "u2pl_queue_size")),
    ) * (n - 1)


def _number(C: Any, key: str, low: float, high: float | None = None) -> float:
    value = config_value(C, key)
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if bad or value < low or (high is not None and value > high):
        span = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"C.{key} = {value!r}: expected a number {span}")
    return float(value)


# The smallest per-process batch: the train-mode teacher (plain BatchNorm, never SyncBN, as
# officially) normalises the 1x1 ASPP image-pooling features over the images of one process.
MIN_IMAGES_PER_RANK = 2


def check_u2pl_config(C: Any) -> None:
    """Named `ConfigError`s for settings U2PL cannot run with."""
    try:
        check_apply_aug(config_value(C, "u2pl_apply_aug"))
    except ConfigError as err:
        raise ConfigError(f"C.u2pl_apply_aug: {err}") from None
    try:
        check_percent("C.u2pl_drop_percent", config_value(C, "u2pl_drop_percent"))
    except ConfigError as err:
        raise ConfigError(str(err)) from None
    sup_only = config_value(C, "u2pl_sup_only_epoch")
    if isinstance(sup_only, bool) or not isinstance(sup_only, int) or sup_only < 0:
        raise ConfigError(f"C.u2pl_sup_only_epoch = {sup_only!r}: expected an integer >= 0")
    _number(C, "u2pl_ema_decay", 0.0, 1.0)
    _number(C, "u2pl_lr_head_times", 0.0)
    _number(C, "u2pl_aux_loss_weight", 0.0)
    _number(C, "u2pl_unsup_weight", 0.0)
    min_kept = config_value(C, "u2pl_ohem_min_kept")
    if isinstance(min_kept, bool) or not isinstance(min_kept, int) or min_kept < 1:
        raise ConfigError(f"C.u2pl_ohem_min_kept = {min_kept!r}: expected an integer >= 1")
    if config_value(C, "u2pl_eval_net") not in EVAL_NETS:
        raise ConfigError(
            f"C.u2pl_eval_net = {config_value(C, 'u2pl_eval_net')!r}: expected one of "
            f"{', '.join(EVAL_NETS)}"
        )
    if config_value(C, "u2pl_eval_mode") not in EVAL_MODES:
        raise ConfigError(
            f"C.u2pl_eval_mode = {config_value(C, 'u2pl_eval_mode')!r}: expected one of "
            f"{', '.join(EVAL_MODES)}"
        )
    base = config_value(C, "u2pl_eval_base_size")
    if base is not None and (isinstance(base, bool) or not isinstance(base, int) or base < 1):
        raise ConfigError(f"C.u2pl_eval_base_size = {base!r}: expected a positive integer or None")
    _contra_from_config(C)
    _queue_sizes(C)
    batch = C.get("batch_size")
    if isinstance(batch, int) and not isinstance(batch, bool) and batch < MIN_IMAGES_PER_RANK:
        raise ConfigError(
            f"C.batch_size = {batch}: U2PL needs at least {MIN_IMAGES_PER_RANK} labeled images "
            "per process (its train-mode teacher's BatchNorm normalises 1x1 pooled features "
            "over the batch); raise --batch_size"
        )


def settings_from_config(C: Any) -> U2PLSettings:
    """The `U2PLSettings` of a finalized config (after `check_u2pl_config`)."""
    return U2PLSettings(
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
