"""Quickstart: the whole CPCL method on a built-in toy dataset, on a CPU in about 3 minutes.

    python scripts/quickstart.py [--device auto|cpu|cuda] [--out runs/quickstart] [-c CKPT]
                                 [--key=value ...]

1. writes the toy VOC-layout dataset (JPEG images, palette PNG labels, CPS split lists) to
   DATA/toy_voc if it is not there yet;
2. trains CPCL (two DeepLabv3+ ResNet-18 branches from scratch, 1/8 of the images labeled)
   with the real training loop, on the GPU when there is one;
3. evaluates the last snapshot with the real sliding-window evaluator, prints the per-class
   IoU table, writes coloured predictions and one picture grid (image | truth | prediction);
4. prints where the snapshots, TensorBoard logs and pictures are.

Any config key can be overridden (`--nepochs=8 --lr=0.01`), as with exp_voc/train.py.

Ctrl-C (or SIGTERM) during training writes `interrupted.pth` in the snapshot folder, skips the
evaluation, prints the command that resumes from it (`-c <that file>`, same options) and
exits with code 130 (the shell's code for an interrupted command), so a script running the
quickstart can tell an interrupted run from a finished one (0) or an error (2).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from cpcl import viz
from cpcl.cli.snapshot import evaluate_snapshot
from cpcl.config import load_preset
from cpcl.data.datasets import build_dataset, palette_for, resolve_class_names
from cpcl.data.toy import is_complete, make_toy_voc
from cpcl.engine import fit
from cpcl.engine.resolve import apply_overrides, finalize
from cpcl.errors import CpclError
from cpcl.metrics import format_iou_table
from cpcl.presets.toy import QUICKSTART_OVERRIDES, TOY_DATA, TOY_DATA_PARAMS

REPO = Path(__file__).resolve().parents[1]
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C


def picture_grid(
    dataset, pred_dir: str, palette: np.ndarray, names: list[str], out: str, n: int = 4
) -> str:
    """Write one PNG with rows image | ground truth | prediction for the first `n` images,
    column titles, and a legend of the class colours (`names[c]` in `palette[c]`)."""
    rows, ignored = [], False
    for i in range(min(n, len(dataset))):
        img, label, name = dataset.load(i)
        pred = cv2.imread(os.path.join(pred_dir, name + ".png"), cv2.IMREAD_GRAYSCALE)
        gt = palette[np.where(label == 255, 0, label)]
        gt[label == 255] = 255
        ignored |= bool((label == 255).any())
        rows.append([img, gt, palette[pred]])
    legend = [(c, tuple(int(v) for v in palette[k])) for k, c in enumerate(names)]
    if ignored:  # white in the ground truth: pixels the evaluation does not score
        legend.append(("ignored (255)", (255, 255, 255)))
    titles = ["image", "ground truth", "prediction"]
    viz.picture_grid(rows, titles, legend, cell=(256, 192)).save(out, optimize=True)
    return out


def _stopped(summary: dict, command: list[str]) -> int:
    """Report an interrupted training and how to resume it; the exit code for that case."""
    snapshot = os.path.join(summary["snapshot_dir"], "interrupted.pth")
    options = []
    skip = False
    for arg in command[1:]:  # the same options, minus an earlier -c/--continue
        if skip:
            skip = False
        elif arg in ("-c", "--continue"):
            skip = True
        elif not arg.startswith(("-c=", "--continue=")):
            options.append(arg)
    resume = shlex.join([sys.executable, command[0], *options, "-c", snapshot])
    print(
        f"\ntraining interrupted: the state is saved in {snapshot}; evaluation skipped.\n"
        f"resume with:\n  {resume}"
    )
    return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    """Run the quickstart; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--data", default=str(REPO / "DATA" / "toy_voc"), help="toy dataset folder")
    parser.add_argument("--out", default=str(REPO / "runs" / "quickstart"), help="run folder")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "-c", "--continue", dest="resume", metavar="CKPT", help="resume training from this file"
    )
    args, overrides = parser.parse_known_args(argv)
    start = time.perf_counter()
    try:
        if not is_complete(args.data, TOY_DATA_PARAMS):
            print(f"writing the toy dataset to {args.data} ...", flush=True)
            make_toy_voc(args.data, **TOY_DATA, seed=0)
        C = apply_overrides(
            load_preset("voc"),
            [
                *QUICKSTART_OVERRIDES,
                f"--dataset_path={args.data}",
                f"--log_dir={os.path.join(args.out, 'log')}",
                f"--device={args.device}",
                *overrides,
            ],
        )
        command = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
        summary = fit(C, root=args.out, resume=args.resume, argv=command)
        if summary.get("interrupted"):
            return _stopped(summary, command)
        C = finalize(C, root=args.out)
        device = "cuda" if C.device != "cpu" and torch.cuda.is_available() else "cpu"
        palette = palette_for("voc")
        pred_dir = os.path.join(args.out, "pred")
        snapshot = os.path.join(summary["snapshot_dir"], "epoch-last.pth")
        result = evaluate_snapshot(C, snapshot, device=device, save_dir=pred_dir, palette=palette)
        val = build_dataset(C, "val")
    except CpclError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside training (data writing, evaluation): nothing to resume
        print("\nquickstart interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    names = resolve_class_names("voc", C.num_classes, C.class_names)
    print(format_iou_table(result["iou"], result["pixel_acc"], names))
    grid = os.path.join(args.out, "quickstart_grid.png")
    picture_grid(val, pred_dir, palette, names, grid)
    minutes = (time.perf_counter() - start) / 60
    print(
        f"\nCPCL quickstart done in {minutes:.1f} min: toy val mIoU {100 * result['miou']:.2f}%\n"
        f"  snapshots:    {summary['snapshot_dir']}\n"
        f"  TensorBoard:  tensorboard --logdir {os.path.join(summary['log_dir'], 'tb')}\n"
        f"  predictions:  {pred_dir}_color/\n"
        f"  picture grid: {grid}  (image | ground truth | prediction)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
