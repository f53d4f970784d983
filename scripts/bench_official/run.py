"""Official training iteration vs ours, side by side, interleaved, one process per side.

    python scripts/bench_official/run.py --official-root /path/to/CPCL --method cpcl

Per method: the official loop body (float32, as the official code trains; see official.py)
and our `train_step` (float32 and, by default, bf16 autocast) on the same synthetic inputs and
the same name-seeded weights, the same network on both sides (`--backbone`). Rounds alternate
the sides (rotating order); each side is its own process, so its peak RSS is its own. The
ratio is official time / our time (> 1: ours is faster), the median of per-round ratios with
their min..max. Prints a table per method and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import bench_rounds as br  # noqa: E402
from bench_train import Spec, machine_info, make_runner  # noqa: E402
from official import RUNNERS, OfficialSpec, make_official  # noqa: E402

DEFAULT_DET = os.environ.get(
    "CPCL_GOLDEN_DIR", os.path.join(HERE, "..", "..", "..", "shared", "golden")
)


def parse_roots(items: list[str], methods: list[str]) -> dict[str, str]:
    """`PATH` (every method) or `METHOD=PATH` items -> {method: path}; every method needs one."""
    roots: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if sep and name in RUNNERS:
            roots[name] = path
        else:
            roots.update({m: item for m in methods if m not in roots})
    missing = [m for m in methods if m not in roots]
    if missing:
        raise SystemExit(f"--official-root: no checkout given for {missing} (PATH or METHOD=PATH)")
    for m, path in roots.items():
        if not os.path.isdir(path):
            raise SystemExit(f"--official-root {m}={path}: not a folder")
    return roots


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--official-root", nargs="+", required=True, help="PATH or METHOD=PATH ...")
    p.add_argument("--method", nargs="+", default=["cpcl"], choices=sorted(RUNNERS))
    p.add_argument(
        "--backbone", default="resnet50", choices=("resnet50", "resnet101"), help="both sides"
    )
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--ours-amp", nargs="+", default=["none", "bf16"], choices=("none", "bf16"))
    p.add_argument("--channels-last", action="store_true", help="ours in channels-last")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=1, help="timed iterations per side and round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--det-dir", default=DEFAULT_DET, help="folder of the golden det_weights.py")
    p.add_argument(
        "--extra-path", default=None, help="appended to sys.path of the official side (sklearn)"
    )
    args = p.parse_args(argv)
    args.roots = parse_roots(args.official_root, args.method)
    args.det_dir = os.path.abspath(args.det_dir)
    if not os.path.isfile(os.path.join(args.det_dir, "det_weights.py")):
        raise SystemExit(f"--det-dir {args.det_dir}: no det_weights.py there")
    return args


def sides_for(method: str, args: argparse.Namespace) -> list[tuple[str, object, object]]:
    """The official side, then ours per amp mode."""
    off = OfficialSpec(
        method, os.path.abspath(args.roots[method]), args.backbone, args.crop, args.batch,
        args.device, args.threads, args.seed, args.det_dir, args.extra_path,
    )  # fmt: skip
    sides = [(f"{method} official fp32", make_official, off)]
    for amp in args.ours_amp:
        ours = Spec(
            method, args.backbone, "voc", args.crop, args.batch, amp, args.channels_last,
            False, args.device, args.threads, args.seed, args.det_dir,
        )  # fmt: skip
        sides.append((f"{method} ours {ours.label.split(' ', 1)[1]}", make_runner, ours))
    return sides


def method_rows(sides: list, results: list) -> list[dict]:
    """Summary per side, with official/ours ratios (paired by round) on our sides."""
    rows = []
    for (label, _, spec), res in zip(sides, results, strict=True):
        row = {"side": label, **br.summarize(res)}
        if label.split()[1] == "ours":
            row["amp"] = spec.amp
            row["official_over_ours"] = br.paired_ratio(results[0], res)
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """Plain-text table."""
    ratio = br.ratio_column("official/ours", "official_over_ours", 20)
    return br.format_rows(rows, "side", 30, [br.peak_column(), ratio])


def main(argv: list[str] | None = None) -> dict:
    """Run every method; print tables and one JSON line."""
    args = parse_args(argv)
    info = machine_info(args.threads)
    t0 = time.time()
    out_rows = []
    for method in args.method:
        sides = sides_for(method, args)
        results = br.run_interleaved(
            sides, rounds=args.rounds, iters=args.iters, warmup=args.warmup
        )
        rows = method_rows(sides, results)
        print(
            f"\n{method}: {args.backbone}, crop {args.crop}, batch {args.batch}+{args.batch}, "
            f"{args.device}, {info['threads']} threads, torch {info['torch']}, "
            f"load {info['load_1min']}"
        )
        print(format_table(rows))
        out_rows.append({"method": method, "backbone": args.backbone, "crop": args.crop,
                         "batch": args.batch, "sides": rows})  # fmt: skip
    out = {"bench": "official_vs_ours", **info, "rounds": args.rounds, "iters": args.iters,
           "wall_s": round(time.time() - t0, 1), "results": out_rows}  # fmt: skip
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
