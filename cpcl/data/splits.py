"""Split lists: read every public semi-supervised segmentation list format, check and write them.

Formats understood by `read_split` (one entry per line; CRLF, blank lines and a missing final
newline are fine):

* ``cps-voc`` / ``u2pl-voc``: a bare VOC image id (``2007_000032``). The id alone does not say
  where the files are, so ``layout`` picks the folder convention: CPS's ``pascal_voc.zip``
  (``train_aug/image/<id>.jpg``, ``train_aug/label/<id>.png``; ``val/...`` for a list whose name
  starts with ``val``) or U2PL's VOC root (``JPEGImages/<id>.jpg``,
  ``SegmentationClassAug/<id>.png``).
* ``cps-city``: ``/images/train/x.png<TAB>/segmentation/train/x_gtFine.png`` (CPS Cityscapes).
* ``u2pl-city``: ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` (U2PL Cityscapes); the label
  is ``gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png``.
* ``pairs``: ``<image> <mask>`` separated by spaces (UniMatch); the mask ``None`` means no label.
* ``coco``: a bare COCO-2014 id (``COCO_train2014_000000000009``) with ``layout="coco"`` (CoSA's
  `dataloaders/coco.py:31-36`): ``<folder>/<id>.jpg`` and ``SegmentationClass/<folder>/<id>.png``
  where the folder is ``val2014`` for a list whose name starts with ``val`` (``val.txt``,
  ``val_part.txt``) and ``<list name>2014`` otherwise (``train.txt`` -> ``train2014``).

All returned paths are relative to the dataset root (a leading ``/`` is stripped, as the official
loaders concatenate the root and the list path).
"""

from __future__ import annotations

import math
import os
import random
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..fileio import atomic_write_text

LAYOUTS = ("auto", "cps", "u2pl", "coco")
WRITE_FORMATS = ("cps-voc", "cps-city", "unimatch")

# A bare VOC-style id: no path separator, no extension.
_BARE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_LEFTIMG8BIT_LINE = re.compile(
    r"^leftImg8bit/(?P<split>[^/]+)/(?P<city>[^/]+)/(?P<stem>[^/]+)_leftImg8bit\.png$"
)

Entry = tuple[str, str | None]


@dataclass(frozen=True)
class SplitList:
    """A parsed list file: entries (image, label or None), their 1-based line numbers, format."""

    path: str
    entries: list[tuple[str, str | None]]
    lines: list[int]
    format: str


def detect_layout(root: str | os.PathLike | None) -> str:
    """Return "cps" or "u2pl" for the VOC folders found under `root`; "cps" when undecidable."""
    if root is None:
        return "cps"
    r = Path(root)
    if (r / "train_aug").is_dir() or (r / "val" / "image").is_dir():
        return "cps"
    if (r / "JPEGImages").is_dir():
        return "u2pl"
    return "cps"


def _pascal_zip_folder(list_path: str) -> str:
    # The official VOC loader takes the folder from the list's file name: names containing
    # "train" use train_aug/, other names use a folder named after the list (val.txt -> val/).
    # The CPS pseudoseg_* lists hold train ids but carry no "train" in their name, so any
    # list not starting with "val" is read from train_aug/ here.
    stem = Path(list_path).stem
    if "train" not in stem and stem.startswith("val"):
        return "val"
    return "train_aug"


def _coco_folder(list_path: str) -> str:
    # `coco.py:31-36`: val* lists read val2014, any other list <name>2014.
    stem = Path(list_path).stem
    return "val2014" if stem[:3] == "val" else f"{stem}2014"


def _strip_root(p: str) -> str:
    return p.lstrip("/")


def _parse_line(text: str, path: str, lineno: int, layout: str) -> tuple[str, Entry]:
    """Return (format, entry) for one non-blank line or raise DataError."""
    if "\t" in text:
        fields = [f.strip() for f in text.split("\t")]
        if len(fields) == 2 and all(fields):
            label = None if fields[1] == "None" else _strip_root(fields[1])
            return "cps-city", (_strip_root(fields[0]), label)
    else:
        fields = text.split()
        if len(fields) == 2:
            label = None if fields[1] == "None" else _strip_root(fields[1])
            return "pairs", (_strip_root(fields[0]), label)
        if len(fields) == 1:
            token = fields[0]
            m = _LEFTIMG8BIT_LINE.match(_strip_root(token))
            if m:
                label = f"gtFine/{m['split']}/{m['city']}/{m['stem']}_gtFine_labelTrainIds.png"
                return "u2pl-city", (_strip_root(token), label)
            if _BARE_ID.match(token):
                if layout == "coco":
                    folder = _coco_folder(path)
                    return "coco", (
                        f"{folder}/{token}.jpg",
                        f"SegmentationClass/{folder}/{token}.png",
                    )
                if layout == "u2pl":
                    return "u2pl-voc", (
                        f"JPEGImages/{token}.jpg",
                        f"SegmentationClassAug/{token}.png",
                    )
                folder = _pascal_zip_folder(path)
                return "cps-voc", (f"{folder}/image/{token}.jpg", f"{folder}/label/{token}.png")
    raise DataError(
        f"{path}, line {lineno}: cannot read {text!r}; expected one of: a bare image id "
        "(2007_000032), 'image<TAB>label', 'image label' (label may be None), or "
        "'leftImg8bit/<split>/<city>/<name>_leftImg8bit.png'"
    )


