"""The eval command line (`exp_*/eval.py`): -e checkpoint specs, -d devices, exports, logs."""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from easydict import EasyDict
from torch import nn

from ..checkpoint import extract_state_dict, load_checkpoint
from ..config import ConfigError, _parse_args, apply_overrides, finalize, to_plain, validate
from ..data.datasets import CITYSCAPES_EVAL_IDS, build_dataset, palette_for, resolve_class_names
from ..errors import CheckpointError, CpclError
from ..methods import eval_net_from_checkpoint, get_method, select_evaluator
from ..metrics import format_iou_table, scores
from .dataset import Exports, evaluate_dataset
from .fold import fold_batchnorm
from .settings import EvalSettings

_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pth$")
_RANGE = re.compile(r"^(\d+)-(\d*)$")


def resolve_checkpoints(
    spec: str, snapshot_dir: str | os.PathLike
) -> list[tuple[Path, int | None]]:
    """The checkpoints an official ``-e`` spec names, as (path, epoch or None), sorted by epoch.

    ``X.pth``: that file (a bare name not found here: ``<snapshot_dir>/X.pth``, e.g.
    ``best_seg.pth``). ``N`` or ``last``: ``<snapshot_dir>/epoch-N.pth``. ``A-B``: every
    ``epoch-K.pth`` with A <= K <= B; ``A-``: every one with K >= A (``epoch-last.pth`` is never
    part of a range, as in the official code). Raises CpclError naming what was looked for
    when the folder or file is missing or nothing matches (the official code would silently
    evaluate an untrained network).
    """
    spec = spec.strip()
    snap = Path(snapshot_dir)
    if spec.endswith(".pth"):
        path = Path(spec)
        if not path.is_file() and path.name == spec and (snap / spec).is_file():
            path = snap / spec
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


# What a checkpoint is and how its run evaluates: `eval.py` takes these from the `config` a cpcl
# run stores in its snapshots (plus the stored method's own `<method>_*` keys), unless the
# command line sets them, so a snapshot evaluates as trained without repeating its settings.
STORED_KEYS = (
    "method",
    "backbone",
    "num_classes",
    "class_names",
    "dataset_name",
    "dataset_path",
    "bn_eps",
    "bn_momentum",
    "image_mean",
    "image_std",
    "eval_crop_size",
    "eval_stride_rate",
    "eval_scale_array",
    "eval_flip",
    "eval_branch",
)


def stored_config(path: Path) -> dict[str, Any]:
    """The `config` that a cpcl training run stored in checkpoint `path`; {} for other files
    (official snapshots, weight files) and for files that do not load (their real load later
    reports why)."""
    try:
        # mmap: only the pickle is read here, not the tensors.
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return {}
    config = ckpt.get("config") if isinstance(ckpt, dict) else None
    return dict(config) if isinstance(config, dict) else {}


def adopt_stored_config(
    C: Any, overrides: Sequence[str], stored: dict[str, Any], source: str
) -> tuple[Any, list[str]]:
    """`C` with the `--key=value` `overrides`, and the `STORED_KEYS` (and the stored method's
    `<method>_*` keys) of `stored` wherever the command line does not set them.

    Returns `(C, notes)`: one line per command-line value that differs from the stored one (the
    command line wins). A stored `dataset_path` that no longer exists is not taken.
    """

    given = dict(_parse_args(overrides))
    base = copy.deepcopy(C)
    if "method" in stored and "method" not in given:
        base.method = stored["method"]  # first, so the right method's defaults and keys apply
    C = apply_overrides(base, overrides)
    method = C.method
    keys = [*STORED_KEYS, *(k for k in stored if k.startswith(f"{method}_") and k in C)]
    notes = []
    for key in keys:
        if key not in stored or key not in C:
            continue
        value = tuple(stored[key]) if isinstance(stored[key], list) else stored[key]
        if key in given:
            current = tuple(C[key]) if isinstance(C[key], list) else C[key]
            if current != value:
                notes.append(
                    f"note: --{key}={given[key]} (command line) differs from {key}={value!r} "
                    f"stored in {source}; using the command line"
                )
            continue
        if key == "dataset_path" and not os.path.isdir(str(value)):
            notes.append(f"note: the stored dataset_path {value} does not exist; using {C[key]}")
            continue
        C[key] = value
    validate(C)
    return C, notes


