"""What train.py checks and tells before and after the work: output folders, stale temp
files, epoch numbers, the end-of-run pointers, the worker count default, weights-only snapshots.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

from conftest import TINY_TRAIN

import cpcl.engine as engine
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
    monkeypatch.setattr(engine, "train_step", steps)
    args = _args(toy_voc_small, tmp_path, f"--snapshot_dir={snap}")
    assert engine.main(load_preset("voc"), args) == 2
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

    monkeypatch.setattr(engine, "train_step", stop)
    assert engine.main(load_preset("voc"), _args(toy_voc_small, tmp_path)) == 2
    assert not stale.exists()
