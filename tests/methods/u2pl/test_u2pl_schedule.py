"""U2PL schedules against u2pl_schedules.json: per-epoch percents, EMA decay and toy, poly lr."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cpcl.config import ConfigError
from cpcl.methods.u2pl.schedule import (
    TeacherSchedule,
    alias_teacher_params,
    build_u2pl_optimizer,
    contra_alpha_t,
    drop_percent,
    ema_update,
    set_poly_lr,
)


@pytest.fixture(scope="module")
def schedules(golden_dir) -> dict:
    return json.loads((golden_dir / "u2pl_schedules.json").read_text())


def test_per_epoch_schedule(schedules):
    assert schedules["configs"]
    for name, cfg in schedules["configs"].items():
        sched = TeacherSchedule(cfg["sup_only_epoch"], iters_per_epoch=1)
        assert len(cfg["per_epoch"]) == cfg["epochs"], name
        for row in cfg["per_epoch"]:
            e = row["epoch"]
            drop, unreliable = drop_percent(e, cfg["epochs"], cfg["drop_percent_cfg"])
            alpha = contra_alpha_t(e, cfg["epochs"], cfg["low_entropy_threshold"])
            assert drop == row["drop_percent"], (name, e)
            assert unreliable == row["percent_unreliable"], (name, e)
            assert alpha == row["alpha_t"], (name, e)
            assert 100 - alpha == row["high_entropy_percentile"], (name, e)
            phase = sched.phase(e)
            assert ("sup_only" if phase == "sup_only" else "semi") == row["phase"], (name, e)
            assert (phase == "alias") == row["teacher_is_student_alias"], (name, e)


def test_ema_decay_by_k(schedules):
    for name, cfg in schedules["configs"].items():
        loader_len = cfg["ema_example_loader_len"]
        sched = TeacherSchedule(cfg["sup_only_epoch"], loader_len, cfg["ema_decay_cfg"])
        assert cfg["ema_decay_by_k"]
        for k, want in cfg["ema_decay_by_k"].items():
            i_iter = int(k) + loader_len * cfg["sup_only_epoch"]
            assert sched.decay(i_iter) == want, (name, k)


class _Vec(nn.Module):
    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(values, dtype=torch.float32))


def test_ema_toy(schedules):
    toy = schedules["ema_toy"]
    rows = toy["rows"]
    assert toy["fake_step"] == "p -= 0.1*(i_iter+1), in place"
    first = rows[0]
    student = _Vec([0.0] * len(first["student_after_step"]))
    with torch.no_grad():  # undo the first fake step to get the initial student
        student.p.copy_(torch.tensor(first["student_after_step"]) + 0.1 * (first["i_iter"] + 1))
    teacher = _Vec(first["teacher_used_for_pseudo_labels"])
    sched = TeacherSchedule(toy["sup_only_epoch"], toy["L"], toy["ema_decay_cfg"])
    assert len(rows) == toy["epochs"] * toy["L"]
    for row in rows:
        epoch, i_iter = row["epoch"], row["i_iter"]
        assert i_iter == epoch * toy["L"] + row["step"]
        sched.before_iteration(teacher, student, epoch)
        assert teacher.p.tolist() == row["teacher_used_for_pseudo_labels"], i_iter
        with torch.no_grad():
            student.p -= 0.1 * (i_iter + 1)
        assert student.p.tolist() == row["student_after_step"], i_iter
        decay = sched.after_step(teacher, student, epoch, i_iter)
        assert decay == row["ema_decay"], i_iter
        assert teacher.p.tolist() == row["teacher_after_ema"], i_iter


class _Net(nn.Module):
    """Stands in for U2PLNet: the groups only look at encoder / auxor / decoder."""

    def __init__(self, aux: bool) -> None:
        super().__init__()
        self.encoder = nn.Linear(3, 3)
        self.decoder = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
        self.auxor = nn.Linear(3, 2) if aux else None


def test_lr_applied_at_iter_and_groups(schedules):
    for name, cfg in schedules["configs"].items():
        net = _Net(aux=cfg["aux_loss"] is not None)
        opt, base = build_u2pl_optimizer(
            net, cfg["lr_base"], cfg["momentum"], cfg["weight_decay"], cfg["lr_head_times"]
        )
        assert [g["name"] for g in opt.param_groups] == cfg["param_groups"], name
        assert all(g["weight_decay"] == cfg["weight_decay"] for g in opt.param_groups)
        assert all(g["momentum"] == cfg["momentum"] for g in opt.param_groups)
        assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
        max_iter = cfg["epochs"] * cfg["lr_example_loader_len"]
        assert cfg["lr_applied_at_iter"]
        for i_iter, want in cfg["lr_applied_at_iter"].items():
            got = set_poly_lr(opt, base, int(i_iter), max_iter)
            assert got == pytest.approx(want, rel=1e-12), (name, i_iter)
            assert [g["lr"] for g in opt.param_groups] == got


def test_bad_schedule_settings():
    with pytest.raises(ConfigError, match="drop_percent"):
        drop_percent(0, 80, 120)
    with pytest.raises(ConfigError, match="epoch 81 of 80"):
        contra_alpha_t(81, 80)
    with pytest.raises(ConfigError, match="sup_only_epoch"):
        TeacherSchedule(-1, 10)
    with pytest.raises(ConfigError, match="supervised-only"):
        TeacherSchedule(1, 10).decay(5)
    with pytest.raises(ConfigError, match="lr"):
        build_u2pl_optimizer(_Net(False), -0.1)


def test_presets_match_the_official_configs(schedules, golden_dir):
    from conftest import load_golden

    from cpcl.methods.u2pl.presets import U2PL_PRESETS

    names = {"pascal_1464": "voc", "cityscapes_744": "cityscapes"}
    for name, cfg in schedules["configs"].items():
        p = U2PL_PRESETS[names[name]]
        assert p.epochs == cfg["epochs"] and p.sup_only_epoch == cfg["sup_only_epoch"]
        assert p.drop_percent == cfg["drop_percent_cfg"] and p.apply_aug == cfg["apply_aug"]
        assert p.unsup_loss_weight == cfg["unsup_loss_weight"]
        assert p.contra.loss_weight == cfg["contra_loss_weight"]
        assert p.contra.low_entropy_threshold == cfg["low_entropy_threshold"]
        assert p.ema_decay == cfg["ema_decay_cfg"]
        assert (p.lr, p.lr_head_times) == (cfg["lr_base"], cfg["lr_head_times"])
        assert (p.momentum, p.weight_decay) == (cfg["momentum"], cfg["weight_decay"])
        assert p.batch_size_per_gpu == cfg["batch_size_per_gpu"]
        assert list(p.crop_size) == cfg["crop"]
        crit = cfg["criterion"]
        if crit["type"] == "ohem":
            assert p.sup_loss == "ohem"
            assert (p.ohem_thresh, p.ohem_min_kept) == (
                crit["kwargs"]["thresh"],
                crit["kwargs"]["min_kept"],
            )
        else:
            assert p.sup_loss == "ce"
        aux = cfg["aux_loss"]
        assert p.aux_loss_weight == (aux["loss_weight"] if aux else 0)
    for fname in ("u2pl_contra_voc.pt", "u2pl_contra_b1.pt", "u2pl_contra_city.pt"):
        for c in load_golden(golden_dir, fname)["cases"].values():
            p = U2PL_PRESETS["cityscapes" if c["cfg"] == "cityscapes" else "voc"]
            for key, value in c["cfg_contra"].items():
                if hasattr(p.contra, key):
                    assert getattr(p.contra, key) == value, (fname, key)


@pytest.mark.parametrize("foreach", [None, False, True])
def test_ema_update_is_bitwise_the_official_formula_and_leaves_an_aliased_student(foreach):
    """The EMA (per parameter or multi-tensor) gives exactly `d*t + (1-d)*s` per parameter (new tensors), and in
    the teacher-copy epoch (shared storage) it does not move the student."""
    gen = torch.Generator().manual_seed(0)

    def net() -> nn.Module:
        m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 5, 1))
        for p in m.parameters():
            p.data = torch.randn(p.shape, generator=gen)
        return m

    teacher, student = net(), net()
    want = [
        0.99 * t.data + (1 - 0.99) * s.data
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True)
    ]
    ema_update(teacher, student, 0.99, foreach=foreach)
    for t, w in zip(teacher.parameters(), want, strict=True):
        assert torch.equal(t.data, w)

    alias_teacher_params(teacher, student)
    kept = [s.detach().clone() for s in student.parameters()]
    ema_update(teacher, student, 0.7, foreach=foreach)
    for t, s, k in zip(teacher.parameters(), student.parameters(), kept, strict=True):
        assert torch.equal(s.data, k)
        assert t.data_ptr() != s.data_ptr()
        assert torch.equal(t.data, 0.7 * k + (1 - 0.7) * k)
