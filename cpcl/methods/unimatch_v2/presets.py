"""The official UniMatch V2 configs (`configs/{pascal,cityscapes,ade20k,coco}.yaml` at f6afb4d).

| setting | pascal | cityscapes | ade20k | coco | where |
|---|---|---|---|---|---|
| `nclass` | 21 | 19 | 150 | 81 | yaml:4 |
| `crop_size` | 518 | 798 | 518 | 518 | yaml:5; also the CutMix box size |
| `epochs` | 60 | 180 | 60 | 20 | yaml:8 |
| `batch_size` (per GPU, x 4 GPUs) | 4 | 2 | 2 | 4 | yaml:9; labeled and unlabeled each |
| `lr` (encoder) | 5e-6 | 5e-6 | 5e-6 | 5e-6 | yaml:10 |
| `lr_multi` (the rest) | 40 | 40 | 40 | 40 | yaml:11 |
| `criterion` | CELoss(255) | OHEM(255, 0.7, min_kept 200000) | CELoss(255) | CELoss(255) | yaml:12-17 |
| `conf_thresh` | 0.95 | 0.95 | 0.95 | 0.95 | yaml |
| `backbone` | dinov2_small | dinov2_small | dinov2_small | dinov2_small | yaml; the paper also trains base/large |
| `lock_backbone` | False | False | True | False | yaml |
| eval mode | original (x14) | sliding_window | original (x14) | original (x14) | `unimatch_v2.py:239-241` |
| AdamW betas / weight decay | 0.9, 0.999 / 0.01 | same | same | same | `unimatch_v2.py:67-73` |
| resize ratio range | (0.5, 2.0) | same | same | same | `dataset/semi.py:44` |
| pretrained encoder | `./pretrained/{backbone}.pth` | same | same | same | `unimatch_v2.py:61` |
"""

from __future__ import annotations

import copy
from typing import Any

from ...errors import CpclError

__all__ = ["UNIMATCH_V2_PRESETS", "unimatch_v2_preset"]

_CE = {"name": "CELoss", "kwargs": {"ignore_index": 255}}

_COMMON: dict[str, Any] = {
    "lr": 5e-6,
    "lr_multi": 40.0,
    "conf_thresh": 0.95,
    "backbone": "dinov2_small",
    "lock_backbone": False,
    "criterion": _CE,
    "eval_mode": "original",
    "betas": (0.9, 0.999),
    "weight_decay": 0.01,
    "scale_range": (0.5, 2.0),
}

UNIMATCH_V2_PRESETS: dict[str, dict[str, Any]] = {
    "pascal": {**_COMMON, "nclass": 21, "crop_size": 518, "epochs": 60, "batch_size": 4},
    "cityscapes": {
        **_COMMON,
        "nclass": 19,
        "crop_size": 798,
        "epochs": 180,
        "batch_size": 2,
        "criterion": {
            "name": "OHEM",
            "kwargs": {"ignore_index": 255, "thresh": 0.7, "min_kept": 200000},
        },
        "eval_mode": "sliding_window",
    },
    "ade20k": {
        **_COMMON,
        "nclass": 150,
        "crop_size": 518,
        "epochs": 60,
        "batch_size": 2,
        "lock_backbone": True,
    },
    "coco": {**_COMMON, "nclass": 81, "crop_size": 518, "epochs": 20, "batch_size": 4},
}


def unimatch_v2_preset(name: str) -> dict[str, Any]:
    """A deep copy of one official config (`pascal`, `cityscapes`, `ade20k` or `coco`)."""
    if name not in UNIMATCH_V2_PRESETS:
        raise CpclError(
            f"UniMatch V2 preset {name!r}: expected one of {sorted(UNIMATCH_V2_PRESETS)}"
        )
    return copy.deepcopy(UNIMATCH_V2_PRESETS[name])