def _load_eval_net(C: Any, path: Path, device: torch.device | str) -> tuple[nn.Module, int | None]:
    """The network `C.method` evaluates (its `eval_net`), with the snapshot at `path` loaded
    strictly, on `device`, BatchNorm folded (`fold_batchnorm`: the evaluator owns this copy);
    plus the checkpoint's stored epoch (None if absent). The checkpoint itself and the parts of
    the model that are not evaluated (e.g. the other branch) are released before evaluation."""

    ckpt = load_checkpoint(path)
    sd = extract_state_dict(ckpt, str(path))
    cls = sd.get("branch1.classifier.weight")
    if torch.is_tensor(cls) and cls.shape[0] != C.num_classes:
        raise CheckpointError(
            f"{path}: the checkpoint has {cls.shape[0]} classes, but C.num_classes is "
            f"{C.num_classes}; evaluate it with the matching experiment (or --num_classes="
            f"{cls.shape[0]})"
        )
    epoch = _stored_epoch(ckpt)
    notes: list[str] = []
    net = eval_net_from_checkpoint(C, ckpt, device, notes)
    for note in notes:  # the method's word on what is evaluated (e.g. a weights-only file)
        print(f"note: {path}: {note}", file=sys.stderr)
    del ckpt, sd, cls  # before the folded copy is made: lower peak memory
    return fold_batchnorm(net), epoch


def _stored_epoch(ckpt: dict[str, Any]) -> int | None:
    stored = ckpt.get("epoch")
    return int(stored) if isinstance(stored, (int, float)) else None


