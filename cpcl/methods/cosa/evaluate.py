"""CoSA's own evaluation protocol (`evaluation_engine.py:11-267`, `utils/seg_helper.py`, files of
the official repository cited as `file:line`), one image at a time.

Per validation image (the official val loader: `VOC12SegDataset` / `COCOSegDataset` with
``aug=False``, batch 1):

1. the image is normalised with `normalize_img` (0-255 mean (123.675, 116.28, 103.53), std
   (58.395, 57.12, 57.375), float64 rounded to float32: `transforms.val_normalize_lut`) and
   RESIZED to ``crop_size x crop_size`` (448; bilinear, align_corners=False), whatever its
   aspect ratio (`evaluation_engine.py:83`);
2. `multi_scale_camsegv3` (`seg_helper.py:399-450`) with the scales (1.0, 0.5, 1.5, 0.75, 1.25):
   per scale s the input is resized to ``(int(s*448), int(s*448))`` (bilinear,
   align_corners=False; s = 1.0 is not resized), the batch ``[x, flip(x)]`` goes through the
   network, the seg LOGITS (no softmax) are resized to 448x448 and the flipped half flipped
   back and ADDED to the other; the per-scale maps are summed (``torch.stack(...).sum(0)``);
3. the summed logits are resized to the label's size (bilinear, align_corners=False);
   `seg_validation` (`seg_helper.py:581-591`) sets the logits of the foreground classes
   ABSENT from the image's class vector to -1e5 (background always kept). The image-level
   labels of VALIDATION images are used here, as in the official code (the file
   ``cls_labels_onehot.npy`` holds the val ids); the reported "Seg_vd" mIoU is the argmax of
   these filtered logits. ``filter_by_image_labels=False`` scores the unfiltered argmax (the
   official "Seg_ps", computed but not printed); both are returned;
4. optional dense CRF (final evaluation only, `getcrf=True`, `evaluation_engine.py:219-225`):
   ``crf(image, probs)`` with image = `denormalize_img_` of the normalised image (float32
   ``x * std + mean`` cast to uint8, HxWx3) and probs = softmax of the filtered logits
   (C,H,W); prediction = argmax of its output. Official CRF (`seg_helper.py:961-996`,
   `crf_inference_infv2`): `OFFICIAL_CRF_PARAMS` = 1 iteration, Gaussian sxy 1 compat 1,
   bilateral sxy 121 srgb 5 compat 4, unary from softmax;
5. optional CAM scores (`get_camiou=True`, run on the VAL set during training, the number the
   official code uses to keep the best CAM model): the CAMs of the same forward, per scale
   `max(cam, flip back(cam_flip))` after resizing to 448, ReLU, summed over the scales, then per
   channel min-max normalised (``cam - min``, ``/ (max + 1e-5)``). The aux CAM keeps ONLY THE
   LAST SCALE (`cam_aux_list = [...]` is reassigned in the loop, an official quirk kept).
   Resized to the label (bilinear), multiplied by the class vector, argmax + 1, and pixels
   whose best class score is ``<= bkg_thre`` (0.5) are background (`cam_to_label`,
   `seg_helper.py:515-545`, without img_box). Scored like the segmentation. With
   ``--eval_threshold_filters`` (official default: none) each threshold t also turns the
   class-filtered CAMs into a pseudo mask with an uncertain band (`cam_masks`), scored
   without its uncertain pixels (`cam_thresholds`).

Scores (`utils/evaluation.py:19-42`, `cosa_scores`): one confusion matrix over the dataset
(label 255 not counted); IoU per class = diag / (row + col - diag); mIoU = nanmean over the
classes PRESENT IN THE GROUND TRUTH (a class only predicted does not count); pixel accuracy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import CpclError
from ...evaluate.dataset import lut_normalise
from ...metrics import confusion_matrix
from ...ops.dense_crf import DenseCRFParams
from ..base import OfficialEvaluator
from .cam_masks import cam_threshold_mask, pseudo_pair
from .image_labels import ImageLabels
from .pseudo import minmax_normalise
from .transforms import VAL_MEAN_255, VAL_STD_255, val_normalize_lut

__all__ = [
    "OFFICIAL_BKG_THRE",
    "OFFICIAL_CRF_PARAMS",
    "OFFICIAL_EVAL_SCALES",
    "CosaSegNet",
    "Crf",
    "cam_to_label",
    "cosa_official_evaluator",
    "cosa_scores",
    "denormalize",
    "evaluate_cosa",
    "multi_scale_camseg",
    "multi_scale_seg",
    "predict_image",
    "seg_validation",
]

OFFICIAL_EVAL_SCALES = (1.0, 0.5, 1.5, 0.75, 1.25)
OFFICIAL_BKG_THRE = 0.5
OFFICIAL_CRF_PARAMS = DenseCRFParams(
    iterations=1, pos_w=1.0, pos_xy_std=1.0, bi_w=4.0, bi_xy_std=121.0, bi_rgb_std=5.0
)

# (uint8 RGB image HxWx3, float32 class probabilities CxHxW) -> refined scores CxHxW.
Crf = Callable[[np.ndarray, np.ndarray], np.ndarray]


class CosaSegNet(nn.Module):
    """The segmenter of a CoSA network: ``x -> model(x, seg_only=True)`` (the seg head's raw
    logits at the feature resolution, 1/16 of the input for ViT-B/16; the evaluator resizes).

    Keyword calls pass through (``net(x, cam_only=False)`` gives the official 6 outputs), so
    `evaluate_cosa(..., cams=True)` can read the CAMs from the same object.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, **kwargs: Any) -> Any:
        """Seg logits, or the network's own output for explicit keywords."""
        if kwargs:
            return self.model(x, **kwargs)
        return self.model(x, seg_only=True)


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)


