"""CoSA's evaluation during and after training, as the official `main.py` runs it.

* Every `eval_iters` iterations (`main.py:315-374`; VOC 2000, COCO 6000: `C.eval_every`
  epochs of `C.niters_per_epoch` = 1000 iterations) BOTH the student and the teacher are
  evaluated with the official protocol (`evaluate.evaluate_cosa`: multi-scale + flip, class
  filter, no CRF, CAMs scored too) on `cosa_train_eval_list` (VOC ``val.txt``, COCO
  ``val_part.txt``); ``best_seg.pth`` and ``best_cam.pth`` keep the best of the two over the run
  with the official rounding and tie rule (`best`).
* After the last iteration (`finalval`, `main.py:389-426`) ``best_seg.pth`` is scored with the
  dense CRF on `cosa_eval_list` (VOC ``val.txt``, COCO the full ``val.txt``): Seg_vd and
  Seg_crf, in the run log and as one JSON line.

Under DDP every rank evaluates a strided share of the images and the confusion matrices are
summed (the official code gathers per-rank stores); only rank 0 writes checkpoints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from easydict import EasyDict
from torch import nn

from ...checkpoint import load_checkpoint, load_weights
from ...config import to_plain
from ...data.datasets import build_dataset
from ..base import TrainEvalContext
from .best import NETWORKS, BestScores, pick_best, save_best, table_miou
from .evaluate import CosaSegNet, cosa_scores, evaluate_cosa

__all__ = ["BEST_CAM", "BEST_SEG", "evaluate_best_seg", "evaluate_both", "sharded_evaluate"]

BEST_SEG, BEST_CAM = "best_seg.pth", "best_cam.pth"


class _Share:
    """Images rank, rank + world, ... of `dataset` (same `load` / `len` interface)."""

    def __init__(self, dataset: Any, rank: int, world: int) -> None:
        self.dataset, self.index = dataset, list(range(rank, len(dataset), world))

    def __len__(self) -> int:
        return len(self.index)

    def load(self, i: int) -> Any:
        return self.dataset.load(self.index[i])


def sharded_evaluate(
    net: nn.Module, dataset: Any, ctx: TrainEvalContext, **kwargs: Any
) -> dict[str, Any]:
    """`evaluate_cosa(net, dataset, **kwargs)` over all ranks: each rank scores its share, the
    confusion matrices of every reported prediction are summed, the scores recomputed."""
    share = _Share(dataset, ctx.rank, ctx.world_size) if ctx.world_size > 1 else dataset
    out = evaluate_cosa(net, share, device=ctx.device, progress=ctx.is_main, **kwargs)
    if ctx.world_size == 1:
        return out
    keys = [k for k, v in out.items() if isinstance(v, dict) and "hist" in v]
    hists = torch.stack([out[k]["hist"] for k in keys]).to(ctx.device)
    torch.distributed.all_reduce(hists)
    merged: dict[str, Any] = {k: cosa_scores(h.cpu()) for k, h in zip(keys, hists, strict=True)}
    main = next(k for k in ("crf", "seg_vd", "seg_ps") if k in merged)
    return {**merged[main], **merged, "num_images": len(dataset)}


def _dataset(C: Any, list_path: str) -> Any:
    """The validation images (with masks) of `list_path` under `C.dataset_path`."""
    return build_dataset(EasyDict({**C, "eval_source": list_path}), "val")


def _table(res: Mapping[str, Any]) -> dict[str, float]:
    """The official table's mIoUs of one evaluation (CAM, aux_CAM, Seg_vd)."""
    return {
        "CAM": table_miou(res["cam"]["iou"]),
        "aux_CAM": table_miou(res["cam_aux"]["iou"]),
        "Seg_vd": table_miou(res["seg_vd"]["iou"]),
    }


