"""Evaluation during training (`C.eval_every`): the method's `eval_net` on the val split."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from torch import nn

from ..data.datasets import build_dataset
from ..dist import DistInfo
from ..evaluate import EvalSettings, evaluate_dataset


def evaluate_during_training(
    net: nn.Module, C: Any, info: DistInfo, state: Any, epoch: int, log: logging.Logger
) -> dict[str, Any]:
    """Evaluate the method's `eval_net` (a plain segmenter) on the val split."""

    # The official memory layout: channels-last would convert the LIVE weights in place for the
    # evaluation (and back), which is not worth the risk for storage shared with a teacher or a
    # DDP reducer; the eval CLI, which owns its model, uses it.
    settings = dataclasses.replace(EvalSettings.from_config(C), channels_last=False)
    result = evaluate_dataset(
        net,
        build_dataset(C, "val"),
        settings,
        device=info.device,
        rank=info.rank,
        world_size=info.world_size,
        progress=info.is_main,
    )
    log.info("epoch-%d: val mIoU %.2f%%", epoch, 100 * result["miou"])
    if state.scalars is not None:
        state.scalars.add({"val/mIoU": result["miou"]}, epoch)
    return {"epoch": epoch, "miou": result["miou"]}
