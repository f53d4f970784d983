"""Build CoSA's COCO-2014 layout (class-index masks, name lists, image-level labels) from COCO.

    python scripts/prepare_coco.py --coco /data/coco [--annotations DIR] [--dst DIR] \\
        [--split train2014 --split val2014] [--lists DIR] [--dry-run] [--check]

Inputs (the original downloads): `<coco>/train2014/*.jpg`, `<coco>/val2014/*.jpg` and
`instances_{train,val}2014.json` (in `<coco>/annotations/`, or `--annotations DIR`; from
`annotations_trainval2014.zip`). Written under `--dst` (default: `--coco` itself):

    SegmentationClass/{train2014,val2014}/<name>.png  class indices 0-80 (0 = background)
    train.txt, val.txt, val_part.txt                  names (COCO_train2014_000000000009)
    cls_labels_onehot.npy                             {name: float32 (80,) 0/1}, train + val
    train2014/, val2014/                              links to the image folders (--dst only)

That is the layout the official CoSA code reads (`dataloaders/coco.py`: images in
`<root>/<split>2014/`, masks in `<root>/SegmentationClass/<split>2014/`). CoSA downloads its masks
as a released archive (`coco_anno.tar`, README) made by a converter that is not in its
repository; this script follows the rules that archive implies and the usual converter
(`coco2voc`): every image with at least one annotation (82,081 train, 40,137 val) gets a mask;
class k is the k-th COCO category in id order (CoSA's `class_list`: 1 = person ... 80 =
toothbrush); overlapping annotations are painted smallest area first, and a pixel keeps the
first class painted on it; crowd regions count as their class. The name lists are the sorted
names of those images, and `val_part.txt` the first 5000 names of `val.txt`, which is what the
official `val_part.txt` is; `--lists DIR` copies official lists instead (e.g. CoSA's
`dataloaders/coco/`) after checking each name. Masks are rasterised here (polygons traced as COCO's `rleFrPoly` does,
RLE decoded in numpy) by COCO's reference rules, without pycocotools.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cpcl.errors import CpclError, DataError
from cpcl.fileio import atomic_write_bytes, atomic_write_text
from cpcl.methods.cosa.data import COCO_CLASSES, CocoDataset
from cpcl.methods.cosa.image_labels import class_vector, write_cls_labels_npy

SPLITS = ("train2014", "val2014")
LIST_NAMES = {"train2014": "train.txt", "val2014": "val.txt"}
VAL_PART = 5000  # official val_part.txt: the first 5000 names of val.txt
NUM_CLASSES = 81
ANNOTATIONS_ZIP = "http://images.cocodataset.org/annotations/annotations_trainval2014.zip"


# ----------------------------------------------------------------------------- masks


def rle_counts(counts: str | Sequence[int]) -> list[int]:
    """Run lengths of a COCO RLE: uncompressed (a list) or compressed (COCO's string code)."""
    if not isinstance(counts, str):
        return [int(c) for c in counts]
    out: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:  # 5 bits per character, 0x20 = more characters follow, 0x10 = sign
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]  # counts after the first two are stored as differences
        out.append(x)
    return out


def rle_mask(segm: Mapping[str, Any], h: int, w: int) -> np.ndarray:
    """HxW bool mask of an RLE (column-major runs, starting with a run of zeros)."""
    size = segm.get("size", [h, w])
    if list(size) != [h, w]:
        raise DataError(f"RLE size {size} does not match the image size {[h, w]}")
    runs = rle_counts(segm["counts"])
    if sum(runs) != h * w:
        raise DataError(f"RLE runs sum to {sum(runs)}; expected h*w = {h * w}")
    return _runs_mask(runs, h, w)


def _poly_runs(poly: Sequence[float], h: int, w: int) -> list[int]:
    """RLE run lengths of one polygon, by the boundary-tracing rule of COCO's `rleFrPoly`.

    The polygon is scaled by 5 and traced edge by edge with rounded steps; every crossing of a
    pixel-column centre line is a run boundary at the row below it. This reproduces COCO's
    reference rasteriser pixel for pixel (checked against pycocotools in docs/datasets.md).
    """
    scale = 5.0
    xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    x = np.trunc(scale * xy[:, 0] + 0.5).astype(np.int64)
    y = np.trunc(scale * xy[:, 1] + 0.5).astype(np.int64)
    x, y = np.append(x, x[0]), np.append(y, y[0])
    us, vs = [], []
    for j in range(len(x) - 1):
        xs, xe, ys, ye = int(x[j]), int(x[j + 1]), int(y[j]), int(y[j + 1])
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            s = (ye - ys) / dx if dx else 0.0
            t = np.arange(dx + 1)[::-1] if flip else np.arange(dx + 1)
            us.append(t + xs)
            vs.append(np.trunc(ys + s * t + 0.5).astype(np.int64))
        else:
            s = (xe - xs) / dy
            t = np.arange(dy + 1)[::-1] if flip else np.arange(dy + 1)
            vs.append(t + ys)
            us.append(np.trunc(xs + s * t + 0.5).astype(np.int64))
    u, v = np.concatenate(us), np.concatenate(vs)
    step = u[1:] != u[:-1]
    xd = (np.minimum(u[1:], u[:-1])[step] + 0.5) / scale - 0.5
    yd = (np.minimum(v[1:], v[:-1])[step] + 0.5) / scale - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= w - 1)
    yd = np.ceil(np.clip(yd[keep], 0, h))
    a = np.sort(np.append(xd[keep].astype(np.int64) * h + yd.astype(np.int64), h * w))
    a = np.diff(a, prepend=0).tolist()
    runs, j = [a[0]], 1
    while j < len(a):  # a zero-length run merges its neighbours
        if a[j] > 0:
            runs.append(a[j])
            j += 1
        else:
            j += 1
            if j < len(a):
                runs[-1] += a[j]
                j += 1
    return runs


