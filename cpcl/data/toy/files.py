"""Toy data on disk: seeds, split lists, encoding, the metadata file and `is_complete`."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ...errors import CpclError
from ...fileio import atomic_write_text
from .common import _SPLITS, FORMAT_VERSION, META_NAME, RATIOS, _check_int

# ----------------------------------------------------------------------------- writing


def _rng(seed: int, dataset: int, split: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, dataset, split, index])


def _split_ids(ids: list[str], seed: int, dataset: int) -> dict[int, tuple[list[str], list[str]]]:
    """Labeled/unlabeled lists per ratio: nested seeded subsets (1/16 within 1/8 within ...)."""
    order = _rng(seed, dataset, _SPLITS).permutation(len(ids))
    out = {}
    for r in RATIOS:
        chosen = set(order[: len(ids) // r].tolist())
        # Lists keep id order (like the public lists, whose order carries no meaning here).
        labeled = [x for i, x in enumerate(ids) if i in chosen]
        unlabeled = [x for i, x in enumerate(ids) if i not in chosen]
        out[r] = (labeled, unlabeled)
    return out


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(line + "\n" for line in lines).encode())


def _write_splits(
    root: Path, folder: str, splits: dict[int, tuple[list[str], list[str]]]
) -> list[str]:
    """Write `<folder>/train_aug_{labeled,unlabeled}_1-<r>.txt` per ratio; return their paths."""
    written = []
    for r, (lab, unl) in splits.items():
        for kind, lst in (("labeled", lab), ("unlabeled", unl)):
            rel = f"{folder}/train_aug_{kind}_1-{r}.txt"
            _write_lines(root / rel, lst)
            written.append(rel)
    return written


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _encode(ext: str, img: np.ndarray, params: Sequence[int] = ()) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    if not ok:  # pragma: no cover - cv2 failure
        raise CpclError(f"could not encode a {img.shape} image as {ext}")
    return buf.tobytes()


def _voc_label_png(label: np.ndarray, palette: bytes) -> bytes:
    """A palette ("P" mode) PNG like the real VOC SegmentationClass files."""
    import io

    im = Image.frombytes(
        "P", (label.shape[1], label.shape[0]), np.ascontiguousarray(label).tobytes()
    )
    im.putpalette(palette)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _params_key(params: dict[str, Any]) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, **params}


def is_complete(root: str | Path, params: dict[str, Any] | None = None) -> bool:
    """True when `root` holds a finished toy dataset (and, if given, made with `params`).

    The metadata file is written last, so an interrupted generation reads as incomplete.
    """
    meta_path = Path(root) / META_NAME
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    if params is not None and meta.get("params") != _params_key(params):
        return False
    files = meta.get("files", [])
    return bool(files) and all((Path(root) / f).is_file() for f in files)


def _finish(root: Path, params: dict[str, Any], files: list[str], summary: dict[str, Any]) -> None:
    meta = {"params": _params_key(params), "summary": summary, "files": sorted(files)}
    atomic_write_text(root / META_NAME, json.dumps(meta, indent=1, sort_keys=True) + "\n")


def _common_checks(n_train: int, n_val: int, height: int, width: int, seed: int) -> None:
    _check_int("n_train", n_train, max(RATIOS))  # every labeled list needs >= 1 image
    _check_int("n_val", n_val, 1)
    _check_int("height", height, 32, 4096)
    _check_int("width", width, 32, 4096)
    _check_int("seed", seed, 0)


def _summary(
    root: Path,
    params: dict[str, Any],
    class_names: Sequence[str],
    splits: dict[int, tuple[list[str], list[str]]],
    pixels: dict[str, np.ndarray],
    t0: float,
) -> dict[str, Any]:
    """The summary dict shared by both generators (JSON-serialisable)."""
    return {
        "root": str(root),
        **params,
        "class_names": list(class_names),
        "splits": {
            f"1-{r}": {"labeled": len(a), "unlabeled": len(b)} for r, (a, b) in splits.items()
        },
        "class_pixel_fraction": {
            s: [round(float(c) / max(1, int(v.sum())), 4) for c in v] for s, v in pixels.items()
        },
        "seconds": round(time.perf_counter() - t0, 2),
    }
