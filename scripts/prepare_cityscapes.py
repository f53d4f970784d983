"""Convert an official Cityscapes download into the CPS `city` layout used by CPCL.

    python scripts/prepare_cityscapes.py --src /data/cityscapes --dst DATA/city \
        [--splits ../shared/splits/charlesCXK-TorchSemiSeg/DATA/city/config_new/subset_train] \
        [--copy] [--seed 0]

--src must hold `leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png` and
`gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png` (or `_labelTrainIds.png`). Written:

    DST/images/<split>/<name>.png                 symlinks to the source images (copies: --copy)
    DST/segmentation/<split>/<name>_gtFine.png    trainId PNGs (0-18, 255 = ignore)
    DST/config_new/{train,val}.txt                CPS tab-separated lists
    DST/config_new/subset_train/train_aug_{labeled,unlabeled}_1-N.txt   N in 2, 4, 8, 16

The subsets are the public CPS lists when --splits names a folder holding them (any list format
is accepted; images are matched by name), else new seeded random partitions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from cpcl.data.datasets import cityscapes_id_lut, read_label
from cpcl.data.splits import partition, read_split, split_file_names, write_split
from cpcl.errors import CpclError, DataError

RATIOS = (2, 4, 8, 16)
_IMG_SUFFIX = "_leftImg8bit.png"

Entry = tuple[str, str | None]


def find_pairs(src: str | os.PathLike, split: str) -> list[tuple[str, Path, Path, bool]]:
    """(name, image, label, label_is_ids) for every image of `split`, sorted by name.

    label_is_ids tells whether the label holds raw labelIds (to be mapped to trainIds).
    """
    src = Path(src)
    img_dir = src / "leftImg8bit" / split
    if not img_dir.is_dir():
        raise DataError(
            f"{img_dir} not found; expected the official Cityscapes folders "
            f"leftImg8bit/{split}/<city>/ and gtFine/{split}/<city>/ under --src {src}"
        )
    pairs = []
    for img in sorted(img_dir.glob(f"*/*{_IMG_SUFFIX}")):
        name = img.name[: -len(_IMG_SUFFIX)]
        gt_dir = src / "gtFine" / split / img.parent.name
        ids = gt_dir / f"{name}_gtFine_labelIds.png"
        train_ids = gt_dir / f"{name}_gtFine_labelTrainIds.png"
        if ids.is_file():
            pairs.append((name, img, ids, True))
        elif train_ids.is_file():
            pairs.append((name, img, train_ids, False))
        else:
            raise DataError(f"no label for {img}: expected {ids} or {train_ids}")
    if not pairs:
        raise DataError(f"no *{_IMG_SUFFIX} images under {img_dir}/<city>/")
    return pairs


def _place(src: Path, dst: Path, copy: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()  # re-running the script replaces earlier outputs
    if copy:
        shutil.copyfile(src, dst)
    else:
        os.symlink(src.resolve(), dst)


def _subset_lists(
    train: list[Entry], splits_dir: Path | None, ratios: Sequence[int], seed: int
) -> dict[int, tuple[list[Entry], list[Entry]]]:
    if splits_dir is None:
        return {r: partition(train, r, seed) for r in ratios}
    # Match public lists to the prepared entries by image name, so any list format works.
    by_name = {Path(img).stem: (img, lab) for img, lab in train}
    out = {}
    for r in ratios:
        parts = []
        for fname in split_file_names("cps-city", r):
            path = splits_dir / fname
            if not path.is_file():
                raise DataError(f"--splits: {path} not found (expected {fname} in {splits_dir})")
            entries = []
            for img, _ in read_split(path):
                name = Path(img).stem.removesuffix("_leftImg8bit")
                if name not in by_name:
                    raise DataError(
                        f"{path}: image {name} is not among the {len(train)} prepared train images"
                    )
                entries.append(by_name[name])
            parts.append(entries)
        if len(parts[0]) + len(parts[1]) != len(train):
            warnings.warn(
                f"1/{r} lists in {splits_dir} cover {len(parts[0]) + len(parts[1])} of "
                f"{len(train)} train images",
                stacklevel=2,
            )
        out[r] = (parts[0], parts[1])
    return out


def prepare_cityscapes(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    splits_dir: str | os.PathLike | None = None,
    copy: bool = False,
    seed: int = 0,
    ratios: Sequence[int] = RATIOS,
) -> dict[str, list[Entry]]:
    """Write the CPS `city` layout under `dst` (see the module docstring); return the lists."""
    dst = Path(dst)
    lut = cityscapes_id_lut()
    lists: dict[str, list[Entry]] = {}
    for split in ("train", "val"):
        entries: list[Entry] = []
        for name, img, label, is_ids in find_pairs(src, split):
            img_rel = f"images/{split}/{name}.png"
            lab_rel = f"segmentation/{split}/{name}_gtFine.png"
            _place(img, dst / img_rel, copy)
            # Unknown values in trainId files become ignore, as the official trainId export does.
            arr = read_label(label, num_classes=19, policy="ignore", id_map=lut if is_ids else None)
            (dst / lab_rel).parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(dst / lab_rel), np.ascontiguousarray(arr)):
                raise DataError(f"cannot write {dst / lab_rel}")
            entries.append((img_rel, lab_rel))
        write_split(dst / "config_new" / f"{split}.txt", entries, "cps-city")
        lists[split] = entries
    subsets = _subset_lists(lists["train"], Path(splits_dir) if splits_dir else None, ratios, seed)
    for r, (lab, unlab) in subsets.items():
        names = split_file_names("cps-city", r)
        write_split(dst / "config_new" / "subset_train" / names[0], lab, "cps-city")
        write_split(dst / "config_new" / "subset_train" / names[1], unlab, "cps-city")
        lists[f"labeled_1-{r}"] = lab
        lists[f"unlabeled_1-{r}"] = unlab
    return lists


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="Cityscapes root (leftImg8bit/, gtFine/)")
    parser.add_argument("--dst", default="DATA/city", help="output root (default DATA/city)")
    parser.add_argument("--splits", default=None, help="folder with public CPS subset lists")
    parser.add_argument("--copy", action="store_true", help="copy images instead of symlinks")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random subsets")
    args = parser.parse_args(argv)
    try:
        lists = prepare_cityscapes(
            args.src, args.dst, splits_dir=args.splits, copy=args.copy, seed=args.seed
        )
    except CpclError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.dst}: {len(lists['train'])} train, {len(lists['val'])} val images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
