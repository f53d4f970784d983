"""UniMatch V2 (Yang, Zhao, Zhao, 2024) on the generic engine: `C.method = "unimatch_v2"`.

The maths is in the golden-tested blocks: `step.unimatch_v2_forward_loss` (the official
forwards), `losses`, `schedule` (AdamW groups, poly lr written after the step, EMA ratio and
update), `views` (V1's views without a mixing partner), `evaluate` (the official protocol,
both networks, best tracking) and the network in `net` (DINOv2 + DPT, `comp_drop`). This
module maps the official configs (`presets`) onto the project's config keys and plugs the
blocks into the `Method` interface.

Official settings as `defaults` (`configs/*.yaml`; `--key=value` always wins):

| key | voc (`pascal`) | cityscapes | ade20k | coco2017 (`coco`) |
|---|---|---|---|---|
| `lr` (encoder) / `unimatch_v2_lr_multi` | 5e-6 / 40 | same | same | same |
| `batch_size` (global: per GPU x 4 GPUs) | 16 | 8 | 8 | 16 |
| `image_height` = `image_width` (`crop_size`) | 518 | 798 | 518 | 518 |
| `nepochs` | 60 | 180 | 60 | 20 |
| `sup_loss` | ce | ohem 0.7, `ohem_min_kept_per_image` 100000 (200000 per GPU batch of 2) | ce | ce |
| `backbone` / `pretrained_model` | dinov2_small / `DATA/pytorch-weight/dinov2_small.pth` | same | same | same |
| `unimatch_v2_lock_backbone` | False | False | True | False |
| `unimatch_v2_eval_mode` | original | sliding_window | original | original |
| `weight_decay` (AdamW, every parameter) | 0.01 | same | same | same |

(The official `coco` values run on `--dataset_name=coco2017`, UniMatch V2's COCO 2017 layout
(`cpcl/presets/coco2017.py`); the project's `coco` preset is CoSA's COCO-2014 layout, so
`--method=unimatch_v2` on coco is refused with a note naming coco2017. `ade20k` is
`cpcl/presets/ade20k.py`.)

Decisions where the official code has no counterpart:

* `comp_drop` draws come from a generator seeded per iteration from (`C.seed`, rank,
  iteration), not from the global RNG: reproducible, different on every rank, and a resume
  (mid-epoch included) draws exactly what the uninterrupted run draws, with no generator
  state to save.
* `eval_net` is the student (`unimatch_v2_eval_net=model`) or the EMA teacher (`ema`), wrapped
  so that any input size works (`evaluate.Multiple14`: the official `original` resize to a
  multiple of 14 and back).
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ...checkpoint import unwrap
from ...errors import CheckpointError, ConfigError
from ..base import Method, OfficialEvaluator, StepInfo, TrainEvalContext
from ..unimatch.losses import criterion_from_config
from ..unimatch.presets import config_number, criterion_keys
from .evaluate import (
    EVAL_MODES,
    OFFICIAL_MULTIPLIER,
    BestTracker,
    Multiple14,
    evaluate_unimatch_v2,
)
from .net import BACKBONES, build_unimatch_v2_net, load_dinov2_pretrained, lock_backbone
from .presets import UNIMATCH_V2_PRESETS
from .schedule import (
    build_unimatch_v2_optimizer,
    ema_ratio,
    ema_update,
    lr_for_step,
    set_unimatch_v2_lr,
)
from .step import unimatch_v2_forward_loss
from .train_eval import official_epoch_evaluation
from .views import BATCH_KEYS, UniMatchV2View, UniMatchV2ViewSettings

EVAL_NETS = ("model", "ema")
# Where the official README (Pre-trained Encoders) sends users for the encoder files.
DINOV2_URLS = {
    "dinov2_small": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
    "dinov2_base": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
    "dinov2_large": "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth",
}
_GPUS = 4  # the official configs' "per GPU x 4 GPUs"; C.batch_size is global
_COMP_DROP_STREAM = 0x5F2  # separates the comp_drop seeds from other uses of C.seed


def _official(preset: str) -> dict[str, Any]:
    """One official yaml as project config keys (table in the module docstring)."""
    p = UNIMATCH_V2_PRESETS[preset]
    out: dict[str, Any] = {
        "lr": p["lr"],
        "unimatch_v2_lr_multi": p["lr_multi"],
        "batch_size": p["batch_size"] * _GPUS,
        "image_height": p["crop_size"],
        "image_width": p["crop_size"],
        "nepochs": p["epochs"],
        "unimatch_v2_conf_thresh": float(p["conf_thresh"]),
        "backbone": p["backbone"],
        # `torch.load(f'./pretrained/{cfg["backbone"]}.pth')`; kept with the other official
        # files under DATA/pytorch-weight/ (relative to the repository, `cpcl.weights`).
        "pretrained_model": f"DATA/pytorch-weight/{p['backbone']}.pth",
        "unimatch_v2_lock_backbone": bool(p["lock_backbone"]),
        "unimatch_v2_eval_mode": p["eval_mode"],
        # The official loop evaluates model and EMA model after every epoch with its protocol.
        "eval_protocol": "official",
        "eval_every": 1,
        "weight_decay": p["weight_decay"],
        "lr_power": 0.9,
        "warm_up_epoch": 0,
    }
    out.update(criterion_keys(p["criterion"], per_gpu_batch=p["batch_size"]))
    return out


@dataclass(frozen=True)
class UniMatchV2Settings:
    """The values UniMatch V2 reads from a finalized config."""

    conf_thresh: float
    lr: float
    lr_multi: float
    lr_power: float
    weight_decay: float
    total_iters: int
    seed: int = 0


@dataclass(frozen=True)
class UniMatchV2ModelSettings:
    """What `build_model` needs."""

    backbone: str
    num_classes: int
    pretrained: str | None
    lock_backbone: bool


class UniMatchV2(Method):
    """UniMatch V2: EMA teacher on the weak view, two strong views with complementary dropout."""

    name = "unimatch_v2"
    batch_keys = BATCH_KEYS
    # The backbones its network builds (`cpcl.config` accepts these names for this method only).
    backbone_choices: ClassVar[tuple[str, ...]] = tuple(BACKBONES)
    defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "voc": _official("pascal"),
        "cityscapes": _official("cityscapes"),
        "ade20k": _official("ade20k"),
        # Official `configs/coco.yaml` on COCO 2017 (`splits/coco/*`: train2017/<id>.jpg
        # masks/<id>.png). No "coco": that preset is CoSA's COCO-2014 layout.
        "coco2017": _official("coco"),
    }
    dataset_notes: ClassVar[Mapping[str, str]] = {
        "coco": "the coco preset is CoSA's COCO 2014 layout; UniMatch V2 trains on COCO 2017 "
        "in its own layout: use --dataset_name=coco2017 (docs/datasets.md)",
    }
    config_keys: ClassVar[Mapping[str, Any]] = {
        "unimatch_v2_conf_thresh": 0.95,
        "unimatch_v2_lr_multi": 40.0,
        "unimatch_v2_lock_backbone": False,
        "unimatch_v2_eval_mode": "original",
        "unimatch_v2_eval_net": "model",
    }
    config_help: ClassVar[Mapping[str, str]] = {
        "unimatch_v2_conf_thresh": "confidence threshold of the unlabeled losses (official 0.95)",
        "unimatch_v2_lr_multi": "lr multiplier of every non-encoder parameter (official 40)",
        "unimatch_v2_lock_backbone": "freeze the DINOv2 encoder (official: ADE20K only)",
        "unimatch_v2_eval_mode": "official protocol (--eval_protocol=official): original (x14 resize) | sliding_window (Cityscapes)",
        "unimatch_v2_eval_net": "network evaluated: model (student) | ema (the EMA teacher; officially both are)",
    }

    def __init__(
        self,
        *,
        criterion_l: nn.Module,
        settings: UniMatchV2Settings,
        model: UniMatchV2ModelSettings | None = None,
        view: UniMatchV2ViewSettings | None = None,
        eval_net: str = "model",
        rank: int = 0,
    ) -> None:
        self.criterion_l, self.settings = criterion_l, settings
        self.model_settings, self.view_settings = model, view
        self.eval_choice, self.rank = eval_net, rank
        self.teacher: nn.Module | None = None
        self.best = BestTracker()

    # ------------------------------------------------------------------ configuration

    @classmethod
    def check_config(cls, C: Any) -> None:
        """Named errors for values UniMatch V2 cannot run with."""
        thresh = config_number(C, "unimatch_v2_conf_thresh")
        if not 0.0 <= thresh <= 1.0:
            raise ConfigError(f"C.unimatch_v2_conf_thresh = {thresh}: expected 0 <= value <= 1")
        if config_number(C, "unimatch_v2_lr_multi") <= 0:
            raise ConfigError(f"C.unimatch_v2_lr_multi = {C.unimatch_v2_lr_multi}: expected > 0")
        for key, choices in (
            ("unimatch_v2_eval_mode", EVAL_MODES),
            ("unimatch_v2_eval_net", EVAL_NETS),
        ):
            if C.get(key) not in choices:
                raise ConfigError(f"C.{key} = {C.get(key)!r}: expected one of {', '.join(choices)}")
        if not isinstance(C.get("unimatch_v2_lock_backbone"), bool):
            raise ConfigError(
                f"C.unimatch_v2_lock_backbone = {C.get('unimatch_v2_lock_backbone')!r}: "
                "expected true or false"
            )
        if C.get("backbone") not in BACKBONES:
            raise ConfigError(
                f"C.backbone = {C.get('backbone')!r}: UniMatch V2 builds DINOv2 encoders; "
                f"expected one of {', '.join(BACKBONES)}"
            )
        if C.get("image_height") != C.get("image_width"):
            raise ConfigError(
                f"C.image_height = {C.get('image_height')} and C.image_width = "
                f"{C.get('image_width')}: UniMatch V2 trains on square crops (crop_size, also "
                "the CutMix box size); set both to the same value"
            )
        if int(C.get("image_height", 14)) % 14:
            raise ConfigError(
                f"C.image_height = {C.get('image_height')}: the DINOv2 patch is 14 pixels; "
                "expected a multiple of 14 (official 518 or 798)"
            )
        if C.get("warm_up_epoch", 0):
            raise ConfigError(
                f"C.warm_up_epoch = {C.warm_up_epoch}: UniMatch V2's poly schedule has no "
                "warm-up; expected 0"
            )

    @classmethod
    def from_config(cls, C: Any, *, per_rank_batch: int) -> UniMatchV2:
        """Read the UniMatch V2 keys of a finalized config."""
        criterion = criterion_from_config(C, per_rank_batch)
        settings = UniMatchV2Settings(
            conf_thresh=float(C.unimatch_v2_conf_thresh),
            lr=float(C.lr),
            lr_multi=float(C.unimatch_v2_lr_multi),
            lr_power=float(C.lr_power),
            weight_decay=float(C.weight_decay),
            total_iters=int(C.nepochs * C.niters_per_epoch),
            seed=int(C.seed),
        )
        model = UniMatchV2ModelSettings(
            backbone=str(C.backbone),
            num_classes=int(C.num_classes),
            pretrained=C.get("pretrained_model") or None,
            lock_backbone=bool(C.unimatch_v2_lock_backbone),
        )
        view = UniMatchV2ViewSettings(
            crop_size=int(C.image_height), mean=tuple(C.image_mean), std=tuple(C.image_std)
        )
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return cls(
            criterion_l=criterion,
            settings=settings,
            model=model,
            view=view,
            eval_net=str(C.unimatch_v2_eval_net),
            rank=rank,
        )

    def _need(self, value: Any, what: str) -> Any:
        if value is None:
            raise ConfigError(
                f"method 'unimatch_v2' was built without {what}; build it with "
                "from_config(C, per_rank_batch=...)"
            )
        return value

    def data_view(self) -> UniMatchV2View:
        """Labeled weak view + unlabeled weak/strong views with their CutMix boxes."""
        return UniMatchV2View(self._need(self.view_settings, "view settings"))

    # ------------------------------------------------------------------ model, optimiser

    def build_model(self, *, pretrained: bool = True) -> nn.Module:
        """The DINOv2 + DPT network; `C.pretrained_model` (an official `dinov2_*.pth`) is
        loaded strictly into its encoder; `lock_backbone` as configured."""
        s = self._need(self.model_settings, "model settings")
        path = s.pretrained if pretrained else None
        if path:  # named before the (large) network is built
            _check_pretrained_matches(path, s.backbone)
            if not os.path.isfile(path):
                url = DINOV2_URLS.get(s.backbone)
                get = f"download {url} and save it there" if url else "give an encoder file"
                raise CheckpointError(
                    f"C.pretrained_model = {path!r}: file not found (relative paths start at "
                    f"{os.getcwd()}); UniMatch V2 starts from DINOv2's weights: {get}, or pass "
                    "--pretrained_model=None (a random encoder)"
                )
        net = build_unimatch_v2_net(s.backbone, s.num_classes)
        if path:
            load_dinov2_pretrained(net, path)
        if s.lock_backbone:
            lock_backbone(net)
        return net

    def build_optimizers(self, model: nn.Module) -> tuple[torch.optim.Optimizer, ...]:
        """One AdamW: encoder at lr, the rest at lr * lr_multi, weight decay on everything."""
        s = self.settings
        return (
            build_unimatch_v2_optimizer(
                unwrap(model), s.lr, s.lr_multi, weight_decay=s.weight_decay
            ),
        )

    def set_lr(self, optimizers: Sequence[torch.optim.Optimizer], step: StepInfo) -> float:
        """The lr the official loop's step `step.iteration` runs with (written after the
        previous step there, before this one here: the same values)."""
        s = self.settings
        lr = lr_for_step(step.iteration, s.lr, s.total_iters, s.lr_power)
        for opt in optimizers:
            set_unimatch_v2_lr(opt, lr, s.lr_multi)
        return lr

    # ------------------------------------------------------------------ training

    def setup(self, model: nn.Module) -> None:
        """The EMA teacher: a deep copy of the student, eval mode, no gradients
        (`unimatch_v2.py:88-91`)."""
        teacher = copy.deepcopy(unwrap(model))
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad = False
        self.teacher = teacher

    def _need_teacher(self) -> nn.Module:
        if self.teacher is None:
            raise CheckpointError(
                "method 'unimatch_v2': setup(model) must run first (it builds the EMA teacher)"
            )
        return self.teacher

    def comp_drop_generator(self, step: StepInfo) -> torch.Generator:
        """The CPU generator of iteration `step`'s `comp_drop` draws (module docstring)."""
        words = (self.settings.seed, self.rank, step.iteration, _COMP_DROP_STREAM)
        seed = int(
            np.random.SeedSequence([int(w) & 0xFFFFFFFF for w in words]).generate_state(1)[0]
        )
        return torch.Generator().manual_seed(seed)

    def forward_loss(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        step: StepInfo,
        aux: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The official forwards and losses (`unimatch_v2_forward_loss`)."""
        teacher = self._need_teacher()
        if teacher.training:  # an evaluation may have switched it
            teacher.eval()
        res = unimatch_v2_forward_loss(
            model,
            teacher,
            batch,
            criterion_l=self.criterion_l,
            conf_thresh=self.settings.conf_thresh,
            generator=self.comp_drop_generator(step),
        )
        if aux is not None:
            aux["result"] = res
        return res.loss, res.logs()

    def after_step(self, model: nn.Module, step: StepInfo) -> None:
        """EMA update of the teacher with `ema_ratio(iteration)` (`unimatch_v2.py:221-226`)."""
        ema_update(self._need_teacher(), unwrap(model), ema_ratio(step.iteration))

    # ------------------------------------------------------------------ evaluation, state

    def eval_net(self, model: nn.Module) -> nn.Module:
        """The student (default) or the EMA teacher (`unimatch_v2_eval_net=ema`), taking any
        input size (`Multiple14`)."""
        net = self._need_teacher() if self.eval_choice == "ema" else unwrap(model)
        return Multiple14(net)

    def train_evaluation(self, model: nn.Module, ctx: TrainEvalContext) -> dict[str, Any] | None:
        """With `eval_protocol=official` (the default): the official end of an epoch, student
        AND EMA teacher through the official protocol, the best tracking (in `method_state`)
        and `best.pth` (`train_eval.official_epoch_evaluation`). Otherwise None: the engine
        evaluates `eval_net` with the project's evaluator."""
        if ctx.C.get("eval_protocol") != "official":
            return None
        return official_epoch_evaluation(
            unwrap(model), self._need_teacher(), self.best, ctx, unimatch_v2_eval_settings(ctx.C)
        )

    @classmethod
    def official_evaluator(cls, C: Any) -> OfficialEvaluator:
        """UniMatch V2's own protocol (`evaluate_unimatch_v2`, mode `C.unimatch_v2_eval_mode`)."""
        s = unimatch_v2_eval_settings(C)
        label = f"unimatch_v2 official: {s['mode']}" + (
            f" (windows {s['crop_size']}, softmax sums)"
            if s["mode"] == "sliding_window"
            else f" (resize to a multiple of {s['multiplier']}, align_corners)"
        )
        return OfficialEvaluator(label, functools.partial(evaluate_unimatch_v2, **s))

    def state_dict(self) -> dict[str, Any]:
        """The EMA teacher's weights and the best-epoch bookkeeping."""
        return {"teacher": self._need_teacher().state_dict(), "best": self.best.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()`; anything else is a CheckpointError."""
        if set(state) != {"teacher", "best"}:
            raise CheckpointError(
                f"method 'unimatch_v2': method_state has keys {sorted(state)}; expected "
                "['best', 'teacher'] (the EMA teacher's weights and the best tracking)"
            )
        try:
            self._need_teacher().load_state_dict(state["teacher"], strict=True)
        except RuntimeError as err:
            raise CheckpointError(
                f"method 'unimatch_v2': the checkpoint's teacher does not fit: {err}"
            ) from err
        self.best.load_state_dict(state["best"])


def _check_pretrained_matches(path: str, backbone: str) -> None:
    """An official `dinov2_<size>.pth` file name must match the backbone (the default file
    follows the default backbone; `--backbone` alone would load the wrong size). Checked when
    the file is loaded, not in `check_config`: evaluation never reads it."""
    stem = os.path.splitext(os.path.basename(str(path)))[0]
    if stem in BACKBONES and stem != backbone:
        raise ConfigError(
            f"C.pretrained_model = {path!r} is the {stem} file but C.backbone = {backbone!r}; "
            f"expected --pretrained_model=DATA/pytorch-weight/{backbone}.pth (or None: no "
            "pretrained "
            "encoder)"
        )


def unimatch_v2_eval_settings(C: Any) -> dict[str, Any]:
    """Keyword arguments of `evaluate.evaluate_unimatch_v2` for a finalized config (the
    sliding-window grid is the training crop, `crop_size` in the official configs)."""
    return {
        "num_classes": int(C.num_classes),
        "mode": str(C.unimatch_v2_eval_mode),
        "crop_size": int(C.image_height),
        "multiplier": OFFICIAL_MULTIPLIER,
        "mean": tuple(C.image_mean),
        "std": tuple(C.image_std),
    }
