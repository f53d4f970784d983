"""scripts/bench_semisup.py: summary (gain, margin, target), parallelism flags, the chart."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_semisup", REPO / "scripts/bench_semisup.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _results(table: dict[str, list[float]]) -> dict[tuple[str, int], tuple[float, float]]:
    return {(m, s): (v / 100, 10.0) for m, vs in table.items() for s, v in enumerate(vs)}


def test_summary_gain_margin_and_target(bench):
    table = {"sup": [30.0, 34.0, 32.0], "cps": [40.0, 38.0, 42.0], "cpcl": [36.0, 50.0, 40.0]}
    rows = {r["method"]: r for r in bench.summarize(_results(table), list(table), [0, 1, 2])}
    assert "gain_over_sup" not in rows["sup"] and rows["sup"]["miou_mean"] == pytest.approx(32.0)
    assert rows["cps"]["gain_over_sup"] == pytest.approx(8.0)
    assert rows["cps"]["margin_over_best_sup"] == pytest.approx(4.0)  # 38 - 34
    assert rows["cps"]["target_met"]
    # A large mean gain does not hide a seed that is not above every sup seed... (36 > 34 here)
    assert rows["cpcl"]["margin_over_best_sup"] == pytest.approx(2.0) and rows["cpcl"]["target_met"]
    table["cpcl"][0] = 33.0  # ...but one seed below the best sup seed misses the target
    rows = {r["method"]: r for r in bench.summarize(_results(table), list(table), [0, 1, 2])}
    assert rows["cpcl"]["margin_over_best_sup"] == pytest.approx(-1.0)
    assert not rows["cpcl"]["target_met"]
    table["cps"] = [36.0, 35.0, 36.0]  # above every sup seed, but a mean gain under 5 points
    rows = {r["method"]: r for r in bench.summarize(_results(table), list(table), [0, 1, 2])}
    assert not rows["cps"]["target_met"]
    assert "MISSED" in bench.format_table(list(rows.values()))


def test_parallelism_defaults(bench, monkeypatch):
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    parser = argparse.ArgumentParser()
    for given, expected in (
        ((None, None), (4, 1)),
        ((None, 2), (2, 2)),
        ((1, None), (1, 4)),
        ((3, 3), (3, 3)),
    ):
        args = argparse.Namespace(jobs=given[0], threads=given[1])
        bench._resolve_parallelism(parser, args)
        assert (args.jobs, args.threads) == expected
    with pytest.raises(SystemExit):
        bench._resolve_parallelism(parser, argparse.Namespace(jobs=0, threads=None))


def test_overall_target_needs_compared_rows(bench):
    only_sup = bench.summarize(_results({"sup": [30.0, 31.0]}), ["sup"], [0, 1])
    assert bench.overall_target(only_sup) is None
    no_sup = bench.summarize(_results({"cps": [40.0, 41.0]}), ["cps"], [0, 1])
    assert "target_met" not in no_sup[0] and bench.overall_target(no_sup) is None
    table = {"sup": [30.0, 31.0], "cps": [40.0, 41.0], "cpcl": [30.5, 45.0]}
    rows = bench.summarize(_results(table), list(table), [0, 1])
    assert bench.overall_target(rows) is False
    assert "MISSED" in bench.format_table(no_sup + rows) and "met" in bench.format_table(rows)


def test_run_one_settings_and_snapshot_cleanup(bench, tmp_path, monkeypatch):
    """A run trains with the protocol's keys plus the method's own lr, returns the evaluated
    mIoU and deletes its snapshots (15 runs x ~270 MB would otherwise pile up in the temp dir)."""
    seen = {}
    snap = tmp_path / "snap"

    def fake_fit(C, root):
        seen["lr"], seen["method"], seen["seed"] = C.lr, C.method, C.seed
        snap.mkdir()
        (snap / "epoch-last.pth").write_bytes(b"x")
        return {"snapshot_dir": str(snap)}

    monkeypatch.setattr(bench, "fit", fake_fit)
    monkeypatch.setattr(bench, "finalize", lambda C, root: C)
    monkeypatch.setattr(bench, "evaluate_snapshot", lambda *a, **k: {"miou": 0.25})
    out = str(tmp_path / "run")
    for method, lr in (("cps", 0.01), ("u2pl", 0.001)):
        miou = bench.run_one(method, 3, str(tmp_path), str(tmp_path / "bb.pth"), out, [])
        assert miou == 0.25 and not snap.exists()
        assert seen == {"lr": pytest.approx(lr), "method": method, "seed": 3}


def test_control_row_runs_unimatch_v2_without_pseudo_labels(bench, tmp_path, monkeypatch):
    """`sup_dinov2` trains UniMatch V2 with every `unimatch_v2` override plus a confidence
    threshold of 1.0; it is not judged against `sup`, and the `unimatch_v2` row gets its
    per-seed difference to it."""
    seen = {}

    def fake_fit(C, root):
        seen.update(method=C.method, lr=C.lr, crop=C.image_height, thresh=C.unimatch_v2_conf_thresh)
        (tmp_path / "snap").mkdir(exist_ok=True)
        return {"snapshot_dir": str(tmp_path / "snap")}

    monkeypatch.setattr(bench, "fit", fake_fit)
    monkeypatch.setattr(bench, "finalize", lambda C, root: C)
    monkeypatch.setattr(bench, "evaluate_snapshot", lambda *a, **k: {"miou": 0.5})
    runs = {}
    for row in ("unimatch_v2", "sup_dinov2"):
        bench.run_one(row, 0, str(tmp_path), str(tmp_path / "bb.pth"), str(tmp_path / row), [])
        runs[row] = dict(seen)
    assert runs["sup_dinov2"] == {**runs["unimatch_v2"], "thresh": 1.0}
    assert runs["unimatch_v2"]["method"] == "unimatch_v2" and runs["unimatch_v2"]["thresh"] < 1
    table = {"sup": [20.0, 22.0], "unimatch_v2": [40.0, 30.0], "sup_dinov2": [35.0, 36.0]}
    rows = {r["method"]: r for r in bench.summarize(_results(table), list(table), [0, 1])}
    assert "target_met" not in rows["sup_dinov2"] and "gain_over_sup" not in rows["sup_dinov2"]
    assert rows["unimatch_v2"]["gain_over_sup_dinov2_per_seed"] == pytest.approx([5.0, -6.0])
    assert rows["unimatch_v2"]["target_met"]
    assert "minus sup_dinov2" in bench.format_table(list(rows.values()))


def test_plot_from_a_saved_result_redraws_the_chart(bench, tmp_path):
    """`--plot-from` draws the chart from a saved JSON line (alone or at the end of a saved
    output) without training; the PNG has one group per method."""
    from PIL import Image

    table = {"sup": [20.0, 21.0, 22.0], "cps": [30.0, 35.0, 33.0]}
    rows = bench.summarize(_results(table), list(table), [0, 1, 2])
    line = json.dumps({"bench": "semisup", "seeds": [0, 1, 2], "pretrain_seed": 0,
                       "threads": 1, "settings": ["--labeled_ratio=16"], "results": rows})  # fmt: skip
    saved = tmp_path / "out.txt"
    saved.write_text(f"sup seed 0: mIoU 20.00%\n{line}\nchart: x\n")
    assert bench.load_result(str(saved))["results"] == rows
    assert bench.main(["--plot-from", str(saved), "--plot", str(tmp_path / "c.png")]) == 0
    image = Image.open(tmp_path / "c.png")
    assert image.size[0] >= 420 and image.size[1] > 300
    (tmp_path / "r.json").write_text(line + "\n")
    assert bench.main(["--plot-from", str(tmp_path / "r.json")]) == 0
    assert (tmp_path / "r.png").exists()  # default: next to the JSON
    (tmp_path / "other.json").write_text('{"bench": "train"}\n')
    for bad, message in (("other.json", "not a bench_semisup result"), ("none", "cannot read")):
        with pytest.raises(SystemExit, match=message):
            bench.load_result(str(tmp_path / bad))


def test_committed_chart_data_is_consistent():
    """docs/bench_semisup_seed0.json (the chart in the README): every mean is the mean of its
    seeds (to the 2-decimal rounding of the seeds) and every method met the target."""
    result = json.loads((REPO / "docs" / "bench_semisup_seed0.json").read_text())
    assert result["bench"] == "semisup" and result["seeds"] == [0, 1, 2]
    sup = next(r for r in result["results"] if r["method"] == "sup")["per_seed"]
    for row in result["results"]:
        assert row["miou_mean"] == pytest.approx(sum(row["per_seed"]) / 3, abs=0.01)
        if row["method"] != "sup":
            assert row["target_met"] and min(row["per_seed"]) > max(sup)


def test_a_run_writes_its_chart_and_result_line(bench, tmp_path, monkeypatch, capsys):
    """After the table, a run saves the JSON line next to the chart, so `--plot-from` can
    redraw it later."""
    table = {"sup": [20.0, 21.0], "cps": [30.0, 35.0]}
    monkeypatch.setattr(bench, "is_complete", lambda *a: True)
    monkeypatch.setattr(bench, "pretrain_toy_backbone", lambda *a, **k: None)
    monkeypatch.setattr(bench, "run_all", lambda args, extra: _results(table))
    plot = tmp_path / "out" / "chart.png"
    argv = ["--methods", "sup", "cps", "--seeds", "0", "1", "--plot", str(plot), "--jobs", "1"]
    assert bench.main(argv) == 0
    saved = json.loads(plot.with_suffix(".json").read_text())
    printed = json.loads(next(ln for ln in capsys.readouterr().out.splitlines() if ln[:1] == "{"))
    assert saved == printed and plot.stat().st_size > 0
    assert [r["per_seed"] for r in saved["results"]] == [[20.0, 21.0], [30.0, 35.0]]


def test_weak_summary_cosa_against_the_cam_baseline(bench):
    """--weak: CoSA's row is judged per seed against the CAM baseline (>= WEAK_TARGET points on
    every seed); the weak rows are shown next to sup but not judged against it."""
    table = {"sup": [30.0, 31.0, 32.0], "cam": [20.0, 22.0, 21.0], "cosa": [26.0, 28.0, 27.0]}
    rows = {r["method"]: r for r in bench.summarize(_results(table), list(table), [0, 1, 2])}
    assert rows["cosa"]["gain_over_cam_per_seed"] == pytest.approx([6.0, 6.0, 6.0])
    assert rows["cosa"]["target_met"] and "gain_over_sup" not in rows["cosa"]
    assert "target_met" not in rows["cam"] and "gain_over_sup" not in rows["cam"]
    table["cosa"][1] = 26.5  # one seed only 4.5 points above its CAM baseline
    rows = bench.summarize(_results(table), list(table), [0, 1, 2])
    assert bench.overall_target(rows) is False
    assert "over the CAM baseline per seed: +6.00 +4.50 +6.00" in bench.format_table(rows)


def test_weak_summary_cosa_against_the_best_cam_of_each_run(bench):
    """CoSA's Seg_vd against the better of the main and the aux CAM, of its own run and of the
    CAM baseline's run (issue #29: the aux CAM may score as high as the segmentation)."""
    table = {"cam": [20.0, 22.0], "cosa": [26.0, 28.0]}
    results = _results(table)
    for s, (cam, aux) in enumerate([(20.0, 27.0), (22.0, 21.0)]):
        results[("cam", s)] = (*results[("cam", s)], {"cam": cam, "cam_aux": aux})
    for s, (cam, aux) in enumerate([(24.0, 25.5), (30.0, 12.0)]):
        results[("cosa", s)] = (*results[("cosa", s)], {"seg_vd": 0.0, "cam": cam, "cam_aux": aux})
    row = {r["method"]: r for r in bench.summarize(results, list(table), [0, 1])}["cosa"]
    assert row["best_own_cam_per_seed"] == [25.5, 30.0]
    assert row["seg_minus_best_own_cam_per_seed"] == [0.5, -2.0]
    assert row["best_baseline_cam_per_seed"] == [27.0, 22.0]
    assert row["seg_minus_best_baseline_cam_per_seed"] == [-1.0, 6.0]
    text = bench.format_table(list(bench.summarize(results, list(table), [0, 1])))
    assert "minus the best CAM (main or aux) of its own run: +0.50 -2.00" in text
    assert "minus the best CAM (main or aux) of the CAM baseline's run: -1.00 +6.00" in text
    # Runs without scores (older results): no such comparison.
    assert "best_own_cam_per_seed" not in bench.summarize(_results(table), list(table), [0, 1])[1]


