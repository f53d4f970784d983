"""Semi-supervised gain on the toy data: `sup` vs `cps` vs `cpcl` through the same engine.

    python scripts/bench_semisup.py [--seeds 0 1] [--methods sup cps cpcl] [--key=value ...]

Every run uses the quickstart schedule (ResNet-18 from scratch, 64x64 crops, 1/8 of the toy
images labeled, the same number of iterations for every method) and differs only in
`C.method` and `C.seed` (weight init, sampling, CutMix). Each final snapshot is evaluated on
the toy validation set with the official evaluator (branch 1). Prints a table of mIoU mean
and standard deviation over seeds and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from cpcl.presets.toy import QUICKSTART_OVERRIDES, TOY_DATA, TOY_DATA_PARAMS

from cpcl.config import apply_overrides, finalize, load_preset
from cpcl.data.toy import is_complete, make_toy_voc
from cpcl.engine import fit
from cpcl.evaluate import evaluate_snapshot

REPO = Path(__file__).resolve().parents[1]


def run_one(method: str, seed: int, data: str, out: str, extra: list[str]) -> float:
    """Train one configuration and return its validation mIoU (fraction)."""
    C = apply_overrides(
        load_preset("voc"),
        [
            *QUICKSTART_OVERRIDES,
            f"--dataset_path={data}",
            f"--log_dir={os.path.join(out, 'log')}",
            f"--method={method}",
            f"--seed={seed}",
            "--device=cpu" if not torch.cuda.is_available() else "--device=auto",
            *extra,
        ],
    )
    summary = fit(C, root=out)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    snapshot = os.path.join(summary["snapshot_dir"], "epoch-last.pth")
    result = evaluate_snapshot(finalize(C, root=out), snapshot, device=device, progress=False)
    return float(result["miou"])


def main(argv: list[str] | None = None) -> int:
    """Run every (method, seed) pair and print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=["sup", "cps", "cpcl"])
    parser.add_argument("--data", default=str(REPO / "DATA" / "toy_voc"))
    args, extra = parser.parse_known_args(argv)
    if not is_complete(args.data, TOY_DATA_PARAMS):
        make_toy_voc(args.data, **TOY_DATA, seed=0)
    results: dict[str, list[float]] = {m: [] for m in args.methods}
    seconds: dict[str, float] = {m: 0.0 for m in args.methods}
    with tempfile.TemporaryDirectory(prefix="cpcl_semisup_") as tmp:
        for seed in args.seeds:
            for method in args.methods:
                t0 = time.perf_counter()
                miou = run_one(
                    method, seed, args.data, os.path.join(tmp, f"{method}_{seed}"), extra
                )
                seconds[method] += time.perf_counter() - t0
                results[method].append(miou)
                print(f"{method} seed {seed}: mIoU {100 * miou:.2f}%", flush=True)
    rows = []
    print(f"\n{'method':<8}{'mIoU mean':>11}{'std':>8}   per seed (%)      s/run")
    for method, values in results.items():
        mean = 100 * statistics.fmean(values)
        std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
        per_seed = " ".join(f"{100 * v:.2f}" for v in values)
        per_run = seconds[method] / len(values)
        print(f"{method:<8}{mean:>11.2f}{std:>8.2f}   {per_seed:<17} {per_run:.0f}")
        rows.append({"method": method, "miou_mean": round(mean, 2), "miou_std": round(std, 2),
                     "per_seed": [round(100 * v, 2) for v in values], "seconds_per_run": round(per_run, 1)})  # fmt: skip
    print(
        json.dumps(
            {
                "bench": "semisup",
                "seeds": args.seeds,
                "settings": [*QUICKSTART_OVERRIDES, *extra],
                "results": rows,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
