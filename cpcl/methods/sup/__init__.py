"""Supervised-only baseline: both branches of the CPCL network on the labeled images alone.

The data view decodes no unlabeled image, but the method declares the unlabeled split list: as
in the official CPS/CPCL supervised baseline, the epoch is sized by the larger split
(`max_samples = max(n_labeled, n_unlabeled)`), so `sup` sees the labeled images as often as the
semi-supervised methods it is compared with. Loss: `sup_1 + sup_2`.
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
    # The unlabeled list only sizes the epoch (see the module docstring); the view reads
    # `("labeled",)` alone.
    streams = ("labeled", "unlabeled")

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
