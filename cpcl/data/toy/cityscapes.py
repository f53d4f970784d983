"""Cityscapes-toy: the street-scene generator and `make_toy_cityscapes` (CPS layout)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ...errors import CpclError
from .common import (
    _CITY,
    _CITY_MIN_CLASSES,
    _TRAIN,
    _VAL,
    CITY_TOY_CLASSES,
    _check_int,
    _fill,
    _Grid,
    _rgb,
    _smooth,
)
from .files import (
    _common_checks,
    _encode,
    _finish,
    _rng,
    _split_ids,
    _summary,
    _write_bytes,
    _write_lines,
    _write_splits,
)


def _city_scene(
    rng: np.random.Generator,
    h: int,
    w: int,
    num_classes: int,
    forced: list[int],
    grid: _Grid,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one street scene (uint8 RGB) and its train-id label (255 = void)."""
    ROAD, SIDEWALK, BUILDING, SKY, CAR, VEG, PERSON, POLE = range(8)
    xx, yy = grid(h, w)
    img = np.zeros((h, w, 3), np.float32)
    label = np.full((h, w), SKY, np.uint8)
    y_h = rng.uniform(0.36, 0.48) * h
    x_v = rng.uniform(0.35, 0.65) * w

    # Sky: vertical gradient, blue or overcast, with clouds.
    top = _rgb(rng.uniform(0.53, 0.66), rng.uniform(0.0, 0.7), rng.uniform(0.55, 1.0))
    bottom = _rgb(rng.uniform(0.53, 0.66), rng.uniform(0.0, 0.3), rng.uniform(0.7, 1.0))
    t = np.clip(yy / max(y_h, 1.0), 0, 1)[..., None]
    img[:] = top * (1 - t) + bottom * t + (_smooth(rng, h, w, 6, 1) - 0.5) * rng.uniform(10, 50)

    # Buildings: facades across the width, lower towards the vanishing point (perspective).
    x = 0.0
    while x < w:
        bw = rng.uniform(0.08, 0.25) * w
        near = min(1.0, abs(x + bw / 2 - x_v) / (0.5 * w))
        top_y = y_h - rng.uniform(0.05, 0.45) * h * (0.35 + 0.65 * near)
        x0, x1 = round(x), min(w, round(x + bw))
        y0 = max(0, round(top_y))
        if x1 <= x0:
            break
        col = _rgb(rng.random(), rng.uniform(0.05, 0.45), rng.uniform(0.3, 0.85))
        blk = np.broadcast_to(col, (h - y0, x1 - x0, 3)).copy()
        # Windows: a darker, bluish grid; rows stop a little above the ground.
        px, py = rng.uniform(4, 8), rng.uniform(5, 9)
        lx, ly = xx[y0:, x0:x1] - x0, yy[y0:, x0:x1] - y0
        win = ((lx % px) > px * 0.45) & ((ly % py) > py * 0.45) & (yy[y0:, x0:x1] < y_h + 2)
        wcol = _rgb(rng.uniform(0.5, 0.7), rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.45))
        blk[win] = wcol
        img[y0:, x0:x1] = blk + (_smooth(rng, h - y0, x1 - x0, 4, 1) - 0.5) * 25
        label[y0:, x0:x1] = BUILDING
        x += bw

    # Ground: road trapezoid to the vanishing point, sidewalks either side (tiles).
    below = yy >= y_h
    depth = np.clip((yy - y_h) / max(h - y_h, 1.0), 0, 1)  # 0 at horizon, 1 at the bottom
    half_road = 0.02 * w + depth * rng.uniform(0.55, 0.9) * w
    side_l = half_road + 0.02 * w + depth * rng.uniform(0.2, 0.5) * w
    side_r = half_road + 0.02 * w + depth * rng.uniform(0.2, 0.5) * w
    off = xx - x_v
    road = below & (np.abs(off) <= half_road)
    walk = below & ~road & (((off < 0) & (-off <= side_l)) | ((off > 0) & (off <= side_r)))
    rcol = _rgb(rng.random(), rng.uniform(0.0, 0.15), rng.uniform(0.22, 0.5))
    img[road] = rcol + (rng.random((int(road.sum()), 1)) - 0.5) * 18
    # Lane marks (road class): dashes along the centre line, longer when nearer.
    dash = (np.abs(off) < 0.004 * w + depth * 0.012 * w) & ((np.sqrt(depth + 1e-3) * 9) % 1.0 < 0.5)
    img[road & dash] = _rgb(rng.uniform(0.1, 0.17), rng.uniform(0.0, 0.6), rng.uniform(0.8, 1.0))
    label[road] = ROAD
    wcol = _rgb(rng.uniform(0.0, 0.15), rng.uniform(0.0, 0.3), rng.uniform(0.45, 0.8))
    tiles = ((np.sqrt(depth + 1e-3) * 14) % 1.0 < 0.12)[..., None]
    img[walk] = (
        np.where(tiles, wcol * 0.75, wcol)[walk] + (_smooth(rng, h, w, 8, 1)[walk] - 0.5) * 20
    )
    label[walk] = SIDEWALK

    things: list[tuple[np.ndarray, int]] = []  # (mask, class) of cars/persons for void rings

    def draw(mask: np.ndarray, cls: int, colour: np.ndarray, noise: float = 12.0) -> None:
        img[mask] = colour + (rng.random((int(mask.sum()), 1)) - 0.5) * noise
        label[mask] = cls

    def add_tree() -> None:
        side = -1 if rng.random() < 0.5 else 1
        fy = rng.uniform(y_h + 2, h)
        d = (fy - y_h) / max(h - y_h, 1.0)
        fx = x_v + side * (0.02 * w + d * rng.uniform(0.6, 1.3) * w)
        size = (0.15 + 0.6 * d) * h
        m = np.zeros((h, w), np.uint8)
        cv2.rectangle(
            m, (int(fx - size * 0.05), int(fy - size)), (int(fx + size * 0.05), int(fy)), 1, -1
        )
        trunk = m.astype(bool)
        cy_ = fy - size * 1.1
        dist = np.hypot((xx - fx) / (size * 0.5), (yy - cy_) / (size * 0.45))
        crown = (_smooth(rng, h, w, 12)[..., 0] * 0.8 + 0.6 - dist * 0.8) > 0.5
        green = _rgb(rng.uniform(0.2, 0.4), rng.uniform(0.35, 0.85), rng.uniform(0.2, 0.6))
        draw(trunk, VEG, _rgb(0.08, 0.5, rng.uniform(0.2, 0.4)))
        draw(crown, VEG, green, noise=70.0)  # leafy: strong fine texture

    def add_pole() -> None:
        side = -1 if rng.random() < 0.5 else 1
        fy = rng.uniform(y_h + 3, h)
        d = (fy - y_h) / max(h - y_h, 1.0)
        fx = x_v + side * (half_road[min(h - 1, int(fy)), 0] + 0.02 * w + d * 0.1 * w)
        height = (0.25 + 0.9 * d) * h
        pw = max(1.0, 0.012 * w * (0.3 + d))
        m = np.zeros((h, w), np.uint8)
        cv2.rectangle(m, (int(fx - pw / 2), int(fy - height)), (int(fx + pw / 2), int(fy)), 1, -1)
        if rng.random() < 0.6:  # a sign plate, part of the pole class here
            sr = max(2, int(pw * 2.5))
            cv2.circle(m, (int(fx), int(fy - height + sr)), sr, 1, -1)
        draw(m.astype(bool), POLE, _rgb(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.2, 0.7)))

    def add_person() -> None:
        side = -1 if rng.random() < 0.5 else 1
        fy = rng.uniform(y_h + 4, h)
        row = min(h - 1, int(fy))
        hr, sl = half_road[row, 0], (side_l if side < 0 else side_r)[row, 0]
        fx = x_v + side * rng.uniform(hr, max(hr + 1, sl))
        d = (fy - y_h) / max(h - y_h, 1.0)
        ph = (0.12 + 0.5 * d) * h * rng.uniform(0.85, 1.15)
        m = np.zeros((h, w), np.uint8)
        head = max(1, int(ph * 0.09))
        cv2.circle(m, (int(fx), int(fy - ph + head)), head, 1, -1)
        cv2.ellipse(
            m,
            (int(fx), int(fy - ph * 0.6)),
            (max(1, int(ph * 0.13)), max(1, int(ph * 0.22))),
            0,
            0,
            360,
            1,
            -1,
        )
        legw = max(1, int(ph * 0.05))
        for s in (-1, 1):
            cv2.line(m, (int(fx), int(fy - ph * 0.45)), (int(fx + s * ph * 0.08), int(fy)), 1, legw)
        mask = m.astype(bool)
        draw(mask, PERSON, _rgb(rng.random(), rng.uniform(0, 1), rng.uniform(0.1, 0.9)), 30.0)
        things.append((mask, PERSON))

    def add_car() -> None:
        fy = rng.uniform(y_h + 0.1 * (h - y_h), h + 0.1 * (h - y_h))
        row = min(h - 1, int(fy))
        hr = half_road[row, 0]
        fx = x_v + rng.uniform(-0.8, 0.8) * hr
        d = (fy - y_h) / max(h - y_h, 1.0)
        cw = (0.08 + 0.45 * d) * w * rng.uniform(0.85, 1.15)
        chh = cw * rng.uniform(0.45, 0.6)
        m = np.zeros((h, w), np.uint8)
        body_top = fy - chh * 0.6
        _fill(
            m,
            [
                np.array(
                    [
                        [fx - cw / 2, body_top],
                        [fx + cw / 2, body_top],
                        [fx + cw / 2, fy - chh * 0.1],
                        [fx - cw / 2, fy - chh * 0.1],
                    ]
                )
            ],
        )
        cab = np.array(
            [
                [fx - cw * 0.38, body_top],
                [fx - cw * 0.25, fy - chh],
                [fx + cw * 0.25, fy - chh],
                [fx + cw * 0.38, body_top],
            ]
        )
        _fill(m, [cab])
        wheel_r = max(1, int(chh * 0.18))
        for s in (-1, 1):
            cv2.circle(m, (int(fx + s * cw * 0.3), int(fy - wheel_r)), wheel_r, 1, -1)
        mask = m.astype(bool)
        draw(mask, CAR, _rgb(rng.random(), rng.uniform(0, 1), rng.uniform(0.15, 0.95)), 10.0)
        wm = np.zeros((h, w), np.uint8)
        inner = (cab - np.array([fx, body_top])) * 0.75 + np.array([fx, body_top - chh * 0.02])
        _fill(wm, [inner])
        wmask = wm.astype(bool) & mask
        img[wmask] = _rgb(rng.uniform(0.5, 0.65), 0.4, rng.uniform(0.1, 0.35))
        for s in (-1, 1):
            wh = np.hypot(xx - (fx + s * cw * 0.3), yy - (fy - wheel_r)) < wheel_r * 0.9
            img[wh & mask] = (25.0, 25.0, 28.0)
        things.append((mask, CAR))

    makers: dict[int, Callable[[], None]] = {
        VEG: add_tree,
        POLE: add_pole,
        PERSON: add_person,
        CAR: add_car,
    }
    optional = [c for c in (VEG, POLE, CAR, PERSON) if c < num_classes]
    counts = {VEG: (0, 3, 0.7), POLE: (0, 3, 0.7), CAR: (0, 4, 0.9), PERSON: (0, 4, 0.6)}
    for cls in optional:  # back to front by layer: trees, poles, then cars and persons
        lo, hi, p = counts[cls]
        n = int(rng.integers(max(lo, 1), hi + 1)) if rng.random() < p else 0
        for _ in range(n):
            makers[cls]()
    for cls in forced:  # on top, so the class is surely visible in this image
        makers[cls]()
    # Void: 1-px rings outside cars and persons, and sometimes the ego-vehicle hood.
    kernel = np.ones((3, 3), np.uint8)
    for mask, _cls in things:
        m8 = mask.astype(np.uint8)
        ring = (cv2.dilate(m8, kernel) > 0) & ~mask & (label != CAR) & (label != PERSON)
        label[ring] = 255
    if rng.random() < 0.5:
        hood = (
            h
            - rng.uniform(0.06, 0.14) * h
            + ((xx - w / 2) / (w / 2)) ** 2 * rng.uniform(0.03, 0.08) * h
        )
        hm = yy >= hood
        img[hm] = _rgb(rng.random(), rng.uniform(0, 0.4), rng.uniform(0.05, 0.3))
        label[hm] = 255
    # Illumination and sensor noise.
    gain = rng.uniform(0.7, 1.2)
    light = gain * (1.0 + rng.uniform(-0.3, 0.3) * (xx / w - 0.5))
    img = img * light[..., None] + rng.normal(0.0, rng.uniform(2.0, 6.0), img.shape).astype(
        np.float32
    )
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 0.8))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), label


