"""A COCO-layout mini dataset (CoSA's COCO-2014 folders and lists) from VOC-toy scenes.

For tests and smoke runs of ``exp_coco``: the scenes are `voc_toy_scene`'s (class k = toy
object k), written as CoSA's loader expects them (`cpcl.data.datasets.COCO_TREE`)::

    <root>/train2014/COCO_train2014_<12 digits>.jpg, <root>/val2014/COCO_val2014_<...>.jpg
    <root>/SegmentationClass/{train2014,val2014}/<id>.png    grey class-index PNGs
    <root>/train.txt, val.txt, val_part.txt                  (val_part: the first val ids)

Two images exercise the official decoding (PIL ``.convert('RGB')``): the first training
image is a greyscale JPEG, and the first validation image carries the EXIF orientation tag 6
("rotate 90 degrees"), which PIL leaves alone (an EXIF-aware decoder such as ``cv2.imread``
would rotate it away from its mask).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...errors import CpclError
from .common import JPEG_QUALITY, _check_int
from .files import _rng, _write_bytes, _write_lines
from .voc import voc_toy_scene

__all__ = ["make_toy_coco"]

_COCO = 3  # dataset code of the per-image seeds (VOC-toy and Cityscapes-toy use others)
_EXIF_ORIENTATION = 0x0112


def _jpeg(img: np.ndarray, *, grey: bool = False, rotated_tag: bool = False) -> bytes:
    im = Image.fromarray(img).convert("L") if grey else Image.fromarray(img)
    buf = io.BytesIO()
    if rotated_tag:
        exif = Image.Exif()
        exif[_EXIF_ORIENTATION] = 6
        im.save(buf, format="JPEG", quality=JPEG_QUALITY, exif=exif.tobytes())
    else:
        im.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _png(label: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(label).save(buf, format="PNG")
    return buf.getvalue()


def make_toy_coco(
    root: str | Path,
    *,
    n_train: int = 12,
    n_val: int = 6,
    n_val_part: int = 3,
    height: int = 40,
    width: int = 48,
    num_classes: int = 4,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the mini dataset under `root` (module docstring); return {"train": ids, "val":
    ids, "val_part": ids}. Labels hold 0..num_classes-1 (num_classes: 2..21); every
    foreground class occurs in each split (round robin), so the lists suit a training run."""
    n_train = _check_int("n_train", n_train, 1)
    n_val = _check_int("n_val", n_val, 1)
    n_val_part = _check_int("n_val_part", n_val_part, 1, n_val)
    num_classes = _check_int("num_classes", num_classes, 2, 21)
    if min(height, width) < 16:
        raise CpclError(f"height x width = {height} x {width}: expected at least 16 x 16")
    root = Path(root)
    out: dict[str, list[str]] = {}
    for code, split, n in ((1, "train", n_train), (2, "val", n_val)):
        ids = [f"COCO_{split}2014_{i + 1:012d}" for i in range(n)]
        for i, name in enumerate(ids):
            rng = _rng(seed, _COCO, code, i)
            first = 1 + (i % (num_classes - 1))  # round robin: every class occurs
            extra = rng.integers(1, num_classes, int(rng.integers(0, 2))).tolist()
            img, label = voc_toy_scene(rng, height, width, [first, *extra])
            jpeg = _jpeg(
                img, grey=split == "train" and i == 0, rotated_tag=split == "val" and i == 0
            )
            _write_bytes(root / f"{split}2014" / f"{name}.jpg", jpeg)
            _write_bytes(root / "SegmentationClass" / f"{split}2014" / f"{name}.png", _png(label))
        out[split] = ids
    out["val_part"] = out["val"][:n_val_part]
    for name, ids in out.items():
        _write_lines(root / f"{name}.txt", ids)
    return out
