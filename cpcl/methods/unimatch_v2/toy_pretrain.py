"""A stand-in for the DINOv2 weights on the toy data: pre-train the `dinov2_toy` encoder on the
other toy shapes (the UniMatch V2 counterpart of `cpcl.toy_pretrain`, which does this for the
toy ResNet).

UniMatch V2 starts from the official self-supervised `dinov2_*.pth`. The toy benchmark has no
such file, and from random weights a ViT learns too little in a few hundred CPU iterations for
the teacher's pseudo labels to help. So, as for the ResNet rows, the whole DINOv2 + DPT network
is trained fully supervised on an endless stream of toy scenes that contain only the 15 *other*
objects (`cpcl.toy_pretrain.PRETRAIN_OBJECTS`, ids 6..20), and only its encoder is kept, in the
layout of an official `dinov2_*.pth` (bare encoder keys), so `--pretrained_model=FILE` loads it
through `load_dinov2_pretrained`. The benchmark's classes, images and labels are never seen.

AdamW (betas 0.9/0.999, weight decay 0.01, as UniMatch V2's optimiser) with a linear warm-up
and the poly schedule; seeded, so the same arguments give the same weights on the same machine.
The result is cached next to a JSON file of the settings that made it.

The defaults differ from the ResNet's (400 iterations, "standard" scenes) because the ViT learns
far more slowly from scratch. Measured on this shared CPU (one thread per run, load ~10; the
mIoU of the full pre-training network on 64 fresh 56 px scenes of the 15 pre-training objects,
16 classes with background, IoU pooled over the scenes, mean over the classes present):
"standard" scenes stayed at background only (mIoU 0.05-0.07) after 400-1500 iterations at lr
3e-4..5e-3, also with a wider encoder or head; "easy" scenes (the
benchmark's own difficulty) reached 0.10 after 600, 0.25 after 1500 and 0.37 after 3000
iterations at lr 1e-3, and 0.31 after 1500 and 0.42 after 3000 (236 s) at lr 2e-3 with 50
warm-up iterations (the defaults).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import CpclError
from ...optim import WarmUpPolyLR
from ...toy_pretrain import PRETRAIN_OBJECTS, is_cached, train_toy_segmenter
from .dinov2 import PATCH_SIZE
from .net import build_unimatch_v2_net

__all__ = ["TOY_DINOV2_PRETRAIN", "pretrain_toy_dinov2"]

log = logging.getLogger(__name__)

# Default settings (scripts/bench_semisup.py may pass others). 56 px = 4x4 patches, the
# multiple of 14 nearest the toy ResNet's 64 px pre-training crops.
TOY_DINOV2_PRETRAIN: dict[str, Any] = dict(
    backbone="dinov2_toy",
    iters=3000,
    batch_size=16,
    size=56,
    lr=2e-3,
    warmup=50,
    seed=0,
    difficulty="easy",
)


def pretrain_toy_dinov2(
    out: str | Path,
    *,
    backbone: str = "dinov2_toy",
    iters: int = 3000,
    batch_size: int = 16,
    size: int = 56,
    lr: float = 2e-3,
    warmup: int = 50,
    seed: int = 0,
    difficulty: str = "easy",
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Train (or reuse) a toy-pretrained DINOv2 encoder at `out` and return its path.

    The DPT network (`backbone`, 16 classes: background + the 15 pre-training objects) is
    trained with cross-entropy on streamed `size`x`size` scenes, the encoder and the head at
    the same `lr` (after `warmup` linear warm-up iterations); the file holds `{'model': encoder state_dict}` with the official names.
    """
    checks = (("iters", iters, 1), ("batch_size", batch_size, 1), ("size", size, 56))
    for name, value, lo in (*checks, ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise CpclError(f"pretrain_toy_dinov2 {name}={value!r}: expected an integer >= {lo}")
    if size % PATCH_SIZE:
        raise CpclError(f"pretrain_toy_dinov2 size={size}: expected a multiple of {PATCH_SIZE}")
    out = Path(out)
    params: dict[str, Any] = dict(
        backbone=backbone,
        iters=iters,
        batch_size=batch_size,
        size=size,
        lr=lr,
        warmup=warmup,
        seed=seed,
        difficulty=difficulty,
        objects=list(PRETRAIN_OBJECTS),
        optimizer="AdamW(0.9, 0.999, wd 0.01), poly 0.9",
    )
    if is_cached(out, params):
        return out
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 2024])
    net = build_unimatch_v2_net(backbone, 1 + len(PRETRAIN_OBJECTS)).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.01)
    schedule = WarmUpPolyLR(lr, 0.9, iters, warmup)
    return train_toy_segmenter(
        net, opt, schedule, rng, out=out, params=params, device=device, progress=progress,
        what="toy DINOv2",
    )  # fmt: skip