def make_toy_cityscapes(
    root: str | Path,
    *,
    n_train: int = 240,
    n_val: int = 40,
    height: int = 96,
    width: int = 192,
    num_classes: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a Cityscapes-toy dataset in the CPS `city` layout and return a summary dict.

    Layout: `images/{train,val}/<name>.png` (RGB), `segmentation/{train,val}/<name>_gtFine.png`
    (grayscale train ids, 255 = void), `config_new/{train,val}.txt` and
    `config_new/subset_train/train_aug_{labeled,unlabeled}_1-{2,4,8,16}.txt`, each line
    `/images/<split>/<name>.png<TAB>/segmentation/<split>/<name>_gtFine.png`.
    Classes are the first `num_classes` (5..8) of `CITY_TOY_CLASSES`.
    """
    _common_checks(n_train, n_val, height, width, seed)
    num_classes = _check_int("num_classes", num_classes, _CITY_MIN_CLASSES, len(CITY_TOY_CLASSES))
    root = Path(root)
    t0 = time.perf_counter()
    grid = _Grid()
    files: list[str] = []
    pixels: dict[str, np.ndarray] = {}
    lines: dict[str, list[str]] = {}
    optional = [c for c in (4, 5, 6, 7) if c < num_classes]  # car, vegetation, person, pole
    for split, code, n, town in (
        ("train", _TRAIN, n_train, "toytown"),
        ("val", _VAL, n_val, "toyville"),
    ):
        counts = np.zeros(num_classes, np.int64)
        split_lines = []
        for i in range(n):
            rng = _rng(seed, _CITY, code, i)
            forced = [c for j, c in enumerate(optional) if j % n == i % n]
            img, label = _city_scene(rng, height, width, num_classes, forced, grid)
            valid = label[label != 255]
            counts += np.bincount(valid.ravel(), minlength=num_classes)
            name = f"{town}_{i:06d}_000019"
            rel_img = f"images/{split}/{name}.png"
            rel_lbl = f"segmentation/{split}/{name}_gtFine.png"
            _write_bytes(root / rel_img, _encode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR)))
            _write_bytes(root / rel_lbl, _encode(".png", label))
            files += [rel_img, rel_lbl]
            split_lines.append(f"/{rel_img}\t/{rel_lbl}")
        missing = [c for c in range(num_classes) if counts[c] == 0]
        if missing:
            raise CpclError(f"toy Cityscapes {split}: classes {missing} never appear")
        pixels[split] = counts
        lines[split] = split_lines
    splits = _split_ids(lines["train"], seed, _CITY)
    files += _write_splits(root, "config_new/subset_train", splits)
    for split in ("train", "val"):
        _write_lines(root / f"config_new/{split}.txt", lines[split])
        files.append(f"config_new/{split}.txt")
    params = {
        "dataset": "cityscapes",
        "n_train": n_train,
        "n_val": n_val,
        "height": height,
        "width": width,
        "num_classes": num_classes,
        "seed": seed,
    }
    summary = _summary(root, params, CITY_TOY_CLASSES[:num_classes], splits, pixels, t0)
    _finish(root, params, files, {k: v for k, v in summary.items() if k != "seconds"})
    return summary