def _scaled(imgs: Tensor, s: float) -> Tensor:
    """The input at scale `s` (`seg_helper.py:419-422`; 1.0 is not resized)."""
    h, w = imgs.shape[-2:]
    return imgs if s == 1.0 else _resize(imgs, (int(s * h), int(s * w)))


def _check_scales(scales: Sequence[float]) -> None:
    if 1.0 not in scales:  # the official assertion (`seg_helper.py:415`)
        raise CpclError(f"CoSA eval scales {tuple(scales)}: scale 1.0 must be among them")


def _flip_sum(seg: Tensor, b: int, size: Sequence[int]) -> Tensor:
    seg = _resize(seg, size)
    return torch.sum(torch.stack([seg[:b, ...], seg[b:, ...].flip(-1)], dim=0), dim=0)


@torch.no_grad()
def multi_scale_seg(
    net: Callable[[Tensor], Tensor], imgs: Tensor, scales: Sequence[float]
) -> Tensor:
    """The seg part of `multi_scale_camsegv3`: summed flip + multi-scale logits (B,C,H,W) of
    normalised `imgs` (B,3,H,W) through the segmenter `net` (``x -> seg logits``)."""
    _check_scales(scales)
    b, _, h, w = imgs.shape
    seg_list = []
    for s in scales:
        x = _scaled(imgs, s)
        seg_list.append(_flip_sum(net(torch.cat([x, x.flip(-1)], dim=0)), b, (h, w)))
    return torch.sum(torch.stack(seg_list, dim=0), dim=0)


@torch.no_grad()
def multi_scale_camseg(
    model: Callable[..., Any], imgs: Tensor, scales: Sequence[float]
) -> tuple[Tensor, Tensor, Tensor]:
    """`multi_scale_camsegv3` (`seg_helper.py:399-450`): (cam, cam_aux, seg) of normalised
    `imgs` through the full CoSA forward ``model(x, cam_only=False)`` (6 outputs)."""
    _check_scales(scales)
    b, _, h, w = imgs.shape
    cam_list, cam_aux_list, seg_list = [], [], []
    for s in scales:
        x = _scaled(imgs, s)
        _, _, _, seg, cam, cam_aux = model(torch.cat([x, x.flip(-1)], dim=0), cam_only=False)
        cam = _resize(cam, (h, w))
        cam_list.append(F.relu(torch.max(cam[:b, ...], cam[b:, ...].flip(-1))))
        cam_aux = _resize(cam_aux, (h, w))
        # Official quirk: the list is reassigned, so only the last scale's aux CAM remains.
        cam_aux_list = [F.relu(torch.max(cam_aux[:b, ...], cam_aux[b:, ...].flip(-1)))]
        seg_list.append(_flip_sum(seg, b, (h, w)))
    cam = minmax_normalise(torch.sum(torch.stack(cam_list, dim=0), dim=0))
    cam_aux = minmax_normalise(torch.sum(torch.stack(cam_aux_list, dim=0), dim=0))
    return cam, cam_aux, torch.sum(torch.stack(seg_list, dim=0), dim=0)


def seg_validation(seg: Tensor, cls_label: Tensor) -> Tensor:
    """`seg_validation`: logits (B,C,H,W) with the absent foreground classes of `cls_label`
    (B,C-1) set to -1e5; the background column is always kept."""
    b = seg.shape[0]
    bk = torch.cat([torch.ones(b, 1, dtype=cls_label.dtype, device=cls_label.device), cls_label], 1)
    out = seg.clone()
    out[bk == 0] = -1e5
    return out


