"""Build the PASCAL VOC 2012 layout that `exp_voc/train.py` reads, from the original downloads.

    python scripts/prepare_voc.py --voc VOCdevkit/VOC2012 --dst DATA/pascal_voc \\
        [--aug VOCdevkit/VOC2012/SegmentationClassAug | --sbd benchmark_RELEASE/dataset] \\
        [--splits DIR] [--layout cps|u2pl] [--copy] [--dry-run] [--check]

Inputs (the original downloads):

* `--voc`: VOC2012 (`VOCtrainval_11-May-2012.tar`): `JPEGImages/<id>.jpg`,
  `SegmentationClass/<id>.png` (palette PNGs, 255 = boundary) and
  `ImageSets/Segmentation/{train,val}.txt` (1,464 / 1,449 ids).
* the SBD-augmented labels, either `--aug`, the `SegmentationClassAug/` PNG folder as commonly
  distributed (12,031 class-index PNGs; default: `<voc>/SegmentationClassAug` when present), or
  `--sbd`, SBD's `benchmark_RELEASE/dataset` (`cls/<id>.mat` read with scipy, `train.txt`,
  `val.txt`).

`train_aug` = (VOC train | the augmented ids) - VOC val: the official 10,582 images. A label
comes from the `--aug` PNG when given, else from VOC's `SegmentationClass` when the id has one,
else from the SBD `.mat`. Written under `--dst` (layout `cps`, the `pascal_voc.zip` of CPS/CPCL):

    train_aug/image/<id>.jpg, train_aug/label/<id>.png   10,582 (images: symlinks, --copy: copies)
    val/image/<id>.jpg, val/label/<id>.png               1,449
    train_aug.txt, train.txt, val.txt                    id lists
    subset_train_aug/*.txt                               the split lists (see --splits)

`--layout u2pl` writes `JPEGImages/<id>.jpg` and `SegmentationClassAug/<id>.png` instead of the
four folders (U2PL's VOC root; the same lists). Labels are written as grayscale class-index PNGs
(0-20, 255 = ignore); palette PNGs are decoded to their indices. The split lists are copied byte
for byte from `--splits` (default: the CPS lists in `../shared/splits/`), after checking that
every listed id is a prepared training image; without any, seeded 1/2, 1/4, 1/8, 1/16
partitions are written. Re-running is safe: every output is rewritten (atomically) from the inputs.
`--dry-run` reads the inputs and prints the counts without writing; `--check` checks a prepared
`--dst` with the project's dataset reader.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cpcl.data.datasets import SegDataset, read_label
from cpcl.data.splits import parse_split, partition, split_file_names, write_split
from cpcl.errors import CpclError, DataError
from cpcl.fileio import atomic_write_bytes, atomic_write_text

NUM_CLASSES = 21
RATIOS = (2, 4, 8, 16)
OFFICIAL_COUNTS = {"train_aug": 10582, "val": 1449, "train": 1464}
REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPLITS = (
    REPO.parent / "shared/splits/charlesCXK-TorchSemiSeg/DATA/pascal_voc/subset_train_aug"
)
LAYOUTS = {
    "cps": {
        "train_aug": ("train_aug/image", "train_aug/label"),
        "val": ("val/image", "val/label"),
    },
    "u2pl": {
        "train_aug": ("JPEGImages", "SegmentationClassAug"),
        "val": ("JPEGImages", "SegmentationClassAug"),
    },
}


@dataclass
class Plan:
    """What will be built: the id lists and, per id, its image and label source."""

    train: list[str]
    val: list[str]
    train_aug: list[str]
    image: dict[str, Path] = field(default_factory=dict)
    label: dict[str, tuple[str, Path]] = field(default_factory=dict)  # (kind, path)

    def label_kinds(self, ids: list[str]) -> dict[str, int]:
        """How many of `ids` take their label from each source."""
        out: dict[str, int] = {}
        for i in ids:
            out[self.label[i][0]] = out.get(self.label[i][0], 0) + 1
        return out


def read_ids(path: Path, what: str) -> list[str]:
    """The ids of a VOC/SBD id list (one per line), in file order, duplicates dropped."""
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return list(dict.fromkeys(ids))


def plan(voc: Path, aug: Path | None, sbd: Path | None) -> Plan:
    """Read the inputs (no writing); every missing input is named in one DataError."""
    problems = []
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        if not (voc / sub).is_dir():
            problems.append(f"{voc / sub} (VOC2012 folder; from VOCtrainval_11-May-2012.tar)")
    if aug is None and sbd is None:
        problems.append(
            "the augmented labels: --aug DIR (SegmentationClassAug PNGs) or --sbd DIR "
            f"(benchmark_RELEASE/dataset); {voc / 'SegmentationClassAug'} does not exist"
        )
    if aug is not None and not aug.is_dir():
        problems.append(f"{aug} (--aug: the SegmentationClassAug PNG folder)")
    if sbd is not None and not (sbd / "cls").is_dir():
        problems.append(f"{sbd / 'cls'} (--sbd: SBD's benchmark_RELEASE/dataset with cls/*.mat)")
    if problems:
        raise DataError("missing input:\n  " + "\n  ".join(problems))
    seg = voc / "ImageSets" / "Segmentation"
    train, val = (
        read_ids(seg / "train.txt", "VOC train list"),
        read_ids(seg / "val.txt", "VOC val list"),
    )
    if aug is not None:
        extra = sorted(p.stem for p in aug.glob("*.png"))
        if not extra:
            raise DataError(f"--aug {aug}: no <id>.png label files found")
    else:
        extra = read_ids(sbd / "train.txt", "SBD train list") + read_ids(
            sbd / "val.txt", "SBD val list"
        )
    val_set = set(val)
    train_aug = sorted((set(train) | set(extra)) - val_set)
    p = Plan(train=train, val=val, train_aug=train_aug)
    missing = []
    for i in dict.fromkeys(train_aug + val):
        p.image[i] = voc / "JPEGImages" / f"{i}.jpg"
        voc_label = voc / "SegmentationClass" / f"{i}.png"
        if aug is not None and (aug / f"{i}.png").is_file() and i not in val_set:
            p.label[i] = ("SegmentationClassAug", aug / f"{i}.png")
        elif voc_label.is_file():
            p.label[i] = ("SegmentationClass", voc_label)
        elif sbd is not None:
            p.label[i] = ("SBD cls .mat", sbd / "cls" / f"{i}.mat")
        else:
            p.label[i] = ("missing", voc_label)
        for kind, path in (("image", p.image[i]), ("label", p.label[i][1])):
            if not path.is_file():
                missing.append(f"{kind} {path}")
    if missing:
        raise DataError(
            f"{len(missing)} input files missing, e.g.:\n  " + "\n  ".join(missing[:10])
        )
    return p


def decode_label(kind: str, path: Path) -> np.ndarray:
    """HxW uint8 class indices (255 = ignore) from a label PNG (grayscale or palette) or SBD .mat."""
    if kind != "SBD cls .mat":
        return read_label(path, num_classes=NUM_CLASSES, policy="error")
    try:
        import scipy.io  # optional: only SBD's .mat labels need it
    except ImportError as err:
        raise DataError(f"reading {path} needs scipy (pip install scipy), or use --aug") from err
    try:
        gt = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)["GTcls"]
        arr = np.asarray(gt.Segmentation)
    except (KeyError, AttributeError, ValueError, OSError) as err:
        raise DataError(
            f"cannot read SBD label {path}: {err}; expected GTcls.Segmentation"
        ) from err
    if arr.ndim != 2 or arr.size == 0 or (int(arr.max()) >= NUM_CLASSES and int(arr.max()) != 255):
        raise DataError(f"SBD label {path}: shape {arr.shape}, values up to {arr.max()}")
    return np.ascontiguousarray(arr.astype(np.uint8))


def _place(src: Path, dst: Path, copy: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()  # re-running replaces earlier links/copies
    if copy:
        shutil.copyfile(src, dst)
    else:
        os.symlink(src.resolve(), dst)


def _write_label(kind: str, src: Path, dst: Path) -> None:
    arr = decode_label(kind, src)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise DataError(f"cannot encode {dst}")
    atomic_write_bytes(dst, buf.tobytes())


def split_sources(splits: Path | None) -> list[Path]:
    """The split list files to copy: every *.txt of `splits` (or of the shared CPS copy)."""
    folder = splits if splits is not None else DEFAULT_SPLITS
    if splits is not None and not folder.is_dir():
        raise DataError(f"--splits {folder}: folder not found")
    return sorted(folder.glob("*.txt")) if folder.is_dir() else []


def check_split_ids(path: Path, known: set[str]) -> None:
    """Every id of split list `path` must be a prepared training image."""
    split = parse_split(path, layout="cps")
    for (img, _), line in zip(split.entries, split.lines, strict=True):
        if Path(img).stem not in known:
            raise DataError(
                f"{path}, line {line}: image {Path(img).stem} is not among the "
                f"{len(known)} prepared training images (train_aug); --splits DIR names "
                "another folder of lists"
            )


def prepare_voc(
    voc: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    aug: str | os.PathLike | None = None,
    sbd: str | os.PathLike | None = None,
    splits: str | os.PathLike | None = None,
    layout: str = "cps",
    copy: bool = False,
    seed: int = 0,
    dry_run: bool = False,
) -> dict[str, int]:
    """Build the layout (see the module docstring); return the counts written (or planned)."""
    if layout not in LAYOUTS:
        raise DataError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    voc, dst = Path(voc), Path(dst)
    if aug is None and sbd is None and (voc / "SegmentationClassAug").is_dir():
        aug = voc / "SegmentationClassAug"
    p = plan(voc, Path(aug) if aug else None, Path(sbd) if sbd else None)
    lists = split_sources(Path(splits) if splits else None)
    known = set(p.train_aug)
    for path in lists:
        check_split_ids(path, known)
    counts = {"train_aug": len(p.train_aug), "val": len(p.val), "train": len(p.train)}
    counts["split lists"] = len(lists) or 2 * len(RATIOS)
    if dry_run:
        return counts
    for name, ids in (("train_aug", p.train_aug), ("val", p.val)):
        img_dir, lab_dir = LAYOUTS[layout][name]
        for i in ids:
            _place(p.image[i], dst / img_dir / f"{i}.jpg", copy)
            _write_label(*p.label[i], dst / lab_dir / f"{i}.png")
    for name in ("train_aug", "train", "val"):
        atomic_write_text(dst / f"{name}.txt", "".join(f"{i}\n" for i in getattr(p, name)))
    sub = dst / "subset_train_aug"
    for path in lists:
        atomic_write_bytes(sub / path.name, path.read_bytes())
    if not lists:  # no public lists at hand: seeded partitions of train_aug
        for r in RATIOS:
            parts = partition([(i, None) for i in p.train_aug], r, seed)
            for fname, part in zip(split_file_names("cps-voc", r), parts, strict=True):
                write_split(sub / fname, part, "cps-voc")
    return counts


def check_layout(dst: str | os.PathLike, ratio: int = 8) -> dict[str, int]:
    """Open the prepared lists with the project's reader (every listed file must exist)."""
    dst = Path(dst)
    counts = {}
    names = [
        "train_aug.txt",
        "val.txt",
        *(f"subset_train_aug/{n}" for n in split_file_names("cps-voc", ratio)),
    ]
    for name in names:
        ds = SegDataset(dst, dst / name, num_classes=NUM_CLASSES, dataset_name="voc")
        counts[name] = len(ds)
    ds.load(0)  # decode one image and label
    return counts


