"""U2PL's data view: one labeled pair and one unlabeled image per batch slot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...data.views import LabeledView, Loaded, RngFor


class U2PLView(LabeledView):
    """Labeled `img`, `gt` and one unlabeled `img_u`, each with its own draw of the same
    training transform (U2PL's unlabeled loader uses the labeled one's transform)."""

    streams = ("labeled", "unlabeled")
    keys = ("img", "gt", "img_u")

    def sample(self, loaded: Sequence[Loaded], rng: RngFor) -> dict[str, Any]:
        """The labeled pair and the unlabeled image (its label, if any, is not read)."""
        out = super().sample(loaded, rng)
        out["img_u"] = self.transform(loaded[1][0], None, rng=rng(1))[0]
        return out
