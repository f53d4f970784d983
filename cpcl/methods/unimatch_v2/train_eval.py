"""UniMatch V2's evaluation during training, as the official end of an epoch.

`unimatch_v2.py:239-277`: after every epoch the official loop evaluates the model AND the EMA
model with the official protocol (`original` x14, Cityscapes `sliding_window`), logs the
per-class IoUs of both and the two means, updates the best tracking (`is_best` follows the
student's mIoU with `>=`) and writes `best.pth` when `is_best`. `Method.train_evaluation` of
`UniMatchV2` runs this when `C.eval_protocol` is "official" (the method's default).
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from ...checkpoint import save_checkpoint
from ...config import to_plain
from ...data.datasets import build_dataset, resolve_class_names
from ..base import TrainEvalContext
from .evaluate import BestTracker, Multiple14, evaluate_student_and_teacher

__all__ = ["BEST_FILE", "official_epoch_evaluation"]

BEST_FILE = "best.pth"  # the official name (`unimatch_v2.py:276`)


def official_epoch_evaluation(
    student: nn.Module,
    teacher: nn.Module,
    best: BestTracker,
    ctx: TrainEvalContext,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Evaluate `student` and `teacher` (plain DPT networks) on the val split with the official
    protocol `settings` (`unimatch_v2_eval_settings(C)`), update `best` in place, log as the
    official loop does and, on the main process, write `best.pth` atomically when the
    student's mIoU is the best so far (official keys `model`, `model_ema`, `epoch`,
    `previous_best`, `previous_best_ema`, `best_epoch`, `best_epoch_ema`, plus our `config`).

    Every process evaluates the whole val split (the same numbers on every rank).
    Returns {"epoch", "miou", "miou_ema", "is_best", "best"} (fractions).
    """
    C = ctx.C
    dataset = build_dataset(C, "val")
    out = evaluate_student_and_teacher(
        Multiple14(student),
        Multiple14(teacher),
        dataset,
        best,
        ctx.epoch,
        **settings,
        device=ctx.device,
        progress=ctx.is_main,
    )
    miou, miou_ema = out["miou"], out["miou_ema"]
    if ctx.is_main:
        names = resolve_class_names(C.dataset_name, int(C.num_classes), C.get("class_names"))
        for i, (iou, iou_ema) in enumerate(
            zip(out["model"]["iou"], out["ema"]["iou"], strict=True)
        ):
            name = names[i] if i < len(names) else str(i)
            ctx.log.info(
                "***** Evaluation ***** >>>> Class [%d %s] IoU: %.2f, EMA: %.2f",
                i, name, 100 * iou, 100 * iou_ema,
            )  # fmt: skip
        ctx.log.info(
            "epoch-%d: UniMatch V2 official %s: mIoU %.2f%%, EMA %.2f%% (best %.2f%% at epoch "
            "%d, EMA best %.2f%% at epoch %d)",
            ctx.epoch, settings["mode"], 100 * miou, 100 * miou_ema,
            100 * best.previous_best, best.best_epoch,
            100 * best.previous_best_ema, best.best_epoch_ema,
        )  # fmt: skip
        if ctx.scalars is not None:
            ctx.scalars.add({"val/mIoU": miou, "val/mIoU_ema": miou_ema}, ctx.epoch)
        if out["is_best"]:
            path = save_checkpoint(
                os.path.join(ctx.snapshot_dir, BEST_FILE),
                student,
                model_ema=teacher.state_dict(),
                epoch=ctx.epoch,
                config=to_plain(C),
                **best.state_dict(),
            )
            ctx.log.info("epoch-%d: student is the best so far: wrote %s", ctx.epoch, path)
    return {
        "epoch": ctx.epoch,
        "miou": miou,
        "miou_ema": miou_ema,
        "is_best": out["is_best"],
        "best": best.state_dict(),
    }
