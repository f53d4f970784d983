"""UniMatch's optimiser groups, poly-after-step schedule, presets and eval protocol."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cpcl.errors import CpclError
from cpcl.methods.unimatch.eval import sliding_window_starts, unimatch_predict
from cpcl.methods.unimatch.losses import OFFICIAL_LOSS_WEIGHTS
from cpcl.methods.unimatch.optim import (
    build_unimatch_optimizer,
    lr_after_step,
    lr_for_step,
    set_unimatch_lr,
    unimatch_param_groups,
)
from cpcl.methods.unimatch.presets import UNIMATCH_PRESETS, unimatch_preset


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
        self.head = nn.Conv2d(4, 4, 1)
        self.classifier = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.classifier(self.head(self.backbone(x)))


@pytest.fixture(scope="module")
def schedule(golden_dir):
    return json.loads((golden_dir / "unimatch_schedule.json").read_text())


def test_schedule_golden(schedule):
    for name, cfg in schedule["configs"].items():
        ex = cfg["example"]
        total = ex["iters_per_epoch"] * cfg["epochs"]
        assert total == ex["total_iters"]
        model = _Tiny()
        opt = build_unimatch_optimizer(model, cfg["lr"], cfg["lr_multi"])
        used = {}
        for t in range(total):
            used[t] = [g["lr"] for g in opt.param_groups]
            # (optimizer.step() here) then the official update, written after the step:
            set_unimatch_lr(opt, lr_after_step(t, cfg["lr"], total), cfg["lr_multi"])
        for t, want in ex["lr_used_at_step"].items():
            got = used[int(t)]
            assert got == pytest.approx(want, rel=1e-12), (name, t)
            assert lr_for_step(int(t), cfg["lr"], total) == pytest.approx(want[0], rel=1e-12)


def test_presets_match_official_configs(schedule):
    compared = 0
    for name, cfg in schedule["configs"].items():
        if name not in UNIMATCH_PRESETS:  # e.g. COCO (Xception backbone): no preset here
            continue
        compared += 1
        preset = unimatch_preset(name)
        for key in ("lr", "lr_multi", "epochs", "crop_size", "conf_thresh", "criterion"):
            assert preset[key] == cfg[key], (name, key)
        assert preset["batch_size"] == cfg["batch_size_per_gpu"]
    assert compared > 0
    weights = schedule["effective_loss_weights"]
    w = OFFICIAL_LOSS_WEIGHTS
    got = [w.x / w.divisor, w.s1 / w.divisor, w.s2 / w.divisor, w.fp / w.divisor]
    assert got == pytest.approx(
        [weights[k] for k in ("loss_x", "loss_u_s1", "loss_u_s2", "loss_u_w_fp")]
    )
    preset = unimatch_preset("pascal")
    preset["lr"] = 1.0
    assert UNIMATCH_PRESETS["pascal"]["lr"] == 0.001  # a copy, never the shared dict
    with pytest.raises(CpclError, match="coco"):
        unimatch_preset("coco")


def test_param_groups_and_weight_decay():
    model = _Tiny()
    opt = build_unimatch_optimizer(model, 0.01, 10.0)
    g0, g1 = opt.param_groups
    assert [id(p) for p in g0["params"]] == [id(p) for p in model.backbone.parameters()]
    head = [p for n, p in model.named_parameters() if not n.startswith("backbone")]
    assert [id(p) for p in g1["params"]] == [id(p) for p in head]
    assert (g0["lr"], g1["lr"]) == (0.01, pytest.approx(0.1))
    assert g0["weight_decay"] == g1["weight_decay"] == 1e-4  # BN and biases included
    assert g0["momentum"] == g1["momentum"] == 0.9


def test_bad_optimiser_settings():
    with pytest.raises(CpclError, match="backbone"):
        unimatch_param_groups(nn.Linear(2, 2), 0.1, 1.0)
    with pytest.raises(CpclError, match="lr"):
        build_unimatch_optimizer(_Tiny(), 0.0, 1.0)
    with pytest.raises(CpclError, match="outside"):
        lr_for_step(11, 0.1, 10)
    with pytest.raises(CpclError, match="total_iters"):
        lr_after_step(0, 0.1, 0)
    with pytest.raises(CpclError, match="2 UniMatch groups"):
        set_unimatch_lr(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), 0.1, 1.0)


def test_sliding_window_protocol():
    assert sliding_window_starts(10, 6) == [0, 4, 8]
    assert sliding_window_starts(1024, 801) == [0, 534]
    seen = []
    conv = nn.Conv2d(3, 5, 1)

    def model(x):
        seen.append(tuple(x.shape[-2:]))
        return conv(x)

    img = torch.randn(2, 3, 10, 14)
    pred = unimatch_predict(model, img, "sliding_window", 6)
    assert seen == [(r, c) for r in (6, 6, 2) for c in (6, 6, 6, 2)]
    # A per-pixel model: summing softmaxes over overlapping windows keeps the argmax.
    assert torch.equal(pred, unimatch_predict(conv, img, "original"))
    with pytest.raises(CpclError, match="mode"):
        unimatch_predict(conv, img, "center")
    with pytest.raises(CpclError, match="crop_size"):
        unimatch_predict(conv, img, "sliding_window")