def evaluate_snapshot(
    C: Any,
    path: str | os.PathLike,
    *,
    device: torch.device | str,
    save_dir: str | None = None,
    palette: np.ndarray | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Load the snapshot at `path` strictly into `C.method`'s network and evaluate the network
    the method evaluates (`eval_net`) on `C`'s val split, with the protocol `C.eval_protocol`
    selects (cpcl: the project's evaluator; official: the method's own). The result's
    ``protocol`` names it."""

    net, _ = _load_eval_net(C, Path(path), device)
    exports = Exports(save_dir, palette) if save_dir is not None else None
    return _evaluate_net(C, net, build_dataset(C, "val"), device, exports, progress)


def _cpcl_label(C: Any) -> str:
    """How the project's evaluator runs for `C`, for tables and logs."""
    e = EvalSettings.from_config(C)
    return (
        f"cpcl: sliding windows {'x'.join(map(str, e.crop_size))}, stride rate "
        f"{e.stride_rate:.3g}, scales {tuple(e.scales)}, flip {e.flip}"
    )


def _evaluate_net(
    C: Any,
    net: nn.Module,
    dataset: Any,
    device: torch.device | str,
    exports: Exports | None,
    progress: bool,
) -> dict[str, Any]:
    """`net` on `dataset` with the protocol of `C.eval_protocol`; ``protocol``: its label."""

    evaluator = select_evaluator(C)
    if evaluator is None:
        settings = EvalSettings.from_config(C)
        res = evaluate_dataset(
            net, dataset, settings, device=device, exports=exports, progress=progress
        )
        res["protocol"] = _cpcl_label(C)
    else:
        res = evaluator.evaluate(net, dataset, device=device, exports=exports, progress=progress)
        res["protocol"] = evaluator.label
    return res


def _exports(C: Any, args: argparse.Namespace) -> Exports | None:
    """The exports that -p / -s / --labelids ask for (None: nothing is written)."""

    if args.save_path is None:
        return None
    labelids = None
    if args.labelids:
        # trainId -> Cityscapes labelId (the inverse of the dataset's 34 -> 19 table).
        labelids = np.zeros(256, dtype=np.uint8)
        labelids[: len(CITYSCAPES_EVAL_IDS)] = CITYSCAPES_EVAL_IDS
    return Exports(args.save_path, palette_for(C.dataset_name), labelids, bool(args.show_image))


def _shard_worker(
    rank: int,
    world: int,
    device: str,
    C: dict[str, Any],
    path: str,
    exports: Exports | None,
    queue: Any,
) -> None:
    """One process of a multi-GPU evaluation: its shard's hist (or an error) into `queue`."""

    try:
        cfg = EasyDict(C)
        dev = torch.device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        net, _ = _load_eval_net(cfg, Path(path), dev)
        res = evaluate_dataset(
            net,
            build_dataset(cfg, "val"),
            EvalSettings.from_config(cfg),
            device=dev,
            rank=rank,
            world_size=world,
            exports=exports,
            progress=rank == 0,
        )
        queue.put((rank, "ok", res["hist"].numpy()))
    except CpclError as err:
        queue.put((rank, "error", str(err)))
    except Exception as err:  # surface the worker's failure in the parent
        queue.put((rank, "error", f"{type(err).__name__}: {err} (on {device})"))


def _evaluate_checkpoint(
    C: Any,
    dataset: Any,
    path: Path,
    devices: list[torch.device],
    args: argparse.Namespace,
) -> tuple[dict[str, Any], int | None]:
    """The result of one checkpoint on `dataset`, and the epoch stored in the checkpoint."""
    exports = _exports(C, args)
    if len(devices) == 1:
        net, epoch = _load_eval_net(C, path, devices[0])
        return _evaluate_net(C, net, dataset, devices[0], exports, True), epoch
    # Several GPUs: one process per device, each a strided shard; the hists are summed here.

    epoch = _stored_epoch(load_checkpoint(path))
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [
        ctx.Process(
            target=_shard_worker,
            args=(r, len(devices), str(d), to_plain(C), str(path), exports, queue),
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
    res["protocol"] = _cpcl_label(C)
    return res, epoch


def _variant_label(variant: dict[str, Any]) -> str:
    return "".join(f", {k}={v}" for k, v in variant.items())


def _json_number(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _parser(prog: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Evaluate snapshots with CPCL's official sliding-window protocol "
        "(--eval_protocol=cpcl, default) or the method's own official one "
        "(--eval_protocol=official: u2pl, unimatch). Any other --key=value overrides the "
        "config (e.g. --eval_scale_array=0.75,1,1.25 --eval_flip=true --eval_branch=avg).",
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

    args, rest = _parser(prog).parse_known_args(list(argv))
    user_C = C
    pending = None
    try:
        C = finalize(apply_overrides(C, rest), root=root)
    except ConfigError as err:
        # E.g. --u2pl_eval_mode of the method stored in the checkpoint: known only once that
        # method is; the keys of `C` are enough to find the checkpoints.
        generic = [a for a in rest if a.removeprefix("--").split("=", 1)[0] in user_C]
        C, pending = finalize(apply_overrides(user_C, generic), root=root), err
    checkpoints = resolve_checkpoints(args.epochs, C.snapshot_dir)
    # The run's own settings, from the (first) checkpoint; the command line still wins.
    stored = stored_config(checkpoints[0][0])
    if stored:
        adopted, notes = adopt_stored_config(user_C, rest, stored, str(checkpoints[0][0]))
        for line in notes:
            print(line, file=sys.stderr)
        C = finalize(adopted, root=root)
    elif pending is not None:
        raise pending
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
    evaluator = select_evaluator(C)  # a bad choice fails before any checkpoint is loaded
    if evaluator is not None and len(devices) > 1:
        raise CpclError(
            f"-d {args.devices}: --eval_protocol=official runs {C.method}'s own protocol in one "
            "process; pass one device (or --eval_protocol=cpcl to shard over several)"
        )
    dataset = build_dataset(C, "val")
    # One evaluation per variant the method asks for (e.g. each of two networks).
    variants = get_method(C.method).eval_variants(C)
    names = resolve_class_names(C.dataset_name, C.num_classes, C.class_names)
    if args.verbose:
        print(
            f"dataset {C.dataset_path} ({len(dataset)} val images), devices "
            f"{', '.join(map(str, devices))}, crop {C.eval_crop_size}, stride_rate "
            f"{C.eval_stride_rate}, scales {tuple(C.eval_scale_array)}, flip {C.eval_flip}, "
            f"branch {C.eval_branch}, protocol "
            f"{evaluator.label if evaluator else _cpcl_label(C)}, checkpoints: "
            f"{', '.join(str(p) for p, _ in checkpoints)}",
            file=sys.stderr,
        )
    os.makedirs(C.log_dir, exist_ok=True)
    stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.localtime())
    log_file = os.path.join(C.log_dir, f"val_{stamp}.log")
    last_file = os.path.join(C.log_dir, "val_last.log")
    writer = None
    try:
        for (path, epoch), variant in itertools.product(checkpoints, variants):
            start = time.perf_counter()
            Cv = EasyDict({**C, **variant})
            res, stored_epoch = _evaluate_checkpoint(Cv, dataset, path, devices, args)
            if epoch is None:
                epoch = stored_epoch
            table = format_iou_table(res["iou"], res["pixel_acc"], names, show_no_back=True)
            table = f"protocol: {res['protocol']}{_variant_label(variant)}\n{table}"
            print(table)
            with open(log_file, "a") as f:
                f.write(f"Model: {path}\n{table}\n")
            shutil.copyfile(log_file, last_file)
            record = {
                "checkpoint": str(path),
                "epoch": epoch,
                "protocol": res["protocol"],
                **({"variant": variant} if variant else {}),
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
