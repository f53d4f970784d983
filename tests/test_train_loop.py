"""The training loop end to end on tiny toy data: snapshots, logs, exact resume, failures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN, StopAfter

import cpcl.engine as engine
from cpcl.checkpoint import load_checkpoint
from cpcl.cli import train as train_cli
from cpcl.config import load_preset
from cpcl.engine.resolve import apply_overrides

TINY = list(TINY_TRAIN)


@pytest.fixture(scope="module")
def toy_root(toy_voc_small) -> Path:
    return toy_voc_small


def _config(toy_root: Path, run: Path, *extra: str):
    args = [*TINY, f"--dataset_path={toy_root}", f"--log_dir={run / 'log'}", *extra]
    return apply_overrides(load_preset("voc"), args)


def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_main_trains_and_writes_official_snapshots_and_logs(toy_root, tmp_path, capsys):
    args = [*TINY, f"--dataset_path={toy_root}", f"--log_dir={tmp_path / 'log'}"]
    assert train_cli.main(load_preset("voc"), args) == 0
    snap = tmp_path / "log" / "snapshot"
    # Official schedule with nepochs=2, snapshot_iter=1: only the last epoch (index 1).
    assert sorted(os.listdir(snap)) == ["epoch-1.pth", "epoch-last.pth"]
    state = load_checkpoint(snap / "epoch-1.pth")
    assert {"model", "optimizer_1", "optimizer_2", "epoch", "iteration"} <= set(state)
    assert state["epoch"] == 1 and state["iteration"] == 6 and state["next_epoch"] == 2
    assert state["config"]["backbone"] == "resnet18" and state["config"]["niters_per_epoch"] == 3
    # Both branches were trained: their classifiers moved away from each other's init.
    fresh = engine.Network(4, "resnet18").state_dict()
    assert not torch.equal(
        state["model"]["branch2.classifier.weight"], fresh["branch2.classifier.weight"]
    )
    log_dir = tmp_path / "log"
    assert json.loads((log_dir / "config.json").read_text())["num_classes"] == 4
    assert "git:" in (log_dir / "run_info.txt").read_text()
    text = next(log_dir.glob("train_*.log")).read_text()
    assert "epoch-1 (2/2): loss=" in text and "overlap=" in text
    assert any((log_dir / "tb").iterdir())


@pytest.fixture(scope="module")
def reference_run(toy_root, tmp_path_factory) -> dict[str, torch.Tensor]:
    """Final weights of an uninterrupted 2-epoch run."""
    run = tmp_path_factory.mktemp("full")
    full = engine.fit(_config(toy_root, run), root=str(run))
    assert not full["interrupted"] and len(full["epochs"]) == 2
    return _params(Path(full["snapshot_dir"]) / "epoch-last.pth")


@pytest.mark.parametrize("stop_after", [2, 3], ids=["mid-epoch", "epoch-boundary"])
def test_interrupt_then_resume_reproduces_uninterrupted_run(
    toy_root, tmp_path, monkeypatch, stop_after, reference_run
):
    reference = reference_run

    monkeypatch.setattr(engine.loop, "train_step", StopAfter(stop_after))
    part = engine.fit(_config(toy_root, tmp_path / "split"), root=str(tmp_path))
    assert part["interrupted"]
    snap = Path(part["snapshot_dir"])
    state = load_checkpoint(snap / "interrupted.pth")
    assert (state["next_epoch"], state["next_iter"]) == divmod(stop_after, 3)
    monkeypatch.undo()

    resumed = engine.fit(
        _config(toy_root, tmp_path / "split"),
        root=str(tmp_path),
        resume=str(snap / "interrupted.pth"),
    )
    assert not resumed["interrupted"]
    final = _params(snap / "epoch-last.pth")
    assert list(final) == list(reference)
    for key in reference:
        assert torch.equal(final[key], reference[key]), key  # bit-exact on CPU


def test_non_finite_loss_stops_with_iteration_and_parts(toy_root, tmp_path, monkeypatch):
    real = engine.train_step
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, iteration 2
            out = dict(out, loss_unsup_union=torch.tensor(float("nan")))
        return out

    monkeypatch.setattr(engine.loop, "train_step", poisoned)
    C = _config(toy_root, tmp_path)
    with pytest.raises(engine.NonFiniteLossError) as err:
        engine.fit(C, root=str(tmp_path))
    msg = str(err.value)
    assert "non-finite loss at iteration 4 (epoch-1, iteration 2 of 3)" in msg
    assert "loss_unsup_union=nan" in msg and "loss_sup_1=" in msg
    # The checkpoint of the last finished epoch is kept.
    state = load_checkpoint(tmp_path / "log" / "snapshot" / "epoch-last.pth")
    assert state["epoch"] == 0


def test_main_reports_user_errors_without_traceback(tmp_path, capsys):
    assert train_cli.main(load_preset("voc"), ["--nepoch=3"]) == 2
    assert "unknown config key --nepoch; did you mean --nepochs?" in capsys.readouterr().err
    missing = tmp_path / "nowhere"
    assert (
        train_cli.main(
            load_preset("voc"), [*TINY, f"--dataset_path={missing}", f"--log_dir={tmp_path}"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
