"""CoSA's checkpoint choice (`main.py:315-374`): the official rounding and tie rule, best_seg.pth /
best_cam.pth kept across student AND teacher (a run where the teacher wins keeps the teacher),
the kept scores surviving a resume, and `eval.py` on a model-only official-format checkpoint."""

from __future__ import annotations

import argparse
import logging
import math
import os
import pathlib
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY_TRAIN

from cpcl import dist as cdist
from cpcl.checkpoint import load_checkpoint
from cpcl.cli.evaluate import main as eval_main
from cpcl.config import load_preset
from cpcl.data.datasets import build_dataset
from cpcl.engine.resolve import apply_overrides, finalize
from cpcl.methods import TrainEvalContext
from cpcl.methods.cosa import CoSA, train_eval
from cpcl.methods.cosa.best import BestScores, pick_best, table_miou
from cpcl.methods.cosa.evaluate import CosaSegNet
from cpcl.methods.cosa.network import CoSANet

TINY_COSA = (
    *TINY_TRAIN,
    "--method=cosa",
    "--cosa_backbone=vit_toy_patch16",
    "--cosa_decoder_width=16",
)


def _config(root: Path, run: Path, *extra: str):
    args = [*TINY_COSA, f"--dataset_path={root}", f"--log_dir={run / 'log'}", *extra]
    return apply_overrides(load_preset("voc"), args)


def _official(student: float, teacher: float, best: float) -> tuple[int | None, float]:
    """Literal `main.py:345-348`."""
    seg_cmp_list = [round(student, 2), round(teacher, 2), best]
    best_seg_index = max(range(len(seg_cmp_list)), key=seg_cmp_list.__getitem__)
    return (None if best_seg_index == 2 else best_seg_index), max(seg_cmp_list)


@pytest.mark.parametrize(
    "student, teacher, best",
    [
        (40.0, 45.0, -1),  # teacher wins
        (45.0, 45.0, -1),  # tie in one evaluation: the student (first maximum)
        (45.0, 30.0, 45.0),  # equal to the kept best: the newer one replaces it
        (30.0, 45.0, 45.0),  # the teacher equals the kept best: saved
        (44.0, 44.0, 45.0),  # both lower: nothing saved
        (45.004, 44.0, 45.0),  # rounds to the kept best: saved
        (45.006, 44.0, 45.0),  # rounds above it
    ],
)
def test_pick_best_is_the_official_rule(student, teacher, best):
    assert pick_best(student, teacher, best) == _official(student, teacher, best)


def test_nan_scores_never_win():
    assert pick_best(math.nan, 30.0, -1) == (1, 30.0)
    assert pick_best(math.nan, math.nan, 12.0) == (None, 12.0)


def test_table_miou_rounds_per_class_then_averages():
    iou = np.array([0.123456, 0.5, 0.987654, np.nan])
    want = np.mean(np.round(np.array([0.123456, 0.5, 0.987654]) * 100, 2))  # `format_tabs`
    assert table_miou(iou) == pytest.approx(float(want), abs=0)
    assert math.isnan(table_miou([np.nan]))


def test_best_scores_round_trip():
    best = BestScores(45.12, 30.5, "teacher, iteration 2000", "student, iteration 4000")
    assert BestScores.from_state(best.state_dict()) == best


# ------------------------------------------------------------------ evaluate_both, scripted


def _nets() -> dict[str, CoSANet]:
    torch.manual_seed(0)
    s = CoSANet("vit_toy_patch16", 4, aux_layer=-1, decoder_width=8)
    t = CoSANet("vit_toy_patch16", 4, aux_layer=-1, decoder_width=8)
    return {"student": s, "teacher": t}


def _scripted(monkeypatch, nets, script):
    """`sharded_evaluate` returning the scripted (seg, cam) mIoU of each network in turn."""
    calls = {name: 0 for name in nets}

    def fake(net, dataset, ctx, **kwargs):
        assert kwargs["cams"] is True and kwargs["crf"] is None  # official training eval
        name = next(n for n, m in nets.items() if m is net.model)
        seg, cam = script[calls[name]][name]
        calls[name] += 1
        return {
            "seg_vd": {"iou": np.array([seg, seg])},
            "cam": {"iou": np.array([cam, cam])},
            "cam_aux": {"iou": np.array([0.1, 0.1])},
        }

    monkeypatch.setattr(train_eval, "sharded_evaluate", fake)


def _ctx(C, it: int) -> TrainEvalContext:
    return TrainEvalContext(
        C=C, epoch=it // 1000 - 1, iteration=it, device=torch.device("cpu"),
        log=logging.getLogger("test"), snapshot_dir=C.snapshot_dir,
    )  # fmt: skip


