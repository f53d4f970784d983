"""Losses: the supervised criteria and the CPCL / CPS pseudo-supervision.

Everything here stays on the logits' device and never copies to the host (no `.item()`,
no NumPy, no sklearn), so a training iteration does not stall on a device sync.
The semantics follow the official code (`exp_voc/train.py`, `furnace/seg_opr/loss_opr.py`);
see the golden README for the details that are easy to get wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import CpclError

# Per-class weights of the 19 Cityscapes train classes used by the official OHEM loss
# (`use_weight=True` in furnace/seg_opr/loss_opr.py).
CITYSCAPES_CLASS_WEIGHTS: tuple[float, ...] = (
    0.8373,
    0.918,
    0.866,
    1.0345,
    1.0166,
    0.9969,
    0.9754,
    1.0489,
    0.8786,
    1.0023,
    0.9539,
    0.9843,
    1.1116,
    0.9037,
    1.0865,
    1.0955,
    1.0865,
    1.1529,
    1.0507,
)

_REDUCTIONS = ("mean", "sum", "none")


def at_least_float32(t: Tensor) -> Tensor:
    """`t` in float32 if it is a lower-precision float (autocast output), else unchanged.

    The loss maths runs in float32 under autocast, but float64 inputs stay float64 so a
    float64 model reproduces the official float64 references.
    """
    return t.to(torch.promote_types(t.dtype, torch.float32))


class ProbOhemCrossEntropy2d(nn.Module):
    """Online hard-example mining cross-entropy on the target-class probability.

    Official semantics (furnace `ProbOhemCrossEntropy2d`):

    * if `min_kept > num_valid` OHEM is skipped and plain (weighted) CE runs over all valid
      pixels;
    * otherwise the threshold is `thresh`, replaced by the k-th smallest target probability
      (`k = min(N, min_kept)`, ignored pixels count as probability 1) only when that value is
      strictly greater; pixels with `prob <= threshold` are kept;
    * `min_kept == 0` disables the mining entirely (the official code only thresholds inside
      `if min_kept > 0`).

    The decision is made with tensor ops (`torch.where`), so no host sync is needed.

    Args:
        ignore_label: target value that is ignored.
        reduction: "mean" (official), "sum" or "none", passed to the cross-entropy.
        thresh: probability threshold.
        min_kept: minimum number of pixels kept per call (the whole batch).
        down_ratio: accepted for signature compatibility; the official code ignores it, and only
            1 is allowed here.
        use_weight: use the 19 official Cityscapes class weights.
    """

    def __init__(
        self,
        ignore_label: int = 255,
        reduction: str = "mean",
        thresh: float = 0.6,
        min_kept: int = 256,
        down_ratio: int = 1,
        use_weight: bool = False,
    ) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise CpclError(
                f"ProbOhemCrossEntropy2d reduction={reduction!r}: expected one of {_REDUCTIONS}"
            )
        if down_ratio != 1:
            raise CpclError(
                f"ProbOhemCrossEntropy2d down_ratio={down_ratio!r}: only 1 is supported"
            )
        if int(min_kept) < 0:
            raise CpclError(f"ProbOhemCrossEntropy2d min_kept={min_kept!r}: expected >= 0")
        self.ignore_label = int(ignore_label)
        self.reduction = reduction
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)
        self.down_ratio = down_ratio
        weight = torch.tensor(CITYSCAPES_CLASS_WEIGHTS, dtype=torch.float32) if use_weight else None
        # Non-persistent: the weights are constants, not state; `.to(device)` still moves them.
        self.register_buffer("weight", weight, persistent=False)

    def extra_repr(self) -> str:
        return (
            f"ignore_label={self.ignore_label}, thresh={self.thresh}, min_kept={self.min_kept}, "
            f"use_weight={self.weight is not None}"
        )

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Loss of logits `pred` (B,C,H,W) against integer labels `target` (B,H,W)."""
        if pred.dim() != 4 or target.shape != (pred.shape[0], *pred.shape[2:]):
            raise CpclError(
                f"ProbOhemCrossEntropy2d: pred {tuple(pred.shape)} and target "
                f"{tuple(target.shape)} do not fit; expected (B,C,H,W) and (B,H,W)"
            )
        if self.weight is not None and pred.shape[1] != self.weight.numel():
            raise CpclError(
                f"ProbOhemCrossEntropy2d(use_weight=True) has {self.weight.numel()} class "
                f"weights but pred has {pred.shape[1]} classes"
            )
        target = target.long()
        if self.min_kept > 0:
            target = self._mine(pred, target)
        pred = at_least_float32(pred)
        # The float32 official constants, cast to the loss dtype (float64 stays float64).
        weight = None if self.weight is None else self.weight.to(pred.device, pred.dtype)
        return F.cross_entropy(
            pred,
            target,
            weight=weight,
            ignore_index=self.ignore_label,
            reduction=self.reduction,
        )

    @torch.no_grad()
    def _mine(self, pred: Tensor, target: Tensor) -> Tensor:
        """Return `target` with the easy pixels set to `ignore_label` (all on device)."""
        flat = target.reshape(-1)
        valid = flat != self.ignore_label
        num_valid = valid.sum()
        # The mask only selects pixels, so no gradient has to flow through the softmax.
        prob = F.softmax(at_least_float32(pred.detach()), dim=1)
        safe = torch.where(valid, flat, torch.zeros_like(flat))
        target_prob = prob.gather(1, safe.view(target.shape).unsqueeze(1)).reshape(-1)
        target_prob = torch.where(valid, target_prob, torch.ones_like(target_prob))
        k = min(target_prob.numel(), self.min_kept)
        kth = torch.kthvalue(target_prob, k).values
        thresh = torch.full_like(kth, self.thresh)
        threshold = torch.where(kth > thresh, kth, thresh)
        kept = target_prob <= threshold
        # Mining only applies when enough valid pixels exist (and at least one).
        apply = (num_valid >= self.min_kept) & (num_valid > 0)
        keep = valid & (kept | ~apply)
        out = torch.where(keep, flat, torch.full_like(flat, self.ignore_label))
        return out.view(target.shape)


