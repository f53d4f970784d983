"""Supervised-only baseline: both branches of the CPCL network on the labeled images alone.

The data view reads no unlabeled image. Loss: `sup_1 + sup_2`.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from ..base import StepInfo
from ..two_branch import TwoBranchMethod


class Sup(TwoBranchMethod):
    """Labeled images only (the two branches train independently)."""

    name = "sup"
    uses_unlabeled = False
    batch_keys = ("img", "gt")
    streams = ("labeled",)  # no unlabeled split is required or read

    def forward_loss(
        self,
        model: nn.Module,
        batch: Mapping[str, Tensor],
        step: StepInfo,
        aux: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The two supervised forwards and losses."""
        loss_sup_1, loss_sup_2 = self.supervised(model, batch, aux)
        return loss_sup_1 + loss_sup_2, {"loss_sup_1": loss_sup_1, "loss_sup_2": loss_sup_2}


METHOD = Sup
