"""Optimiser groups and the WarmUpPolyLR schedule against the official values."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cpcl.errors import CpclError
from cpcl.optim import WarmUpPolyLR, build_optimizers, group_weight, set_lr


def test_warmup_poly_matches_official(golden_dir):
    # Plain float64 arithmetic on both sides; the README documents no tolerance: measured 0.
    path = golden_dir / "lr_poly.json"
    if not path.is_file():
        pytest.skip(f"golden fixture {path} not found")
    cases = json.loads(path.read_text())
    assert cases
    for case in cases:
        policy = WarmUpPolyLR(
            case["start_lr"], case["lr_power"], case["total_iters"], case["warmup_steps"]
        )
        got = [policy.get_lr(it) for it in case["iters"]]
        assert got == pytest.approx(case["lr"], rel=1e-12, abs=0)


def test_warmup_poly_steps_down_without_rebase_and_rejects_bad_iters():
    policy = WarmUpPolyLR(0.01, 0.9, 1000, 50)
    assert policy.get_lr(49) > policy.get_lr(50)
    assert policy.get_lr(1000) == 0.0
    with pytest.raises(CpclError, match="iteration 1001"):
        policy.get_lr(1001)
    with pytest.raises(CpclError, match="total_iters"):
        WarmUpPolyLR(0.01, 0.9, 0, 0)


class _Branch(nn.Module):
    """A tiny stand-in for SingleNetwork with the three official sub-modules."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
        self.head = nn.Sequential(
            nn.Conv2d(4, 4, 1, bias=True), nn.GroupNorm(2, 4), nn.Linear(4, 4)
        )
        self.classifier = nn.Conv2d(4, 3, 1)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.branch1 = _Branch()
        self.branch2 = _Branch()


def test_group_structure_and_order():
    net = _Net()
    opt1, opt2 = build_optimizers(net, lr=0.01, momentum=0.9, weight_decay=1e-4)
    for opt, branch in ((opt1, net.branch1), (opt2, net.branch2)):
        groups = opt.param_groups
        assert len(groups) == 6
        assert [g["weight_decay"] for g in groups] == [1e-4, 0.0] * 3
        assert all(g["momentum"] == 0.9 and g["lr"] == 0.01 for g in groups)
        b, h, c = branch.backbone, branch.head, branch.classifier
        expect = [
            [b[0].weight],
            [b[1].weight, b[1].bias],
            [h[0].weight, h[2].weight],
            [h[0].bias, h[1].weight, h[1].bias, h[2].bias],
            [c.weight],
            [c.bias],
        ]
        for group, params in zip(groups, expect, strict=True):
            assert [id(p) for p in group["params"]] == [id(p) for p in params]
    ids1 = {id(p) for g in opt1.param_groups for p in g["params"]}
    assert ids1 == {id(p) for p in net.branch1.parameters()}


def test_group_weight_rejects_shared_and_uncovered_params():
    shared = nn.Conv2d(1, 1, 1)
    mod = nn.Sequential(shared, nn.Sequential(shared))
    groups = group_weight(mod, 0.1, 1e-4)  # modules() de-duplicates: still one weight, one bias
    assert [len(g["params"]) for g in groups] == [1, 1]
    net = _Net()
    net.branch1.extra = nn.Linear(2, 2)
    with pytest.raises(CpclError, match="would not be optimised"):
        build_optimizers(net, 0.01, 0.9, 1e-4)
    with pytest.raises(CpclError, match="branch1"):
        build_optimizers(nn.Linear(2, 2), 0.01, 0.9, 1e-4)


def test_set_lr_writes_every_group():
    opt1, _ = build_optimizers(_Net(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    set_lr(opt1, 0.123)
    assert [g["lr"] for g in opt1.param_groups] == [0.123] * 6


def test_sgd_first_step_rule():
    """First SGD step: decay group `p - lr*(g + wd*p)`, no-decay group `p - lr*g`."""
    net = _Net()
    opt1, _ = build_optimizers(net, lr=0.1, momentum=0.9, weight_decay=0.01)
    before = [p.detach().clone() for g in opt1.param_groups for p in g["params"]]
    for g in opt1.param_groups:
        for p in g["params"]:
            p.grad = torch.ones_like(p)
    opt1.step()
    i = 0
    for g in opt1.param_groups:
        for p in g["params"]:
            want = before[i] - 0.1 * (1 + g["weight_decay"] * before[i])
            torch.testing.assert_close(p.detach(), want)
            i += 1
