"""Segmentation metrics with the official CPCL / TorchSemiSeg semantics.

The confusion matrix is accumulated over the whole dataset and scored once (the official
evaluator adds per-image histograms before `compute_score`), so mIoU is a dataset-level
IoU, never a mean of per-image IoUs.

Official facts this module reproduces (`furnace/seg_opr/metric.py`):

* only pixels whose ground truth lies in ``[0, C)`` are counted (255 = ignore drops out);
* ``hist[gt, pred]``: rows are ground truth, columns are predictions;
* IoU per class is ``diag / (rowsum + colsum - diag)``; a class absent from both gt and
  prediction gives 0/0 = NaN and is left out of the ``nanmean``;
* the value the official code calls ``mean_pixel_acc`` is ``correct / labeled``, i.e. the
  plain pixel accuracy (not a mean of per-class accuracies).

Predictions are not filtered by the official code. A prediction outside ``[0, C)`` at a
counted pixel is silently binned as ``C*gt + pred`` there, which lands in a neighbouring
row (``pred = C`` at ``gt = g`` is counted as ``hist[g+1, 0]``), or breaks the reshape when it
overflows the last row, or makes ``np.bincount`` fail when negative. An argmax can never
produce such values, so `confusion_matrix` treats them as a caller bug and raises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def _as_tensor(x: torch.Tensor | np.ndarray, device: torch.device | None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        # torch.from_numpy warns on read-only arrays (e.g. decoded images); copy those.
        x = torch.from_numpy(np.ascontiguousarray(x) if x.flags.writeable else x.copy())
    if device is not None:
        x = x.to(device, non_blocking=True)
    return x


def confusion_matrix(
    pred: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray, num_classes: int
) -> torch.Tensor:
    """Return the (C, C) int64 confusion matrix ``hist[gt, pred]`` on `pred`'s device.

    pred, gt: integer label maps of the same shape (tensors or numpy arrays; gt is moved to
    pred's device). Only pixels with ``0 <= gt < num_classes`` are counted. Raises ValueError
    when shapes differ or a counted pixel has a prediction outside ``[0, num_classes)``
    (see the module docstring for what the official code would do instead).
    """
    pred_t = _as_tensor(pred, None)
    gt_t = _as_tensor(gt, pred_t.device)
    if pred_t.shape != gt_t.shape:
        raise ValueError(
            f"confusion_matrix: pred shape {tuple(pred_t.shape)} != gt shape {tuple(gt_t.shape)}"
        )
    if pred_t.is_floating_point() or gt_t.is_floating_point():
        raise ValueError("confusion_matrix: pred and gt must be integer label maps")
    n = int(num_classes)
    gt_l = gt_t.reshape(-1).long()
    pred_l = pred_t.reshape(-1).long()
    keep = (gt_l >= 0) & (gt_l < n)
    gt_k = gt_l[keep]
    pred_k = pred_l[keep]
    if pred_k.numel() and bool(((pred_k < 0) | (pred_k >= n)).any()):
        bad = pred_k[(pred_k < 0) | (pred_k >= n)][0].item()
        raise ValueError(
            f"confusion_matrix: prediction value {bad} outside [0, {n}) at a labelled pixel"
        )
    return torch.bincount(gt_k * n + pred_k, minlength=n * n).reshape(n, n)


def all_reduce_hist(hist: torch.Tensor) -> torch.Tensor:
    """Sum `hist` over all ranks when torch.distributed is initialised; else return it as is.

    The input is not modified; the result lives on the same device. (With NCCL the tensor
    must be on the rank's GPU, with gloo on the CPU: callers keep the hist on the eval device.)
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return hist
    out = hist.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def scores(hist: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """Scores of a confusion matrix (rows = gt), with the official names alongside.

    Returns a dict with
    ``iou`` (per-class float64 numpy array, NaN for classes absent from gt and pred),
    ``miou`` (nanmean of iou), ``pixel_acc`` (correct / labeled),
    ``mean_class_acc`` (nanmean over classes present in gt of diag / rowsum),
    and the official `compute_score` outputs ``mean_IU`` (= miou), ``mean_IU_no_back``
    (nanmean of iou[1:]), ``mean_pixel_acc`` (= pixel_acc), plus ``labeled`` and ``correct``.
    """
    raw = hist.detach().cpu().numpy() if isinstance(hist, torch.Tensor) else np.asarray(hist)
    h = raw.astype(np.float64)
    diag = np.diag(h)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = diag / (h.sum(1) + h.sum(0) - diag)
        class_acc = diag / h.sum(1)
    # Counts from the exact matrix (a float hist, as the official np.zeros one, is rounded).
    labeled = int(np.rint(raw.sum()))
    correct = int(np.rint(np.trace(raw)))
    miou = _nanmean(iou)
    pixel_acc = correct / labeled if labeled else math.nan
    return {
        "iou": iou,
        "miou": miou,
        "pixel_acc": pixel_acc,
        "mean_class_acc": _nanmean(class_acc),
        "mean_IU": miou,
        "mean_IU_no_back": _nanmean(iou[1:]),
        "mean_pixel_acc": pixel_acc,
        "labeled": labeled,
        "correct": correct,
    }


def scores_all_classes(hist: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """`scores(hist)` with the mIoU of U2PL and UniMatch: ``iou`` = intersection / (union +
    1e-10) for EVERY class and ``miou`` its plain mean.

    Their evaluators accumulate per-class intersection and union counts over the dataset and
    reduce ``iou_class = intersection_meter.sum / (union_meter.sum + 1e-10); np.mean(iou_class)``
    (U2PL `train_semi.py:646-647`, `eval.py:306-309`; UniMatch `evaluate`): a class absent from
    both ground truth and prediction counts as IoU 0 (CPCL: NaN, left out). The counts are the
    confusion matrix's: intersection = diag, union = rowsum + colsum - diag (their
    `intersectionAndUnion` drops pixels labelled 255 from both). The other keys, ``mean_IU``
    included, keep `scores`' CPCL meaning.
    """
    out = scores(hist)
    raw = hist.detach().cpu().numpy() if isinstance(hist, torch.Tensor) else np.asarray(hist)
    h = raw.astype(np.float64)
    inter = np.diag(h)
    iou = inter / (h.sum(1) + h.sum(0) - inter + 1e-10)
    out["iou"] = iou
    out["miou"] = float(np.mean(iou)) if iou.size else math.nan
    return out


def _nanmean(x: np.ndarray) -> float:
    # np.nanmean warns on all-NaN input; an empty evaluation should give NaN quietly.
    finite = x[~np.isnan(x)]
    return float(finite.mean()) if finite.size else math.nan


def format_iou_table(
    iou: Sequence[float] | np.ndarray,
    pixel_acc: float,
    class_names: Sequence[str] | None = None,
    show_no_back: bool = True,
) -> str:
    """The per-class IoU table in the official printout style.

    One line per class, ``"<i+1> <name>"`` left-aligned to 8 characters, a tab and the IoU in
    percent with 3 decimals; then a dashed rule and the summary line with mIoU, mIoU without
    class 0 (when `show_no_back`) and pixel accuracy, in percent.
    """
    iou = np.asarray(iou, dtype=np.float64)
    rows = []
    for i, value in enumerate(iou):
        label = f"Class {i + 1}:" if class_names is None else f"{i + 1} {class_names[i]}"
        rows.append(f"{label:<8}\t{value * 100:.3f}%")
    rows.append("-" * 28)
    miou = _nanmean(iou) * 100
    acc = pixel_acc * 100
    if show_no_back:
        no_back = _nanmean(iou[1:]) * 100
        rows.append(f"mIou: {miou}%     mIoU(no_back): {no_back}%      mACC: {acc}%")
    else:
        rows.append(f"mIoU: {miou}%     mACC: {acc}%")
    return "\n".join(rows)
