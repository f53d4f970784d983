"""Write the deterministic toy datasets (CPS VOC or Cityscapes layout) used by the quickstart.

    python scripts/make_toy_data.py [--dataset voc|cityscapes] [--root DIR] [--n-train N]
                                    [--n-val N] [--difficulty easy|standard] [--seed 0] [--force]

An existing, complete dataset made with the same arguments is kept unless --force is given.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from cpcl.data.toy import DIFFICULTY, is_complete, make_toy_cityscapes, make_toy_voc
from cpcl.errors import CpclError

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Generate the requested toy dataset; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("voc", "cityscapes"), default="voc")
    parser.add_argument("--root", help="output folder (default DATA/toy_voc or DATA/toy_city)")
    parser.add_argument("--n-train", type=int, help="training images (default: generator's)")
    parser.add_argument("--n-val", type=int, help="validation images (default: generator's)")
    parser.add_argument(
        "--num-classes", type=int, help="classes incl. background (default: generator's)"
    )
    parser.add_argument("--difficulty", choices=tuple(DIFFICULTY), default="easy", help="VOC only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="regenerate even if complete")
    args = parser.parse_args(argv)
    root = Path(args.root or REPO / "DATA" / ("toy_voc" if args.dataset == "voc" else "toy_city"))
    kwargs = {"seed": args.seed}
    for key in ("n_train", "n_val", "num_classes"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    if args.dataset == "voc":
        kwargs["difficulty"] = args.difficulty
    meta = root / "toy_meta.json"
    if not args.force and is_complete(root) and meta.is_file():
        stored = json.loads(meta.read_text())["params"]
        if all(stored.get(k) == v for k, v in kwargs.items()) and stored["dataset"] == args.dataset:
            print(f"{root}: complete toy dataset already present (use --force to rewrite)")
            return 0
    if args.force and root.exists():
        shutil.rmtree(root)
    try:
        make = make_toy_voc if args.dataset == "voc" else make_toy_cityscapes
        summary = make(root, **kwargs)
    except CpclError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    splits = ", ".join(
        f"{r}: {v['labeled']}/{v['unlabeled']}" for r, v in summary["splits"].items()
    )
    print(
        f"wrote {summary['n_train']} train + {summary['n_val']} val images to {root} in "
        f"{summary['seconds']:.1f} s\nclasses: {', '.join(summary['class_names'])}\n"
        f"labeled/unlabeled per ratio: {splits}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
