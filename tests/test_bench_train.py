"""The pure parts of the training benchmark (`scripts/bench_train.py`, `scripts/bench_rounds.py`):
options (method choices from the registry), setting groups, synthetic batches for every
registered method's batch keys, summaries, paired ratios and the table. Nothing is timed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_train
from bench_rounds import SideResult, paired_ratio, summarize

from cpcl.methods import get_method, method_names


def test_method_choices_come_from_the_registry():
    args = bench_train.parse_args(["--method", *method_names(), "--amp", "none", "bf16"])
    assert args.method == list(method_names())
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--method", "nosuch"])
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--rounds", "0"])


def test_settings_are_grouped_by_method_and_labelled():
    args = bench_train.parse_args(
        ["--method", "cpcl", "sup", "--amp", "none", "bf16", "--channels-last", "off", "on"]
    )
    groups = bench_train.specs_from_args(args)
    assert [g[0].method for g in groups] == ["cpcl", "sup"]
    assert [s.label for s in groups[0]] == [
        "cpcl fp32",
        "cpcl bf16",
        "cpcl fp32 cl",
        "cpcl bf16 cl",
    ]


@pytest.mark.parametrize("name", method_names())
def test_synthetic_batch_covers_every_method(name):
    spec = bench_train.specs_from_args(bench_train.parse_args(["--method", name, "--crop", "32"]))[
        0
    ][0]
    keys = get_method(name).batch_keys
    batch = bench_train.synthetic_batch(keys, spec, num_classes=21)
    assert set(batch) == set(keys)
    for key, value in batch.items():
        if key == "img_box":
            assert value.tolist() == [[0, 32, 0, 32]] * 2
        elif key.startswith("img") or key in ("wimg", "simg"):
            assert value.shape == (2, 3, 32, 32) and value.dtype == torch.float32
        if key == "cls_label":
            assert value.shape == (2, 20) and value.sum(1).tolist() == [1.0, 2.0]
        if key == "gt":
            assert value.dtype == torch.int64 and set(value.unique().tolist()) <= {*range(21), 255}
    with pytest.raises(ValueError, match="weird"):
        bench_train.synthetic_batch(("weird",), spec, 21)


def test_summary_ratio_table_and_json():
    fast = SideResult(
        "cpcl bf16", rounds=[[0.10, 0.12], [0.20, 0.22]], peak_mb=100.0, info={"final_loss": 1.0}
    )
    slow = SideResult("cpcl fp32", rounds=[[0.30, 0.30], [0.40, 0.40]], peak_mb=200.0)
    s = summarize(fast)
    assert s["ms_median"] == pytest.approx(160.0) and (s["ms_round_min"], s["ms_round_max"]) == (
        110.0,
        210.0,
    )
    assert s["rounds"] == 2 and s["iters"] == 4 and s["final_loss"] == 1.0
    r = paired_ratio(slow, fast)  # per round: 0.30/0.11, 0.40/0.21
    assert r["min"] == pytest.approx(0.4 / 0.21, abs=1e-3) and r["max"] == pytest.approx(
        0.3 / 0.11, abs=1e-3
    )
    broken = SideResult("c", error="Traceback\nRuntimeError: boom")
    assert "boom" in summarize(broken)["error"] and paired_ratio(broken, fast) is None
    group = bench_train.specs_from_args(
        bench_train.parse_args(["--amp", "none", "bf16", "--batch", "4"])
    )[0]
    rows = bench_train.result_rows(group, [slow, fast])
    assert rows[1]["labelled_img_per_s"] == pytest.approx(4 / 0.16, abs=1e-3)
    assert rows[1]["speedup_vs_first"]["ratio"] > 1
    table = bench_train.format_table(rows + bench_train.result_rows(group[:1], [broken]))
    assert "cpcl bf16" in table and "RuntimeError: boom" in table
    json.dumps(rows)  # the JSON line must serialise


def test_config_overrides_reach_the_method_config():
    args = bench_train.parse_args(
        ["--method", "cpcl", "--crop", "48", "--set", "fused_teacher=true", "sup_loss=ohem"]
    )
    spec = bench_train.specs_from_args(args)[0][0]
    C = bench_train.build_config(spec)
    assert C.fused_teacher is True and C.sup_loss == "ohem"
    assert (C.image_height, C.image_width, C.backbone, C.method) == (48, 48, "resnet50", "cpcl")
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--set", "fused_teacher"])
    step = bench_train.steady_step(bench_train.build_config(spec))
    assert 0 < step.epoch < C.nepochs and step.iteration == step.epoch * step.iters_per_epoch + 1