def build_sup_criterion(C: Any, per_rank_batch: int) -> nn.Module:
    """The supervised criterion named by `C.sup_loss` ("ce" or "ohem").

    "ohem" uses `min_kept = C.ohem_min_kept_per_image * per_rank_batch` (official:
    50000 * batch_size, counted over the batch one process sees) and `thresh = C.ohem_thresh`,
    with the Cityscapes class weights.
    """
    kind = C.get("sup_loss", "ce")
    ignore = int(C.get("ignore_index", 255))
    if kind == "ce":
        return nn.CrossEntropyLoss(ignore_index=ignore)
    if kind == "ohem":
        if not isinstance(per_rank_batch, int) or per_rank_batch < 1:
            raise CpclError(f"per_rank_batch={per_rank_batch!r}: expected a positive integer")
        return ProbOhemCrossEntropy2d(
            ignore_label=ignore,
            thresh=float(C.get("ohem_thresh", 0.7)),
            min_kept=int(C.get("ohem_min_kept_per_image", 50000)) * per_rank_batch,
            use_weight=True,
        )
    raise CpclError(f"C.sup_loss = {kind!r}: expected one of ce, ohem")


def _check_logits(names: Sequence[str], tensors: Sequence[Tensor], num_classes: int | None) -> None:
    ref = tensors[0]
    for name, t in zip(names, tensors, strict=True):
        if t.dim() != 4 or t.shape != ref.shape:
            raise CpclError(
                f"{name} has shape {tuple(t.shape)}; expected (B,C,H,W) equal to "
                f"{names[0]} {tuple(ref.shape)}"
            )
    if num_classes is not None and ref.shape[1] != num_classes:
        raise CpclError(f"logits have {ref.shape[1]} channels but num_classes={num_classes}")


def _dist_active() -> bool:
    return dist.is_available() and dist.is_initialized()


def pseudo_label_confusion(label_1: Tensor, label_2: Tensor, num_classes: int) -> Tensor:
    """Confusion matrix `[label_1, label_2]` (int64, CxC) with one of each class appended.

    Counts are all-reduced over the process group when one is initialised, and the identity
    (the appended class ids) is added once after the reduction, so the result equals the
    official matrix of the concatenated global batch.
    """
    idx = label_1.reshape(-1) * num_classes + label_2.reshape(-1)
    # index_add_ rather than bincount: CUDA bincount reads max() back to the host to size its
    # output, a sync on every iteration; the size is known here.
    counts = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=idx.device)
    counts.index_add_(0, idx, torch.ones_like(idx))
    counts = counts.view(num_classes, num_classes)
    if _dist_active():
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return counts + torch.eye(num_classes, dtype=counts.dtype, device=counts.device)