def test_the_teacher_is_kept_when_it_wins_and_ties_go_officially(
    toy_voc_small, tmp_path, monkeypatch
):
    C = finalize(_config(toy_voc_small, tmp_path), root=str(tmp_path))
    Path(C.snapshot_dir).mkdir(parents=True)
    nets = _nets()
    kwargs = {"num_classes": 4, "crf": None}
    _scripted(
        monkeypatch,
        nets,
        [
            {"student": (0.40, 0.30), "teacher": (0.45, 0.20)},  # seg: teacher, cam: student
            {"student": (0.45, 0.10), "teacher": (0.30, 0.10)},  # seg: student ties the best
            {"student": (0.44, 0.10), "teacher": (0.44, 0.10)},  # nothing saved
        ],
    )
    best = BestScores()
    seg_path, cam_path = Path(C.snapshot_dir, "best_seg.pth"), Path(C.snapshot_dir, "best_cam.pth")

    out = train_eval.evaluate_both(nets, best, _ctx(C, 2000), {**kwargs})
    assert out["saved"] == ["best_seg.pth", "best_cam.pth"]
    seg = load_checkpoint(seg_path)
    assert (seg["s_or_t"], seg["network"], seg["epoch"], seg["iteration"]) == (
        "t",
        "teacher",
        2000,
        2000,
    )
    assert seg["result"] == 45.0 and seg["config"]["method"] == "cosa"
    for k, v in nets["teacher"].state_dict().items():
        assert torch.equal(seg["model"][k], v), k
    assert load_checkpoint(cam_path)["s_or_t"] == "s"
    assert (best.seg, best.cam) == (45.0, 30.0)

    with torch.no_grad():  # the student changes: the tie must save ITS weights
        next(nets["student"].parameters()).add_(1.0)
    out = train_eval.evaluate_both(nets, best, _ctx(C, 4000), {**kwargs})
    assert out["saved"] == ["best_seg.pth"]
    seg = load_checkpoint(seg_path)
    assert (seg["s_or_t"], seg["iteration"]) == ("s", 4000)
    for k, v in nets["student"].state_dict().items():
        assert torch.equal(seg["model"][k], v), k
    assert best.seg_from == "student, iteration 4000"

    before = seg_path.stat().st_mtime_ns, cam_path.stat().st_mtime_ns
    out = train_eval.evaluate_both(nets, best, _ctx(C, 6000), {**kwargs})
    assert out["saved"] == [] and (best.seg, best.cam) == (45.0, 30.0)
    assert (seg_path.stat().st_mtime_ns, cam_path.stat().st_mtime_ns) == before


# ------------------------------------------------------------------ eval.py, official format


def test_official_model_only_checkpoint_evaluates_as_the_student(toy_voc_small, tmp_path, capsys):
    C = _config(toy_voc_small, tmp_path)
    model = CoSA.from_config(finalize(C, root=str(tmp_path)), per_rank_batch=1).build_model()
    path = tmp_path / "best_seg.pth"
    args = argparse.Namespace(output_dir=pathlib.PosixPath("/work/EXP"), lr=6e-5)
    official = {
        "s_or_t": "t",
        "model": model.state_dict(),
        "epoch": 2000,
        "args": args,
        "result": 50.0,
    }
    torch.save(official, path)

    assert eval_main(C, ["-e", str(path), "-d", "cpu"], root=str(tmp_path)) == 0
    out, err = capsys.readouterr()
    assert "protocol: cosa official" in out  # the paper's protocol by default
    assert "evaluated as the student" in err and "the teacher at iteration 2000" in err

    rc = eval_main(C, ["-e", str(path), "-d", "cpu", "--cosa_eval_net=teacher"], root=str(tmp_path))
    assert rc == 2
    assert "holds one network" in capsys.readouterr().err


# ------------------------------------------------------------------ two processes (gloo)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shard_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    cdist.init_distributed("cpu", timeout_s=120)
    C = finalize(_config(Path(root), Path(out)), root=out)
    torch.manual_seed(0)
    net = CosaSegNet(CoSANet("vit_toy_patch16", 4, aux_layer=-1, decoder_width=8)).eval()
    ctx = TrainEvalContext(
        C=C, epoch=0, iteration=1, device=torch.device("cpu"), log=logging.getLogger("t"),
        rank=rank, world_size=world, is_main=rank == 0,
    )  # fmt: skip
    res = train_eval.sharded_evaluate(
        net, build_dataset(C, "val"), ctx, num_classes=4, crop_size=32, scales=(1.0,), cams=True
    )
    torch.save({k: res[k]["hist"] for k in ("seg_vd", "cam", "cam_aux")}, f"{out}/r{rank}.pt")
    cdist.cleanup()


@pytest.mark.slow
def test_sharded_evaluation_equals_one_process(toy_voc_small, tmp_path):
    """Under DDP each rank scores every other image and the confusion matrices are summed:
    the same numbers as one process scoring all of them."""
    mp.spawn(_shard_worker, args=(2, _free_port(), str(toy_voc_small), str(tmp_path)), nprocs=2)
    one = tmp_path / "one"
    one.mkdir()
    _shard_worker_single(toy_voc_small, one)
    want = torch.load(one / "r0.pt")
    for rank in (0, 1):
        got = torch.load(tmp_path / f"r{rank}.pt")
        for k, v in want.items():
            assert torch.equal(got[k], v), (rank, k)


def _shard_worker_single(root: Path, out: Path) -> None:
    C = finalize(_config(root, out), root=str(out))
    torch.manual_seed(0)
    net = CosaSegNet(CoSANet("vit_toy_patch16", 4, aux_layer=-1, decoder_width=8)).eval()
    res = train_eval.sharded_evaluate(
        net, build_dataset(C, "val"), _ctx(C, 1000), num_classes=4, crop_size=32, scales=(1.0,),
        cams=True,
    )  # fmt: skip
    torch.save({k: res[k]["hist"] for k in ("seg_vd", "cam", "cam_aux")}, out / "r0.pt")
