"""The eval command line (`exp_*/eval.py`): -e checkpoint specs, -d devices, exports, logs."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

from easydict import EasyDict

from ..data.datasets import build_dataset, resolve_class_names
from ..engine.resolve import apply_overrides, finalize
from ..errors import ConfigError, CpclError
from ..evaluate.checkpoints import parse_devices, resolve_checkpoints, stored_config
from ..methods import get_method, select_evaluator
from ..metrics import format_iou_table
from .snapshot import adopt_stored_config, cpcl_label, evaluate_checkpoint


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
            f"{evaluator.label if evaluator else cpcl_label(C)}, checkpoints: "
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
            res, stored_epoch = evaluate_checkpoint(Cv, dataset, path, devices, args)
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
