"""UniMatch's losses of one iteration against the official code (unimatch_loss_{voc,city}.pt)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import load_golden

from cpcl.errors import CpclError
from cpcl.losses import ProbOhemCrossEntropy2d
from cpcl.methods.unimatch.losses import build_criterion_l, unimatch_loss

ARGS = (
    "pred_x",
    "mask_x",
    "pred_u_w",
    "pred_u_w_mix",
    "pred_u_s1",
    "pred_u_s2",
    "pred_u_w_fp",
    "cutmix_box1",
    "cutmix_box2",
    "ignore_mask",
    "ignore_mask_mix",
)
PREDS = ("pred_x", "pred_u_s1", "pred_u_s2", "pred_u_w_fp")
INT_OUTPUTS = (
    "mask_u_w",
    "mask_u_w_mix",
    "mask_u_w_cutmixed1",
    "mask_u_w_cutmixed2",
    "ignore_mask_cutmixed1",
    "ignore_mask_cutmixed2",
)
FLOAT_OUTPUTS = ("conf_u_w", "conf_u_w_mix", "conf_u_w_cutmixed1", "conf_u_w_cutmixed2")
LOSSES = ("loss_x", "loss_u_s1", "loss_u_s2", "loss_u_w_fp", "loss")


def _cases(golden_dir):
    for name in ("unimatch_loss_voc.pt", "unimatch_loss_city.pt"):
        yield from load_golden(golden_dir, name)["cases"].items()


def _call(case, **tensors):
    """unimatch_loss on the case's inputs, with `tensors` replacing some of them."""
    t = {k: case[k] for k in ARGS} | tensors
    return unimatch_loss(
        *(t[k] for k in ARGS),
        criterion_l=build_criterion_l(case["criterion_name"], case["criterion_kwargs"]),
        conf_thresh=case["conf_thresh"],
    )


def _run(case):
    inputs = {k: case[k].clone().requires_grad_(True) for k in PREDS}
    out = _call(case, pred_u_w=case["pred_u_w"].clone().requires_grad_(True), **inputs)
    out.loss.backward()
    return out, inputs


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a).detach().double(), torch.as_tensor(b).double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def test_losses_golden(golden_dir):
    for name, case in _cases(golden_dir):
        out, inputs = _run(case)
        for key in LOSSES:
            assert _rel(getattr(out, key), case[key]) < 1e-6, f"{name}: {key}"
        assert math.isclose(float(out.mask_ratio), case["mask_ratio"], rel_tol=1e-6), name
        for key in PREDS:
            assert _rel(inputs[key].grad, case[f"grad_{key}"]) < 1e-4, f"{name}: grad {key}"
        for key in INT_OUTPUTS:
            assert torch.equal(getattr(out, key), case[key]), f"{name}: {key}"
        for key in FLOAT_OUTPUTS:
            torch.testing.assert_close(getattr(out, key), case[key], rtol=1e-6, atol=1e-7)
        for part in ("s1", "s2", "fp"):
            assert int(getattr(out, f"denom_{part}")) == case[f"denom_{part}"], (name, part)
            got = int(getattr(out, f"num_selected_{part}"))
            assert got == case[f"num_selected_{part}"], (name, part)


def test_pred_u_w_gets_no_gradient(golden_dir):
    for name, case in _cases(golden_dir):
        pred_u_w = case["pred_u_w"].clone().requires_grad_(True)
        pred_s = case["pred_u_s1"].clone().requires_grad_(True)
        out = _call(case, pred_u_w=pred_u_w, pred_u_s1=pred_s)
        out.loss.backward()
        assert (pred_u_w.grad is None) == case["grad_pred_u_w_is_none"], name
        assert pred_s.grad is not None


def test_city_ohem_target_golden(golden_dir):
    for name, case in load_golden(golden_dir, "unimatch_loss_city.pt")["cases"].items():
        crit = build_criterion_l(case["criterion_name"], case["criterion_kwargs"])
        assert isinstance(crit, ProbOhemCrossEntropy2d) and crit.weight is None
        target = crit._mine(case["pred_x"], case["mask_x"])
        assert torch.equal(target, case["ohem_target"]), name
        assert int((target != 255).sum()) == case["ohem_num_kept"], name
        assert int((case["mask_x"] != 255).sum()) == case["ohem_num_valid"], name


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("Focal", {}, "name='Focal'"),
        ("OHEM", {"use_weight": True}, "use_weight"),
        ("OHEM", {"min_kep": 3}, "min_kep"),
        ("CELoss", {"ignore_idx": 255}, "ignore_idx"),
    ],
)
def test_bad_criterion(name, kwargs, match):
    with pytest.raises(CpclError, match=match):
        build_criterion_l(name, kwargs)


def test_bad_inputs():
    p = torch.randn(2, 3, 5, 5)
    m = torch.zeros(2, 5, 5, dtype=torch.long)
    box = torch.zeros(2, 5, 5)
    ce = build_criterion_l("CELoss", {"ignore_index": 255})
    args = [p, m, p, p, p, p, p, box, box, m, m]
    with pytest.raises(CpclError, match="conf_thresh"):
        unimatch_loss(*args, criterion_l=ce, conf_thresh=1.5)
    bad = list(args)
    bad[4] = torch.randn(2, 3, 5, 6)
    with pytest.raises(CpclError, match="pred_u_s1"):
        unimatch_loss(*bad, criterion_l=ce, conf_thresh=0.95)
    bad = list(args)
    bad[7] = torch.zeros(2, 4, 5)
    with pytest.raises(CpclError, match="cutmix_box1"):
        unimatch_loss(*bad, criterion_l=ce, conf_thresh=0.95)