@pytest.mark.parametrize(
    "name", ["bench_semisup_unimatch_v2.json", "bench_semisup_unimatch_v2_seeds10-15.json"]
)
def test_committed_unimatch_v2_rows_match_the_current_settings(bench, name):
    """The UniMatch V2 toy rows in docs/methods/unimatch_v2.md: measured with the settings the
    script runs today (`row_settings`), every mean the mean of its seeds, the control's
    per-seed differences consistent, and the target met on every seed."""
    result = json.loads((REPO / "docs" / name).read_text())
    rows = {r["method"]: r for r in result["results"]}
    assert set(rows) == {"sup", "unimatch_v2", "sup_dinov2"}
    for row in ("unimatch_v2", "sup_dinov2"):
        assert result["row_settings"][row] == list(bench._row_overrides(row))
    n = len(result["seeds"])
    for row in rows.values():
        assert row["miou_mean"] == pytest.approx(sum(row["per_seed"]) / n, abs=0.01)
    v2, control = rows["unimatch_v2"]["per_seed"], rows["sup_dinov2"]["per_seed"]
    diffs = [a - b for a, b in zip(v2, control, strict=True)]
    assert rows["unimatch_v2"]["gain_over_sup_dinov2_per_seed"] == pytest.approx(diffs, abs=0.011)
    assert rows["unimatch_v2"]["target_met"] and min(v2) > max(rows["sup"]["per_seed"])