def cam_to_label(cam: Tensor, cls_label: Tensor, bkg_thre: float) -> Tensor:
    """`cam_to_label` without img_box: argmax + 1 of the class-filtered CAMs (B,C-1,H,W), 0
    where the best score is ``<= bkg_thre``; (B,H,W) int64."""
    valid = cls_label[:, :, None, None] * cam
    value, label = valid.max(dim=1, keepdim=False)
    label = label + 1
    label[value <= bkg_thre] = 0
    return label


def denormalize(img: Tensor) -> Tensor:
    """`denormalize_img_` (`torch_helper.py:354-361`): uint8 (B,3,H,W) from the val
    normalisation, float32 ``x * std + mean`` truncated to uint8."""
    out = torch.zeros_like(img)
    for c in range(3):
        out[:, c] = img[:, c] * VAL_STD_255[c] + VAL_MEAN_255[c]
    return out.type(torch.uint8)


def cosa_scores(hist: Tensor | np.ndarray) -> dict[str, Any]:
    """`utils/evaluation.py` `scores` of a confusion matrix (rows = ground truth): ``iou``
    (per class), ``miou`` (nanmean over the classes present in the ground truth),
    ``pixel_acc``, ``mean_class_acc``; plus ``hist`` (int64 CPU tensor)."""
    raw = hist.detach().cpu() if isinstance(hist, Tensor) else torch.as_tensor(hist)
    h = raw.numpy().astype(np.float64)
    diag = np.diag(h)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = diag / (h.sum(axis=1) + h.sum(axis=0) - diag)
        class_acc = diag / h.sum(axis=1)
        pixel_acc = diag.sum() / h.sum() if h.sum() else math.nan
    present = h.sum(axis=1) > 0
    miou = float(np.nanmean(iou[present])) if np.any(present & ~np.isnan(iou)) else math.nan
    finite_acc = class_acc[~np.isnan(class_acc)]
    return {
        "iou": iou,
        "miou": miou,
        "pixel_acc": float(pixel_acc),
        "mean_class_acc": float(finite_acc.mean()) if finite_acc.size else math.nan,
        "hist": raw.to(torch.int64),
    }


def _progress(n: int, show: bool) -> Any:
    if not show:
        return range(n)
    import sys

    from tqdm import tqdm

    return tqdm(range(n), desc="cosa eval", dynamic_ncols=True, file=sys.stderr)


@torch.no_grad()
def predict_image(
    net: Callable[..., Any],
    img: Tensor,
    cls_label: Tensor,
    *,
    crop_size: int = 448,
    scales: Sequence[float] = OFFICIAL_EVAL_SCALES,
    crf: Crf | None = None,
    cams: bool = False,
    bkg_thre: float = OFFICIAL_BKG_THRE,
    cam_thresholds: Sequence[float] = (),
) -> dict[str, Tensor]:
    """The official predictions (H,W) int64 on the CPU of one normalised image `img` (1,3,H,W)
    with its class vector `cls_label` (1,C-1): ``seg_vd`` (filtered logits), ``seg_ps``
    (unfiltered), and with `crf` ``crf``, with `cams` ``cam`` and ``cam_aux``, and per threshold
    t of `cam_thresholds` (with `cams`) the pseudo masks ``cam_t<t>`` and ``cam_aux_t<t>``
    (`cam_masks.cam_threshold_mask`, 255 = uncertain)."""
    size = img.shape[-2:]
    inputs = _resize(img, (crop_size, crop_size))
    if cams:
        cam, cam_aux, seg = multi_scale_camseg(net, inputs, scales)
    else:
        seg = multi_scale_seg(net, inputs, scales)
    seg = _resize(seg, size)
    valid = seg_validation(seg, cls_label)
    out = {"seg_vd": valid.argmax(dim=1)[0], "seg_ps": seg.argmax(dim=1)[0]}
    if crf is not None:
        probs = valid.softmax(dim=1)[0].cpu().numpy()
        image = denormalize(img).permute(0, 2, 3, 1).cpu().numpy()[0]
        out["crf"] = torch.from_numpy(np.argmax(np.asarray(crf(image, probs)), axis=0))
    if cams:
        for key, c in (("cam", cam), ("cam_aux", cam_aux)):
            resized = _resize(c, size)
            out[key] = cam_to_label(resized, cls_label, bkg_thre)[0]
            valid = cls_label[:, :, None, None] * resized  # cam_validation
            for t in cam_thresholds:
                out[f"{key}_t{t:g}"] = cam_threshold_mask(valid, cls_label, t)
    return {k: v.long().cpu() for k, v in out.items()}


