"""UniMatch V2's losses of one iteration against the official loss block (unimatch_v2_loss.pt)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import load_golden

from cpcl.errors import CpclError
from cpcl.losses import ProbOhemCrossEntropy2d
from cpcl.methods.unimatch.step import cutmix_images
from cpcl.methods.unimatch_v2.losses import build_criterion_l, unimatch_v2_loss

ARGS = (
    "pred_x",
    "mask_x",
    "pred_u_w",
    "pred_u_s1",
    "pred_u_s2",
    "cutmix_box1",
    "cutmix_box2",
    "ignore_mask",
)
PREDS = ("pred_x", "pred_u_s1", "pred_u_s2")
INT_OUTPUTS = (
    "mask_u_w",
    "mask_u_w_cutmixed1",
    "mask_u_w_cutmixed2",
    "ignore_mask_cutmixed1",
    "ignore_mask_cutmixed2",
)
FLOAT_OUTPUTS = ("conf_u_w", "conf_u_w_cutmixed1", "conf_u_w_cutmixed2")
LOSSES = ("loss_x", "loss_u_s1", "loss_u_s2", "loss_u_s", "loss")
REL = 1e-5  # golden README: float32 values at 1e-5 relative


def _cases(golden_dir):
    return load_golden(golden_dir, "unimatch_v2_loss.pt")["cases"].items()


def _criterion(case):
    return build_criterion_l(case["criterion_name"], case["criterion_kwargs"])


def _run(case):
    inputs = {k: case[k].clone().requires_grad_(True) for k in PREDS}
    t = {k: case[k] for k in ARGS} | inputs
    out = unimatch_v2_loss(
        *(t[k] for k in ARGS), criterion_l=_criterion(case), conf_thresh=case["conf_thresh"]
    )
    out.loss.backward()
    return out, inputs


def _close(got, want, rel: float = REL) -> bool:
    """Equal within `rel` of the expected tensor's max magnitude; NaN must be NaN."""
    got, want = torch.as_tensor(got).detach().double(), torch.as_tensor(want).double()
    if got.shape != want.shape or not torch.equal(got.isnan(), want.isnan()):
        return False
    ok = ~want.isnan()
    if not ok.any():
        return True
    scale = want[ok].abs().max().clamp_min(1e-12)
    return bool(((got[ok] - want[ok]).abs().max() / scale) <= rel)


def test_losses_golden(golden_dir):
    for name, case in _cases(golden_dir):
        out, inputs = _run(case)
        for key in LOSSES:
            assert _close(getattr(out, key), case[key]), f"{name}: {key}"
        assert _close(out.mask_ratio, case["mask_ratio"]), f"{name}: mask_ratio"
        for key in PREDS:
            assert _close(inputs[key].grad, case[f"grad_{key}"]), f"{name}: grad {key}"
        for key in INT_OUTPUTS:
            assert torch.equal(getattr(out, key), case[key]), f"{name}: {key}"
        for key in FLOAT_OUTPUTS:
            assert _close(getattr(out, key), case[key], 1e-6), f"{name}: {key}"
        for part in ("s1", "s2"):
            assert int(getattr(out, f"denom_{part}")) == case[f"denom_{part}"], (name, part)
            got = int(getattr(out, f"num_selected_{part}"))
            assert got == case[f"num_selected_{part}"], (name, part)


def test_all_ignored_is_the_official_nan(golden_dir):
    """Every case whose ignore mask is all 255 divides by 0: NaN, as officially; the labeled
    gradient stays finite."""
    for name, case in _cases(golden_dir):
        if not bool((case["ignore_mask"] == 255).all()):
            continue
        out, inputs = _run(case)
        assert math.isnan(float(out.loss.detach())) and math.isnan(float(out.mask_ratio)), name
        assert torch.isfinite(inputs["pred_x"].grad).all(), name
        assert torch.isnan(inputs["pred_u_s1"].grad).all(), name


def test_strong_images_mix_with_the_flipped_batch(golden_dir):
    """`img[box] = img.flip(0)[box]` on every channel (`unimatch_v2.py:175-176`)."""
    for name, case in _cases(golden_dir):
        for k in ("1", "2"):
            img = case[f"img_u_s{k}"]
            got = cutmix_images(img, img.flip(0), case[f"cutmix_box{k}"])
            assert torch.equal(got, case[f"img_u_s{k}_mixed"]), f"{name}: s{k}"


def test_ohem_locals_golden(golden_dir):
    """The Cityscapes criterion: no class weights, the official kept pixels."""
    for name, case in _cases(golden_dir):
        if case["criterion_name"] != "OHEM":
            continue
        crit = _criterion(case)
        assert isinstance(crit, ProbOhemCrossEntropy2d) and crit.weight is None, name
        assert int((case["mask_x"] != 255).sum()) == case["ohem_num_valid"], name
        target = crit._mine(case["pred_x"], case["mask_x"])
        if case["ohem_branch_active"]:
            assert torch.equal(target, case["ohem_target"]), name
            assert int((target != 255).sum()) == case["ohem_num_kept"], name
        else:  # min_kept > valid pixels: plain CE over every valid pixel
            assert torch.equal(target, case["mask_x"]), name


def test_bad_inputs():
    p = torch.randn(2, 3, 5, 5)
    m = torch.zeros(2, 5, 5, dtype=torch.long)
    box = torch.zeros(2, 5, 5)
    ce = build_criterion_l("CELoss", {"ignore_index": 255})
    args = [p, m, p, p, p, box, box, m]
    with pytest.raises(CpclError, match="conf_thresh"):
        unimatch_v2_loss(*args, criterion_l=ce, conf_thresh=1.5)
    bad = list(args)
    bad[3] = torch.randn(2, 3, 5, 6)
    with pytest.raises(CpclError, match="pred_u_s1"):
        unimatch_v2_loss(*bad, criterion_l=ce, conf_thresh=0.95)
    bad = list(args)
    bad[7] = torch.zeros(2, 4, 5, dtype=torch.long)
    with pytest.raises(CpclError, match="ignore_mask"):
        unimatch_v2_loss(*bad, criterion_l=ce, conf_thresh=0.95)