def _report(counts: dict[str, int]) -> str:
    lines = []
    for name, n in counts.items():
        official = OFFICIAL_COUNTS.get(name.removesuffix(".txt"))
        note = "" if official is None or official == n else f" (official: {official})"
        lines.append(f"  {name}: {n}{note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 error)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--voc", help="VOCdevkit/VOC2012 (JPEGImages/, SegmentationClass/, ImageSets/)"
    )
    parser.add_argument("--aug", default=None, help="SegmentationClassAug PNG folder")
    parser.add_argument("--sbd", default=None, help="SBD benchmark_RELEASE/dataset (cls/*.mat)")
    parser.add_argument(
        "--dst", default="DATA/pascal_voc", help="output root (default DATA/pascal_voc)"
    )
    parser.add_argument("--splits", default=None, help="folder of split lists to copy")
    parser.add_argument("--layout", default="cps", choices=tuple(LAYOUTS))
    parser.add_argument("--copy", action="store_true", help="copy images instead of symlinks")
    parser.add_argument("--seed", type=int, default=0, help="seed of generated partitions")
    parser.add_argument("--dry-run", action="store_true", help="read the inputs, print counts")
    parser.add_argument("--check", action="store_true", help="check a prepared --dst")
    args = parser.parse_args(argv)
    try:
        if args.check:
            print(f"{args.dst}: layout readable\n{_report(check_layout(args.dst))}")
            return 0
        if args.voc is None:
            raise DataError("--voc is required (the VOCdevkit/VOC2012 folder)")
        counts = prepare_voc(
            args.voc, args.dst, aug=args.aug, sbd=args.sbd, splits=args.splits,
            layout=args.layout, copy=args.copy, seed=args.seed, dry_run=args.dry_run,
        )  # fmt: skip
    except CpclError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    verb = "would write" if args.dry_run else "wrote"
    print(f"{args.dst}: {verb}\n{_report(counts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