@torch.no_grad()
def evaluate_cosa(
    net: Callable[..., Any],
    dataset: Any,
    *,
    num_classes: int,
    image_labels: ImageLabels | None = None,
    crop_size: int = 448,
    scales: Sequence[float] = OFFICIAL_EVAL_SCALES,
    filter_by_image_labels: bool = True,
    crf: Crf | None = None,
    cams: bool = False,
    bkg_thre: float = OFFICIAL_BKG_THRE,
    cam_thresholds: Sequence[float] = (),
    device: torch.device | str = "cpu",
    exports: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """mIoU of `net` on `dataset` (``load(i) -> (uint8 RGB, label, name)``) with CoSA's protocol
    (module docstring). `net` (eval mode, on `device`): ``x -> seg logits`` of any spatial size
    (`CosaSegNet` for a CoSA network); with ``cams=True`` it must also answer
    ``net(x, cam_only=False)`` with the official 6 outputs.

    image_labels: the class vectors of step 3 (the official npy, or None: derived from each
    image's mask). Returns `cosa_scores` of the reported prediction with ``num_images``: the
    CRF's when `crf` is given (the official final "Seg_crf"), else the filtered logits' ("Seg_vd")
    or, with ``filter_by_image_labels=False``, the unfiltered ones' ("Seg_ps"). Also each
    prediction's own `cosa_scores` under ``seg_vd``, ``seg_ps`` and, when asked, ``crf``,
    ``cam``, ``cam_aux`` and the thresholded pseudo masks ``cam_t<t>``, ``cam_aux_t<t>`` (scored
    without their uncertain pixels, `cam_masks.pseudo_pair`). `exports` (`cpcl.evaluate.Exports`) writes the reported prediction.
    """
    labels = image_labels if image_labels is not None else ImageLabels.from_masks(num_classes)
    if labels.num_classes != num_classes:
        raise CpclError(
            f"CoSA eval: image-level labels for {labels.num_classes} classes, num_classes = "
            f"{num_classes}"
        )
    _check_scales(scales)
    device = torch.device(device)
    lut = torch.from_numpy(val_normalize_lut()).to(device)
    main = "crf" if crf is not None else "seg_vd" if filter_by_image_labels else "seg_ps"
    keys = ["seg_vd", "seg_ps"] + (["crf"] if crf is not None else [])
    if cam_thresholds and not cams:
        raise CpclError("CoSA eval: cam_thresholds score CAM pseudo masks; set cams=True")
    pseudo = [f"{k}_t{t:g}" for k in ("cam", "cam_aux") for t in cam_thresholds]
    keys += ["cam", "cam_aux", *pseudo] if cams else []
    hists = {k: torch.zeros(num_classes, num_classes, dtype=torch.int64) for k in keys}
    for i in _progress(len(dataset), progress):
        img, label, name = dataset.load(i)
        if label is None:
            raise CpclError(f"CoSA eval: image {name!r} has no label to score against")
        cls_label = torch.from_numpy(labels.vector(name, label))[None].to(device)
        preds = predict_image(
            net,
            lut_normalise(img, lut),
            cls_label,
            crop_size=crop_size,
            scales=scales,
            crf=crf,
            cams=cams,
            bkg_thre=bkg_thre,
            cam_thresholds=cam_thresholds,
        )
        gt = torch.from_numpy(np.array(label, dtype=np.int64))  # a copy: labels may be read-only
        for k, pred in preds.items():
            pair = pseudo_pair(pred, gt) if k in pseudo else (pred, gt)
            hists[k] += confusion_matrix(*pair, num_classes)
        if exports is not None:
            exports.write(preds[main].to(torch.uint8).numpy(), name, img, label)
    out = cosa_scores(hists[main])
    out["num_images"] = len(dataset)
    for k in keys:
        out[k] = cosa_scores(hists[k])
    return out


def cosa_official_evaluator(
    *,
    num_classes: int,
    image_labels: ImageLabels | None = None,
    crop_size: int = 448,
    scales: Sequence[float] = OFFICIAL_EVAL_SCALES,
    crf: Crf | None = None,
    cams: bool = False,
    cam_thresholds: Sequence[float] = (),
) -> Any:
    """The `cpcl.methods.base.OfficialEvaluator` of `evaluate_cosa` with these settings (what
    ``--eval_protocol=official`` runs); its label names the protocol for tables and logs."""
    _check_scales(scales)
    source = "derived from the masks" if image_labels is None else image_labels.source
    label = (
        f"cosa official: resize to {crop_size}x{crop_size}, scales {tuple(scales)} + flip "
        f"(summed logits), absent classes filtered by the image-level labels ({source})"
        + (", dense CRF" if crf is not None else "")
    )
    kwargs = {
        "num_classes": num_classes,
        "image_labels": image_labels,
        "crop_size": crop_size,
        "scales": tuple(scales),
        "crf": crf,
        "cams": cams,
        "cam_thresholds": tuple(cam_thresholds),
    }
    return OfficialEvaluator(label, functools.partial(evaluate_cosa, **kwargs))
