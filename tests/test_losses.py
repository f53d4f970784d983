"""Losses against the official-code fixtures (loss_cpcl.pt, ohem_city.pt) and their definitions."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import load_golden
from easydict import EasyDict

from cpcl.errors import CpclError
from cpcl.losses import (
    CITYSCAPES_CLASS_WEIGHTS,
    ProbOhemCrossEntropy2d,
    build_sup_criterion,
    cpcl_pseudo_supervision,
    cps_loss,
    disagreement_weight,
    pseudo_label_confusion,
)

RTOL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference relative to the reference's max magnitude."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _mix(case: dict, which: int) -> torch.Tensor:
    m = case["mask"]
    return case[f"logits_u0_tea_{which}"] * (1 - m) + case[f"logits_u1_tea_{which}"] * m


@pytest.mark.parametrize("name", ["random", "absent"])
def test_cpcl_matches_official(golden_dir, name):
    case = load_golden(golden_dir, "loss_cpcl.pt")[name]
    t1, t2 = _mix(case, 1), _mix(case, 2)
    assert torch.equal(t1, case["logits_cons_tea_1"])
    assert torch.equal(t2, case["logits_cons_tea_2"])
    s1 = case["logits_stu_1"].clone().requires_grad_()
    s2 = case["logits_stu_2"].clone().requires_grad_()
    out = cpcl_pseudo_supervision(t1, t2, s1, s2, num_classes=21)

    assert torch.equal(out["label_1"], case["ps_label_1"])
    assert torch.equal(out["label_2"], case["ps_label_2"])
    assert torch.equal(out["label_inter"], case["ps_label_inter"])
    assert torch.equal(out["label_union"], case["ps_label_union"])
    assert torch.equal(out["confusion"], case["confusion"])
    assert out["class_weight"].dtype == torch.float64
    torch.testing.assert_close(out["class_weight"], case["w"], rtol=1e-12, atol=1e-15)
    assert out["overlap"].item() == pytest.approx(case["overlap"], rel=1e-12)
    torch.testing.assert_close(out["conf_1"], case["loss_w_1"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out["conf_2"], case["loss_w_2"], rtol=1e-6, atol=1e-7)
    for key, ref in (("loss_inter", "loss_unsup_inter"), ("loss_union", "loss_unsup_union")):
        assert out[key].item() == pytest.approx(case[ref].item(), rel=RTOL)

    grad_1, grad_2 = torch.autograd.grad(out["loss_inter"] + out["loss_union"], (s1, s2))
    assert _rel(grad_1, case["grad_stu_1_from_inter"]) < RTOL
    assert _rel(grad_2, case["grad_stu_2_from_union"]) < RTOL


def test_cpcl_absent_class_gets_zero_weight(golden_dir):
    case = load_golden(golden_dir, "loss_cpcl.pt")["absent"]
    t1, t2 = _mix(case, 1), _mix(case, 2)
    out = cpcl_pseudo_supervision(t1, t2, t1.clone(), t2.clone(), num_classes=21)
    assert out["class_weight"][3].item() == 0.0
    # Classes 7 and 20 are absent only from teacher 1: they still get a positive weight.
    assert (out["class_weight"][[7, 11, 20]] > 0).all()
    assert (out["confusion"].diagonal() >= 1).all()


def test_cpcl_rejects_bad_shapes():
    t = torch.zeros(1, 5, 4, 4)
    with pytest.raises(CpclError, match="num_classes"):
        cpcl_pseudo_supervision(t, t, t, t, num_classes=6)
    with pytest.raises(CpclError, match="s2"):
        cpcl_pseudo_supervision(t, t, t, torch.zeros(1, 5, 4, 3), num_classes=5)


def test_all_agree_gives_zero_weights_and_full_overlap():
    t = torch.randn(2, 4, 8, 8)
    out = cpcl_pseudo_supervision(t, t.clone(), t, t, num_classes=4)
    assert torch.equal(out["class_weight"], torch.zeros(4, dtype=torch.float64))
    assert out["overlap"].item() == 1.0
    assert torch.equal(out["label_inter"], out["label_union"])


@pytest.mark.parametrize("name", ["raised", "fixed_thresh", "no_ohem"])
def test_ohem_matches_official(golden_dir, name):
    data = load_golden(golden_dir, "ohem_city.pt")
    case = data[name]
    assert torch.equal(torch.tensor(CITYSCAPES_CLASS_WEIGHTS), data["class_weight"])
    crit = ProbOhemCrossEntropy2d(
        ignore_label=255, thresh=case["thresh"], min_kept=case["min_kept"], use_weight=True
    )
    pred = case["pred"].clone().requires_grad_()
    loss = crit(pred, case["target"])
    assert loss.item() == pytest.approx(case["loss"], rel=RTOL)
    kept = (crit._mine(case["pred"], case["target"]) != 255).sum().item()
    assert kept == case["num_kept"]
    if "grad_pred" in case:
        (grad,) = torch.autograd.grad(loss, pred)
        assert _rel(grad, case["grad_pred"]) < RTOL


def test_ohem_keeps_ties_and_min_kept_zero_is_plain_ce():
    # All logits equal: every target probability is 1/C <= 0.7, ties included -> all kept.
    pred = torch.zeros(1, 19, 6, 6, requires_grad=True)
    target = torch.randint(0, 19, (1, 6, 6))
    target[0, 0, :3] = 255
    crit = ProbOhemCrossEntropy2d(thresh=0.7, min_kept=5, use_weight=True)
    assert (crit._mine(pred, target) == target).all()
    pred = torch.randn(2, 19, 8, 8) * 5
    target = torch.randint(0, 19, (2, 8, 8))
    w = torch.tensor(CITYSCAPES_CLASS_WEIGHTS)
    plain = F.cross_entropy(pred, target, weight=w, ignore_index=255)
    got = ProbOhemCrossEntropy2d(thresh=0.7, min_kept=0, use_weight=True)(pred, target)
    assert got.item() == pytest.approx(plain.item(), rel=1e-6)


def test_ohem_bad_arguments():
    with pytest.raises(CpclError, match="down_ratio"):
        ProbOhemCrossEntropy2d(down_ratio=2)
    with pytest.raises(CpclError, match="19 class weights"):
        ProbOhemCrossEntropy2d(use_weight=True)(torch.zeros(1, 21, 4, 4), torch.zeros(1, 4, 4))


def test_cps_loss_is_cross_supervision():
    g = torch.Generator().manual_seed(0)
    t1, t2, s1, s2 = (torch.randn(2, 5, 6, 7, generator=g) for _ in range(4))
    want = F.cross_entropy(s1, t2.argmax(1)) + F.cross_entropy(s2, t1.argmax(1))
    assert cps_loss(t1, t2, s1, s2).item() == pytest.approx(want.item(), rel=1e-6)
    # Not the same-branch supervision.
    same = F.cross_entropy(s1, t1.argmax(1)) + F.cross_entropy(s2, t2.argmax(1))
    assert cps_loss(t1, t2, s1, s2).item() != pytest.approx(same.item(), rel=1e-3)


def test_build_sup_criterion():
    C = EasyDict(sup_loss="ohem", ohem_thresh=0.7, ohem_min_kept_per_image=50000)
    crit = build_sup_criterion(C, per_rank_batch=4)
    assert isinstance(crit, ProbOhemCrossEntropy2d)
    assert crit.min_kept == 200000 and crit.thresh == 0.7 and crit.weight is not None
    ce = build_sup_criterion(EasyDict(sup_loss="ce"), per_rank_batch=4)
    assert isinstance(ce, torch.nn.CrossEntropyLoss) and ce.ignore_index == 255
    with pytest.raises(CpclError, match="sup_loss"):
        build_sup_criterion(EasyDict(sup_loss="focal"), per_rank_batch=4)
    with pytest.raises(CpclError, match="per_rank_batch"):
        build_sup_criterion(C, per_rank_batch=0)


def _dist_worker(rank: int, world: int, init_file: str, l1, l2, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        half = l1.shape[0] // world
        conf = pseudo_label_confusion(
            l1[rank * half : (rank + 1) * half], l2[rank * half : (rank + 1) * half], 5
        )
        if rank == 0:
            torch.save(conf, result_file)
    finally:
        dist.destroy_process_group()


def test_confusion_all_reduce_equals_global_batch():
    g = torch.Generator().manual_seed(1)
    l1 = torch.randint(0, 5, (4, 6, 6), generator=g)
    l2 = torch.where(
        torch.rand(4, 6, 6, generator=g) < 0.5, l1, torch.randint(0, 5, (4, 6, 6), generator=g)
    )
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        result = os.path.join(tmp, "conf.pt")
        mp.spawn(_dist_worker, args=(2, init_file, l1, l2, result), nprocs=2, join=True)
        conf = torch.load(result, weights_only=True)
    want = pseudo_label_confusion(l1, l2, 5)
    assert torch.equal(conf, want)
    torch.testing.assert_close(disagreement_weight(conf), disagreement_weight(want))
