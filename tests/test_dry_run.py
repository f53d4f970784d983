"""`train.py --dry_run`: the settings table, the checks, one real iteration, every problem listed."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import torch
from conftest import TINY_TRAIN

import cpcl.engine as engine
from cpcl.cli import train as train_cli
from cpcl.config import load_preset
from cpcl.models.resnet import resnet18


def _args(toy: Path, run: Path, *extra: str) -> list[str]:
    return ["--dry_run", *TINY_TRAIN, f"--dataset_path={toy}", f"--log_dir={run / 'log'}", *extra]


class _CountSteps:
    def __init__(self) -> None:
        self.calls, self.real = 0, engine.train_step

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


def test_dry_run_prints_the_table_runs_one_iteration_and_exits_0(
    toy_voc_small, tmp_path, capsys, monkeypatch
):
    steps = _CountSteps()
    monkeypatch.setattr("cpcl.engine.dry_run.train_step", steps)
    assert train_cli.main(load_preset("voc"), _args(toy_voc_small, tmp_path)) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("key "))
    assert [c.strip() for c in header.split("|")] == [
        "key",
        "value",
        "official value",
        "where it came from",
    ]
    # A command-line value, its official (preset) value and its origin on one row.
    row = next(line for line in out.splitlines() if line.startswith("backbone "))
    assert [c.strip() for c in row.split("|")] == [
        "backbone",
        "'resnet18'",
        "'resnet50'",
        "command line",
    ]
    row = next(line for line in out.splitlines() if line.startswith("lr "))
    assert [c.strip() for c in row.split("|")] == ["lr", "0.005", "0.005", "dataset preset"]
    assert steps.calls == 1  # exactly ONE training iteration
    assert "one iteration (batch 2 per process, crop 32x32, cpu)" in out
    assert "CPU peak RSS" in out
    # 2 epochs x 3 iterations (TINY_TRAIN) projected from the measured iteration.
    assert "projected training time: 6 iterations (2 epochs x 3)" in out
    assert "dry run: no problem found" in out
    assert not (tmp_path / "log" / "snapshot" / "epoch-last.pth").exists()


def test_dry_run_lists_every_problem_and_exits_1(toy_voc_small, tmp_path, capsys, monkeypatch):
    toy = tmp_path / "toy"
    shutil.copytree(toy_voc_small, toy)
    # 1. a missing list: the unlabeled split of 1/4.
    unlabeled = toy / "subset_train_aug" / "train_aug_unlabeled_1-4.txt"
    unlabeled.unlink()
    # 2. a truncated image: the first one of the labeled list (always in the sample).
    labeled = toy / "subset_train_aug" / "train_aug_labeled_1-4.txt"
    first = labeled.read_text().split()[0]
    image = toy / "train_aug" / "image" / f"{first}.jpg"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    # 3. an unwritable snapshot folder (EROFS, as a read-only mount: root ignores modes).
    snap = tmp_path / "snap"
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):
        if Path(os.fspath(path)).resolve().is_relative_to(snap.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, flags, *args, **kwargs)

    # 4. a weights file that does not fit the network (ResNet-18 keys for a ResNet-34).
    weights = tmp_path / "resnet18.pth"
    torch.save(resnet18(deep_stem=True, stem_width=64, output_stride=16).state_dict(), weights)
    monkeypatch.setattr(os, "open", read_only_open)
    steps = _CountSteps()
    monkeypatch.setattr("cpcl.engine.dry_run.train_step", steps)
    args = [a for a in _args(toy, tmp_path) if not a.startswith("--pretrained_model")]
    args += [f"--snapshot_dir={snap}", f"--pretrained_model={weights}", "--backbone=resnet34"]
    assert train_cli.main(load_preset("voc"), args) == 1
    out = capsys.readouterr().out
    assert "dry run: 4 problem(s):" in out
    report = out[out.index("dry run: 4 problem(s):") :]
    assert f"split list not found: {unlabeled}" in report
    assert f"cannot use image {image}" in report and "truncated JPEG" in report
    assert f"snapshot folder (C.snapshot_dir) is not writable: {snap}" in report
    assert f"C.pretrained_model = {weights}: not the file this network loads" in report
    assert steps.calls == 0  # no iteration on a broken run


def test_dry_run_names_the_missing_weights_file(toy_voc_small, tmp_path, capsys):
    args = [a for a in _args(toy_voc_small, tmp_path) if not a.startswith("--pretrained_model")]
    assert train_cli.main(load_preset("voc"), args) == 1
    out = capsys.readouterr().out
    assert "dry run: 1 problem(s):" in out
    assert "DATA/pytorch-weight/resnet50_v1c.pth: file not found" in out
    assert "where it comes from: the CPCL README" in out
