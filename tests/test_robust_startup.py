"""What train.py checks and tells before and after the work: output folders, stale temp
files, epoch numbers, the end-of-run pointers, the worker count default, weights-only snapshots.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import TINY_TRAIN

import cpcl.engine as engine
from cpcl.checkpoint import load_checkpoint
from cpcl.cli import train as train_cli
from cpcl.config import load_preset
from cpcl.fileio import _host


def _args(toy: Path, run: Path, *extra: str) -> list[str]:
    return [*TINY_TRAIN, f"--dataset_path={toy}", f"--log_dir={run / 'log'}", *extra]


class _CountSteps:
    def __init__(self) -> None:
        self.calls, self.real = 0, engine.train_step

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


def test_read_only_snapshot_dir_fails_before_training(toy_voc_small, tmp_path, monkeypatch, capsys):
    snap = tmp_path / "snap"
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):  # EROFS under `snap`, as a ro mount
        if Path(os.fspath(path)).resolve().is_relative_to(snap.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    steps = _CountSteps()
    monkeypatch.setattr(engine.loop, "train_step", steps)
    args = _args(toy_voc_small, tmp_path, f"--snapshot_dir={snap}")
    assert train_cli.main(load_preset("voc"), args) == 2
    err = capsys.readouterr().err
    assert f"snapshot folder (C.snapshot_dir) is not writable: {snap}" in err
    assert "Read-only file system" in err and "Traceback" not in err
    assert steps.calls == 0  # nothing trained first


def test_stale_temp_of_a_killed_save_is_removed_at_start(toy_voc_small, tmp_path, monkeypatch):
    snap = tmp_path / "log" / "snapshot"
    snap.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # a writer that has exited
    dead.wait()
    stale = snap / f".epoch-last.pth.cpcl-{_host()}-{dead.pid}-0123abcd.tmp"
    stale.write_bytes(b"x" * 1000)

    def stop(*args, **kwargs):  # fail before any save: only the start-up can clean
        raise engine.CpclError("stopped by the test")

    monkeypatch.setattr(engine.loop, "train_step", stop)
    assert train_cli.main(load_preset("voc"), _args(toy_voc_small, tmp_path)) == 2
    assert not stale.exists()


def test_epoch_numbers_end_pointers_and_weights_only_snapshots(toy_voc_small, tmp_path, capsys):
    args = _args(toy_voc_small, tmp_path, "--snapshot_weights_only=true")
    assert train_cli.main(load_preset("voc"), args) == 0
    snap = tmp_path / "log" / "snapshot"
    assert sorted(os.listdir(snap)) == ["epoch-1.pth", "epoch-last.pth"]
    # The log names the epoch as the snapshot does (0-based), then the progress.
    text = next((tmp_path / "log").glob("train_*.log")).read_text()
    assert "epoch-0 (1/2): loss=" in text and "epoch-1 (2/2): loss=" in text
    assert f"saved epoch-last.pth, epoch-1.pth in {snap}" in text
    # train.py ends with the snapshot folder and the command that evaluates the last one.
    out = capsys.readouterr().out
    assert f"snapshots: {snap}" in out
    assert "eval.py -e " + str(snap / "epoch-1.pth") in out and "--backbone=resnet18" in out
    # Numbered snapshots: weights only, half the size; epoch-last.pth stays complete.
    numbered, last = load_checkpoint(snap / "epoch-1.pth"), load_checkpoint(snap / "epoch-last.pth")
    assert numbered["weights_only"] is True and "optimizer_1" not in numbered
    assert numbered["epoch"] == last["epoch"] == 1
    assert all(torch.equal(numbered["model"][k], v) for k, v in last["model"].items())
    assert {"optimizer_1", "optimizer_2", "rng"} <= set(last) and not last.get("weights_only")
    assert (snap / "epoch-1.pth").stat().st_size < 0.7 * (snap / "epoch-last.pth").stat().st_size
    # Resuming from a weights-only file is a named error that points at epoch-last.pth.
    assert train_cli.main(load_preset("voc"), [*args, "-c", str(snap / "epoch-1.pth")]) == 2
    err = capsys.readouterr().err
    assert "weights-only snapshot" in err and "epoch-last.pth" in err


def test_num_workers_default_is_at_most_the_usable_cpus(monkeypatch):
    import cpcl.presets.common as common

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert load_preset("voc").num_workers == 2 == common.usable_cpus()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert load_preset("cityscapes").num_workers == 4  # the official value as the upper bound