def evaluate_both(
    nets: Mapping[str, nn.Module],
    best: BestScores,
    ctx: TrainEvalContext,
    eval_kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    """One official evaluation (`main.py:318-374`): score the student and the teacher
    (`nets`, CoSA networks), keep `best_seg.pth` / `best_cam.pth` (updating `best` in place),
    log the scores. Returns {"iteration", "student": {...}, "teacher": {...}, "best_seg",
    "best_cam", "saved": [file names]}."""
    C = ctx.C
    dataset = _dataset(C, os.path.join(C.dataset_path, C.cosa_train_eval_list))
    scores: dict[str, dict[str, float]] = {}
    for name in NETWORKS:
        net = nets[name]
        was_training = net.training
        evaluator_net = CosaSegNet(net).eval()
        try:
            res = sharded_evaluate(evaluator_net, dataset, ctx, cams=True, **eval_kwargs)
        finally:
            net.train(was_training)
        scores[name] = _table(res)
    saved = []
    for kind, file_name, metric in (("seg", BEST_SEG, "Seg_vd"), ("cam", BEST_CAM, "CAM")):
        index, value = pick_best(scores["student"][metric], scores["teacher"][metric],
                                 getattr(best, kind))  # fmt: skip
        setattr(best, kind, value)
        if index is None:
            continue
        network = NETWORKS[index]
        setattr(best, f"{kind}_from", f"{network}, iteration {ctx.iteration}")
        saved.append(file_name)
        if ctx.is_main:
            save_best(
                os.path.join(ctx.snapshot_dir, file_name),
                nets[network],
                network=network,
                iteration=ctx.iteration,
                result=value,
                config=to_plain(C),
            )
    _log_scores(ctx, scores, best, saved, len(dataset))
    return {
        "epoch": ctx.epoch,
        "iteration": ctx.iteration,
        **scores,
        "miou": scores["student"]["Seg_vd"] / 100,
        "best_seg": best.seg,
        "best_cam": best.cam,
        "saved": saved,
    }


def _log_scores(
    ctx: TrainEvalContext,
    scores: Mapping[str, Mapping[str, float]],
    best: BestScores,
    saved: list[str],
    n_images: int,
) -> None:
    for name, s in scores.items():
        ctx.log.info(
            "iteration %d: %s on %s (%d images, official protocol): CAM %.2f aux_CAM %.2f "
            "Seg_vd %.2f",
            ctx.iteration, name, ctx.C.cosa_train_eval_list, n_images,
            s["CAM"], s["aux_CAM"], s["Seg_vd"],
        )  # fmt: skip
        if ctx.scalars is not None:
            ctx.scalars.add({f"val/{name}_{k}": v / 100 for k, v in s.items()}, ctx.epoch)
    ctx.log.info(
        "best Seg_vd %.2f (%s), best CAM %.2f (%s)%s",
        best.seg, best.seg_from, best.cam, best.cam_from,
        f"; wrote {', '.join(saved)}" if saved else "",
    )  # fmt: skip


def evaluate_best_seg(
    net: nn.Module, ctx: TrainEvalContext, eval_kwargs: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The official final evaluation (`finaleval`): load ``best_seg.pth`` into `net` (a fresh
    CoSA network) and score it with the CRF on `C.eval_source` (`cosa_eval_list`). Logs
    Seg_vd and Seg_crf and a JSON line; None (with a warning) when no best_seg.pth exists."""
    C = ctx.C
    path = os.path.join(ctx.snapshot_dir, BEST_SEG)
    if ctx.world_size > 1:
        torch.distributed.barrier()  # rank 0 has written the file (every rank then sees it)
    if not os.path.isfile(path):
        ctx.log.warning(
            "final evaluation skipped: %s does not exist (no evaluation ran: C.eval_every = %s)",
            path, C.eval_every,
        )  # fmt: skip
        return None
    ckpt = load_checkpoint(path)
    load_weights(net, ckpt)
    net.to(ctx.device)
    dataset = _dataset(C, C.eval_source)
    res = sharded_evaluate(CosaSegNet(net).eval(), dataset, ctx, **eval_kwargs)
    record = {
        "final": BEST_SEG,
        "network": ckpt.get("network", "student"),
        "iteration": ckpt.get("iteration", ckpt.get("epoch")),
        "list": os.path.basename(C.eval_source),
        "num_images": len(dataset),
        # The official table's numbers (per-class % rounded to 2 decimals, averaged).
        "Seg_vd": round(table_miou(res["seg_vd"]["iou"]), 4),
        "Seg_crf": round(table_miou(res["crf"]["iou"]), 4) if "crf" in res else None,
    }
    ctx.log.info(
        "final evaluation of %s (%s, iteration %s) on %s (%d images): Seg_vd %.2f, Seg_crf %s",
        path, record["network"], record["iteration"], record["list"], len(dataset),
        record["Seg_vd"], "n/a" if record["Seg_crf"] is None else f"{record['Seg_crf']:.2f}",
    )  # fmt: skip
    ctx.log.info("%s", json.dumps(record))
    return record
