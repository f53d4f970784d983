"""Semi-supervised gain on the toy data: `sup`, `cps`, `cpcl`, `u2pl`, `unimatch`, same engine.

    python scripts/bench_semisup.py [--seeds 0 1] [--methods sup cps cpcl u2pl unimatch] [--jobs N] [--key=value ...]

Protocol (`cpcl.presets.toy`: SEMISUP_DATA, SEMISUP_OVERRIDES, PRETRAIN):
1. the semi-supervised toy set (1/8 of its training images labeled) is written once;
2. a ResNet-18 backbone is pre-trained once on the *other* toy shapes (`cpcl.toy_pretrain`,
   the stand-in for ImageNet weights; cached);
3. every (method, seed) run starts from that backbone with the same schedule and differs only
   in `C.method` and `C.seed` (head init, sampling, CutMix boxes); the schedule keys set
   here (lr, batch, crop, epochs, iterations) override each method's official defaults, the
   method's own keys keep theirs (U2PL: the first of the 2 epochs supervised only, decoder
   lr x10, EMA teacher, contrastive memory banks). Its last snapshot is evaluated on the toy
   validation set with the official evaluator on the method's evaluated network
   (`eval_net_from_checkpoint`: branch 1 for sup/CPS/CPCL, the U2PL teacher).

UniMatch runs with the same data, crops, batch, iterations and backbone; its own recipe keeps
the official 10x head multiplier (`unimatch_lr_multi`), so `METHOD_OVERRIDES` sets its backbone
lr to 0.005: head 0.05, the lr of every parameter in the other rows. Its other official values
(confidence threshold 0.95, strong views, FP) are kept.

On a CPU the runs go to `--jobs` parallel processes with cpu_count/jobs threads each, because
two single-thread processes train about twice as fast as one two-thread process on small
inputs. Extra `--key=value` arguments override config keys of every run. Prints a table of mIoU
mean and standard deviation over seeds and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import torch

from cpcl.config import apply_overrides, finalize, load_preset
from cpcl.data.toy import is_complete, make_toy_voc
from cpcl.engine import fit
from cpcl.evaluate import evaluate_snapshot
from cpcl.methods import method_names
from cpcl.presets.toy import PRETRAIN, SEMISUP_DATA, SEMISUP_OVERRIDES
from cpcl.toy_pretrain import pretrain_toy_backbone

REPO = Path(__file__).resolve().parents[1]
RESULT_TAG = "BENCH_SEMISUP_RESULT "
# Per-method additions to SEMISUP_OVERRIDES (see the module docstring).
METHOD_OVERRIDES: dict[str, tuple[str, ...]] = {"unimatch": ("--lr=0.005",)}


def run_one(method: str, seed: int, data: str, backbone: str, out: str, extra: list[str]) -> float:
    """Train one configuration and return its validation mIoU (fraction)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    C = apply_overrides(
        load_preset("voc"),
        [
            *SEMISUP_OVERRIDES,
            f"--pretrained_model={backbone}",
            f"--dataset_path={data}",
            f"--log_dir={os.path.join(out, 'log')}",
            f"--method={method}",
            f"--seed={seed}",
            f"--device={device}",
            *METHOD_OVERRIDES.get(method, ()),
            *extra,
        ],
    )
    summary = fit(C, root=out)
    snapshot = os.path.join(summary["snapshot_dir"], "epoch-last.pth")
    C = finalize(C, root=out)
    # The method's evaluated network (`eval_net`: branch 1 for sup/CPS/CPCL, the U2PL teacher).
    result = evaluate_snapshot(C, snapshot, device=device, progress=False)
    return float(result["miou"])


def _launch(
    job: tuple[str, int], args: argparse.Namespace, extra: list[str], tmp: str, threads: int
) -> tuple[subprocess.Popen, IO[str], str, float]:
    """Start one run in a child process limited to `threads` threads (its output to a file)."""
    method, seed = job
    out = os.path.join(tmp, f"{method}_{seed}")
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, __file__, "--run-one", method, str(seed), args.data, args.backbone, out]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = open(os.path.join(out, "stdout.txt"), "w")  # noqa: SIM115 - closed by the caller
    proc = subprocess.Popen([*cmd, *extra], stdout=log, stderr=subprocess.STDOUT, env=env)
    return proc, log, out, time.perf_counter()