def _runs_mask(runs: Sequence[int], h: int, w: int) -> np.ndarray:
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape(w, h).T


def polygon_mask(polygons: Iterable[Sequence[float]], h: int, w: int) -> np.ndarray:
    """HxW bool mask of the union of COCO polygons ([x0, y0, x1, y1, ...] in pixels)."""
    out = np.zeros((h, w), dtype=bool)
    for poly in polygons:
        if len(poly) >= 6:
            out |= _runs_mask(_poly_runs(poly, h, w), h, w)
    return out


def annotation_mask(ann: Mapping[str, Any], h: int, w: int) -> np.ndarray:
    """HxW bool mask of one instance annotation (polygons or RLE)."""
    segm = ann.get("segmentation")
    if isinstance(segm, list):
        return polygon_mask(segm, h, w)
    if isinstance(segm, dict) and "counts" in segm:
        return rle_mask(segm, h, w)
    raise DataError(
        f"annotation {ann.get('id')}: segmentation {type(segm).__name__} not understood"
    )


def category_index(categories: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """COCO category id -> class index 1..80 (id order, CoSA's `class_list` order)."""
    ids = sorted(int(c["id"]) for c in categories)
    if len(ids) != NUM_CLASSES - 1:
        raise DataError(f"{len(ids)} categories in the annotations; expected {NUM_CLASSES - 1}")
    names = {int(c["id"]): c["name"] for c in categories}
    for k, cid in enumerate(ids, start=1):
        if names[cid] != COCO_CLASSES[k]:
            raise DataError(
                f"category {cid} is {names[cid]!r}; CoSA's class {k} is {COCO_CLASSES[k]!r}"
            )
    return {cid: k for k, cid in enumerate(ids, start=1)}


def class_mask(
    anns: Sequence[Mapping[str, Any]], h: int, w: int, index: Mapping[int, int]
) -> np.ndarray:
    """HxW uint8 class indices: smallest annotation first, the first class on a pixel stays."""
    out = np.zeros((h, w), dtype=np.uint8)
    for ann in sorted(anns, key=lambda a: a["area"]):  # stable: file order among equal areas
        m = annotation_mask(ann, h, w) & (out == 0)
        out[m] = index[int(ann["category_id"])]
    return out


# ----------------------------------------------------------------------------- layout


def annotations_file(coco: Path, annotations: Path | None, split: str) -> Path:
    """`instances_<split>.json` under `--annotations` or `<coco>/annotations`."""
    return (annotations or coco / "annotations") / f"instances_{split}.json"


def load_instances(path: Path) -> tuple[dict[int, dict], dict[int, list[dict]], list[dict]]:
    """(images by id, annotations by image id, categories) of an instances json."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {int(im["id"]): im for im in data["images"]}
        anns: dict[int, list[dict]] = defaultdict(list)
        for a in data["annotations"]:
            anns[int(a["image_id"])].append(a)
        return images, anns, data["categories"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"cannot read COCO annotations {path}: {err}") from err


def _check_inputs(coco: Path, annotations: Path | None, splits: Sequence[str]) -> None:
    problems = []
    for split in splits:
        if not (coco / split).is_dir():
            problems.append(
                f"{coco / split}/ (images: http://images.cocodataset.org/zips/{split}.zip)"
            )
        ann = annotations_file(coco, annotations, split)
        if not ann.is_file():
            problems.append(f"{ann} (from {ANNOTATIONS_ZIP})")
    if problems:
        raise DataError("missing input:\n  " + "\n  ".join(problems))


def _names(images: Mapping[int, dict], anns: Mapping[int, list]) -> dict[str, int]:
    """Sorted {name: image id} of the images with at least one annotation."""
    named = {Path(im["file_name"]).stem: i for i, im in images.items() if anns.get(i)}
    return dict(sorted(named.items()))


def _official_lists(lists: Path, found: Mapping[str, set[str]]) -> dict[str, list[str]]:
    out = {}
    for fname, split in (
        ("train.txt", "train2014"),
        ("val.txt", "val2014"),
        ("val_part.txt", "val2014"),
    ):
        path = lists / fname
        if not path.is_file() or split not in found:
            continue
        names = path.read_text(encoding="utf-8").split()
        unknown = [n for n in names if n not in found[split]]
        if unknown:
            raise DataError(
                f"{path}: {len(unknown)} names have no annotated image in {split}, e.g. {unknown[0]}"
            )
        out[fname] = names
    return out


def _link_images(coco: Path, dst: Path, split: str) -> None:
    link = dst / split
    if link.resolve() == (coco / split).resolve():
        return
    if link.is_symlink():
        link.unlink()
    if link.exists():
        raise DataError(
            f"{link} exists and is not a link to {coco / split}; remove it or use --dst"
        )
    os.symlink((coco / split).resolve(), link)


def prepare_coco(
    coco: str | os.PathLike,
    dst: str | os.PathLike | None = None,
    *,
    annotations: str | os.PathLike | None = None,
    splits: Sequence[str] = SPLITS,
    lists: str | os.PathLike | None = None,
    dry_run: bool = False,
) -> dict[str, int]:
    """Write CoSA's COCO layout (module docstring); return the counts written (or planned)."""
    coco = Path(coco)
    dst = Path(dst) if dst is not None else coco
    ann_dir = Path(annotations) if annotations is not None else None
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise DataError(f"--split {bad[0]!r}: expected one of {', '.join(SPLITS)}")
    _check_inputs(coco, ann_dir, splits)
    counts: dict[str, int] = {}
    found: dict[str, set[str]] = {}
    labels: dict[str, np.ndarray] = {}
    written: dict[str, list[str]] = {}
    for split in splits:
        images, anns, categories = load_instances(annotations_file(coco, ann_dir, split))
        index = category_index(categories)
        names = _names(images, anns)
        missing = [n for n in names if not (coco / split / f"{n}.jpg").is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(names)} annotated {split} images missing, e.g. "
                f"{coco / split / (missing[0] + '.jpg')}"
            )
        found[split] = set(names)
        counts[split] = len(names)
        written[LIST_NAMES[split]] = list(names)
        if dry_run:
            continue
        if dst != coco:
            dst.mkdir(parents=True, exist_ok=True)
            _link_images(coco, dst, split)
        for name, image_id in names.items():
            im = images[image_id]
            mask = class_mask(anns[image_id], int(im["height"]), int(im["width"]), index)
            ok, buf = cv2.imencode(".png", mask)
            if not ok:
                raise DataError(f"cannot encode the mask of {name}")
            atomic_write_bytes(dst / "SegmentationClass" / split / f"{name}.png", buf.tobytes())
            labels[name] = class_vector(mask, NUM_CLASSES)
    if "val2014" in splits:
        written["val_part.txt"] = written["val.txt"][:VAL_PART]
    if lists is not None:
        written.update(_official_lists(Path(lists), found))
    counts.update({f: len(v) for f, v in written.items()})
    if dry_run:
        return counts
    for fname, names in written.items():
        atomic_write_text(dst / fname, "".join(f"{n}\n" for n in names))
    write_cls_labels_npy(dst / "cls_labels_onehot.npy", labels)
    counts["cls_labels_onehot.npy"] = len(labels)
    return counts


