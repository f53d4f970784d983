"""CoSA on the generic engine: `C.method = "cosa"` (weakly supervised, image-level labels).

The maths is in the golden-tested blocks of this package: `network.CoSANet` (ViT + LargeFOV),
`step.cosa_forward_loss` (teacher pseudo labels, the five losses, the loss warm-up), `optim`
(AdamW over four groups, PolyWarmup LR, EMA), `data.CosaView` (official transform, image-level
labels) and `evaluate` (the official multi-scale + flip protocol). This module maps the official
arguments (`args.py`, `run_voc.sh`, `args_coco.py`, `run_coco.sh`) onto config keys and plugs
the blocks into the `Method` interface:

* one stream, "labeled": the images of `cosa_train_list` (official `train_aug.txt`) with their
  image-level labels (`cosa_cls_labels`: the official `cls_labels_onehot.npy`, found under the
  dataset root by default, else derived from the masks); no unlabeled split is required or
  read; validation on masks;
* the official iteration count `max_iters` is `nepochs x niters_per_epoch` (VOC: 32 x 1000 =
  32000; COCO: 60 x 1000 = 60000); an "epoch" is only the snapshot / log / evaluation period
  (the official loader is endless: one permutation per pass over the list, run to its end and
  reshuffled; `CosaView.continuous_passes` makes the project's loader do the same across the
  epochs, exactly resumable);
* the EMA teacher is a SEPARATE `CoSANet` (`main.py:45-46`): its encoder loads the same
  ImageNet file as the student's (so they are equal when one is given), its heads are drawn
  from `C.seed + 1` (deterministic; the official code draws them from the global stream right
  after the student's, so the teacher's random heads differ from the official run's with the
  same seed; a test pins ours); it is never switched to eval mode, and is saved as
  `method_state` so a resume is exact;
* evaluation (`train_eval`): every `eval_every` epochs student AND teacher with the official
  protocol, ``best_seg.pth`` / ``best_cam.pth`` kept across both (`best`), and at the end
  ``best_seg.pth`` scored with the CRF; `eval.py` uses the official protocol by default and
  reads the official model-only ``best_seg.pth``;
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
from ...errors import CheckpointError
from ...ops.dense_crf import dense_crf
from ..base import Method, OfficialEvaluator, StepInfo, TrainEvalContext
from .best import BestScores
from .data import CosaView, list_ids, load_image_labels
from .evaluate import OFFICIAL_CRF_PARAMS, CosaSegNet, cosa_official_evaluator
from .image_labels import ImageLabels
from .network import CoSANet
from .optim import LR_WARMUP_ITERS, build_cosa_optimizer, cosa_lrs, ema_update, set_lrs
from .settings import CONFIG_HELP, CONFIG_KEYS, DEFAULTS, check_cosa_config
from .step import CoSAStepSettings, cosa_forward_loss
from .train_eval import evaluate_best_seg, evaluate_both
from .transforms import CosaTransformSettings
from .vit import load_vit_pretrained

__all__ = ["CoSA", "CosaEvalNet", "CosaModelSettings", "cls_labels_path"]

# The teacher's random heads are drawn from C.seed + this (the student's from C.seed).
TEACHER_SEED_OFFSET = 1
# `cosa_cls_labels="auto"`: this file under the dataset root when it is there (official name).
AUTO_LABELS, OFFICIAL_LABELS_FILE = "auto", "cls_labels_onehot.npy"
FROM_MASKS = ("masks", "none")  # `cosa_cls_labels` values that derive the labels from masks


def cls_labels_path(C: Any) -> str | None:
    """`C.cosa_cls_labels` as an absolute path (relative: under `C.dataset_path`), or None
    (derive from the masks: None, "masks" or "none"). "auto": the official file name under
    `C.dataset_path` when it exists there, else None."""
    path = C.get("cosa_cls_labels")
    if path is None or str(path).lower() in FROM_MASKS:
        return None
    if path == AUTO_LABELS:
        found = os.path.join(C.dataset_path, OFFICIAL_LABELS_FILE)
        return found if os.path.isfile(found) else None
    return os.path.join(C.dataset_path, os.path.expanduser(str(path)))


def _image_labels(C: Any) -> ImageLabels:
    return load_image_labels(cls_labels_path(C), int(C.num_classes))


def _eval_kwargs(C: Any, *, crf: bool) -> dict[str, Any]:
    """The official protocol's settings for `evaluate.evaluate_cosa` (CRF: the final one)."""
    labels = _image_labels(C)
    return {
        "num_classes": int(C.num_classes),
        "image_labels": labels if labels.table is not None else None,  # None: from the masks
        "crop_size": int(C.image_height),
        "scales": tuple(float(s) for s in C.cosa_eval_scales),
        "crf": _dense_crf if crf else None,
    }


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


