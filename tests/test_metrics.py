"""Metrics: official golden hist/IoU, a plain numpy reference, error cases, table format."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from conftest import load_golden

from cpcl.metrics import all_reduce_hist, confusion_matrix, format_iou_table, scores


def test_golden_metric(golden_dir):
    # Integer outputs must match exactly (golden README); the IoUs and means are float64 ratios
    # of those integers, for which the README documents no tolerance: measured distance 0.
    g = load_golden(golden_dir, "metric.pt")
    hist = confusion_matrix(g["pred"], g["gt"], g["num_classes"])
    assert hist.dtype == torch.int64
    assert torch.equal(hist, g["hist"])
    s = scores(hist)
    assert s["labeled"] == g["labeled"]
    assert s["correct"] == g["correct"]
    ref_iu = g["iu"].numpy()
    assert np.array_equal(np.isnan(s["iou"]), np.isnan(ref_iu))  # absent from both: NaN
    np.testing.assert_allclose(s["iou"], ref_iu, rtol=0, atol=1e-15, equal_nan=True)
    assert np.array_equal(s["iou"] == 0, ref_iu == 0)  # in only one of pred and gt: exactly 0
    assert s["miou"] == pytest.approx(g["mean_IU"], abs=1e-15)
    assert s["mean_IU"] == s["miou"]
    assert s["mean_IU_no_back"] == pytest.approx(g["mean_IU_no_back"], abs=1e-15)
    assert s["mean_pixel_acc"] == pytest.approx(g["mean_pixel_acc"], abs=1e-15)
    assert s["pixel_acc"] == s["mean_pixel_acc"]
    # The official evaluator keeps the hist as float64; scoring it must give the same.
    s_float = scores(g["hist"].double().numpy())
    assert s_float["labeled"] == g["labeled"] and s_float["miou"] == s["miou"]


def _numpy_reference(pred, gt, n):
    hist = np.zeros((n, n), dtype=np.int64)
    for p, t in zip(pred.ravel(), gt.ravel(), strict=True):
        if 0 <= t < n:
            hist[t, p] += 1
    iou = np.full(n, np.nan)
    for c in range(n):
        union = hist[c, :].sum() + hist[:, c].sum() - hist[c, c]
        if union:
            iou[c] = hist[c, c] / union
    return hist, iou


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_against_numpy_reference(seed):
    rng = np.random.RandomState(seed)
    n = 7
    gt = rng.randint(0, n, (23, 31))
    gt[rng.rand(23, 31) < 0.2] = 255
    gt[gt == 3] = 255  # class 3 absent from gt
    pred = rng.randint(0, n, (23, 31))
    pred[pred == 3] = 4  # ... and from pred: NaN
    pred[(gt == 255) & (rng.rand(23, 31) < 0.5)] = 200  # junk where ignored: not counted
    hist_ref, iou_ref = _numpy_reference(pred, gt, n)
    hist = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt).to(torch.uint8), n)
    assert torch.equal(hist, torch.from_numpy(hist_ref))
    s = scores(hist)
    np.testing.assert_allclose(s["iou"], iou_ref, rtol=1e-15, equal_nan=True)
    assert math.isnan(s["iou"][3])
    assert s["miou"] == pytest.approx(np.nanmean(iou_ref), rel=1e-14)
    assert s["pixel_acc"] == pytest.approx(np.trace(hist_ref) / hist_ref.sum(), rel=1e-14)
    # Batched (B,H,W) input counts the same as adding per-image hists.
    both = confusion_matrix(np.stack([pred, pred[::-1]]), np.stack([gt, gt[::-1]]), n)
    assert torch.equal(both, 2 * hist)


def test_prediction_out_of_range_is_an_error():
    gt = torch.tensor([[0, 1], [2, 255]])
    with pytest.raises(ValueError, match=r"prediction value 3 outside \[0, 3\)"):
        confusion_matrix(torch.tensor([[0, 1], [3, 0]]), gt, 3)
    with pytest.raises(ValueError, match="prediction value -1"):
        confusion_matrix(torch.tensor([[0, -1], [2, 0]]), gt, 3)
    # Out-of-range predictions at ignored pixels are fine (they are not counted).
    h = confusion_matrix(torch.tensor([[0, 1], [2, 9]]), gt, 3)
    assert torch.equal(h, torch.eye(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), gt, 3)


def test_empty_and_all_reduce_without_dist():
    s = scores(torch.zeros(4, 4, dtype=torch.int64))
    assert math.isnan(s["miou"]) and math.isnan(s["pixel_acc"]) and s["labeled"] == 0
    h = torch.arange(9).reshape(3, 3)
    assert all_reduce_hist(h) is h


def _reduce_worker(rank, world, init_file, q):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    h = torch.full((3, 3), rank + 1, dtype=torch.int64)
    out = all_reduce_hist(h)
    q.put((rank, out.tolist(), h.tolist()))
    dist.destroy_process_group()


def test_all_reduce_hist_sums_over_ranks(tmp_path):
    ctx = torch.multiprocessing.get_context("spawn")
    q = ctx.SimpleQueue()
    init = os.fspath(tmp_path / "init")
    procs = [ctx.Process(target=_reduce_worker, args=(r, 2, init, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(q.get() for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for rank, out, original in results:
        assert out == [[3] * 3] * 3  # 1 + 2
        assert original == [[rank + 1] * 3] * 3  # the input is not modified


def test_iou_table_format():
    iou = np.array([0.5, np.nan, 0.25])
    text = format_iou_table(iou, 0.75, ["background", "cat", "dog"])
    lines = text.splitlines()
    assert lines[0] == "1 background\t50.000%"
    assert lines[1] == "2 cat   \tnan%"
    assert lines[2] == "3 dog   \t25.000%"
    assert lines[3] == "-" * 28
    assert lines[4] == "mIou: 37.5%     mIoU(no_back): 25.0%      mACC: 75.0%"
    plain = format_iou_table(iou, 0.75, None, show_no_back=False).splitlines()
    assert plain[0] == "Class 1:\t50.000%" and plain[-1] == "mIoU: 37.5%     mACC: 75.0%"
