"""UniMatch (Yang et al., CVPR 2023) on the generic engine: `C.method = "unimatch"`.

The maths is in the golden-tested blocks: `step.unimatch_forward_loss` (the official
forward order), `losses`, `optim` (2-group SGD, poly lr written after the
step), `cpcl.methods.unimatch.views` (weak/strong views, CutMix boxes, normalisation) and
`cpcl.methods.unimatch.net` (UniMatch's DeepLabV3+). This module maps the official configs
(`presets`) onto the project's config keys and plugs the blocks into the `Method`
interface.

Official settings as `defaults` (applied by `cpcl.engine.resolve.apply_method_defaults` to every
key the experiment config left at the dataset preset's value; `--key=value` always wins):

| key | voc (`pascal.yaml`) | cityscapes (`cityscapes.yaml`) |
|---|---|---|
| `lr` (backbone) | 0.001 | 0.005 |
| `unimatch_lr_multi` (the rest) | 10 | 1 |
| `batch_size` (global: 2 per GPU x 4 GPUs) | 8 | 8 |
| `image_height` = `image_width` (`crop_size`) | 321 | 801 |
| `nepochs` | 80 | 240 |
| `unimatch_conf_thresh` | 0.95 | 0 |
| `sup_loss` | ce | ohem, `ohem_thresh` 0.7, `ohem_min_kept_per_image` 100000 (200000 for the per-GPU batch of 2), no class weights |
| `backbone` | resnet101 | resnet101 |
| `momentum`, `weight_decay`, `lr_power`, `warm_up_epoch` | 0.9, 1e-4, 0.9, 0 | same |
| `unimatch_scale_range` | (0.5, 2.0) | (0.5, 2.0) |
| `unimatch_eval_mode` (with `--eval_protocol=official`) | original | sliding_window |

Speed default (not an official setting): `channels_last = True` (it pays for this network;
see `_SPEED_DEFAULTS`).

Keys of the method (`config_keys`): `unimatch_conf_thresh`, `unimatch_lr_multi`,
`unimatch_scale_range`, `unimatch_mix_partner` ("same": official, the same unlabeled image
with independent augmentation; "different": another image, opt-in) and `unimatch_eval_mode`
(UniMatch's own protocol, `eval.evaluate_unimatch`, which `eval.py
--eval_protocol=official` runs: "original", whole image, or "sliding_window").
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ...checkpoint import unwrap
from ...errors import ConfigError
from ...models import ModelSettings
from ..base import Method, OfficialEvaluator, StepInfo
from .eval import EVAL_MODES, evaluate_unimatch
from .losses import criterion_from_config
from .net import UniMatchDeepLabV3Plus, load_unimatch_pretrained
from .optim import build_unimatch_optimizer, lr_for_step, set_unimatch_lr
from .presets import UNIMATCH_PRESETS, config_number, criterion_keys
from .step import unimatch_forward_loss
from .views import MIX_PARTNERS, UniMatchView, UniMatchViewSettings

# view key -> key of `unimatch_forward_loss` (the labeled pair is "img"/"gt" like every view).
_RENAMED = {"img": "img_x", "gt": "mask_x"}


def _official(preset: str) -> dict[str, Any]:
    """One official yaml as project config keys (table in the module docstring)."""
    p = UNIMATCH_PRESETS[preset]
    out: dict[str, Any] = {
        "lr": p["lr"],
        "unimatch_lr_multi": p["lr_multi"],
        "batch_size": p["batch_size"] * 4,  # "per GPU x 4 GPUs"; C.batch_size is global
        "image_height": p["crop_size"],
        "image_width": p["crop_size"],
        "nepochs": p["epochs"],
        "unimatch_conf_thresh": float(p["conf_thresh"]),
        "backbone": p["backbone"],
        # `model/backbone/resnet.py`: `pretrained/%s.pth % arch` (UniMatch's own file).
        "pretrained_model": f"DATA/pytorch-weight/unimatch/{p['backbone']}.pth",
        "momentum": p["momentum"],
        "weight_decay": p["weight_decay"],
        "lr_power": 0.9,
        "warm_up_epoch": 0,
        "unimatch_scale_range": tuple(p["scale_range"]),
        "unimatch_eval_mode": p["eval_mode"],
    }
    out.update(criterion_keys(p["criterion"], per_gpu_batch=p["batch_size"]))
    return out


# Speed defaults (not official settings; same maths up to float summation order): channels-last
# pays for UniMatch's network (measured on a CPU, ResNet-50 at 128x128, 1 thread: 1.11x in
# float32, bf16 1.90x -> 2.03x over float32; docs/benchmarks-training.md), while it loses for
# CPCL (0.65x: the weight gradients of its twice-used ASPP weights are copied into the
# channels-last layout every iteration). `--channels_last=false` turns it off.
_SPEED_DEFAULTS: dict[str, Any] = {"channels_last": True}


@dataclass(frozen=True)
class UniMatchSettings:
    """The values UniMatch reads from a finalized config."""

    conf_thresh: float
    lr: float
    lr_multi: float
    lr_power: float
    momentum: float
    weight_decay: float
    total_iters: int


class UniMatch(Method):
    """UniMatch: weak-to-strong consistency with two strong views and feature perturbation."""

    name = "unimatch"
    batch_keys = UniMatchView.keys
    capturable: ClassVar[bool] = True  # no host sync in the iteration (tests/test_cuda_graphs.py)
    defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "voc": {**_official("pascal"), **_SPEED_DEFAULTS},
        "cityscapes": {**_official("cityscapes"), **_SPEED_DEFAULTS},
    }
    config_keys: ClassVar[Mapping[str, Any]] = {
        "unimatch_conf_thresh": 0.95,
        "unimatch_lr_multi": 10.0,
        "unimatch_scale_range": (0.5, 2.0),
        "unimatch_mix_partner": "same",
        "unimatch_eval_mode": "original",
    }
    config_help: ClassVar[Mapping[str, str]] = {
        "unimatch_conf_thresh": "confidence threshold of the unlabeled losses (0.95 VOC, 0 Cityscapes)",
        "unimatch_lr_multi": "lr multiplier of every non-backbone parameter (10 VOC, 1 Cityscapes)",
        "unimatch_scale_range": "random resize range of the weak view (official (0.5, 2.0))",
        "unimatch_mix_partner": "CutMix partner: same (official: same image, new augmentation) | different",
        "unimatch_eval_mode": "UniMatch's own protocol (--eval_protocol=official): original (VOC) | sliding_window (Cityscapes)",
    }

    def __init__(
        self,
        *,
        criterion_l: nn.Module,
        settings: UniMatchSettings,
        model: ModelSettings | None = None,
        view: UniMatchViewSettings | None = None,
    ) -> None:
        self.criterion_l, self.settings = criterion_l, settings
        self.model_settings, self.view_settings = model, view

    @classmethod
    def check_config(cls, C: Any) -> None:
        """Named errors for values UniMatch cannot run with."""
        thresh = config_number(C, "unimatch_conf_thresh")
        if not 0.0 <= thresh <= 1.0:
            raise ConfigError(f"C.unimatch_conf_thresh = {thresh}: expected 0 <= value <= 1")
        if config_number(C, "unimatch_lr_multi") <= 0:
            raise ConfigError(f"C.unimatch_lr_multi = {C.unimatch_lr_multi}: expected > 0")
        if C.get("unimatch_mix_partner") not in MIX_PARTNERS:
            raise ConfigError(
                f"C.unimatch_mix_partner = {C.get('unimatch_mix_partner')!r}: expected one of "
                f"{', '.join(MIX_PARTNERS)} (same: official)"
            )
        if C.get("unimatch_eval_mode") not in EVAL_MODES:
            # "evaluator" was the project's evaluator before --eval_protocol existed.
            hint = " (the project's evaluator is --eval_protocol=cpcl)"
            raise ConfigError(
                f"C.unimatch_eval_mode = {C.get('unimatch_eval_mode')!r}: expected one of "
                f"{', '.join(EVAL_MODES)}{hint if C.get('unimatch_eval_mode') == 'evaluator' else ''}"
            )
        lo_hi = C.get("unimatch_scale_range")
        if (
            not isinstance(lo_hi, (list, tuple))
            or len(lo_hi) != 2
            or not all(isinstance(v, (int, float)) for v in lo_hi)
            or not 0 < lo_hi[0] <= lo_hi[1]
        ):
            raise ConfigError(
                f"C.unimatch_scale_range = {lo_hi!r}: expected two numbers 0 < lo <= hi"
            )
        if C.get("image_height") != C.get("image_width"):
            raise ConfigError(
                f"C.image_height = {C.get('image_height')} and C.image_width = "
                f"{C.get('image_width')}: UniMatch trains on square crops (crop_size, also the "
                "CutMix box size); set both to the same value"
            )
        if C.get("warm_up_epoch", 0):
            raise ConfigError(
                f"C.warm_up_epoch = {C.warm_up_epoch}: UniMatch's poly schedule has no warm-up; "
                "expected 0"
            )

    @classmethod
    def from_config(cls, C: Any, *, per_rank_batch: int) -> UniMatch:
        """Read the UniMatch keys of a finalized config."""
        criterion = criterion_from_config(C, per_rank_batch)
        settings = UniMatchSettings(
            conf_thresh=float(C.unimatch_conf_thresh),
            lr=float(C.lr),
            lr_multi=float(C.unimatch_lr_multi),
            lr_power=float(C.lr_power),
            momentum=float(C.momentum),
            weight_decay=float(C.weight_decay),
            total_iters=int(C.nepochs * C.niters_per_epoch),
        )
        view = UniMatchViewSettings(
            crop_size=int(C.image_height),
            scale_range=tuple(float(v) for v in C.unimatch_scale_range),
            mean=tuple(C.image_mean),
            std=tuple(C.image_std),
            partner=str(C.unimatch_mix_partner),
        )
        return cls(
            criterion_l=criterion,
            settings=settings,
            model=ModelSettings.from_config(C),
            view=view,
        )

    def _need(self, value: Any, what: str) -> Any:
        if value is None:
            raise ConfigError(
                f"method 'unimatch' was built without {what}; build it with "
                "from_config(C, per_rank_batch=...)"
            )
        return value

    def data_view(self) -> UniMatchView:
        """Labeled weak view + unlabeled weak/strong views + the mixing partner's views."""
        return UniMatchView(self._need(self.view_settings, "view settings"))

    def build_model(self, *, pretrained: bool = True) -> nn.Module:
        """UniMatch's DeepLabV3+; `C.pretrained_model` is UniMatch's ImageNet ResNet file."""
        settings = self._need(self.model_settings, "model settings")
        if not pretrained:
            settings = dataclasses.replace(settings, pretrained=None)
        # UniMatch's BN layers are plain BatchNorm2d(eps=1e-5, momentum=0.1): bn_* are not read.
        net = UniMatchDeepLabV3Plus(settings.num_classes, settings.backbone)
        if settings.pretrained:
            load_unimatch_pretrained(net, settings.pretrained)
        return net

    def build_optimizers(self, model: nn.Module) -> tuple[torch.optim.Optimizer, ...]:
        """One SGD: backbone at lr, the rest at lr * lr_multi (weight decay on everything)."""

        s = self.settings
        return (
            build_unimatch_optimizer(unwrap(model), s.lr, s.lr_multi, s.momentum, s.weight_decay),
        )

    def set_lr(self, optimizers: Sequence[torch.optim.Optimizer], step: StepInfo) -> float:
        """The lr the official loop's step `step.iteration` runs with (written after the
        previous step there, before this one here: the same values)."""
        s = self.settings
        lr = lr_for_step(step.iteration, s.lr, s.total_iters, s.lr_power)
        for opt in optimizers:
            set_unimatch_lr(opt, lr, s.lr_multi)
        return lr

    def forward_loss(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        step: StepInfo,
        aux: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The official forwards and losses (`unimatch_forward_loss`)."""
        b = {_RENAMED.get(k, k): v for k, v in batch.items()}
        res = unimatch_forward_loss(
            model, b, criterion_l=self.criterion_l, conf_thresh=self.settings.conf_thresh
        )
        if aux is not None:
            aux["result"] = res  # the whole UniMatchLoss (intermediates) for tests
        names = ("loss_x", "loss_u_s1", "loss_u_s2", "loss_u_w_fp", "mask_ratio")
        return res.loss, {n: getattr(res, n) for n in names}

    def eval_net(self, model: nn.Module) -> nn.Module:
        """The network itself: `model(x)` is the logits at the input size."""

        return unwrap(model)

    @classmethod
    def official_evaluator(cls, C: Any) -> OfficialEvaluator:
        """UniMatch's own protocol (`evaluate_unimatch`, mode `C.unimatch_eval_mode`)."""
        s = unimatch_eval_settings(C)
        label = f"unimatch official: {s['mode']}" + (
            f" (windows {s['crop_size']}, softmax sums)" if s["mode"] == "sliding_window" else ""
        )
        return OfficialEvaluator(label, functools.partial(evaluate_unimatch, **s))


def unimatch_eval_settings(C: Any) -> dict[str, Any]:
    """Keyword arguments of `eval.evaluate_unimatch` for a finalized config (the
    sliding-window grid is the training crop, `crop_size` in UniMatch's configs)."""
    return {
        "num_classes": int(C.num_classes),
        "mode": str(C.unimatch_eval_mode),
        "crop_size": int(C.image_height),
        "mean": tuple(C.image_mean),
        "std": tuple(C.image_std),
    }


METHOD = UniMatch
