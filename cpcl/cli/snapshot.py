"""Evaluating a snapshot with its method's network: the stored run settings adopted
(`adopt_stored_config`), the method's `eval_net` loaded strictly (`load_eval_net`), the protocol
`C.eval_protocol` selects (`evaluate_net`), one checkpoint on one or several devices
(`evaluate_checkpoint`) and `evaluate_snapshot` for scripts. It needs the method registry, so
it sits in the entry layer above `cpcl.methods`."""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from easydict import EasyDict
from torch import nn

from ..checkpoint import extract_state_dict, load_checkpoint
from ..config import parse_args, to_plain
from ..data.datasets import CITYSCAPES_EVAL_IDS, build_dataset, palette_for
from ..engine.resolve import apply_overrides, validate
from ..errors import CheckpointError, CpclError
from ..evaluate import EvalSettings, Exports, evaluate_dataset, fold_batchnorm
from ..evaluate.checkpoints import stored_epoch
from ..methods import eval_net_from_checkpoint, select_evaluator
from ..metrics import scores

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


def adopt_stored_config(
    C: Any, overrides: Sequence[str], stored: dict[str, Any], source: str
) -> tuple[Any, list[str]]:
    """`C` with the `--key=value` `overrides`, and the `STORED_KEYS` (and the stored method's
    `<method>_*` keys) of `stored` wherever the command line does not set them.

    Returns `(C, notes)`: one line per command-line value that differs from the stored one (the
    command line wins). A stored `dataset_path` that no longer exists is not taken.
    """

    given = dict(parse_args(overrides))
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


def load_eval_net(C: Any, path: Path, device: torch.device | str) -> tuple[nn.Module, int | None]:
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
    epoch = stored_epoch(ckpt)
    notes: list[str] = []
    net = eval_net_from_checkpoint(C, ckpt, device, notes)
    for note in notes:  # the method's word on what is evaluated (e.g. a weights-only file)
        print(f"note: {path}: {note}", file=sys.stderr)
    del ckpt, sd, cls  # before the folded copy is made: lower peak memory
    return fold_batchnorm(net), epoch


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

    net, _ = load_eval_net(C, Path(path), device)
    exports = Exports(save_dir, palette) if save_dir is not None else None
    return evaluate_net(C, net, build_dataset(C, "val"), device, exports, progress)


def cpcl_label(C: Any) -> str:
    """How the project's evaluator runs for `C`, for tables and logs."""
    e = EvalSettings.from_config(C)
    return (
        f"cpcl: sliding windows {'x'.join(map(str, e.crop_size))}, stride rate "
        f"{e.stride_rate:.3g}, scales {tuple(e.scales)}, flip {e.flip}"
    )


def evaluate_net(
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
        res["protocol"] = cpcl_label(C)
    else:
        res = evaluator.evaluate(net, dataset, device=device, exports=exports, progress=progress)
        res["protocol"] = evaluator.label
    return res


def make_exports(C: Any, args: argparse.Namespace) -> Exports | None:
    """The exports that -p / -s / --labelids ask for (None: nothing is written)."""

    if args.save_path is None:
        return None
    labelids = None
    if args.labelids:
        # trainId -> Cityscapes labelId (the inverse of the dataset's 34 -> 19 table).
        labelids = np.zeros(256, dtype=np.uint8)
        labelids[: len(CITYSCAPES_EVAL_IDS)] = CITYSCAPES_EVAL_IDS
    return Exports(args.save_path, palette_for(C.dataset_name), labelids, bool(args.show_image))


def shard_worker(
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
        net, _ = load_eval_net(cfg, Path(path), dev)
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


def evaluate_checkpoint(
    C: Any,
    dataset: Any,
    path: Path,
    devices: list[torch.device],
    args: argparse.Namespace,
) -> tuple[dict[str, Any], int | None]:
    """The result of one checkpoint on `dataset`, and the epoch stored in the checkpoint."""
    exports = make_exports(C, args)
    if len(devices) == 1:
        net, epoch = load_eval_net(C, path, devices[0])
        return evaluate_net(C, net, dataset, devices[0], exports, True), epoch
    # Several GPUs: one process per device, each a strided shard; the hists are summed here.

    epoch = stored_epoch(load_checkpoint(path))
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [
        ctx.Process(
            target=shard_worker,
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
    res["protocol"] = cpcl_label(C)
    return res, epoch