def parse_split(
    path: str | os.PathLike, *, layout: str = "auto", root: str | os.PathLike | None = None
) -> SplitList:
    """Parse a list file into a `SplitList` (entries with their line numbers and the format).

    layout: "cps", "u2pl", "coco" or "auto" (decide from the VOC folders under `root`,
    default "cps"); it only matters for bare ids. Duplicate entries are kept once, with one warning.
    """
    path = os.fspath(path)
    if layout not in LAYOUTS:
        raise DataError(f"layout={layout!r} for {path}: expected one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = detect_layout(root)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError as err:
        where = f" (dataset root {root})" if root is not None else ""
        raise DataError(f"split list not found: {path}{where}") from err
    except OSError as err:
        raise DataError(f"cannot read split list {path}: {err}") from err
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"split list {path} is not UTF-8 text ({err})") from err

    entries: list[Entry] = []
    lines: list[int] = []
    seen: set[Entry] = set()
    fmt: str | None = None
    first_line = 0
    duplicates = 0
    # splitlines() handles \n, \r\n and a missing final newline alike.
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        line_fmt, entry = _parse_line(stripped, path, lineno, layout)
        if fmt is None:
            fmt, first_line = line_fmt, lineno
        elif line_fmt != fmt:
            # A mixed file is almost always a corrupted or concatenated list.
            raise DataError(
                f"{path}, line {lineno}: {stripped!r} is in format {line_fmt}, but line "
                f"{first_line} is in format {fmt}; a list must use one format"
            )
        if entry in seen:
            duplicates += 1
            continue
        seen.add(entry)
        entries.append(entry)
        lines.append(lineno)
    if not entries:
        raise DataError(f"split list {path} is empty; expected one image entry per line")
    if duplicates:
        warnings.warn(
            f"{path}: {duplicates} duplicate entr{'y' if duplicates == 1 else 'ies'} "
            "ignored (each kept once)",
            stacklevel=2,
        )
    assert fmt is not None
    return SplitList(path=path, entries=entries, lines=lines, format=fmt)


def read_split(
    path: str | os.PathLike, *, layout: str = "auto", root: str | os.PathLike | None = None
) -> list[tuple[str, str | None]]:
    """Read a split list of any public format as [(image path, label path or None)].

    Paths are relative to the dataset root. See the module docstring for the formats and
    `parse_split` for `layout`/`root`. Lines that fit no format and empty lists raise DataError.
    """
    return parse_split(path, layout=layout, root=root).entries


def check_disjoint(
    labeled: Sequence[tuple[str, str | None]],
    unlabeled: Sequence[tuple[str, str | None]],
    *,
    names: tuple[str, str] = ("labeled", "unlabeled"),
    max_overlap_fraction: float = 0.01,
) -> list[str]:
    """Check that two lists share no image; return the shared image paths (sorted).

    A small overlap (at most `max_overlap_fraction` of all distinct images, e.g. the single
    image 2009_001036 in both CPS pseudoseg lists) only warns; a larger one raises DataError.
    """
    a = {img for img, _ in labeled}
    b = {img for img, _ in unlabeled}
    shared = sorted(a & b)
    if not shared:
        return shared
    total = len(a | b)
    preview = ", ".join(shared[:5]) + (" ..." if len(shared) > 5 else "")
    msg = f"{names[0]} and {names[1]} share {len(shared)} of {total} images ({preview})"
    if len(shared) > max_overlap_fraction * total:
        raise DataError(
            f"{msg}; expected disjoint labeled/unlabeled lists "
            f"(at most {max_overlap_fraction:.1%} overlap)"
        )
    warnings.warn(msg, stacklevel=2)
    return shared


def labeled_count(n: int, ratio: int) -> int:
    """Number of labeled images for a 1/`ratio` split of `n` images.

    ceil matches every public CPS list (VOC 10582: 662/1323/2646/5291, Cityscapes 2975:
    186/372/744/1488).
    """
    if ratio < 1:
        raise DataError(f"ratio={ratio}: expected a positive integer (1/ratio labeled)")
    return math.ceil(n / ratio)


def partition(
    entries: Sequence[tuple[str, str | None]], ratio: int, seed: int
) -> tuple[list[tuple[str, str | None]], list[tuple[str, str | None]]]:
    """Split `entries` into (labeled, unlabeled), seeded; both keep the input order.

    The two parts are disjoint and together hold every entry exactly once.
    """
    n = len(entries)
    k = labeled_count(n, ratio)
    chosen = set(random.Random(seed).sample(range(n), k))
    labeled = [e for i, e in enumerate(entries) if i in chosen]
    unlabeled = [e for i, e in enumerate(entries) if i not in chosen]
    return labeled, unlabeled


def format_entry(entry: tuple[str, str | None], fmt: str) -> str:
    """One list line for `entry` in write format `fmt` ("cps-voc", "cps-city", "unimatch")."""
    image, label = entry
    if fmt == "cps-voc":
        return Path(image).stem
    if fmt == "cps-city":
        if label is None:
            raise DataError(f"{image}: the cps-city format needs a label path for every image")
        return f"/{image}\t/{label}"
    if fmt == "unimatch":
        return f"{image} {label if label is not None else 'None'}"
    raise DataError(f"format={fmt!r}: expected one of {', '.join(WRITE_FORMATS)}")


def write_split(
    path: str | os.PathLike, entries: Sequence[tuple[str, str | None]], fmt: str
) -> None:
    """Write `entries` to `path` in format `fmt`, one per line with a final newline."""
    atomic_write_text(path, "".join(format_entry(e, fmt) + "\n" for e in entries))


def split_file_names(fmt: str, ratio: int) -> tuple[str, str]:
    """Relative (labeled, unlabeled) file names used by each project for a 1/`ratio` split."""
    if fmt == "unimatch":
        return f"1_{ratio}/labeled.txt", f"1_{ratio}/unlabeled.txt"
    return f"train_aug_labeled_1-{ratio}.txt", f"train_aug_unlabeled_1-{ratio}.txt"
