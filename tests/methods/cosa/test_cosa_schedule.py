"""CoSA LR schedule, loss warm-up, param groups and EMA vs the official code
(`cosa_schedule.json`; the held-out `cosa_schedule_hidden.json` has the same keys)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import max_rel_diff

from cpcl.errors import CpclError
from cpcl.methods.cosa.network import CoSANet
from cpcl.methods.cosa.optim import (
    build_cosa_optimizer,
    cosa_lrs,
    ema_update,
    loss_weights,
    set_lrs,
)

TOL = 1e-12


@pytest.fixture(scope="module")
def sched(golden_dir):
    path = golden_dir / "cosa_schedule.json"
    if not path.is_file():
        pytest.skip(f"golden fixture {path} not found")
    return json.loads(path.read_text())


def test_lr_schedule_matches_official(sched):
    assert sched["warmup_iter"] == 1500 and sched["warmup_ratio"] == 1e-6
    assert sched["power"] == 0.9
    assert sched["group_lr_factor"] == [1.0, 1.0, sched["lrscale"], sched["lrscale"]]
    for step, ref in zip(sched["steps"], sched["lr_used"], strict=True):
        got = cosa_lrs(
            step, sched["lr"], sched["max_iters"], lrscale=sched["lrscale"],
            min_mult=sched["min_mult"], warmup_iter=sched["warmup_iter"],
        )  # fmt: skip
        assert (
            max_rel_diff(
                torch.tensor(got, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64)
            )
            < TOL
        ), step


def test_lr_unchanged_after_max_iters(sched):
    lr, n = sched["lr"], sched["max_iters"]
    last = cosa_lrs(n - 1, lr, n)
    assert cosa_lrs(n, lr, n) == last and cosa_lrs(n + 1000, lr, n) == last
    # A run shorter than the warm-up keeps the last warm-up value.
    assert cosa_lrs(5000, lr, 1000) == cosa_lrs(1499, lr, 1000)


def test_loss_warmup_rule(sched):
    w_all = sched["loss_weights"]
    n0 = sched["loss_warmup_iters"]
    first = sched["first_iter_with_all_losses"]
    for n in (0, n0 - 1, n0):
        w = loss_weights(n, n0)
        assert (w["cls"], w["cls_aux"], w["seg"], w["cam"], w["reg"]) == (1.0, 1.0, 0.0, 0.0, 0.0)
    for n in (first, first + 1):
        assert loss_weights(n, n0) == w_all
    assert first == n0 + 1


def test_ema_matches_official(sched):
    ema = sched["ema"]
    m = ema["momentum"]
    student = torch.nn.Linear(5, 1, bias=False, dtype=torch.float64)
    teacher = torch.nn.Linear(5, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([ema["student"]], dtype=torch.float64))
        teacher.weight.copy_(torch.tensor([ema["teacher"]], dtype=torch.float64))
    ema_update(teacher, student, m)
    ref = torch.tensor([ema["teacher_after"]], dtype=torch.float64)
    assert max_rel_diff(teacher.weight, ref) < TOL


def test_ema_covers_frozen_and_unused_params():
    torch.manual_seed(0)
    student, teacher = CoSANet("deit_tiny_patch16_224", 3), CoSANet("deit_tiny_patch16_224", 3)
    before = teacher.encoder.pos_embed.detach().clone()
    head = teacher.encoder.head.weight.detach().clone()
    ema_update(teacher, student, 0.5)
    assert torch.allclose(teacher.encoder.pos_embed, 0.5 * before + 0.5 * student.encoder.pos_embed)
    assert torch.allclose(
        teacher.encoder.head.weight, 0.5 * head + 0.5 * student.encoder.head.weight
    )
    with pytest.raises(CpclError, match="parameters"):
        ema_update(teacher, torch.nn.Linear(2, 2))


def test_optimizer_groups(sched):
    model = CoSANet("deit_tiny_patch16_224", 3)
    opt = build_cosa_optimizer(model.param_groups(), sched["lr"], lrscale=sched["lrscale"],
                               wt_dec=sched["weight_decay"])  # fmt: skip
    assert isinstance(opt, torch.optim.AdamW)
    lr = sched["lr"]
    assert [g["lr"] for g in opt.param_groups] == [lr, lr, 10 * lr, 10 * lr]
    assert [g["weight_decay"] for g in opt.param_groups] == [sched["weight_decay"]] * 4
    assert all(g["eps"] == 1e-8 and g["betas"] == (0.9, 0.999) for g in opt.param_groups)
    assert any(p is model.encoder.pos_embed for p in opt.param_groups[0]["params"])
    set_lrs(opt, [1.0, 2.0, 3.0, 4.0])
    assert [g["lr"] for g in opt.param_groups] == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(CpclError, match="groups"):
        set_lrs(opt, [1.0])
    with pytest.raises(CpclError, match="max_iters"):
        cosa_lrs(-1, lr, 10)
