"""Sliding-window evaluation with the official CPCL numerics, batched; the eval CLI.

Official semantics (`furnace/engine/evaluator.py` `sliding_eval` / `scale_process`,
`furnace/utils/img_utils.py`) reproduced by `sliding_predict`:

* per scale, ``cv2.resize(img, None, fx=s, fy=s, INTER_LINEAR)`` on the uint8 image (output
  size ``cvRound(s*dim)``, source coordinates from exactly ``1/s``);
* long side <= crop: normalise, then zero-pad (zeros in normalised space) centred to the crop,
  one forward, un-pad;
* otherwise: zero-pad the *raw* image to at least the crop (pad pixels become
  ``(0 - mean)/std``), windows with stride ``ceil(crop*stride_rate)``, the last window moved
  back to end at the border, window logits SUMMED (the official ``count_scale`` is unused);
* flip: the logits of the mirrored input, mirrored back, are added (summed, not averaged);
* padding is ``pad//2`` before and the rest after; no softmax anywhere;
* each scale's map is resized back to the image size with bilinear half-pixel interpolation
  and the scales are summed in float64; the prediction is the argmax.

Speed: all windows of a scale (with their mirrors) go through the network in batches of up to
`window_batch` inputs. In eval mode BatchNorm uses its running statistics, so a batch computes
the same function as single windows (up to the convolution algorithm's float rounding).
Normalisation, padding, window accumulation, un-padding and the resize stay on the device.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.transforms import normalize_lut
from .errors import CheckpointError, CpclError
from .metrics import all_reduce_hist, confusion_matrix, format_iou_table, scores

BRANCHES = ("1", "2", "avg")
_AMP_DTYPES: dict[str, torch.dtype | None] = {
    "none": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


# --------------------------------------------------------------------------------------------
# sliding-window prediction
# --------------------------------------------------------------------------------------------


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(v) for v in size)
    return h, w


def normalisation_lut(mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A (3, 256) float32 table: entry [c, v] is the official normalisation of value v.

    The training pipeline's table (`cpcl.data.transforms.normalize_lut`, official arithmetic
    bit for bit), transposed for a per-channel lookup on any device.
    """
    return torch.from_numpy(np.ascontiguousarray(normalize_lut(mean, std).T))


