"""CoSA on the generic engine: `C.method = "cosa"` (weakly supervised, image-level labels).

The maths is in the golden-tested blocks of this package: `network.CoSANet` (ViT + LargeFOV),
`step.cosa_forward_loss` (teacher pseudo labels, the five losses, the loss warm-up), `optim`
(AdamW over four groups, PolyWarmup LR, EMA), `data.CosaView` (official transform, image-level
labels) and `evaluate` (the official multi-scale + flip protocol). This module maps the official
arguments (`args.py`, `run_voc.sh`, `args_coco.py`, `run_coco.sh`) onto config keys and plugs
the blocks into the `Method` interface:

* one stream, "labeled": the images of `cosa_train_list` (official `train_aug.txt`) with their
  image-level labels (`cosa_cls_labels`: the official `cls_labels_onehot.npy`, or None: derived
  from the masks); no unlabeled split is required or read; validation on masks;
* the official iteration count `max_iters` is `nepochs x niters_per_epoch` (VOC: 32 x 1000 =
  32000; COCO: 60 x 1000 = 60000); an "epoch" is only the snapshot / log / evaluation period
  (the official loader is endless: a new shuffle whenever the list is exhausted, which the
  project's per-epoch shuffled stream of the list reproduces);
* the EMA teacher is a SEPARATE `CoSANet` (`main.py:45-46`): its encoder loads the same
  ImageNet file as the student's (so they are equal when one is given), its heads are drawn
  from `C.seed + 1` (deterministic; the official code draws them from the global stream right
  after the student's); it is never switched to eval mode, and is saved as `method_state` so
  a resume is exact;
* the LR of iteration t is `PolyWarmupAdamW`'s with `global_step = t` (before its increment);
  the loss warm-up trains cls + cls_aux only while `t <= cosa_warmup_iters`.

Official settings as `defaults` (docs/methods/cosa.md has the table; `--key=value` wins).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...checkpoint import unwrap
from ...errors import CheckpointError, ConfigError
from ...ops.dense_crf import dense_crf
from ..base import Method, OfficialEvaluator, StepInfo
from .data import CosaView, load_image_labels
from .evaluate import OFFICIAL_CRF_PARAMS, OFFICIAL_EVAL_SCALES, CosaSegNet, cosa_official_evaluator
from .image_labels import ImageLabels
from .network import CoSANet
from .optim import LR_WARMUP_ITERS, build_cosa_optimizer, cosa_lrs, ema_update, set_lrs
from .step import CoSAStepSettings, cosa_forward_loss
from .transforms import CosaTransformSettings
from .vit import VIT_CONFIGS, load_vit_pretrained

__all__ = ["CoSA", "CosaEvalNet", "CosaModelSettings", "cls_labels_path"]

EVAL_NETS = ("student", "teacher")
# The teacher's random heads are drawn from C.seed + this (the student's from C.seed).
TEACHER_SEED_OFFSET = 1

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
}

_VOC: dict[str, Any] = {
    **_COMMON,
    "batch_size": 4,  # 2 per GPU x 2 GPUs (`args.py`, `run_voc.sh --nproc_per_node=2`)
    "nepochs": 32,  # `run_voc.sh --max_iters 32000`
    "cosa_aux_layer": -4,  # `run_voc.sh --aux_layer -4`
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
    "cosa_eval_list": "val_part.txt",
}


def cls_labels_path(C: Any) -> str | None:
    """`C.cosa_cls_labels` as an absolute path (relative: under `C.dataset_path`), or None."""
    path = C.get("cosa_cls_labels")
    if path is None:
        return None
    return os.path.join(C.dataset_path, os.path.expanduser(str(path)))


def _image_labels(C: Any) -> ImageLabels:
    return load_image_labels(cls_labels_path(C), int(C.num_classes))


@dataclass(frozen=True)
class CosaModelSettings:
    """What builds the student and the teacher."""

    backbone: str
    num_classes: int
    aux_layer: int
    pretrained: str | None
    seed: int
    decoder_width: int = 512

    def build(self, pretrained: str | None) -> CoSANet:
        """`CoSANet` with the encoder weights of `pretrained` (a file) or random ones."""
        net = CoSANet(
            self.backbone,
            self.num_classes,
            aux_layer=self.aux_layer,
            decoder_width=self.decoder_width,
        )
        if pretrained:
            load_vit_pretrained(net.encoder, pretrained)
        return net


class CosaEvalNet(CosaSegNet):
    """The segmenter evaluated: ``x -> seg logits at the input size`` (the seg head's 1/16
    logits resized bilinear, align_corners=False, as the official evaluation resizes them).

    Calls with keywords pass through to the network (``net(x, seg_only=True)`` gives the raw
    1/16 logits the official protocol resizes itself, ``net(x, cam_only=False)`` the six
    outputs).
    """

    def forward(self, x: Tensor, **kwargs: Any) -> Any:
        """Seg logits at the size of `x`, or the network's own output for explicit keywords."""
        out = super().forward(x, **kwargs)
        if kwargs:
            return out
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _official_on_raw_logits(
    evaluate: Any, net: nn.Module, dataset: Any, **kwargs: Any
) -> dict[str, Any]:
    """Run CoSA's protocol on the raw 1/16 logits of `net` (it resizes them itself)."""
    return evaluate(CosaSegNet(net), dataset, **kwargs)