def disagreement_weight(confusion: Tensor) -> Tensor:
    """Per-class disagreement weight `w` (float64) from an appended confusion matrix.

    `w_c = (colsum_c - diag_c)/colsum_c + (rowsum_c - diag_c)/rowsum_c`, normalised by its sum
    (+1e-6). The appended identity keeps every row/column sum >= 1, so there is no 0/0.
    """
    conf = confusion.double()
    diag = conf.diagonal()
    col = conf.sum(0)
    row = conf.sum(1)
    w = (col - diag) / col + (row - diag) / row
    return w / (w.sum() + 1e-6)


def cpcl_pseudo_supervision(
    t1: Tensor,
    t2: Tensor,
    s1: Tensor,
    s2: Tensor,
    *,
    num_classes: int,
    ignore_index: int = 255,
) -> dict[str, Tensor]:
    """CPCL conservative (intersection) and progressive (union) pseudo supervision.

    Args:
        t1, t2: the two teachers' CutMix-mixed logits (B,C,H,W); treated as constants.
        s1, s2: the students' logits on the mixed image (B,C,H,W); student 1 learns from the
            intersection labels, student 2 from the union labels.
        num_classes: C.
        ignore_index: label value for pixels without supervision (the inter label's disagreement).

    Returns a dict of tensors: `loss_inter`, `loss_union` (0-dim, float32, or float64 for
    float64 inputs; mean over ALL pixels including ignored ones, as the official code does), `overlap` (0-dim float64, appended
    samples included), `label_inter`, `label_union`, `label_1`, `label_2` (B,H,W int64),
    `conf_1`, `conf_2` (B,H,W max softmax probability), `class_weight` (C, float64) and
    `confusion` (C,C int64).
    """
    _check_logits(("t1", "t2", "s1", "s2"), (t1, t2, s1, s2), num_classes)
    with torch.no_grad():
        t1 = at_least_float32(t1.detach())
        t2 = at_least_float32(t2.detach())
        # Labels from the logits (as the official code), confidences from the softmax.
        label_1 = t1.argmax(dim=1)
        label_2 = t2.argmax(dim=1)
        conf_1 = F.softmax(t1, dim=1).amax(dim=1)
        conf_2 = F.softmax(t2, dim=1).amax(dim=1)

        confusion = pseudo_label_confusion(label_1, label_2, num_classes)
        w = disagreement_weight(confusion)
        overlap = confusion.diagonal().sum().double() / confusion.sum().double()

        agree = label_1 == label_2
        # Strict '>' so ties go to teacher 2, as in the official code.
        take_1 = w[label_1] > w[label_2]
        label_inter = torch.where(agree, label_1, torch.full_like(label_1, ignore_index))
        label_union = torch.where(agree | take_1, label_1, label_2)
        mean_conf = (conf_1 + conf_2) / 2
        weight_inter = mean_conf
        weight_union = torch.where(agree, mean_conf, torch.where(take_1, conf_1, conf_2))

    ce_inter = F.cross_entropy(
        at_least_float32(s1), label_inter, ignore_index=ignore_index, reduction="none"
    )
    ce_union = F.cross_entropy(
        at_least_float32(s2), label_union, ignore_index=ignore_index, reduction="none"
    )
    return {
        "loss_inter": (ce_inter * weight_inter).mean(),
        "loss_union": (ce_union * weight_union).mean(),
        "overlap": overlap,
        "label_inter": label_inter,
        "label_union": label_union,
        "label_1": label_1,
        "label_2": label_2,
        "conf_1": conf_1,
        "conf_2": conf_2,
        "class_weight": w,
        "confusion": confusion,
    }


def cps_loss(t1: Tensor, t2: Tensor, s1: Tensor, s2: Tensor, *, ignore_index: int = 255) -> Tensor:
    """CPS cross pseudo supervision: argmax of each mixed teacher supervises the OTHER student.

    `CE(s1, argmax t2) + CE(s2, argmax t1)`, plain mean cross-entropy (unweighted); the caller
    multiplies by the unsupervised weight.
    """
    _check_logits(("t1", "t2", "s1", "s2"), (t1, t2, s1, s2), None)
    with torch.no_grad():
        label_1 = t1.detach().argmax(dim=1)
        label_2 = t2.detach().argmax(dim=1)
    return F.cross_entropy(
        at_least_float32(s1), label_2, ignore_index=ignore_index
    ) + F.cross_entropy(at_least_float32(s2), label_1, ignore_index=ignore_index)