def run_all(
    args: argparse.Namespace, extra: list[str]
) -> dict[tuple[str, int], tuple[float, float]]:
    """Run every (method, seed) in up to `args.jobs` processes; {(method, seed): (mIoU, s)}."""
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    # Longest runs first so the parallel slots finish together.
    queue = sorted(((m, s) for s in args.seeds for m in args.methods), key=lambda j: j[0] == "sup")
    running: list[tuple[tuple[str, int], tuple[subprocess.Popen, IO[str], str, float]]] = []
    results: dict[tuple[str, int], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="cpcl_semisup_") as tmp:
        while queue or running:
            while queue and len(running) < args.jobs:
                job = queue.pop(0)
                running.append((job, _launch(job, args, extra, tmp, threads)))
            time.sleep(0.5)
            for entry in list(running):
                job, (proc, log, out, t0) = entry
                if proc.poll() is None:
                    continue
                running.remove(entry)
                log.close()
                text = Path(out, "stdout.txt").read_text()
                tagged = [ln for ln in text.splitlines() if ln.startswith(RESULT_TAG)]
                if proc.returncode != 0 or not tagged:
                    for _job, (p, *_rest) in running:
                        p.kill()
                    raise SystemExit(f"{job[0]} seed {job[1]} failed:\n{text[-3000:]}")
                miou = json.loads(tagged[-1][len(RESULT_TAG) :])["miou"]
                results[job] = (miou, time.perf_counter() - t0)
                print(f"{job[0]} seed {job[1]}: mIoU {100 * miou:.2f}%", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run every (method, seed) pair and print the table and the JSON line."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run-one"]:  # a worker process started by run_all
        method, seed, data, backbone, out, *extra = argv[1:]
        miou = run_one(method, int(seed), data, backbone, out, extra)
        print(RESULT_TAG + json.dumps({"miou": miou}), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=method_names(),
        default=["sup", "cps", "cpcl", "u2pl", "unimatch"],
    )
    parser.add_argument("--data", default=str(REPO / "DATA" / "toy_voc_semisup"))
    parser.add_argument("--backbone", default=str(REPO / "DATA" / "toy_pretrain" / "resnet18.pth"))
    cpu_jobs = min(os.cpu_count() or 1, 6)
    parser.add_argument(
        "--jobs", type=int, default=1 if torch.cuda.is_available() else cpu_jobs,
        help="parallel runs (default: 1 on a GPU, min(cpu_count, 6) on a CPU)",
    )  # fmt: skip
    args, extra = parser.parse_known_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: expected at least 1")
    t0 = time.perf_counter()
    if not is_complete(args.data, {"dataset": "voc", **SEMISUP_DATA}):
        print(f"writing the toy dataset to {args.data} ...", flush=True)
        make_toy_voc(args.data, **SEMISUP_DATA)
    print(f"toy backbone: {args.backbone} (trained once, then cached) ...", flush=True)
    pretrain_toy_backbone(args.backbone, **PRETRAIN)
    t_prep = time.perf_counter() - t0
    results = run_all(args, extra)
    wall = time.perf_counter() - t0
    rows = []
    print(f"\n{'method':<8}{'mIoU mean':>11}{'std':>8}   per seed (%)      s/run")
    for method in args.methods:
        values = [results[(method, s)][0] for s in args.seeds]
        mean = 100 * statistics.fmean(values)
        std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
        per_seed = " ".join(f"{100 * v:.2f}" for v in values)
        per_run = statistics.fmean(results[(method, s)][1] for s in args.seeds)
        print(f"{method:<8}{mean:>11.2f}{std:>8.2f}   {per_seed:<17} {per_run:.0f}")
        rows.append({"method": method, "miou_mean": round(mean, 2), "miou_std": round(std, 2),
                     "per_seed": [round(100 * v, 2) for v in values], "seconds_per_run": round(per_run, 1)})  # fmt: skip
    print(f"\nwall time {wall / 60:.1f} min ({t_prep:.0f} s data + backbone), jobs={args.jobs}")
    print(
        json.dumps(
            {
                "bench": "semisup",
                "seeds": args.seeds,
                "jobs": args.jobs,
                "settings": [*SEMISUP_OVERRIDES, *extra],
                "results": rows,
                "wall_seconds": round(wall, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
