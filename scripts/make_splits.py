"""Make a new seeded labeled/unlabeled partition of a training list.

    python scripts/make_splits.py --list DATA/city/config_new/train.txt --ratio 8 --seed 0 \
        --out DATA/city/config_new/subset_seed0 [--format cps-voc|cps-city|unimatch]

The labeled part holds ceil(n / ratio) images (the size of every public CPS list), the two
parts are disjoint and together hold every image of the input once. File names follow the
output format: `train_aug_{labeled,unlabeled}_1-<ratio>.txt` (CPS) or
`1_<ratio>/{labeled,unlabeled}.txt` (UniMatch).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cpcl.data.splits import (
    WRITE_FORMATS,
    parse_split,
    partition,
    split_file_names,
    write_split,
)
from cpcl.errors import CpclError, DataError

# The write format that reproduces each input format (U2PL Cityscapes paths have no
# single-path writer, so they become UniMatch pairs with the derived label).
_DEFAULT_FORMAT = {
    "cps-voc": "cps-voc",
    "u2pl-voc": "cps-voc",
    "cps-city": "cps-city",
    "pairs": "unimatch",
    "u2pl-city": "unimatch",
}


def make_splits(
    list_path: str | os.PathLike,
    ratio: int,
    seed: int,
    out: str | os.PathLike,
    *,
    fmt: str | None = None,
) -> tuple[Path, Path]:
    """Write a seeded 1/`ratio` partition of `list_path` under `out`; return the two paths.

    fmt: output format ("cps-voc", "cps-city", "unimatch"); None keeps the input's format.
    """
    split = parse_split(list_path)
    fmt = fmt or _DEFAULT_FORMAT[split.format]
    if fmt not in WRITE_FORMATS:
        raise DataError(f"--format {fmt}: expected one of {', '.join(WRITE_FORMATS)}")
    if ratio < 1 or ratio > len(split.entries):
        raise DataError(
            f"--ratio {ratio}: expected 1..{len(split.entries)} for the "
            f"{len(split.entries)} images of {split.path}"
        )
    labeled, unlabeled = partition(split.entries, ratio, seed)
    names = split_file_names(fmt, ratio)
    paths = (Path(out) / names[0], Path(out) / names[1])
    write_split(paths[0], labeled, fmt)
    write_split(paths[1], unlabeled, fmt)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", required=True, help="training list to partition (any format)")
    parser.add_argument("--ratio", type=int, required=True, help="1/ratio of images labeled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--format", choices=WRITE_FORMATS, default=None)
    args = parser.parse_args(argv)
    try:
        paths = make_splits(args.list, args.ratio, args.seed, args.out, fmt=args.format)
    except CpclError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
