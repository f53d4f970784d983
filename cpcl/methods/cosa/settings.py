"""CoSA's config keys (`CONFIG_KEYS`, `CONFIG_HELP`), its official settings per dataset
(`DEFAULTS`: VOC from `args.py` + `run_voc.sh`, COCO from `args_coco.py` + `run_coco.sh`) and
the named config checks (`check_cosa_config`). docs/methods/cosa.md lists every official
setting with file:line and ours.
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from .evaluate import OFFICIAL_EVAL_SCALES
from .optim import LR_WARMUP_ITERS
from .step import CoSAStepSettings
from .vit import VIT_CONFIGS

__all__ = ["CONFIG_HELP", "CONFIG_KEYS", "DEFAULTS", "EVAL_NETS", "check_cosa_config"]

# `cosa_eval_net`: student (official ON), teacher (official AN), or both (eval.py).
EVAL_NETS = ("student", "teacher", "both")

_STEP = CoSAStepSettings()  # the official VOC values (`args.py` + `run_voc.sh`)

# Official values shared by VOC and COCO, as project keys.
_COMMON: dict[str, Any] = {
    "lr": _STEP.lr,
    "weight_decay": 1e-2,  # `wt_dec`
    "image_height": 448,  # `crop_size`
    "image_width": 448,
    "niters_per_epoch": 1000,  # max_iters = nepochs x 1000
    "seed": 0,
    # timm `vit_base_patch16_224(pretrained=True)` (`args.py`): the JAX ViT-B/16 file.
    "pretrained_model": "DATA/pytorch-weight/jx_vit_base_p16_224-80ecf9dd.pth",
    # The paper's numbers come from the official protocol (`evaluation_engine.py`).
    "eval_protocol": "official",
}

_VOC: dict[str, Any] = {
    **_COMMON,
    "batch_size": 4,  # 2 per GPU x 2 GPUs (`args.py`, `run_voc.sh --nproc_per_node=2`)
    "nepochs": 32,  # `run_voc.sh --max_iters 32000`
    "cosa_aux_layer": -4,  # `run_voc.sh --aux_layer -4`
    "eval_every": 2,  # `eval_iters=2000` (`args.py:22`) = 2 epochs of 1000 iterations
}

_COCO: dict[str, Any] = {
    **_COMMON,
    "num_classes": 81,
    "batch_size": 8,  # 4 per GPU x 2 GPUs (`args_coco.py`, `run_coco.sh`)
    "nepochs": 60,  # `max_iters=60000`
    "cosa_aux_layer": -3,
    "cosa_warmup_iters": 10000,
    "cosa_high_thre": 0.65,
    "cosa_train_list": "train.txt",
    "cosa_train_eval_list": "val_part.txt",  # `dataloaders/__init__.py:24` (valfull=False)
    "cosa_eval_list": "val.txt",  # the final number: `build_test_dataset` (full val)
    "eval_every": 6,  # `eval_iters=6000` (`args_coco.py:23`)
}

DEFAULTS: dict[str, dict[str, Any]] = {"voc": _VOC, "coco": _COCO}

CONFIG_KEYS: dict[str, Any] = {
    "cosa_backbone": "vit_base_patch16_224",
    "cosa_aux_layer": -3,
    "cosa_decoder_width": 512,
    "cosa_train_list": "train_aug.txt",
    "cosa_eval_list": "val.txt",
    "cosa_train_eval_list": "val.txt",
    "cosa_final_eval": True,
    "cosa_cls_labels": "auto",
    "cosa_scales": (0.5, 2.0),
    "cosa_warmup_iters": _STEP.warmup_iters,
    "cosa_lr_warmup_iters": LR_WARMUP_ITERS,
    "cosa_lrscale": _STEP.lrscale,
    "cosa_min_mult": _STEP.min_mult,
    "cosa_wt_dec_mult": 1.0,
    "cosa_momentum": _STEP.momentum,
    "cosa_high_thre": _STEP.high_thre,
    "cosa_low_thre": _STEP.low_thre,
    "cosa_high_thre_aux": _STEP.high_thre_aux,
    "cosa_low_thre_aux": _STEP.low_thre_aux,
    "cosa_pseudo_scales": tuple(_STEP.pseudo_scales),
    "cosa_par_downscale": _STEP.par_downscale,
    "cosa_segfg_alpha": _STEP.segfg_alpha,
    "cosa_aux_cam2seg": _STEP.aux_cam2seg,
    "cosa_aux_cam2seg_alpha": _STEP.aux_cam2seg_alpha,
    "cosa_seg_softmaxtemp": _STEP.seg_softmaxtemp,
    "cosa_after_softmax": _STEP.after_softmax,
    "cosa_seg_weight": _STEP.seg_weight,
    "cosa_cam_weight": _STEP.cam_weight,
    "cosa_reg_weight": _STEP.reg_weight,
    "cosa_eval_net": "student",
    "cosa_eval_scales": OFFICIAL_EVAL_SCALES,
    "cosa_eval_crf": False,
    "cosa_eval_cams": False,
}
CONFIG_HELP: dict[str, str] = {
    "cosa_backbone": "ViT encoder (official `backbone`): vit_base_patch16_224 | "
    "deit_tiny_patch16_224 | vit_toy_patch16 (tests); weights: --pretrained_model=FILE",
    "cosa_aux_layer": "block whose tokens feed the aux classifier (`aux_layer`; VOC -4, COCO -3)",
    "cosa_decoder_width": "channels of the LargeFOV seg head (official 512; less: toy runs)",
    "cosa_train_list": "training list under dataset_path (official train_aug.txt; COCO train.txt)",
    "cosa_eval_list": "evaluation list under dataset_path: eval.py and the final score "
    "(val.txt; COCO the full val.txt)",
    "cosa_train_eval_list": "list of the evaluations during training (every --eval_every "
    "epochs: student and teacher, best_seg.pth / best_cam.pth; val.txt, COCO val_part.txt)",
    "cosa_final_eval": "after training, score best_seg.pth with the CRF on cosa_eval_list "
    "(official finalval)",
    "cosa_cls_labels": "image-level labels: a cls_labels_onehot.npy (under dataset_path); auto "
    "(default): <dataset_path>/cls_labels_onehot.npy when it exists, else derived from the "
    "masks; masks: derived from the masks",
    "cosa_scales": "random rescale range of the training transform (`scales`, (0.5, 2))",
    "cosa_warmup_iters": "loss warm-up (`warmup_iters`): only cls losses while iteration <= it",
    "cosa_lr_warmup_iters": "LR warm-up iterations (official 1500, hard-coded in `main.py:67`)",
    "cosa_lrscale": "LR multiplier of the classifiers and the decoder (`lrscale`, 10)",
    "cosa_min_mult": "floor of the poly LR multiplier (`min_mult`, 0)",
    "cosa_wt_dec_mult": "weight-decay multiplier of the encoder norms (`wt_dec_mult`, 1); "
    "weight decay itself: --weight_decay (`wt_dec`, 0.01)",
    "cosa_momentum": "EMA momentum of the teacher (`momentum`, 0.9994)",
    "cosa_high_thre": "CAM -> mask foreground threshold (`high_thre`; VOC 0.7, COCO 0.65)",
    "cosa_low_thre": "CAM -> mask background threshold (`low_thre`, 0.25)",
    "cosa_high_thre_aux": "aux CAM foreground threshold (`high_thre_aux`, 0.7)",
    "cosa_low_thre_aux": "aux CAM background threshold (`low_thre_aux`, 0.25)",
    "cosa_pseudo_scales": "teacher CAM scales (`pseudo_scales`, [1.0, 0.5, 1.5])",
    "cosa_par_downscale": "CAM -> mask resolution divisor (`par_downscale`, 2; 0: none)",
    "cosa_segfg_alpha": "foreground weight of the seg loss (`segfg_alpha`, 0.5)",
    "cosa_aux_cam2seg": "also supervise the seg head with the aux CAM mask (`aux_cam2seg`)",
    "cosa_aux_cam2seg_alpha": "weight of that aux seg loss (`aux_cam2seg_alpha`, 0.5)",
    "cosa_seg_softmaxtemp": "softmax temperature of the seg -> CAM target (`seg_softmaxtemp`)",
    "cosa_after_softmax": "temperature after the softmax (`after_softmax`, false)",
    "cosa_seg_weight": "seg loss weight after the warm-up (`seg_weight`, 0.1)",
    "cosa_cam_weight": "CAM loss weight after the warm-up (`cam_weight`, 0.05)",
    "cosa_reg_weight": "energy (CRF) loss weight after the warm-up (`reg_weight`, 0.05)",
    "cosa_eval_net": "network eval.py evaluates: student (official ON) | teacher (official AN) "
    "| both",
    "cosa_eval_scales": "scales of the official protocol (--eval_protocol=official)",
    "cosa_eval_crf": "dense CRF in the official protocol (final evaluation, official getcrf)",
    "cosa_eval_cams": "also score the CAMs in the official protocol (`get_camiou`)",
}


def check_cosa_config(C: Any) -> None:
    """Named errors (ConfigError naming the key) for values CoSA cannot run with."""
    backbone = C.get("cosa_backbone")
    if backbone not in VIT_CONFIGS:
        raise ConfigError(
            f"C.cosa_backbone = {backbone!r}: expected one of {', '.join(VIT_CONFIGS)}"
        )
    depth = VIT_CONFIGS[backbone].depth
    aux = C.get("cosa_aux_layer")
    if isinstance(aux, bool) or not isinstance(aux, int) or not -depth <= aux < depth:
        raise ConfigError(
            f"C.cosa_aux_layer = {aux!r}: expected an index into the {depth} blocks of "
            f"{backbone} (-{depth} .. {depth - 1})"
        )
    for key in ("cosa_train_list", "cosa_eval_list", "cosa_train_eval_list"):
        if not isinstance(C.get(key), str) or not C[key]:
            raise ConfigError(f"C.{key} = {C.get(key)!r}: expected a list file name")
    labels = C.get("cosa_cls_labels")
    if labels is not None and (not isinstance(labels, str) or not labels):
        raise ConfigError(
            f"C.cosa_cls_labels = {labels!r}: expected auto, masks or a cls_labels_onehot.npy path"
        )
    lo_hi = C.get("cosa_scales")
    _scales(C, "cosa_scales", need_one=False)
    if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
        raise ConfigError(f"C.cosa_scales = {lo_hi!r}: expected two numbers 0 < min <= max")
    _scales(C, "cosa_pseudo_scales", need_one=True)
    _scales(C, "cosa_eval_scales", need_one=True)
    _check_thresholds(C)
    _integer(C, "cosa_decoder_width", 1)
    _integer(C, "cosa_warmup_iters", 0)
    _integer(C, "cosa_lr_warmup_iters", 0)
    _integer(C, "cosa_par_downscale", 0)
    for key in ("cosa_lrscale", "cosa_seg_softmaxtemp"):
        if _number(C, key) <= 0:
            raise ConfigError(f"C.{key} = {C[key]!r}: expected > 0")
    for key in ("cosa_min_mult", "cosa_momentum", "cosa_segfg_alpha", "cosa_aux_cam2seg_alpha"):
        _number(C, key, 0.0, 1.0)
    for key in ("cosa_wt_dec_mult", "cosa_seg_weight", "cosa_cam_weight", "cosa_reg_weight"):
        if _number(C, key) < 0:
            raise ConfigError(f"C.{key} = {C[key]!r}: expected >= 0")
    for key in (
        "cosa_aux_cam2seg",
        "cosa_after_softmax",
        "cosa_eval_crf",
        "cosa_eval_cams",
        "cosa_final_eval",
    ):
        _flag(C, key)
    if C.get("cosa_eval_net") not in EVAL_NETS:
        raise ConfigError(
            f"C.cosa_eval_net = {C.get('cosa_eval_net')!r}: expected one of {', '.join(EVAL_NETS)}"
        )
    crop = (C.get("image_height"), C.get("image_width"))
    if crop[0] != crop[1]:
        raise ConfigError(
            f"C.image_height, C.image_width = {crop}: CoSA trains on square crops "
            "(`crop_size`); expected the same value for both"
        )
    if C.get("warm_up_epoch", 0):
        # The LR warm-up is the official fixed 1500 iterations (`optim.LR_WARMUP_ITERS`).
        raise ConfigError(f"C.warm_up_epoch = {C.warm_up_epoch}: expected 0 for CoSA")


def _number(C: Any, key: str, lo: float | None = None, hi: float | None = None) -> float:
    value = C.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"C.{key} = {value!r}: expected a number")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"C.{key} = {value!r}: expected {lo} <= value <= {hi}")
    return float(value)


def _integer(C: Any, key: str, lo: int) -> int:
    value = C.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"C.{key} = {value!r}: expected an integer >= {lo}")
    return value


def _flag(C: Any, key: str) -> bool:
    if not isinstance(C.get(key), bool):
        raise ConfigError(f"C.{key} = {C.get(key)!r}: expected true or false")
    return C[key]


def _scales(C: Any, key: str, *, need_one: bool) -> None:
    value = C.get(key)
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or min(value) <= 0
    ):
        raise ConfigError(f"C.{key} = {value!r}: expected a list of positive numbers")
    if need_one and 1.0 not in [float(v) for v in value]:
        raise ConfigError(f"C.{key} = {value!r}: 1.0 must be among the scales (official)")


def _check_thresholds(C: Any) -> None:
    for suffix in ("", "_aux"):
        low = _number(C, f"cosa_low_thre{suffix}", 0.0, 1.0)
        high = _number(C, f"cosa_high_thre{suffix}", 0.0, 1.0)
        if low > high:
            raise ConfigError(
                f"C.cosa_low_thre{suffix} = {low} > C.cosa_high_thre{suffix} = {high}: expected "
                "low <= high (pixels between them are uncertain)"
            )