def _dense_crf(image: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The official CRF post-processing (`crf_inference_infv2` with `OFFICIAL_CRF_PARAMS`) as
    the evaluator's `Crf`: uint8 (H,W,3) image and (C,H,W) probabilities -> (C,H,W) marginals,
    computed by `cpcl.ops.dense_crf` (pure PyTorch, pydensecrf's `DenseCRF2D` numbers)."""
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    q = dense_crf(
        img, torch.from_numpy(np.ascontiguousarray(probs, np.float32))[None], OFFICIAL_CRF_PARAMS
    )
    return q[0].numpy()


# ------------------------------------------------------------------------- config checking


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


class CoSA(Method):
    """CoSA: co-training with swapping assignments (student + separate EMA teacher)."""

    name = "cosa"
    streams = ("labeled",)  # images with image-level labels; no unlabeled split
    batch_keys = CosaView.keys
    defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {"voc": _VOC, "coco": _COCO}
    config_keys: ClassVar[Mapping[str, Any]] = {
        "cosa_backbone": "vit_base_patch16_224",
        "cosa_aux_layer": -3,
        "cosa_decoder_width": 512,
        "cosa_train_list": "train_aug.txt",
        "cosa_eval_list": "val.txt",
        "cosa_cls_labels": None,
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
    config_help: ClassVar[Mapping[str, str]] = {
        "cosa_backbone": "ViT encoder (official `backbone`): vit_base_patch16_224 | "
        "deit_tiny_patch16_224 | vit_toy_patch16 (tests); weights: --pretrained_model=FILE",
        "cosa_aux_layer": "block whose tokens feed the aux classifier (`aux_layer`; VOC -4, COCO -3)",
        "cosa_decoder_width": "channels of the LargeFOV seg head (official 512; less: toy runs)",
        "cosa_train_list": "training list under dataset_path (official train_aug.txt; COCO train.txt)",
        "cosa_eval_list": "validation list under dataset_path (val.txt; COCO val_part.txt)",
        "cosa_cls_labels": "image-level labels: cls_labels_onehot.npy (under dataset_path), or "
        "None: derived from the masks",
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
        "cosa_eval_net": "network evaluated: student (official ON) | teacher (official AN)",
        "cosa_eval_scales": "scales of the official protocol (--eval_protocol=official)",
        "cosa_eval_crf": "dense CRF in the official protocol (final evaluation, official getcrf)",
        "cosa_eval_cams": "also score the CAMs in the official protocol (`get_camiou`)",
    }

    def __init__(
        self,
        *,
        model: CosaModelSettings,
        step: CoSAStepSettings,
        transform: CosaTransformSettings,
        labels: ImageLabels,
        eval_net: str = "student",
        weight_decay: float = 1e-2,
        wt_dec_mult: float = 1.0,
        lr_warmup_iters: int = LR_WARMUP_ITERS,
    ) -> None:
        self.model_settings, self.step_settings = model, step
        self.weight_decay, self.wt_dec_mult = weight_decay, wt_dec_mult
        self.lr_warmup_iters = lr_warmup_iters
        self.transform_settings, self.labels = transform, labels
        self.eval_choice = eval_net
        self.teacher: CoSANet | None = None
        self._pretrained_loaded: str | None = None

    # ------------------------------------------------------------------ config

    @classmethod
    def derived_defaults(cls, C: Any) -> dict[str, Any]:
        """Train on `cosa_train_list` (whole list, nothing unlabeled), validate on
        `cosa_eval_list`, both under the absolute `C.dataset_path`."""
        return {
            "train_source": os.path.join(C.dataset_path, C.cosa_train_list),
            "eval_source": os.path.join(C.dataset_path, C.cosa_eval_list),
            "num_unsup_imgs": 0,  # an epoch is a pass over the training list
        }

    @classmethod
    def check_config(cls, C: Any) -> None:
        """Named errors for values CoSA cannot run with."""
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
        for key in ("cosa_train_list", "cosa_eval_list"):
            if not isinstance(C.get(key), str) or not C[key]:
                raise ConfigError(f"C.{key} = {C.get(key)!r}: expected a list file name")
        labels = C.get("cosa_cls_labels")
        if labels is not None and (not isinstance(labels, str) or not labels):
            raise ConfigError(
                f"C.cosa_cls_labels = {labels!r}: expected a cls_labels_onehot.npy path or None"
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
        for key in ("cosa_aux_cam2seg", "cosa_after_softmax", "cosa_eval_crf", "cosa_eval_cams"):
            _flag(C, key)
        if C.get("cosa_eval_net") not in EVAL_NETS:
            raise ConfigError(
                f"C.cosa_eval_net = {C.get('cosa_eval_net')!r}: expected one of "
                f"{', '.join(EVAL_NETS)}"
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

    @classmethod
    def from_config(cls, C: Any, *, per_rank_batch: int) -> CoSA:
        """Read the CoSA keys of a finalized config (and the image-level label source)."""
        step = CoSAStepSettings(
            lr=float(C.lr),
            lrscale=float(C.cosa_lrscale),
            max_iters=int(C.nepochs) * int(C.niters_per_epoch),
            min_mult=float(C.cosa_min_mult),
            warmup_iters=int(C.cosa_warmup_iters),
            high_thre=float(C.cosa_high_thre),
            low_thre=float(C.cosa_low_thre),
            high_thre_aux=float(C.cosa_high_thre_aux),
            low_thre_aux=float(C.cosa_low_thre_aux),
            pseudo_scales=tuple(float(s) for s in C.cosa_pseudo_scales),
            par_downscale=int(C.cosa_par_downscale),
            segfg_alpha=float(C.cosa_segfg_alpha),
            aux_cam2seg=bool(C.cosa_aux_cam2seg),
            aux_cam2seg_alpha=float(C.cosa_aux_cam2seg_alpha),
            seg_softmaxtemp=float(C.cosa_seg_softmaxtemp),
            after_softmax=bool(C.cosa_after_softmax),
            seg_weight=float(C.cosa_seg_weight),
            cam_weight=float(C.cosa_cam_weight),
            reg_weight=float(C.cosa_reg_weight),
            momentum=float(C.cosa_momentum),
        )
        model = CosaModelSettings(
            backbone=str(C.cosa_backbone),
            num_classes=int(C.num_classes),
            aux_layer=int(C.cosa_aux_layer),
            pretrained=C.get("pretrained_model"),
            seed=int(C.seed),
            decoder_width=int(C.cosa_decoder_width),
        )
        transform = CosaTransformSettings(
            crop_size=int(C.image_height),
            scale_range=tuple(float(s) for s in C.cosa_scales),
        )
        return cls(
            model=model,
            step=step,
            transform=transform,
            labels=_image_labels(C),
            eval_net=str(C.cosa_eval_net),
            weight_decay=float(C.weight_decay),
            wt_dec_mult=float(C.cosa_wt_dec_mult),
            lr_warmup_iters=int(C.cosa_lr_warmup_iters),
        )

    # ------------------------------------------------------------------ training

    def data_view(self) -> CosaView:
        """`wimg`, `simg`, `cls_label`, `img_box` of one training image (official transform)."""
        return CosaView(self.labels, self.transform_settings)

    def build_model(self, *, pretrained: bool = True) -> nn.Module:
        """The student `CoSANet`; its encoder loads `C.pretrained_model` (a timm ViT file, never
        downloaded) when given and `pretrained`."""
        path = self.model_settings.pretrained if pretrained else None
        self._pretrained_loaded = path or None
        return self.model_settings.build(path)

    def build_optimizers(self, model: nn.Module) -> tuple[torch.optim.Optimizer, ...]:
        """The official AdamW over `param_groups()` (lr, lr, lrscale lr, lrscale lr)."""
        s = self.step_settings
        groups = unwrap(model).param_groups()
        opt = build_cosa_optimizer(
            groups, s.lr, lrscale=s.lrscale, wt_dec=self.weight_decay, wt_dec_mult=self.wt_dec_mult
        )
        return (opt,)

    def set_lr(self, optimizers: Sequence[torch.optim.Optimizer], step: StepInfo) -> float:
        """PolyWarmupAdamW's rates for `global_step = step.iteration` (before the increment),
        `max_iters = step.total_iters`; returns the encoder's."""
        s = self.step_settings
        lrs = cosa_lrs(
            step.iteration,
            s.lr,
            step.total_iters,
            lrscale=s.lrscale,
            min_mult=s.min_mult,
            warmup_iter=self.lr_warmup_iters,
        )
        for opt in optimizers:
            set_lrs(opt, lrs)
        return lrs[0]

    def setup(self, model: nn.Module) -> None:
        """Build the EMA teacher: a separate `CoSANet` on the model's device (module docstring)."""
        s = self.model_settings
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed + TEACHER_SEED_OFFSET)
            teacher = s.build(self._pretrained_loaded)
        device = next(unwrap(model).parameters()).device
        self.teacher = teacher.to(device).train()  # never switched to eval (official)
        self.teacher.requires_grad_(False)  # only the EMA writes it

    def _need_teacher(self) -> CoSANet:
        if self.teacher is None:
            raise CheckpointError(
                "method 'cosa': setup(model) must run first (it builds the teacher)"
            )
        return self.teacher

    def forward_loss(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        step: StepInfo,
        aux: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The official forwards and losses of iteration `step.iteration` (`cosa_forward_loss`)."""
        teacher = self._need_teacher()
        if not teacher.training:  # an evaluation of the teacher may have switched it
            teacher.train()
        res = cosa_forward_loss(
            model,
            teacher,
            batch["wimg"],
            batch["simg"],
            batch["cls_label"],
            batch["img_box"],
            step.iteration,
            self.step_settings,
        )
        if aux is not None:
            aux["result"] = res
        names = {
            "loss_cls": "cls_loss",
            "loss_cls_aux": "cls_loss_aux",
            "loss_seg": "seg_loss",
            "loss_cam": "cam_loss",
            "loss_reg": "reg_loss",
        }
        # The official loss has shape (1,) (the energy term's); the engine logs 0-dim values.
        return res["loss"].reshape(()), {k: res[v].reshape(()) for k, v in names.items()}

    def after_step(self, model: nn.Module, step: StepInfo) -> None:
        """EMA update of the teacher (`main.py:251`)."""
        ema_update(self._need_teacher(), unwrap(model), self.step_settings.momentum)

    # ------------------------------------------------------------------ evaluation, state

    def eval_net(self, model: nn.Module) -> nn.Module:
        """`CosaEvalNet` of the student (default) or of the teacher (`cosa_eval_net`)."""
        net = self._need_teacher() if self.eval_choice == "teacher" else unwrap(model)
        return CosaEvalNet(net)

    @classmethod
    def official_evaluator(cls, C: Any) -> OfficialEvaluator:
        """CoSA's own protocol (`evaluate.evaluate_cosa`): resize to the crop size, the
        `cosa_eval_scales` + flip summed logits, absent classes filtered by the image-level
        labels, the dense CRF with `cosa_eval_crf`."""
        ev = cosa_official_evaluator(
            num_classes=int(C.num_classes),
            image_labels=_image_labels(C) if C.get("cosa_cls_labels") else None,
            crop_size=int(C.image_height),
            scales=tuple(float(s) for s in C.cosa_eval_scales),
            crf=_dense_crf if C.cosa_eval_crf else None,
            cams=bool(C.cosa_eval_cams),
        )
        return OfficialEvaluator(ev.label, functools.partial(_official_on_raw_logits, ev.evaluate))

    def state_dict(self) -> dict[str, Any]:
        """The teacher's weights (a resume is exact only with them)."""
        return {"teacher": self._need_teacher().state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the teacher; a checkpoint without it is a CheckpointError."""
        if set(state) != {"teacher"}:
            raise CheckpointError(
                f"method 'cosa': method_state has keys {sorted(state)}; expected ['teacher'] "
                "(the EMA teacher's weights)"
            )
        try:
            self._need_teacher().load_state_dict(state["teacher"], strict=True)
        except RuntimeError as err:
            raise CheckpointError(
                f"method 'cosa': the checkpoint's teacher does not fit: {err}"
            ) from err