class CoSA(Method):
    """CoSA: co-training with swapping assignments (student + separate EMA teacher)."""

    name = "cosa"
    streams = ("labeled",)  # images with image-level labels; no unlabeled split
    batch_keys = CosaView.keys
    defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = DEFAULTS
    config_keys: ClassVar[Mapping[str, Any]] = CONFIG_KEYS
    config_help: ClassVar[Mapping[str, str]] = CONFIG_HELP
    not_capturable_because: ClassVar[str] = (
        "host reads in the pseudo labels and the energy loss (crop boxes and present classes per "
        "image, the permutohedral lattice's data-dependent size; docs/gpu.md)"
    )

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
        self.best = BestScores()  # best_seg / best_cam of the run (official -1 at the start)
        self.label_lists: tuple[str, ...] = ()  # lists the npy must cover (`from_config`)
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
        """Named errors for values CoSA cannot run with (`settings.check_cosa_config`)."""
        check_cosa_config(C)

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
        method = cls(
            model=model,
            step=step,
            transform=transform,
            labels=_image_labels(C),
            eval_net=str(C.cosa_eval_net),
            weight_decay=float(C.weight_decay),
            wt_dec_mult=float(C.cosa_wt_dec_mult),
            lr_warmup_iters=int(C.cosa_lr_warmup_iters),
        )
        # The lists whose ids the npy must cover (checked when training starts: `data_view`).
        val_lists = (os.path.join(C.dataset_path, C.cosa_train_eval_list), C.eval_source)
        method.label_lists = tuple(dict.fromkeys(p for p in (C.train_source, *val_lists) if p))
        return method

    # ------------------------------------------------------------------ training

    def data_view(self) -> CosaView:
        """`wimg`, `simg`, `cls_label`, `img_box` of one training image (official transform).
        With the official npy, first check that it covers every id of the training list and
        of the evaluation lists (a named DataError at start-up, not mid-run)."""
        for list_path in self.label_lists if self.labels.table is not None else ():
            self.labels.check_ids(list_ids(list_path), list_path)
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
        """`CosaEvalNet` of the student (default; also for "both", whose second network
        `eval_nets` adds) or of the teacher (`cosa_eval_net`)."""
        net = self._need_teacher() if self.eval_choice == "teacher" else unwrap(model)
        return CosaEvalNet(net)

    def train_evaluation(self, model: nn.Module, ctx: TrainEvalContext) -> dict[str, Any]:
        """The official evaluation every `eval_iters` (`train_eval.evaluate_both`): student
        and teacher with the official protocol, best_seg.pth / best_cam.pth kept across both."""
        nets = {"student": unwrap(model), "teacher": self._need_teacher()}
        return evaluate_both(nets, self.best, ctx, _eval_kwargs(ctx.C, crf=False))

    def final_evaluation(self, model: nn.Module, ctx: TrainEvalContext) -> dict[str, Any] | None:
        """The official `finalval`: best_seg.pth with the CRF on `cosa_eval_list` (when
        `cosa_final_eval`; `train_eval.evaluate_best_seg`)."""
        if not ctx.C.cosa_final_eval:
            return None
        net = self.model_settings.build(None)
        return evaluate_best_seg(net, ctx, _eval_kwargs(ctx.C, crf=True))

    @classmethod
    def backbone_name(cls, C: Any) -> str:
        """The ViT encoder (`cosa_backbone`), not the ResNet `C.backbone` CoSA never builds."""
        return str(C.cosa_backbone)

    @classmethod
    def eval_variants(cls, C: Any) -> tuple[dict[str, Any], ...]:
        """``cosa_eval_net=both``: the student, then the teacher; else one evaluation."""
        if C.get("cosa_eval_net") == "both":
            return ({"cosa_eval_net": "student"}, {"cosa_eval_net": "teacher"})
        return ({},)

    def load_eval_state(self, ckpt: Mapping[str, Any]) -> str | None:
        """A training snapshot restores the teacher (`method_state`). A weights-only file (the
        official ``best_seg.pth`` / ``best_cam.pth``, ours, or a bare state dict) holds ONE
        network, evaluated in the student's place; asking for the teacher of it is an error."""
        if "method_state" in ckpt:
            self.load_state_dict(ckpt["method_state"])
            return None
        if self.eval_choice != "student":
            raise CheckpointError(
                f"cosa_eval_net={self.eval_choice}: the checkpoint holds one network (no "
                "method_state with the teacher); evaluate it with --cosa_eval_net=student"
            )
        trained = {"s": "the student", "t": "the teacher"}.get(str(ckpt.get("s_or_t")))
        when = f" at iteration {ckpt['epoch']}" if isinstance(ckpt.get("epoch"), int) else ""
        origin = f" (trained as {trained}{when})" if trained else ""
        return (
            f"weights-only checkpoint: its one network{origin} is evaluated as the student "
            "(official best_seg.pth / best_cam.pth format)"
        )

    @classmethod
    def official_evaluator(cls, C: Any) -> OfficialEvaluator:
        """CoSA's own protocol (`evaluate.evaluate_cosa`): resize to the crop size, the
        `cosa_eval_scales` + flip summed logits, absent classes filtered by the image-level
        labels, the dense CRF with `cosa_eval_crf`."""
        ev = cosa_official_evaluator(
            **_eval_kwargs(C, crf=bool(C.cosa_eval_crf)), cams=bool(C.cosa_eval_cams)
        )
        return OfficialEvaluator(ev.label, functools.partial(_official_on_raw_logits, ev.evaluate))

    def state_dict(self) -> dict[str, Any]:
        """The teacher's weights (a resume is exact only with them) and the kept best scores."""
        return {"teacher": self._need_teacher().state_dict(), "best": self.best.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the teacher (and the best scores; snapshots from before they were kept
        have none); a checkpoint without the teacher is a CheckpointError."""
        if "teacher" not in state or not set(state) <= {"teacher", "best"}:
            raise CheckpointError(
                f"method 'cosa': method_state has keys {sorted(state)}; expected ['best', "
                "'teacher'] (the EMA teacher's weights, the kept best scores)"
            )
        self.best = BestScores.from_state(state["best"]) if "best" in state else BestScores()
        try:
            self._need_teacher().load_state_dict(state["teacher"], strict=True)
        except RuntimeError as err:
            raise CheckpointError(
                f"method 'cosa': the checkpoint's teacher does not fit: {err}"
            ) from err
