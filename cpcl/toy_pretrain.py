"""A stand-in for ImageNet weights on the toy data: pre-train a ResNet backbone on other toy shapes.

Every method in the paper starts from an ImageNet-pretrained backbone. From random weights, a
few hundred CPU iterations leave the two CPCL teachers too weak for their pseudo labels to help,
so the toy semi-supervised benchmark would measure optimisation speed, not the method. This
module trains one DeepLabv3+ branch, fully supervised, on an endless stream of in-memory toy
scenes that contain only the 15 *other* toy objects (`PRETRAIN_OBJECTS`, ids 6..20), and keeps
its backbone in the layout `C.pretrained_model` loads. The benchmark's classes (objects 1..5),
images and labels are never seen, so, like ImageNet for VOC, it gives generic features (edges,
outlines, textures), not the answers.

The result is cached next to a JSON file of the settings that made it; `pretrain_toy_backbone`
returns the cached file when the settings match.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import save_checkpoint
from .data.toy import OBJECTS_PER_IMAGE, voc_toy_scene
from .data.transforms import normalize
from .errors import CpclError
from .fileio import atomic_write_text
from .models import ModelSettings, build_model
from .optim import WarmUpPolyLR, set_lr
from .presets.common import defaults

log = logging.getLogger(__name__)

PRETRAIN_OBJECTS: tuple[int, ...] = tuple(range(6, 21))


def _meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def _batch(
    rng: np.random.Generator,
    n: int,
    size: int,
    difficulty: str,
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` random scenes as a normalised (n,3,size,size) float tensor and (n,size,size) labels."""
    imgs, labels = [], []
    for _ in range(n):
        k = int(rng.choice(OBJECTS_PER_IMAGE[0], p=OBJECTS_PER_IMAGE[1]))
        objects = rng.choice(PRETRAIN_OBJECTS, k).tolist()
        img, label = voc_toy_scene(rng, size, size, objects, difficulty)
        # Object ids 6..20 become training classes 1..15 (0 stays background).
        label = np.where(label > 0, label.astype(np.int64) - (PRETRAIN_OBJECTS[0] - 1), 0)
        imgs.append(normalize(img, mean, std))
        labels.append(label)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(np.stack(labels))


def is_cached(out: Path, params: dict[str, Any]) -> bool:
    """True when `out` exists and its settings record (`<out>.json`) names exactly `params`
    (a damaged record counts as absent: the caller trains again)."""
    meta = _meta_path(out)
    if not (out.is_file() and meta.is_file()):
        return False
    try:
        return json.loads(meta.read_text()).get("params") == params
    except ValueError:
        return False


def train_toy_segmenter(
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    schedule: WarmUpPolyLR,
    rng: np.random.Generator,
    *,
    out: Path,
    params: dict[str, Any],
    device: str,
    progress: bool,
    what: str,
) -> Path:
    """Train `net` (a segmenter with a `.backbone`) with cross-entropy on streamed scenes of
    `PRETRAIN_OBJECTS` (`params` gives iters, batch_size, size, difficulty), then save its
    backbone as `{'model': state_dict}` at `out` atomically with the settings record next to
    it. Returns `out`."""
    iters, batch_size = int(params["iters"]), int(params["batch_size"])
    size, difficulty = int(params["size"]), str(params["difficulty"])
    preset = defaults()  # the mean/std the training pipeline normalises with
    t0 = time.perf_counter()
    losses: list[torch.Tensor] = []
    bar = tqdm(range(iters), desc=f"{what} pre-training", disable=not progress, leave=False)
    for it in bar:
        set_lr(opt, schedule.get_lr(it))
        x, y = _batch(rng, batch_size, size, difficulty, preset.image_mean, preset.image_std)
        loss = F.cross_entropy(net(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    final = float(torch.stack(losses[-20:]).mean()) if losses else float("nan")
    save_checkpoint(out, net.backbone)
    record = {"params": params, "final_loss": round(final, 4), "seconds": time.perf_counter() - t0}
    atomic_write_text(_meta_path(out), json.dumps(record, indent=1) + "\n")
    log.info("%s pre-trained in %.0f s (loss %.3f): %s", what, record["seconds"], final, out)
    return out


def pretrain_toy_backbone(
    out: str | Path,
    *,
    backbone: str = "resnet18",
    iters: int = 400,
    batch_size: int = 16,
    size: int = 64,
    lr: float = 0.05,
    seed: int = 0,
    difficulty: str = "standard",
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Train (or reuse) a toy-pretrained backbone at `out` and return its path.

    SGD (momentum 0.9, weight decay 1e-4) with the poly schedule (power 0.9), cross-entropy on
    streamed `size`x`size` scenes of `PRETRAIN_OBJECTS`; seeded, so the same arguments give
    the same weights on the same machine. The file holds `{'model': backbone state_dict}`.
    """
    for name, value, lo in (("iters", iters, 1), ("batch_size", batch_size, 1), ("size", size, 48)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            # Below 48 px the scene generator cannot always fit one whole object.
            raise CpclError(f"pretrain_toy_backbone {name}={value!r}: expected an integer >= {lo}")
    out = Path(out)
    params: dict[str, Any] = dict(
        backbone=backbone,
        iters=iters,
        batch_size=batch_size,
        size=size,
        lr=lr,
        seed=seed,
        difficulty=difficulty,
        objects=list(PRETRAIN_OBJECTS),
    )
    if is_cached(out, params):
        return out
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 2023])
    settings = ModelSettings(1 + len(PRETRAIN_OBJECTS), backbone)
    net = build_model("deeplabv3plus", settings).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    schedule = WarmUpPolyLR(lr, 0.9, iters)
    return train_toy_segmenter(
        net, opt, schedule, rng, out=out, params=params, device=device, progress=progress,
        what="toy backbone",
    )  # fmt: skip
