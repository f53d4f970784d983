"""CoSA's checkpoint choice during training (`main.py:315-374`): the best segmentation and the
best CAM network over BOTH student and teacher, kept in ``best_seg.pth`` / ``best_cam.pth``.

The official rule, per evaluation (every `eval_iters` iterations), for each of seg and cam:

    cmp = [round(student, 2), round(teacher, 2), best]       # best starts at -1
    index = max(range(3), key=cmp.__getitem__)                # the FIRST maximum
    best = max(cmp)
    if index != 2: save (student if index == 0 else teacher)

with ``student`` / ``teacher`` the mIoU that the official table prints (`format_tabs`,
`torch_helper.py:12-30`): the per-class IoUs in percent rounded to 2 decimals, then averaged
(`table_miou`). So on a tie the student beats the teacher, and a network that EQUALS the kept
best replaces it (the newer checkpoint wins; the index of the old best is only reached when
both are lower). The official file holds ``s_or_t`` ('s' | 't'), ``model`` (the network's
state dict, official key names), ``epoch`` (the iteration count, `n_iter + 1`), ``args`` and
``result``; ours holds the same keys except ``args`` (an argparse object: a plain-data
checkpoint cannot hold it) plus ``network`` ("student" | "teacher"), ``iteration`` and the run's
``config`` (so `eval.py` evaluates it as trained).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from ...checkpoint import save_checkpoint
from ...errors import CheckpointError

__all__ = ["NETWORKS", "BestScores", "pick_best", "save_best", "table_miou"]

NETWORKS = ("student", "teacher")
_S_OR_T = {"student": "s", "teacher": "t"}


def table_miou(iou: Sequence[float] | np.ndarray) -> float:
    """The mIoU of the official table (`format_tabs`): the mean of the per-class IoUs in percent
    rounded to 2 decimals. Classes with an undefined IoU (0/0: neither in the ground truth nor
    predicted) are left out (the official mean would be NaN; on VOC / COCO val every class
    occurs); NaN when no class is defined."""
    values = np.round(np.asarray(iou, dtype=np.float64) * 100, 2)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def pick_best(student: float, teacher: float, best: float) -> tuple[int | None, float]:
    """The official choice between `student`, `teacher` (table mIoUs) and the kept `best`:
    ``(0 | 1, new best)`` when the student (0) or the teacher (1) is saved, ``(None, best)``
    when neither beats or equals the kept one. NaN scores never win."""
    cmp = [_rounded(student), _rounded(teacher), best]
    index = max(range(3), key=cmp.__getitem__)
    return (None if index == 2 else index), cmp[index]


def _rounded(x: float) -> float:
    return -math.inf if math.isnan(x) else round(x, 2)


@dataclass
class BestScores:
    """The kept best values (official ``best_seg`` / ``best_cam``, -1 at the start) and which
    network and iteration gave them; part of CoSA's `method_state` so a resume keeps them."""

    seg: float = -1.0
    cam: float = -1.0
    seg_from: str = ""
    cam_from: str = ""

    def state_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint."""
        return {
            "seg": self.seg,
            "cam": self.cam,
            "seg_from": self.seg_from,
            "cam_from": self.cam_from,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> BestScores:
        """The scores of `state_dict()`; a malformed entry is a CheckpointError."""
        try:
            return cls(
                float(state["seg"]),
                float(state["cam"]),
                str(state.get("seg_from", "")),
                str(state.get("cam_from", "")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"method 'cosa': method_state['best'] = {dict(state)!r}: expected seg and cam "
                f"scores ({err})"
            ) from None


def save_best(
    path: str | os.PathLike,
    net: nn.Module,
    *,
    network: str,
    iteration: int,
    result: float,
    config: Mapping[str, Any] | None = None,
) -> None:
    """Write the official best checkpoint of `net` (module docstring) atomically."""
    if network not in _S_OR_T:
        raise ValueError(f"network={network!r}: expected one of {', '.join(NETWORKS)}")
    save_checkpoint(
        path,
        net,
        s_or_t=_S_OR_T[network],
        epoch=int(iteration),
        result=float(result),
        network=network,
        iteration=int(iteration),
        **({"config": dict(config)} if config is not None else {}),
    )
