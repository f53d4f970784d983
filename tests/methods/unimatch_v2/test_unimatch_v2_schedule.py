"""UniMatch V2's lr rule (written after the step), EMA ratio, AdamW groups and EMA update
against the official loop lines (unimatch_v2_schedule.json)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from cpcl.errors import CpclError
from cpcl.methods.unimatch_v2.schedule import (
    build_unimatch_v2_optimizer,
    ema_ratio,
    ema_update,
    lr_after_step,
    lr_for_step,
    set_unimatch_v2_lr,
)

TOL = 1e-12  # golden README


def _settings(golden_dir):
    path = golden_dir / "unimatch_v2_schedule.json"
    if not path.is_file():
        pytest.skip(f"golden fixture {path} not found")
    return json.loads(path.read_text())["settings"]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=TOL, abs_tol=0.0)


def test_schedule_golden(golden_dir):
    for s in _settings(golden_dir):
        lr, multi, total = s["lr"], s["lr_multi"], s["total_iters"]
        assert total == s["epochs"] * s["iters_per_epoch"], s["name"]
        opt = torch.optim.AdamW([{"params": [nn.Parameter(torch.zeros(1))]} for _ in range(2)])
        for k, t in enumerate(s["iters"]):
            used, written = s["lr_used_at_step"][k], s["lr_written_after_step"][k]
            got_used = lr_for_step(t, lr, total, 0.9)
            assert _close(got_used, used[0]), (s["name"], t)
            set_unimatch_v2_lr(opt, got_used, multi)
            assert [g["lr"] for g in opt.param_groups] == [got_used, got_used * multi]
            assert _close(got_used * multi, used[1]), (s["name"], t)
            got_written = lr_after_step(t, lr, total, 0.9)
            assert _close(got_written, written[0]) and _close(got_written * multi, written[1])
            assert _close(ema_ratio(t), s["ema_ratio"][k]), (s["name"], t)


class _Net(nn.Module):
    """`backbone` (with a norm, a bias, a bare parameter) + head + one buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
        self.backbone.register_parameter("pos_embed", nn.Parameter(torch.randn(1, 2, 4)))
        self.head = nn.Linear(4, 2)
        self.register_buffer("stat", torch.randn(3))


def test_adamw_groups_and_weight_decay_on_everything():
    torch.manual_seed(0)
    net = _Net()
    opt = build_unimatch_v2_optimizer(net, 5e-6, 40.0)
    assert isinstance(opt, torch.optim.AdamW)
    g0, g1 = opt.param_groups
    assert [id(p) for p in g0["params"]] == [id(p) for p in net.backbone.parameters()]
    assert [id(p) for p in g1["params"]] == [id(p) for p in net.head.parameters()]
    assert (g0["lr"], g1["lr"]) == (5e-6, 5e-6 * 40.0)
    for g in (g0, g1):
        assert g["weight_decay"] == 0.01 and g["betas"] == (0.9, 0.999) and g["eps"] == 1e-8
    # lock_backbone (ADE20K): the encoder group is empty, the head group unchanged.
    net.backbone.requires_grad_(False)
    g0, g1 = build_unimatch_v2_optimizer(net, 5e-6, 40.0).param_groups
    assert g0["params"] == [] and len(g1["params"]) == 2


def test_ema_update_is_the_official_formula_over_parameters_and_buffers():
    torch.manual_seed(1)
    student, teacher = _Net(), _Net()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    r = ema_ratio(7)
    assert r == 1 - 1 / 8
    ema_update(teacher, student, r)
    for k, v in teacher.state_dict().items():
        want = before[k] * r + student.state_dict()[k] * (1 - r)
        assert torch.equal(v, want), k
    ema_update(teacher, student, ema_ratio(0))  # ratio 0: an exact copy
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, student.state_dict()[k]), k
    assert ema_ratio(10**6) == 0.996


def test_bad_inputs_are_named():
    with pytest.raises(CpclError, match="backbone"):
        build_unimatch_v2_optimizer(nn.Linear(2, 2), 1e-3, 40.0)
    with pytest.raises(CpclError, match="lr"):
        build_unimatch_v2_optimizer(_Net(), 0.0, 40.0)
    with pytest.raises(CpclError, match="iteration"):
        ema_ratio(-1)
    with pytest.raises(CpclError, match="parameters"):
        ema_update(nn.Linear(2, 2), _Net(), 0.5)