def check_layout(root: str | os.PathLike) -> dict[str, int]:
    """Open every name list under `root` with the project's COCO reader (files must exist)."""
    root = Path(root)
    counts = {}
    ds = None
    for fname in ("train.txt", "val.txt", "val_part.txt"):
        if (root / fname).is_file():
            ds = CocoDataset(root, root / fname, num_classes=NUM_CLASSES)
            counts[fname] = len(ds)
    if ds is None:
        raise DataError(f"no train.txt / val.txt / val_part.txt under {root}")
    ds.load(0)  # decode one image and mask
    return counts


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 error)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coco", help="COCO root with train2014/, val2014/ (and annotations/)")
    parser.add_argument("--annotations", default=None, help="folder of instances_*2014.json")
    parser.add_argument("--dst", default=None, help="output root (default: --coco)")
    parser.add_argument("--split", action="append", choices=SPLITS, help="default: both")
    parser.add_argument("--lists", default=None, help="official name lists to copy")
    parser.add_argument("--dry-run", action="store_true", help="read the inputs, print counts")
    parser.add_argument("--check", action="store_true", help="check a prepared root (--dst)")
    args = parser.parse_args(argv)
    try:
        if args.check:
            root = args.dst or args.coco
            if root is None:
                raise DataError("--check needs --dst (or --coco): the prepared root")
            counts = check_layout(root)
            print(
                f"{root}: layout readable\n" + "\n".join(f"  {k}: {v}" for k, v in counts.items())
            )
            return 0
        if args.coco is None:
            raise DataError("--coco is required (the folder holding train2014/ and val2014/)")
        counts = prepare_coco(
            args.coco, args.dst, annotations=args.annotations, splits=args.split or SPLITS,
            lists=args.lists, dry_run=args.dry_run,
        )  # fmt: skip
    except CpclError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    verb = "would write" if args.dry_run else "wrote"
    print(
        f"{args.dst or args.coco}: {verb}\n" + "\n".join(f"  {k}: {v}" for k, v in counts.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
