"""CPCL (Conservative-Progressive Collaborative Learning, official `exp_voc/train.py`).

Two branches; on the CutMix-mixed unlabeled image, student 1 learns from the INTERSECTION of
the two teachers' pseudo labels (conservative), student 2 from their UNION resolved by the
per-class disagreement weight (progressive), both weighted by the teachers' confidence.
Loss: `sup_1 + sup_2 + unsup_weight * (loss_inter + loss_union)`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ...losses import at_least_float32
from ..base import StepInfo
from ..two_branch import TwoBranchMethod, check_logits


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

    Returns a dict of tensors: `loss_inter`, `loss_union` (0-dim, float32, or float64 for float64 inputs; mean over ALL pixels
    including ignored ones, as the official code does), `overlap` (0-dim float64, appended
    samples included), `label_inter`, `label_union`, `label_1`, `label_2` (B,H,W int64),
    `conf_1`, `conf_2` (B,H,W max softmax probability), `class_weight` (C, float64) and
    `confusion` (C,C int64).
    """
    check_logits(("t1", "t2", "s1", "s2"), (t1, t2, s1, s2), num_classes)
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


class CPCL(TwoBranchMethod):
    """The official CPCL method (the dataset presets hold its official settings)."""

    name = "cpcl"

    def forward_loss(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        step: StepInfo,
        aux: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The 8 official forwards, the supervised and the CPCL losses."""
        loss_sup_1, loss_sup_2 = self.supervised(model, batch, aux)
        t1, t2, s1, s2 = self.mixed_forwards(model, batch, aux)
        out = cpcl_pseudo_supervision(t1, t2, s1, s2, num_classes=t1.shape[1])
        unsup = self.unsup_weight * (out["loss_inter"] + out["loss_union"])
        if aux is not None:
            aux.update({k: v for k, v in out.items() if not k.startswith("loss")})
        logs = {
            "loss_sup_1": loss_sup_1,
            "loss_sup_2": loss_sup_2,
            "loss_unsup": unsup,
            "loss_unsup_inter": out["loss_inter"],
            "loss_unsup_union": out["loss_union"],
            "overlap": out["overlap"],
        }
        return loss_sup_1 + loss_sup_2 + unsup, logs


METHOD = CPCL
