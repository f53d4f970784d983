"""CPS (cross pseudo supervision, Chen et al. 2021) on the CPCL two-branch network.

The argmax of each CutMix-mixed teacher supervises the OTHER branch's student on the mixed
image. Loss: `sup_1 + sup_2 + unsup_weight * loss_cps`. It runs with the dataset preset's
CPCL settings (the CPCL paper's baseline comparison), so `defaults` is empty.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...losses import at_least_float32
from ..base import StepInfo
from ..two_branch import TwoBranchMethod, check_logits


def cps_loss(t1: Tensor, t2: Tensor, s1: Tensor, s2: Tensor, *, ignore_index: int = 255) -> Tensor:
    """CPS cross pseudo supervision: argmax of each mixed teacher supervises the OTHER student.

    `CE(s1, argmax t2) + CE(s2, argmax t1)`, plain mean cross-entropy (unweighted); the caller
    multiplies by the unsupervised weight.
    """
    check_logits(("t1", "t2", "s1", "s2"), (t1, t2, s1, s2), None)
    with torch.no_grad():
        label_1 = t1.detach().argmax(dim=1)
        label_2 = t2.detach().argmax(dim=1)
    return F.cross_entropy(
        at_least_float32(s1), label_2, ignore_index=ignore_index
    ) + F.cross_entropy(at_least_float32(s2), label_1, ignore_index=ignore_index)


class CPS(TwoBranchMethod):
    """Cross pseudo supervision between the two branches."""

    name = "cps"

    def forward_loss(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        step: StepInfo,
        aux: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The 8 forwards (as CPCL), the supervised and the CPS losses."""
        loss_sup_1, loss_sup_2 = self.supervised(model, batch, aux)
        t1, t2, s1, s2 = self.mixed_forwards(model, batch, aux)
        loss_cps = cps_loss(t1, t2, s1, s2)
        with torch.no_grad():
            # The plain fraction of pixels where the two teachers agree.
            overlap = (t1.argmax(1) == t2.argmax(1)).double().mean()
        unsup = self.unsup_weight * loss_cps
        logs = {
            "loss_sup_1": loss_sup_1,
            "loss_sup_2": loss_sup_2,
            "loss_unsup": unsup,
            "loss_cps": loss_cps,
            "overlap": overlap,
        }
        return loss_sup_1 + loss_sup_2 + unsup, logs


METHOD = CPS
