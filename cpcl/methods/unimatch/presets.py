"""The official UniMatch configs (`configs/pascal.yaml`, `configs/cityscapes.yaml`) as defaults.

| setting | pascal | cityscapes | where |
|---|---|---|---|
| `nclass` | 21 | 19 | yaml |
| `crop_size` | 321 | 801 | yaml; also the CutMix box size |
| `batch_size` (per GPU, x 4 GPUs) | 2 | 2 | yaml; labeled and unlabeled each |
| `epochs` | 80 | 240 | yaml; `total_iters = len(loader_u) * epochs` |
| `lr` (backbone) | 0.001 | 0.005 | yaml |
| `lr_multi` (the rest) | 10 | 1 | yaml |
| momentum / weight decay | 0.9 / 1e-4 | 0.9 / 1e-4 | `unimatch.py:56`, on all parameters |
| `criterion` | CELoss(ignore 255) | OHEM(ignore 255, thresh 0.7, min_kept 200000), no class weights | yaml |
| `conf_thresh` | 0.95 | 0 | yaml |
| backbone | resnet101, deep stem | resnet101, deep stem | yaml |
| `replace_stride_with_dilation` | [F, F, T] (OS 16) | [F, F, T] | yaml |
| ASPP `dilations` | [6, 12, 18] | [6, 12, 18] | yaml |
| resize ratio range | (0.5, 2.0) | (0.5, 2.0) | `dataset/semi.py:40` |
| eval mode | `original` (whole image) | `sliding_window` (grid = crop, step int(2/3 grid), softmax sum) | `unimatch.py:222` |

Loss weights (`unimatch.py:188`) and the strong-view settings are not in the yamls: see
`losses.OFFICIAL_LOSS_WEIGHTS` and `cpcl.methods.unimatch.strong_aug.StrongAugSettings`.
"""

from __future__ import annotations

import copy
from typing import Any

from ...errors import ConfigError, CpclError

__all__ = ["UNIMATCH_PRESETS", "config_number", "criterion_keys", "unimatch_preset"]

_COMMON: dict[str, Any] = {
    "backbone": "resnet101",
    "replace_stride_with_dilation": [False, False, True],
    "dilations": [6, 12, 18],
    "batch_size": 2,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "scale_range": [0.5, 2.0],
}

UNIMATCH_PRESETS: dict[str, dict[str, Any]] = {
    "pascal": {
        **_COMMON,
        "dataset": "pascal",
        "nclass": 21,
        "crop_size": 321,
        "epochs": 80,
        "lr": 0.001,
        "lr_multi": 10.0,
        "criterion": {"name": "CELoss", "kwargs": {"ignore_index": 255}},
        "conf_thresh": 0.95,
        "eval_mode": "original",
    },
    "cityscapes": {
        **_COMMON,
        "dataset": "cityscapes",
        "nclass": 19,
        "crop_size": 801,
        "epochs": 240,
        "lr": 0.005,
        "lr_multi": 1.0,
        "criterion": {
            "name": "OHEM",
            "kwargs": {"ignore_index": 255, "thresh": 0.7, "min_kept": 200000},
        },
        "conf_thresh": 0.0,
        "eval_mode": "sliding_window",
    },
}


def unimatch_preset(name: str) -> dict[str, Any]:
    """A deep copy of one official config (`pascal` or `cityscapes`)."""
    if name not in UNIMATCH_PRESETS:
        raise CpclError(f"UniMatch preset {name!r}: expected one of {sorted(UNIMATCH_PRESETS)}")
    return copy.deepcopy(UNIMATCH_PRESETS[name])


def criterion_keys(criterion: dict[str, Any], per_gpu_batch: int) -> dict[str, Any]:
    """An official yaml `criterion` (CELoss, or OHEM with `thresh` and `min_kept`) as project
    config keys; OHEM's `min_kept` counts over the batch one process sees (`per_gpu_batch`
    images), ours per image. Shared by UniMatch and UniMatch V2 (same yaml format)."""
    if criterion["name"] != "OHEM":
        return {"sup_loss": "ce"}
    kw = criterion["kwargs"]
    return {
        "sup_loss": "ohem",
        "ohem_thresh": kw["thresh"],
        "ohem_min_kept_per_image": kw["min_kept"] // per_gpu_batch,
    }


def config_number(C: Any, key: str) -> float:
    """`C[key]` as a float; ConfigError naming the key when it is not a number."""
    value = C.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"C.{key} = {value!r}: expected a number")
    return float(value)
