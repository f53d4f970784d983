"""Eval CLI: `-e` resolution, devices, an end-to-end run on a tiny VOC tree, error exits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from cpcl.checkpoint import save_checkpoint
from cpcl.cli.evaluate import main
from cpcl.config import load_preset
from cpcl.data.datasets import build_dataset, voc_palette
from cpcl.engine.resolve import finalize
from cpcl.errors import CpclError
from cpcl.evaluate import evaluate_dataset
from cpcl.evaluate.checkpoints import parse_devices, resolve_checkpoints
from cpcl.models import Network

# ------------------------------------------------------------------ -e resolution


@pytest.fixture()
def snapdir(tmp_path):
    snap = tmp_path / "snapshot"
    snap.mkdir()
    for k in (1, 2, 3, 10, 12):
        (snap / f"epoch-{k}.pth").write_bytes(b"")
    (snap / "epoch-last.pth").write_bytes(b"")
    (snap / "notes.txt").write_text("not a checkpoint")
    return snap


def _epochs(items):
    return [(p.name, k) for p, k in items]


def test_resolve_single_range_open_last_and_file(snapdir, tmp_path):
    assert _epochs(resolve_checkpoints("3", snapdir)) == [("epoch-3.pth", 3)]
    # Numeric, not lexicographic, order; the range is inclusive on both ends.
    assert _epochs(resolve_checkpoints("2-10", snapdir)) == [
        ("epoch-2.pth", 2),
        ("epoch-3.pth", 3),
        ("epoch-10.pth", 10),
    ]
    assert _epochs(resolve_checkpoints("3-", snapdir)) == [
        ("epoch-3.pth", 3),
        ("epoch-10.pth", 10),
        ("epoch-12.pth", 12),
    ]  # epoch-last.pth is never part of a range
    assert _epochs(resolve_checkpoints("3-3", snapdir)) == [("epoch-3.pth", 3)]
    assert _epochs(resolve_checkpoints("last", snapdir)) == [("epoch-last.pth", None)]
    other = tmp_path / "elsewhere" / "my.pth"
    other.parent.mkdir()
    other.write_bytes(b"")
    assert resolve_checkpoints(str(other), snapdir) == [(other, None)]
    assert resolve_checkpoints(str(snapdir / "epoch-12.pth"), "/nonexistent") == [
        (snapdir / "epoch-12.pth", 12)
    ]


def test_resolve_errors(snapdir, tmp_path):
    with pytest.raises(CpclError, match=r"no epoch-K.pth with 20 <= K <= 30 in .*snapshot"):
        resolve_checkpoints("20-30", snapdir)
    with pytest.raises(CpclError, match=r"no epoch-K.pth with K >= 13"):
        resolve_checkpoints("13-", snapdir)
    with pytest.raises(CpclError, match=r"epoch-7.pth not found .*epoch-1.pth"):
        resolve_checkpoints("7", snapdir)
    with pytest.raises(CpclError, match="snapshot folder not found"):
        resolve_checkpoints("3", tmp_path / "missing")
    with pytest.raises(CpclError, match="checkpoint file not found"):
        resolve_checkpoints(str(tmp_path / "nope.pth"), snapdir)
    with pytest.raises(CpclError, match="below its start"):
        resolve_checkpoints("5-2", snapdir)
    with pytest.raises(CpclError, match=r"expected X\.pth"):
        resolve_checkpoints("latest", snapdir)


def test_parse_devices():
    assert parse_devices("cpu") == [torch.device("cpu")]
    assert parse_devices(None)[0].type in ("cpu", "cuda")
    with pytest.raises(CpclError, match="expected cpu, or GPU indices"):
        parse_devices("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(CpclError, match="CUDA is not available"):
            parse_devices("0,1")


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def voc_tree(tmp_path_factory):
    """A tiny dataset in the CPS VOC layout: val/image/*.jpg, val/label/*.png, val.txt."""
    root = tmp_path_factory.mktemp("voc")
    rng = np.random.RandomState(3)
    names = ["2007_000001", "2007_000002"]
    for name, (h, w) in zip(names, [(50, 70), (64, 40)], strict=True):
        (root / "val" / "image").mkdir(parents=True, exist_ok=True)
        (root / "val" / "label").mkdir(parents=True, exist_ok=True)
        img = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
        cv2.imwrite(str(root / "val" / "image" / f"{name}.jpg"), img)
        lab = rng.randint(0, 21, (h, w)).astype(np.uint8)
        lab[:4] = 255
        png = Image.fromarray(lab, mode="P")
        png.putpalette(voc_palette().reshape(-1).tolist())
        png.save(root / "val" / "label" / f"{name}.png")
    (root / "val.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    snap = tmp_path_factory.mktemp("snap")
    torch.manual_seed(1)
    for epoch in (2, 3):
        model = Network(21, backbone="resnet18")
        save_checkpoint(snap / f"epoch-{epoch}.pth", model, epoch=epoch, iteration=10 * epoch)
    wrong = Network(19, backbone="resnet18")
    save_checkpoint(snap / "city.pth", wrong, epoch=1)
    return snap


def _argv(voc_tree, snapshot, log_dir, *extra):
    return [
        *extra,
        "-d",
        "cpu",
        f"--dataset_path={voc_tree}",
        f"--snapshot_dir={snapshot}",
        f"--log_dir={log_dir}",
        "--backbone=resnet18",
        "--eval_crop_size=48",
    ]


def test_main_end_to_end(voc_tree, snapshot, tmp_path, capsys):
    out = tmp_path / "preds"
    argv = _argv(voc_tree, snapshot, tmp_path / "log", "-e", "2-", "-p", str(out))
    assert main(load_preset("voc"), argv, root=str(tmp_path)) == 0
    stdout = capsys.readouterr().out
    records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert [r["epoch"] for r in records] == [2, 3]
    assert records[0]["checkpoint"] == str(snapshot / "epoch-2.pth")
    assert len(records[0]["per_class"]) == 21 and "aeroplane" in records[0]["per_class"]

    # The JSON values equal a direct evaluation of the same snapshot.
    C = finalize(load_preset("voc"), root=str(tmp_path))
    C.dataset_path, C.eval_source = str(voc_tree), str(voc_tree / "val.txt")
    model = Network(21, backbone="resnet18")
    model.load_state_dict(torch.load(snapshot / "epoch-3.pth", weights_only=True)["model"])
    ref = evaluate_dataset(
        model,
        build_dataset(C, "val"),
        num_classes=21,
        crop_size=48,
        stride_rate=2 / 3,
        scales=(1.0,),
        flip=False,
        mean=C.image_mean,
        std=C.image_std,
        device="cpu",
        progress=False,
    )
    assert records[1]["mIoU"] == pytest.approx(ref["miou"], rel=1e-12)
    assert records[1]["pixel_acc"] == pytest.approx(ref["pixel_acc"], rel=1e-12)
    iou = [records[1]["per_class"][k] for k in records[1]["per_class"]]
    assert [v is None for v in iou] == list(np.isnan(ref["iou"]))
    assert "1 background\t" in stdout and "mIoU(no_back)" in stdout

    # Logs: one timestamped file with both checkpoints, mirrored by val_last.log.
    logs = sorted(os.listdir(tmp_path / "log"))
    stamped = [n for n in logs if n.startswith("val_") and n != "val_last.log"]
    assert len(stamped) == 1 and "val_last.log" in logs and "tb" in logs
    text = (tmp_path / "log" / stamped[0]).read_text()
    assert text == (tmp_path / "log" / "val_last.log").read_text()
    assert text.count("Model: ") == 2 and f"Model: {snapshot / 'epoch-3.pth'}" in text
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "log" / "tb"))

    # Exports (from the last checkpoint): raw ids and palette PNGs with the image size.
    raw = cv2.imread(str(out / "2007_000002.png"), cv2.IMREAD_UNCHANGED)
    assert raw.shape == (64, 40) and raw.dtype == np.uint8 and raw.max() < 21
    color = Image.open(Path(str(out) + "_color") / "2007_000002.png")
    assert color.mode == "P" and np.array_equal(np.array(color), raw)


def test_main_errors(voc_tree, snapshot, tmp_path, capsys):
    def run(*extra):
        rc = main(load_preset("voc"), _argv(voc_tree, snapshot, tmp_path / "log", *extra))
        return rc, capsys.readouterr().err

    rc, err = run("-e", str(snapshot / "city.pth"))
    assert rc == 2 and "city.pth" in err and "19 classes" in err and "is 21" in err
    assert "Traceback" not in err
    rc, err = run("-e", "40-50")
    assert rc == 2 and "no epoch-K.pth with 40 <= K <= 50" in err
    rc, err = run("-e", "2", "--eval_flipp=true")
    assert rc == 2 and "unknown config key --eval_flipp" in err
    rc, err = run("-e", "2", "--labelids")
    assert rc == 2 and "only for Cityscapes" in err
    rc = main(load_preset("voc"), ["-e", "2", "-d", "cpu", f"--snapshot_dir={tmp_path}/none"])
    assert rc == 2 and "snapshot folder not found" in capsys.readouterr().err


def test_device_from_config_and_sharded_processes(voc_tree, snapshot, tmp_path, capsys):
    import argparse

    from cpcl.cli.snapshot import evaluate_checkpoint as _evaluate_checkpoint

    if not torch.cuda.is_available():
        argv = [a for a in _argv(voc_tree, snapshot, tmp_path / "log") if a not in ("-d", "cpu")]
        rc = main(load_preset("voc"), [*argv, "-e", "2", "--device=cuda"])  # no -d
        assert rc == 2 and "CUDA is not available" in capsys.readouterr().err
    # The multi-GPU path (one spawned process per device, strided shards, hists summed),
    # run here with two CPU "devices": same hist as one process.
    C = finalize(load_preset("voc"), root=str(tmp_path))
    C.dataset_path, C.eval_source = str(voc_tree), str(voc_tree / "val.txt")
    C.backbone, C.eval_crop_size = "resnet18", 48
    args = argparse.Namespace(save_path=None, show_image=False, labelids=False)
    ds = build_dataset(C, "val")
    path = snapshot / "epoch-2.pth"
    one, epoch_one = _evaluate_checkpoint(C, ds, path, [torch.device("cpu")], args)
    two, epoch_two = _evaluate_checkpoint(C, ds, path, [torch.device("cpu")] * 2, args)
    assert torch.equal(one["hist"], two["hist"]) and one["hist"].sum() > 0
    assert epoch_one == epoch_two == 2  # the epoch stored in the checkpoint


def test_main_takes_the_run_config_stored_in_the_checkpoint(voc_tree, tmp_path, capsys):
    # A 5-class ResNet-18 run: eval.py under the VOC (21 classes, resnet101) experiment config
    # must evaluate it as trained, without repeating its settings on the command line.
    snap = tmp_path / "snap"
    names = ["bg", "disc", "square", "triangle", "ring"]
    stored = {
        "method": "cpcl",
        "backbone": "resnet18",
        "num_classes": 5,
        "class_names": names,
        "dataset_path": str(voc_tree),
        "eval_crop_size": 48,
    }
    torch.manual_seed(2)
    save_checkpoint(snap / "epoch-1.pth", Network(5, backbone="resnet18"), epoch=1, config=stored)
    base = ["-e", "1", "-d", "cpu", f"--snapshot_dir={snap}", f"--log_dir={tmp_path / 'log'}"]
    base.append("--label_policy=ignore")  # the tiny VOC tree has labels 0..20
    assert main(load_preset("voc"), base, root=str(tmp_path)) == 0
    captured = capsys.readouterr()
    record = json.loads(next(x for x in captured.out.splitlines() if x.startswith("{")))
    assert list(record["per_class"]) == names and "note:" not in captured.err

    # A command-line key still wins; the conflict is one line naming both values.
    rc = main(load_preset("voc"), [*base, "--backbone=resnet50"], root=str(tmp_path))
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert rc == 2 and len(notes) == 1
    assert "--backbone=resnet50" in notes[0] and "'resnet18'" in notes[0]
    assert "Traceback" not in err
