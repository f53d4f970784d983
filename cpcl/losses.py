"""Losses: the generic supervised criteria (cross-entropy, OHEM).

The CPCL and CPS pseudo-supervision live with their methods (`cpcl.methods.cpcl`,
`cpcl.methods.cps`).

Everything here stays on the logits' device and never copies to the host (no `.item()`,
no NumPy, no sklearn), so a training iteration does not stall on a device sync.
The semantics follow the official code (`exp_voc/train.py`, `furnace/seg_opr/loss_opr.py`);
see the golden README for the details that are easy to get wrong.
"""

from __future__ import annotations

from typing import Any

import torch
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