def window_starts(padded: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the official window grid along one axis of length `padded` >= `crop`.

    ``ceil((padded - crop)/stride) + 1`` windows at ``k*stride``; a window that would cross the
    border is moved back to end at it.
    """
    n = math.ceil((padded - crop) / stride) + 1
    return [min(k * stride + crop, padded) - crop for k in range(n)]


def window_grid(
    height: int, width: int, crop_size: int | Sequence[int], stride_rate: float
) -> list[tuple[int, int]]:
    """(y, x) starts, in the official raster order, of the windows for an h x w scaled image.

    An image whose long side fits in the crop is one window at (0, 0) of the padded crop.
    """
    ch, cw = _pair(crop_size)
    if max(height, width) <= min(ch, cw):
        return [(0, 0)]
    ph, pw = max(height, ch), max(width, cw)
    ys = window_starts(ph, ch, math.ceil(ch * stride_rate))
    xs = window_starts(pw, cw, math.ceil(cw * stride_rate))
    return [(y, x) for y in ys for x in xs]


def _branch_forward(
    model: nn.Module, branch: str, amp: str, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """x (B,3,h,w) -> float32 logits (B,C,h,w) of the selected branch (or the branch mean)."""
    if branch not in BRANCHES:
        raise ValueError(f"branch={branch!r}: expected one of {', '.join(BRANCHES)}")
    if amp not in _AMP_DTYPES:
        raise ValueError(f"amp={amp!r}: expected one of {', '.join(_AMP_DTYPES)}")
    from .checkpoint import unwrap  # DDP / torch.compile wrappers hide .branch1/.branch2

    model = unwrap(model)
    if branch == "1":
        # A plain segmenter without branches is treated as branch 1 (benchmarks, tests).
        nets = [getattr(model, "branch1", model)]
    else:
        if not (hasattr(model, "branch1") and hasattr(model, "branch2")):
            raise ValueError(f"branch={branch!r} needs a two-branch model with .branch1/.branch2")
        nets = [model.branch2] if branch == "2" else [model.branch1, model.branch2]
    dtype = _AMP_DTYPES[amp]

    def forward(x: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with ctx:
            outs = [net(x) for net in nets]
        if len(outs) == 1:
            return outs[0].float()
        return (outs[0].float() + outs[1].float()) / 2

    return forward


def _resize_scores(score: torch.Tensor, height: int, width: int, backend: str) -> torch.Tensor:
    """Bilinear half-pixel resize of a (C,h,w) float32 map to (C,height,width).

    backend "cv2" runs OpenCV's INTER_LINEAR (the official call, bit for bit) on a CPU tensor;
    "torch" runs ``F.interpolate(bilinear, align_corners=False)``, the same formula (cv2 does
    not antialias when shrinking either) computed on the device, which differs from cv2 only by
    float32 coordinate rounding (~1e-6 relative on logit maps).
    """
    c, h, w = score.shape
    if (h, w) == (height, width):
        return score
    if backend == "cv2":
        hwc = score.permute(1, 2, 0).contiguous().numpy()
        out = cv2.resize(hwc, (width, height), interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(out.reshape(height, width, c)).permute(2, 0, 1)
    return F.interpolate(score[None], size=(height, width), mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def sliding_predict(
    model: nn.Module,
    image: np.ndarray,
    *,
    num_classes: int,
    crop_size: int | Sequence[int],
    stride_rate: float,
    scales: Sequence[float],
    flip: bool,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str | None = None,
    window_batch: int = 8,
    amp: str = "none",
    branch: str = "1",
    resize: str = "auto",
) -> torch.Tensor:
    """Summed multi-scale (and flip) sliding-window logits of one image, official semantics.

    model: the network (switched to eval mode for the call, its mode restored after).
    image: HxWx3 uint8 RGB numpy array. crop_size: int or (h, w). scales: e.g. (1.0,) or
    (0.75, 1, 1.25). mean, std: RGB normalisation of ``x/255``. device: where to run (default:
    the model's). window_batch: network inputs per forward (a window and its mirror always go
    in the same forward, so with flip at least one window, i.e. two inputs, per forward).
    amp: "none" | "bf16" | "fp16" autocast. branch: "1" (official), "2" or "avg" (mean of
    both branches' logits). resize: "auto" (cv2 on CPU, torch elsewhere), "cv2" or "torch".

    Returns the (C, H, W) score sum over scales on the device: float64 (as the official
    host-side accumulation), except on MPS (no float64: float32). ``scores.argmax(0)`` is the
    prediction. Per scale the window sums are float32, as in the official code.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError("sliding_predict: image must be an HxWx3 uint8 numpy array")
    if image.shape[2] != 3:
        raise ValueError(f"sliding_predict: image has {image.shape[2]} channels, expected 3")
    if window_batch < 1:
        raise ValueError(f"window_batch={window_batch}: expected >= 1")
    if not scales:
        raise ValueError("sliding_predict: scales is empty")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    if resize == "auto":
        resize = "cv2" if device.type == "cpu" else "torch"
    if resize not in ("cv2", "torch") or (resize == "cv2" and device.type != "cpu"):
        raise ValueError(f"resize={resize!r}: expected 'auto', 'torch', or 'cv2' (CPU only)")
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64
    ch, cw = _pair(crop_size)
    height, width = image.shape[:2]
    lut = normalisation_lut(mean, std).to(device)
    forward = _branch_forward(model, branch, amp, device)
    views = 2 if flip else 1
    per_forward = max(1, window_batch // views)

    was_training = model.training
    model.eval()
    try:
        total = torch.zeros(num_classes, height, width, dtype=acc_dtype, device=device)
        for s in scales:
            scaled = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
            h, w = scaled.shape[:2]
            raw = torch.from_numpy(np.ascontiguousarray(scaled)).to(device, non_blocking=True)
            # (h,w,3) uint8 -> (3,h,w) float32 via the exact per-channel lookup table.
            norm = lut.gather(1, raw.permute(2, 0, 1).reshape(3, -1).long()).reshape(3, h, w)
            if max(h, w) <= min(ch, cw):
                # Whole image: pad with zeros in normalised space.
                top, left = (ch - h) // 2, (cw - w) // 2
                padded = F.pad(norm, (left, cw - w - left, top, ch - h - top), value=0.0)
            else:
                # Pad the raw image with 0, i.e. each channel with its normalised value of 0.
                ph, pw = max(h, ch), max(w, cw)
                top, left = (ph - h) // 2, (pw - w) // 2
                padded = lut[:, :1, None].expand(3, ph, pw).clone()
                padded[:, top : top + h, left : left + w] = norm
            acc = torch.zeros(num_classes, *padded.shape[1:], dtype=torch.float32, device=device)
            grid = window_grid(h, w, (ch, cw), stride_rate)
            for i in range(0, len(grid), per_forward):
                chunk = grid[i : i + per_forward]
                crops = torch.stack([padded[:, y : y + ch, x : x + cw] for y, x in chunk])
                if flip:
                    out = forward(torch.cat([crops, crops.flip(-1)]))
                    k = len(chunk)
                    out = out[:k] + out[k:].flip(-1)
                else:
                    out = forward(crops)
                if out.shape[1] != num_classes:
                    raise ValueError(
                        f"the model returns {out.shape[1]} classes, num_classes={num_classes}"
                    )
                for j, (y, x) in enumerate(chunk):
                    acc[:, y : y + ch, x : x + cw] += out[j]
            score = acc[:, top : top + h, left : left + w]
            total += _resize_scores(score, height, width, resize).to(acc_dtype)
        return total
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# dataset evaluation and prediction export
# --------------------------------------------------------------------------------------------


def _save_png_index(path: str, index: np.ndarray, palette: np.ndarray | None) -> None:
    from PIL import Image  # only needed when exporting

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img = Image.fromarray(index, mode="P" if palette is not None else "L")
    if palette is not None:
        img.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    img.save(path)


def save_prediction(
    pred: np.ndarray,
    name: str,
    save_dir: str,
    *,
    palette: np.ndarray | None = None,
    labelids_map: np.ndarray | None = None,
    image: np.ndarray | None = None,
    label: np.ndarray | None = None,
) -> None:
    """Write the exports of one prediction (HxW uint8 class indices) named `name`.

    ``<save_dir>/<name>.png``: raw class indices (official ``cv2.imwrite`` of the prediction);
    ``<save_dir>_color/<name>.png``: palette PNG (with `palette`, (256,3) uint8);
    ``<save_dir>_labelids/<name>.png``: ids mapped through `labelids_map` (e.g. Cityscapes
    trainId -> labelId for the official benchmark scripts);
    ``<save_dir>_show/<name>.png``: image | prediction | ground truth side by side, in colour
    (with `image` and `palette`; label pixels 255 are drawn white).
    """
    base = save_dir.rstrip("/\\")
    fn = name + ".png"
    os.makedirs(os.path.dirname(os.path.join(base, fn)), exist_ok=True)
    cv2.imwrite(os.path.join(base, fn), pred)
    if palette is not None:
        _save_png_index(os.path.join(base + "_color", fn), pred, palette)
    if labelids_map is not None:
        ids = np.asarray(labelids_map, dtype=np.uint8)[pred]
        _save_png_index(os.path.join(base + "_labelids", fn), ids, None)
    if image is not None and palette is not None:
        pal = np.asarray(palette, dtype=np.uint8)
        parts = [image, pal[pred]]
        if label is not None:
            gt = pal[label]
            gt[label == 255] = 255
            parts.append(gt)
        bar = np.zeros((image.shape[0], 15, 3), dtype=np.uint8)
        row = [parts[0]]
        for part in parts[1:]:
            row += [bar, part]
        out = os.path.join(base + "_show", fn)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cv2.imwrite(out, cv2.cvtColor(np.concatenate(row, axis=1), cv2.COLOR_RGB2BGR))


def evaluate_dataset(
    model: nn.Module,
    dataset: Any,
    *,
    num_classes: int,
    crop_size: int | Sequence[int],
    stride_rate: float,
    scales: Sequence[float],
    flip: bool,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str,
    window_batch: int = 8,
    amp: str = "none",
    branch: str = "1",
    rank: int = 0,
    world_size: int = 1,
    save_dir: str | None = None,
    palette: np.ndarray | None = None,
    labelids_map: np.ndarray | None = None,
    progress: bool = True,
    show: bool = False,
) -> dict[str, Any]:
    """Evaluate `model` on `dataset` (``len()``, ``load(i) -> (img RGB, label, name)``).

    Rank r evaluates images r, r+world_size, ... (no padded duplicates); the confusion matrix
    is summed over ranks with `all_reduce_hist` when torch.distributed is initialised (without
    it, the result is this shard's). Returns `metrics.scores(hist)` plus ``hist`` (CPU int64)
    and ``num_images`` (this rank's count). With `save_dir` the predictions are exported by
    `save_prediction` (`show`: also the side-by-side images). The model's train/eval mode is
    restored afterwards, so the training loop can call this between epochs.
    """
    device = torch.device(device)
    hist = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    indices = range(rank, len(dataset), world_size)
    iterator: Any = indices
    if progress and rank == 0:
        from tqdm import tqdm

        iterator = tqdm(indices, desc="eval", dynamic_ncols=True, file=sys.stderr)
    was_training = model.training
    model.eval()
    count = 0
    try:
        for i in iterator:
            img, label, name = dataset.load(i)
            score = sliding_predict(
                model,
                img,
                num_classes=num_classes,
                crop_size=crop_size,
                stride_rate=stride_rate,
                scales=scales,
                flip=flip,
                mean=mean,
                std=std,
                device=device,
                window_batch=window_batch,
                amp=amp,
                branch=branch,
            )
            pred = score.argmax(0)
            if label is not None:
                hist += confusion_matrix(pred, label, num_classes)
            if save_dir is not None:
                pred_np = pred.to(torch.uint8).cpu().numpy()  # the one device->host copy
                save_prediction(
                    pred_np,
                    name,
                    save_dir,
                    palette=palette,
                    labelids_map=labelids_map,
                    image=img if show else None,
                    label=label if show else None,
                )
            count += 1
    finally:
        model.train(was_training)
    hist = all_reduce_hist(hist)
    out = scores(hist)
    out["hist"] = hist.cpu()
    out["num_images"] = count
    return out


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pth$")
_RANGE = re.compile(r"^(\d+)-(\d*)$")


def resolve_checkpoints(
    spec: str, snapshot_dir: str | os.PathLike
) -> list[tuple[Path, int | None]]:
    """The checkpoints an official ``-e`` spec names, as (path, epoch or None), sorted by epoch.

    ``X.pth``: that file. ``N`` or ``last``: ``<snapshot_dir>/epoch-N.pth``. ``A-B``: every
    ``epoch-K.pth`` with A <= K <= B; ``A-``: every one with K >= A (``epoch-last.pth`` is never
    part of a range, as in the official code). Raises CpclError naming what was looked for
    when the folder or file is missing or nothing matches (the official code would silently
    evaluate an untrained network).
    """
    spec = spec.strip()
    snap = Path(snapshot_dir)
    if spec.endswith(".pth"):
        path = Path(spec)
        if not path.is_file():
            raise CpclError(f"-e {spec}: checkpoint file not found: {path.resolve()}")
        m = _EPOCH_FILE.match(path.name)
        return [(path, int(m.group(1)) if m else None)]
    rng = _RANGE.match(spec)
    if not (rng or spec.isdigit() or spec == "last"):
        raise CpclError(
            f"-e {spec}: expected X.pth (a file), N (epoch N), A-B (epochs A..B), A- (epochs "
            f">= A) or last"
        )
    if not snap.is_dir():
        raise CpclError(
            f"-e {spec}: snapshot folder not found: {snap} (set --snapshot_dir=... or train first)"
        )
    if not rng:
        path = snap / f"epoch-{spec}.pth"
        if not path.is_file():
            have = sorted(p.name for p in snap.glob("epoch-*.pth"))
            raise CpclError(
                f"-e {spec}: {path} not found (snapshot folder holds: "
                f"{', '.join(have) if have else 'no epoch-*.pth files'})"
            )
        return [(path, int(spec) if spec.isdigit() else None)]
    start = int(rng.group(1))
    end = int(rng.group(2)) if rng.group(2) else None
    if end is not None and end < start:
        raise CpclError(f"-e {spec}: the range end {end} is below its start {start}")
    found = []
    for p in snap.iterdir():
        m = _EPOCH_FILE.match(p.name)
        if m and p.is_file():
            k = int(m.group(1))
            if k >= start and (end is None or k <= end):
                found.append((k, p))
    if not found:
        wanted = f"{start} <= K <= {end}" if end is not None else f"K >= {start}"
        raise CpclError(f"-e {spec}: no epoch-K.pth with {wanted} in {snap}")
    return [(p, k) for k, p in sorted(found)]


def parse_devices(text: str | None) -> list[torch.device]:
    """``-d`` value -> devices: ``cpu``, ``0``, ``0,1``, ``cuda:1``; None: GPU 0 if any, else CPU."""
    if text is None:
        return [torch.device("cuda:0" if torch.cuda.is_available() else "cpu")]
    items = [t.strip() for t in text.split(",") if t.strip()]
    if items == ["cpu"]:
        return [torch.device("cpu")]
    devices = []
    for item in items:
        idx = item.removeprefix("cuda:")
        if not idx.isdigit():
            raise CpclError(f"-d {text}: expected cpu, or GPU indices such as 0 or 0,1")
        devices.append(torch.device(f"cuda:{int(idx)}"))
    if not devices:
        raise CpclError(f"-d {text!r}: no device given")
    if not torch.cuda.is_available():
        raise CpclError(f"-d {text}: CUDA is not available on this machine; use -d cpu")
    n = torch.cuda.device_count()
    bad = [d.index for d in devices if d.index >= n]
    if bad:
        raise CpclError(f"-d {text}: GPU {bad[0]} requested but only {n} visible")
    if len(set(devices)) != len(devices):
        raise CpclError(f"-d {text}: a device is listed twice")
    return devices


def _build_model(C: Any) -> nn.Module:
    from .models import Network  # keeps `import cpcl.evaluate` light

    return Network(C.num_classes, backbone=C.backbone, bn_eps=C.bn_eps, bn_momentum=C.bn_momentum)


def _load_snapshot(model: nn.Module, path: Path, num_classes: int) -> dict[str, Any]:
    """Load `path` strictly into `model`; return the checkpoint dict (for its epoch)."""
    from .checkpoint import extract_state_dict, load_checkpoint, load_weights

    ckpt = load_checkpoint(path)
    sd = extract_state_dict(ckpt, str(path))
    cls = sd.get("branch1.classifier.weight")
    if torch.is_tensor(cls) and cls.shape[0] != num_classes:
        raise CheckpointError(
            f"{path}: the checkpoint has {cls.shape[0]} classes, but C.num_classes is "
            f"{num_classes}; evaluate it with the matching experiment (or --num_classes="
            f"{cls.shape[0]})"
        )
    load_weights(model, sd, strict=True)
    return ckpt


def eval_settings(C: Any) -> dict[str, Any]:
    """The protocol keyword arguments of `evaluate_dataset` taken from a finalized config."""
    return {
        "num_classes": C.num_classes,
        "crop_size": C.eval_crop_size,
        "stride_rate": C.eval_stride_rate,
        "scales": tuple(C.eval_scale_array),
        "flip": bool(C.eval_flip),
        "mean": tuple(C.image_mean),
        "std": tuple(C.image_std),
        "window_batch": C.eval_window_batch,
        "amp": C.amp,
        "branch": C.eval_branch,
    }


def evaluate_snapshot(
    C: Any,
    path: str | os.PathLike,
    *,
    device: torch.device | str,
    save_dir: str | None = None,
    palette: np.ndarray | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build `Network` from `C`, load the snapshot at `path` strictly, evaluate it on `C`'s val split."""
    from .data.datasets import build_dataset
    from .models import Network

    model = Network(C.num_classes, C.backbone, bn_eps=C.bn_eps, bn_momentum=C.bn_momentum)
    _load_snapshot(model, Path(path), C.num_classes)
    model.to(device)
    return evaluate_dataset(
        model,
        build_dataset(C, "val"),
        device=device,
        save_dir=save_dir,
        palette=palette,
        progress=progress,
        **eval_settings(C),
    )


def _eval_options(C: Any, args: argparse.Namespace) -> dict[str, Any]:
    return {**eval_settings(C), "save_dir": args.save_path, "show": bool(args.show_image)}


def _exports(C: Any, args: argparse.Namespace) -> tuple[np.ndarray | None, np.ndarray | None]:
    from .data.datasets import CITYSCAPES_EVAL_IDS, palette_for

    if args.save_path is None:
        return None, None
    labelids = None
    if args.labelids:
        # trainId -> Cityscapes labelId (the inverse of the dataset's 34 -> 19 table).
        labelids = np.zeros(256, dtype=np.uint8)
        labelids[: len(CITYSCAPES_EVAL_IDS)] = CITYSCAPES_EVAL_IDS
    return palette_for(C.dataset_name), labelids


def _shard_worker(
    rank: int,
    world: int,
    device: str,
    C: dict[str, Any],
    path: str,
    options: dict[str, Any],
    labelids: np.ndarray | None,
    queue: Any,
) -> None:
    """One process of a multi-GPU evaluation: its shard's hist (or an error) into `queue`."""
    from easydict import EasyDict

    from .data.datasets import build_dataset, palette_for

    try:
        cfg = EasyDict(C)
        dev = torch.device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        model = _build_model(cfg)
        _load_snapshot(model, Path(path), cfg.num_classes)
        model.to(dev)
        palette = palette_for(cfg.dataset_name) if options["save_dir"] is not None else None
        res = evaluate_dataset(
            model,
            build_dataset(cfg, "val"),
            device=dev,
            rank=rank,
            world_size=world,
            palette=palette,
            labelids_map=labelids,
            progress=rank == 0,
            **options,
        )
        queue.put((rank, "ok", res["hist"].numpy()))
    except CpclError as err:
        queue.put((rank, "error", str(err)))
    except Exception as err:  # surface the worker's failure in the parent
        queue.put((rank, "error", f"{type(err).__name__}: {err} (on {device})"))


def _evaluate_checkpoint(
    C: Any,
    model: nn.Module,
    dataset: Any,
    path: Path,
    devices: list[torch.device],
    args: argparse.Namespace,
) -> tuple[dict[str, Any], dict[str, Any]]:
    options = _eval_options(C, args)
    palette, labelids = _exports(C, args)
    if len(devices) == 1:
        ckpt = _load_snapshot(model, path, C.num_classes)
        model.to(devices[0])
        res = evaluate_dataset(
            model,
            dataset,
            device=devices[0],
            palette=palette,
            labelids_map=labelids,
            progress=True,
            **options,
        )
        return res, ckpt
    # Several GPUs: one process per device, each a strided shard; the hists are summed here.
    from .checkpoint import load_checkpoint
    from .config import to_plain

    ckpt = load_checkpoint(path)
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [
        ctx.Process(
            target=_shard_worker,
            args=(r, len(devices), str(d), to_plain(C), str(path), options, labelids, queue),
        )
        for r, d in enumerate(devices)
    ]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    errors = [msg for _, status, msg in results if status != "ok"]
    if errors:
        raise CpclError(errors[0])
    hist = torch.from_numpy(sum(h for _, _, h in results))
    res = scores(hist)
    res["hist"] = hist
    res["num_images"] = len(dataset)
    return res, ckpt


def _json_number(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _parser(prog: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Evaluate CPCL snapshots with the official sliding-window protocol. Any "
        "other --key=value overrides the config (e.g. --eval_scale_array=0.75,1,1.25 "
        "--eval_flip=true --eval_branch=avg).",
    )
    p.add_argument(
        "-e",
        "--epochs",
        default="last",
        help="X.pth (a file), N (<snapshot_dir>/epoch-N.pth), A-B, A- or last (default)",
    )
    p.add_argument(
        "-d", "--devices", default=None, help="cpu, 0, 0,1 (default: C.device; auto = GPU 0 or CPU)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print the resolved settings")
    p.add_argument(
        "-s",
        "--show_image",
        "--save_image",
        dest="show_image",
        action="store_true",
        help="also save image | prediction | label side by side (in <save_path>_show)",
    )
    p.add_argument(
        "-p",
        "--save_path",
        default=None,
        help="save predictions: PATH (class ids), PATH_color (palette); default with -s or "
        "--labelids: <log_dir>/pred_imgs",
    )
    p.add_argument(
        "--labelids",
        action="store_true",
        help="Cityscapes: also save label-id PNGs (PATH_labelids) for the official scripts",
    )
    return p


def _run(C: Any, argv: Sequence[str], root: str | None, prog: str | None) -> int:
    from .config import apply_overrides, finalize
    from .data.datasets import build_dataset, resolve_class_names

    args, rest = _parser(prog).parse_known_args(list(argv))
    C = finalize(apply_overrides(C, rest), root=root)
    if args.labelids and C.dataset_name != "cityscapes":
        raise CpclError(f"--labelids: only for Cityscapes (dataset_name is {C.dataset_name!r})")
    if args.save_path is None and (args.show_image or args.labelids):
        args.save_path = os.path.join(C.log_dir, "pred_imgs")
    if args.devices is None:
        # No -d: C.device decides (auto: GPU 0 when available, else the CPU).
        choice = C.get("device", "auto")
        devices = parse_devices(None if choice == "auto" else ("0" if choice == "cuda" else "cpu"))
    else:
        devices = parse_devices(args.devices)
    checkpoints = resolve_checkpoints(args.epochs, C.snapshot_dir)
    dataset = build_dataset(C, "val")
    names = resolve_class_names(C.dataset_name, C.num_classes, C.class_names)
    if args.verbose:
        print(
            f"dataset {C.dataset_path} ({len(dataset)} val images), devices "
            f"{', '.join(map(str, devices))}, crop {C.eval_crop_size}, stride_rate "
            f"{C.eval_stride_rate}, scales {tuple(C.eval_scale_array)}, flip {C.eval_flip}, "
            f"branch {C.eval_branch}, checkpoints: {', '.join(str(p) for p, _ in checkpoints)}",
            file=sys.stderr,
        )
    model = _build_model(C)
    os.makedirs(C.log_dir, exist_ok=True)
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.localtime())
    log_file = os.path.join(C.log_dir, f"val_{stamp}.log")
    last_file = os.path.join(C.log_dir, "val_last.log")
    writer = None
    try:
        for path, epoch in checkpoints:
            start = time.perf_counter()
            res, ckpt = _evaluate_checkpoint(C, model, dataset, path, devices, args)
            if epoch is None:
                stored = ckpt.get("epoch")
                epoch = int(stored) if isinstance(stored, (int, float)) else None
            table = format_iou_table(res["iou"], res["pixel_acc"], names, show_no_back=True)
            print(table)
            with open(log_file, "a") as f:
                f.write(f"Model: {path}\n{table}\n")
            shutil.copyfile(log_file, last_file)
            record = {
                "checkpoint": str(path),
                "epoch": epoch,
                "mIoU": _json_number(res["miou"]),
                "pixel_acc": _json_number(res["pixel_acc"]),
                "per_class": {
                    n: _json_number(v) for n, v in zip(names, res["iou"].tolist(), strict=True)
                },
                "seconds": round(time.perf_counter() - start, 3),
            }
            print(json.dumps(record), flush=True)
            if writer is None:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(os.path.join(C.log_dir, "tb"))
            writer.add_scalar("val/mIoU", res["miou"], epoch if epoch is not None else 0)
            writer.flush()
    finally:
        if writer is not None:
            writer.close()
    return 0


def main(C: Any, argv: Sequence[str] | None = None, *, root: str | None = None) -> int:
    """The eval entry point: parse `argv`, evaluate every selected checkpoint, return the exit code.

    C: the experiment config (not yet finalized); root: the experiment folder that relative
    paths are resolved against (default: cwd). User errors print ``error: ...`` on stderr
    without a traceback and return 2.
    """
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _run(C, argv, root, None)
    except CpclError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
