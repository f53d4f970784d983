"""Size of a training snapshot (two-branch CPCL network + both SGD states) per backbone.

    python scripts/bench_snapshot_size.py [--configs toy-r18,voc-r50,voc-r101,city-r50]

Writes each snapshot to a temporary folder, complete and weights-only
(`C.snapshot_weights_only`), prints a table and one JSON line. No training: the SGD momentum
buffers are created by one step with zero gradients, so the files have their real size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

from cpcl.config import load_preset
from cpcl.engine.resolve import apply_overrides, finalize
from cpcl.fileio import format_bytes
from cpcl.methods import get_method
from cpcl.snapshots import save_training_state

CONFIGS = {
    "toy-r18": ("voc", ["--backbone=resnet18", "--num_classes=6"]),
    "voc-r50": ("voc", ["--backbone=resnet50"]),
    "voc-r101": ("voc", ["--backbone=resnet101"]),
    "city-r50": ("cityscapes", ["--backbone=resnet50"]),
}


def measure(name: str, folder: str) -> dict[str, float]:
    """Bytes of the complete and the weights-only snapshot of configuration `name`."""
    dataset, args = CONFIGS[name]
    C = finalize(apply_overrides(load_preset(dataset), [*args, "--pretrained_model=None"]))
    method = get_method(C.method).from_config(C, per_rank_batch=1)
    model = method.build_model(pretrained=False)
    optimizers = method.build_optimizers(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for opt in optimizers:
        opt.step()  # creates the momentum buffers
    sizes = {}
    for weights_only in (False, True):
        path = os.path.join(folder, f"{name}-{weights_only}.pth")
        save_training_state(
            path,
            model,
            optimizers,
            epoch=0,
            next_epoch=1,
            next_iter=0,
            iters_per_epoch=1,
            rng=[],
            config=None,
            weights_only=weights_only,
        )
        sizes["weights_only" if weights_only else "complete"] = os.path.getsize(path)
        os.unlink(path)
    return sizes


def main(argv: list[str] | None = None) -> int:
    """Measure and report; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    names = parser.parse_args(argv).configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"error: unknown configs {unknown}; expected {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            results[name] = measure(name, folder)
    print(f"{'config':<10} {'complete':>12} {'weights-only':>14}")
    for name, s in results.items():
        print(f"{name:<10} {format_bytes(s['complete']):>12} {format_bytes(s['weights_only']):>14}")
    print(json.dumps({"bench": "snapshot_size", "bytes": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
