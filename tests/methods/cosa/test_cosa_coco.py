"""CoSA on COCO end to end (`exp_coco/`, CoSA's COCO-2014 layout from `make_toy_coco`): the
official decoding (PIL, no EXIF rotation, grey expanded), the preset and the official COCO
settings, and a tiny run that trains, evaluates student + teacher on val_part.txt, keeps
best_seg.pth, scores it on the full val.txt, snapshots, resumes exactly and evaluates with
eval.py."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, StopAfter
from PIL import Image

import cpcl.engine as engine
from cpcl.checkpoint import load_checkpoint
from cpcl.cli.evaluate import main as eval_main
from cpcl.cli.train import main as train_main
from cpcl.data.datasets import build_dataset, class_names, palette_for
from cpcl.data.toy import make_toy_coco
from cpcl.engine.resolve import apply_overrides, finalize


@pytest.fixture(scope="module")
def toy_coco(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy_coco")
    make_toy_coco(root, n_train=8, n_val=4, n_val_part=2, height=40, width=48, num_classes=4)
    return root


def _exp_coco_config():
    """`exp_coco/config.py`'s C (imported from its file, as train.py does)."""
    spec = importlib.util.spec_from_file_location(
        "exp_coco_config", REPO / "exp_coco" / "config.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.C


TINY = (
    "--method=cosa",
    "--pretrained_model=None",
    "--num_classes=4",
    "--cosa_backbone=vit_toy_patch16",
    "--cosa_decoder_width=16",
    "--image_height=32",
    "--image_width=32",
    "--batch_size=2",
    "--nepochs=2",
    "--niters_per_epoch=2",
    "--eval_every=1",
    "--cosa_warmup_iters=1",
    "--cosa_pseudo_scales=1.0,0.5",
    "--cosa_eval_scales=1.0,0.5",
    "--device=cpu",
    "--num_workers=0",
    "--display_iter=1",
)


def _args(root: Path, run: Path) -> list[str]:
    return [*TINY, f"--dataset_path={root}", f"--log_dir={run}"]


def test_preset_and_official_coco_settings():
    C = finalize(apply_overrides(_exp_coco_config(), []), root=str(REPO / "exp_coco"))
    assert (C.dataset_name, C.method, C.num_classes) == ("coco", "cosa", 81)
    assert C.dataset_path == str(REPO / "DATA" / "coco")
    assert (C.batch_size, C.nepochs * C.niters_per_epoch) == (8, 60000)  # 4 x 2 GPUs, 60000
    assert (C.cosa_warmup_iters, C.cosa_high_thre, C.cosa_aux_layer) == (10000, 0.65, -3)
    assert (C.eval_every, C.cosa_train_eval_list, C.cosa_eval_list) == (
        6,
        "val_part.txt",
        "val.txt",
    )
    assert C.eval_protocol == "official" and C.cosa_final_eval
    assert C.train_source.endswith("train.txt") and C.eval_source.endswith("val.txt")
    names = class_names("coco")
    assert len(names) == 81 and names[1] == "person" and names[80] == "toothbrush"
    assert len({tuple(c) for c in palette_for("coco")[:81]}) == 81


def test_official_decoding(toy_coco: Path):
    C = finalize(apply_overrides(_exp_coco_config(), _args(toy_coco, toy_coco / "x")), root=".")
    train, val = build_dataset(C, "labeled"), build_dataset(C, "val")
    img, label, name = train.load(0)  # a greyscale JPEG: expanded to three equal channels
    assert img.shape == (*label.shape, 3) and name == "COCO_train2014_000000000001"
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    img, label, _ = val.load(0)  # EXIF orientation 6: NOT rotated (it would not fit its mask)
    path = toy_coco / "val2014" / "COCO_val2014_000000000001.jpg"
    with Image.open(path) as im:
        assert im.getexif()[0x0112] == 6
        assert np.array_equal(img, np.asarray(im.convert("RGB")))
    assert img.shape[:2] == label.shape == (40, 48)


def _equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


@pytest.mark.slow
def test_train_resume_exactly_and_evaluate(toy_coco: Path, tmp_path: Path, monkeypatch, capsys):
    root = str(REPO / "exp_coco")
    assert train_main(_exp_coco_config(), _args(toy_coco, tmp_path / "full")) == 0
    snap = tmp_path / "full" / "snapshot"
    log = "".join(p.read_text() for p in (tmp_path / "full").glob("*.log"))
    assert "training cosa vit_toy_patch16 on cpu" in log  # the ViT, not C.backbone
    # Every epoch: student and teacher on val_part.txt (2 images); at the end best_seg.pth
    # with the CRF on the full val.txt (4 images), as a log line and a JSON line.
    assert len(re.findall(r"student on val_part.txt \(2 images", log)) == 2
    assert len(re.findall(r"teacher on val_part.txt \(2 images", log)) == 2
    final = json.loads(re.search(r"(\{\"final\": .*\})", log).group(1))
    assert final["list"] == "val.txt" and final["num_images"] == 4
    assert set(final) >= {"Seg_vd", "Seg_crf", "network", "iteration"}
    best = load_checkpoint(snap / "best_seg.pth")
    assert best["network"] == final["network"] and best["iteration"] == final["iteration"]
    reference = load_checkpoint(snap / "epoch-last.pth")

    # Stop inside the second epoch, resume: the same weights, teacher, optimiser, best scores.
    monkeypatch.setattr(engine.loop, "train_step", StopAfter(3))
    split = _args(toy_coco, tmp_path / "split")
    assert train_main(_exp_coco_config(), split) == 130  # interrupted (docs/training.md)
    monkeypatch.undo()
    interrupted = tmp_path / "split" / "snapshot" / "interrupted.pth"
    assert load_checkpoint(interrupted)["next_iter"] == 1
    assert train_main(_exp_coco_config(), ["-c", str(interrupted), *split]) == 0
    resumed = load_checkpoint(tmp_path / "split" / "snapshot" / "epoch-last.pth")
    _equal(resumed["model"], reference["model"])
    _equal(resumed["method_state"]["teacher"], reference["method_state"]["teacher"])
    assert resumed["method_state"]["best"] == reference["method_state"]["best"]

    # eval.py: the official protocol by default, on the full val.txt; best_seg.pth by name.
    capsys.readouterr()
    args = ["-d", "cpu", f"--log_dir={tmp_path / 'full'}"]
    assert eval_main(_exp_coco_config(), ["-e", "last", *args], root=root) == 0
    out = capsys.readouterr().out
    assert "protocol: cosa official" in out
    assert json.loads(out.strip().splitlines()[-1])["mIoU"] is not None
    assert eval_main(_exp_coco_config(), ["-e", "best_seg.pth", *args], root=root) == 0
    assert "evaluated as the student" in capsys.readouterr().err
    # Both networks of a training snapshot, one record each.
    assert (
        eval_main(_exp_coco_config(), ["-e", "last", "--cosa_eval_net=both", *args], root=root) == 0
    )
    records = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [r["variant"] for r in records] == [{"cosa_eval_net": n} for n in ("student", "teacher")]
