"""Check CoSA's official image-level labels against the masks: do the vectors of
``cls_labels_onehot.npy`` equal the classes present in each image's segmentation label?

    python scripts/check_cosa_labels.py --dataset_path DATA/pascal_voc --list train_aug.txt \
        [--npy cls_labels_onehot.npy] [--dataset_name voc|coco] [--num_classes 21]

Reads only the label PNGs of the list (no image is decoded) and prints one line: how many
images were compared, how many disagree (the first ids), how many the npy lacks, and how many
masks hold no valid pixel (all 255: their derived vector is empty, as the official
`_to_onehot` gives; CoSA trains them as "no foreground class"). Exit code 0 when all agree, 1
when some disagree or are missing, 2 on a usage or data error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cpcl.data.datasets import read_label
from cpcl.errors import CpclError
from cpcl.methods.cosa.data import build_cosa_dataset
from cpcl.methods.cosa.image_labels import ImageLabels, compare_with_masks


def check_labels(
    dataset_path: str, list_name: str, npy: str, dataset_name: str, num_classes: int
) -> tuple[dict, str]:
    """`compare_with_masks` of the npy and the masks of one list; returns (result, log line)."""
    root = Path(dataset_path)
    ds = build_cosa_dataset(dataset_name, root, root / list_name, num_classes=num_classes)
    labels = ImageLabels.from_npy(root / npy, num_classes)
    masks = (
        (name, read_label(lab, num_classes=num_classes))
        for name, (_, lab) in zip(ds.names, ds.entries, strict=True)
    )
    res = compare_with_masks(labels, masks)
    first = ", ".join(res["disagree"][:5]) + (" ..." if len(res["disagree"]) > 5 else "")
    line = (
        f"{labels.source} vs the masks of {list_name}: {res['compared']} images compared, "
        f"{len(res['disagree'])} disagree{f' ({first})' if first else ''}, "
        f"{res['not_in_table']} not in the npy, {len(res['all_ignore'])} masks all 255"
    )
    return res, line


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, check, print the line; the exit code says whether all agree."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset_path", required=True)
    p.add_argument("--list", default="train_aug.txt", help="list under dataset_path")
    p.add_argument("--npy", default="cls_labels_onehot.npy", help="npy under dataset_path")
    p.add_argument("--dataset_name", default="voc", choices=("voc", "coco"))
    p.add_argument("--num_classes", type=int, default=None, help="default: 21 (VOC), 81 (COCO)")
    args = p.parse_args(argv)
    n = args.num_classes or (21 if args.dataset_name == "voc" else 81)
    try:
        res, line = check_labels(args.dataset_path, args.list, args.npy, args.dataset_name, n)
    except CpclError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(line)
    return 0 if not res["disagree"] and not res["not_in_table"] else 1


if __name__ == "__main__":
    sys.exit(main())
