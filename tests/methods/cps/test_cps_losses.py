"""CPS's cross pseudo-supervision (`cpcl.methods.cps.cps_loss`) against its definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cpcl.methods.cps import cps_loss


def test_cps_loss_is_cross_supervision():
    g = torch.Generator().manual_seed(0)
    t1, t2, s1, s2 = (torch.randn(2, 5, 6, 7, generator=g) for _ in range(4))
    want = F.cross_entropy(s1, t2.argmax(1)) + F.cross_entropy(s2, t1.argmax(1))
    assert cps_loss(t1, t2, s1, s2).item() == pytest.approx(want.item(), rel=1e-6)
    # Not the same-branch supervision.
    same = F.cross_entropy(s1, t1.argmax(1)) + F.cross_entropy(s2, t2.argmax(1))
    assert cps_loss(t1, t2, s1, s2).item() != pytest.approx(same.item(), rel=1e-3)
