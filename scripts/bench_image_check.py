"""Benchmark the truncated-image check of `cpcl.data.datasets.read_image`.

`read_image` reads the file's bytes, checks the JPEG end-of-image marker / PNG IEND chunk
(`truncation`) and decodes the same bytes with cv2.imdecode. This compares it with the former
`cv2.imread` + RGB conversion on a VOC-like 500x375 JPEG and a Cityscapes-like 2048x1024 PNG,
and times `truncation` alone. Rounds of the two readers alternate and the median per-image time
of each is reported, to keep a busy machine's noise out of the difference.

    python scripts/bench_image_check.py [--rounds 7] [--reps 50]

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from cpcl.data.datasets import read_image, truncation


def _photo(h: int, w: int) -> np.ndarray:
    # Blurred noise plus edges: compresses like a photograph (a VOC JPEG is ~100 kB).
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 1.5)
    cv2.rectangle(img, (w // 4, h // 4), (w // 2, h // 2), (255, 255, 255), 3)
    return img


def _imread_rgb(path: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _per_call_us(fn: Callable[[], object], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e6


def bench(path: Path, rounds: int, reps: int) -> dict[str, float]:
    """Median microseconds per image of the old and new readers and of the check alone."""
    data = path.read_bytes()
    old, new, check = [], [], []
    for _ in range(rounds):
        old.append(_per_call_us(lambda: _imread_rgb(str(path)), reps))
        new.append(_per_call_us(lambda: read_image(path), reps))
        check.append(_per_call_us(lambda: truncation(data), reps * 20))
    cut = data[: len(data) // 3]
    return {
        "bytes": len(data),
        "imread_us": statistics.median(old),
        "read_image_us": statistics.median(new),
        "check_us": statistics.median(check),
        "check_truncated_us": _per_call_us(lambda: truncation(cut), reps),
    }


def main() -> None:
    """Write the two test images to a temp folder, time them, print the table and JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        cases = {"voc-jpeg-500x375": (".jpg", 375, 500), "city-png-2048x1024": (".png", 1024, 2048)}
        for name, (ext, h, w) in cases.items():
            path = Path(tmp) / f"{name}{ext}"
            cv2.imwrite(str(path), _photo(h, w))
            reps = args.reps if ext == ".jpg" else max(1, args.reps // 10)
            rows[name] = bench(path, args.rounds, reps)
    print(f"{'image':20} {'bytes':>9} {'imread':>10} {'read_image':>11} {'check':>9} {'on cut':>9}")
    for name, r in rows.items():
        print(
            f"{name:20} {r['bytes']:9d} {r['imread_us']:8.0f}us {r['read_image_us']:9.0f}us "
            f"{r['check_us']:7.2f}us {r['check_truncated_us']:7.1f}us"
        )
    print(json.dumps({"bench": "image_check", "rows": rows}))


if __name__ == "__main__":
    main()
