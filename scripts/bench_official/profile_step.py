"""Where the time of one training iteration goes: torch.profiler, official vs ours.

    python scripts/bench_official/profile_step.py --official-root /path/to/CPCL --method cpcl

Per side (official float32, ours float32, ours bf16; each in its own process, after
`--warmup` untimed iterations) one profiled iteration: self CPU time summed into categories
(convolution forward / backward, batch norm, interpolation, losses and softmax, copies and
layout conversions, host syncs, optimiser, elementwise, other) and the top ops. Prints a table
per method and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

from run import DEFAULT_DET, parse_roots, sides_for  # noqa: E402

# (category, substrings of aten op names); the first match wins, so specific before generic.
CATEGORIES = [
    ("conv bwd", ("convolution_backward",)),
    ("conv fwd", ("convolution", "conv2d", "mkldnn_conv")),
    ("batch norm", ("batch_norm",)),
    ("interpolate", ("upsample", "grid_sampler")),
    ("loss/softmax", ("nll_loss", "log_softmax", "_softmax", "cross_entropy")),
    ("host sync", ("_local_scalar_dense", "nonzero", "unique", "masked_select", "aten::item")),
    ("index", ("index", "gather", "scatter", "take")),
    ("copy/layout", ("copy_", "contiguous", "clone", "to_dense", "_to_copy", "reorder", "cat")),
    ("optimizer", ("_foreach", "sgd", "lerp")),
    ("reduce", ("sum", "mean", "max", "min", "argmax", "sort", "topk", "norm")),
    ("elementwise", ("add", "mul", "div", "sub", "relu", "threshold", "where", "eq", "ne",
                     "ge", "le", "gt", "lt", "pow", "exp", "log", "fill", "zero", "sqrt")),
]  # fmt: skip


def category(name: str) -> str:
    """The category of an op name (see CATEGORIES); "other" when none matches."""
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


def _profile(make, spec, warmup: int, queue) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    runner = make(spec)
    for _ in range(warmup):
        runner.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        runner.step()
    cats: dict[str, float] = defaultdict(float)
    ops = []
    for e in prof.key_averages():
        if not e.key.startswith("aten::"):
            continue
        ms = e.self_cpu_time_total / 1e3
        cats[category(e.key)] += ms
        ops.append((e.key, round(ms, 1), e.count))
    ops.sort(key=lambda x: -x[1])
    total = sum(cats.values())
    syncs = {
        k: c for k, _, c in ops if category(k) == "host sync" and k != "aten::item"
    }  # op -> calls
    queue.put(
        {
            "total_self_ms": round(total, 1),
            "categories": {k: round(v, 1) for k, v in sorted(cats.items(), key=lambda x: -x[1])},
            "top": ops[:15],
            "sync_calls": syncs,
            "threads": torch.get_num_threads(),
        }
    )


def profile_side(make, spec, warmup: int) -> dict:
    """Profile one side in a fresh spawned process."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_profile, args=(make, spec, warmup, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main(argv: list[str] | None = None) -> None:
    """Profile every side of every method; print tables and one JSON line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--official-root", nargs="+", required=True)
    p.add_argument("--method", nargs="+", default=["cpcl"])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--ours-amp", nargs="+", default=["none", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--extra-path", default=None)
    p.add_argument("--det-dir", default=DEFAULT_DET)
    args = p.parse_args(argv)
    args.roots = parse_roots(args.official_root, args.method)
    args.det_dir, args.device, args.seed = os.path.abspath(args.det_dir), "cpu", 0
    out = {}
    for method in args.method:
        res = {}
        for label, make, spec in sides_for(method, args):
            res[label] = profile_side(make, spec, args.warmup)
            print(f"{label}: {res[label]['total_self_ms']} ms self CPU", file=sys.stderr)
        cats = sorted({c for r in res.values() for c in r["categories"]})
        print(f"\n{method} (self CPU ms of one iteration, {args.threads} threads)")
        print(f"{'category':<14}" + "".join(f"{lbl.split(' ', 1)[1]:>20}" for lbl in res))
        for c in sorted(cats, key=lambda c: -max(r["categories"].get(c, 0) for r in res.values())):
            print(f"{c:<14}" + "".join(f"{r['categories'].get(c, 0):>20.1f}" for r in res.values()))
        print(f"{'total':<14}" + "".join(f"{r['total_self_ms']:>20.1f}" for r in res.values()))
        for lbl, r in res.items():
            print(f"  {lbl} top: " + ", ".join(f"{k[6:]} {ms}" for k, ms, _ in r["top"][:8]))
            print(f"  {lbl} host-sync ops (calls): {r['sync_calls']}")
        out[method] = res
    print(json.dumps({"bench": "profile_step", "crop": args.crop, "results": out}))


if __name__ == "__main__":
    main()
