"""Deterministic procedural toy datasets in the exact CPS VOC and Cityscapes layouts.

The toy sets let the quickstart, the tests and a small semi-supervised benchmark run on a CPU
in minutes while exercising the real loaders (same folders, list formats and label encodings).

Scene design (why the task needs shape and context, and why unlabeled images help):

* VOC-toy: a smooth, often two-tone background (wall/floor) with illumination gradients,
  background clutter (irregular blobs, lines, weak textures) and 1-4 objects per image.
  Each foreground class is a *shape* (disc, square, triangle, ring, cross, ...). Its texture
  (flat, stripes, checker, dots) and hue follow a class preference only part of the time,
  so colour and texture are priors, not answers; clutter borrows the same colours and
  textures, so only the outline separates objects from background reliably. Objects vary in
  size, position, rotation and aspect, are truncated at borders and occlude each other.
* Cityscapes-toy: a street in perspective (sky top, buildings with windows, road with lane
  marks and sidewalks bottom) with cars, persons, trees and poles whose size follows depth,
  random car/clothing colours, ego-vehicle hoods (void, 255) and 1-px void rings around
  things, like the unlabeled borders of the real annotations.
* With few labeled images (the semi-supervised benchmark labels 16 of 128), a network sees
  each class in only a few appearance combinations (hue x texture x size x placement x
  lighting) and overfits them; the unlabeled images come from the same generator and show
  the combinations it missed, which is the signal consistency-based semi-supervised
  learning exploits. `voc_toy_scene` renders scenes in memory (for pre-training on the
  objects a dataset does not use, see `cpcl.toy_pretrain`).

Determinism: every image is drawn from its own `numpy.random.Generator` seeded by
(seed, dataset, split, index); JPEG (fixed quality) and PNG encoding are deterministic, so
the same arguments give byte-identical files.
"""

from __future__ import annotations

import colorsys
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..errors import CpclError
from ..fileio import atomic_write_text

RATIOS = (2, 4, 8, 16)
JPEG_QUALITY = 90
META_NAME = "toy_meta.json"
FORMAT_VERSION = 1

# (shape, preferred texture) of VOC-toy classes 1..20. The first five (the default) differ in
# both; later ones reuse shapes with another texture preference.
VOC_TOY_OBJECTS: tuple[tuple[str, str], ...] = (
    ("disc", "flat"),
    ("square", "checker"),
    ("triangle", "stripes"),
    ("ring", "flat"),
    ("cross", "dots"),
    ("star", "flat"),
    ("hexagon", "stripes"),
    ("crescent", "checker"),
    ("bar", "flat"),
    ("chevron", "dots"),
    ("disc", "stripes"),
    ("square", "flat"),
    ("triangle", "dots"),
    ("ring", "checker"),
    ("cross", "flat"),
    ("star", "stripes"),
    ("hexagon", "dots"),
    ("crescent", "flat"),
    ("bar", "checker"),
    ("chevron", "flat"),
)
TEXTURES = ("flat", "stripes", "checker", "dots")
VOC_TOY_CLASSES: tuple[str, ...] = (
    "background",
    *(f"{shape}_{tex}" for shape, tex in VOC_TOY_OBJECTS),
)
# Compact train ids 0..7; num_classes=k keeps the first k.
CITY_TOY_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "sky",
    "car",
    "vegetation",
    "person",
    "pole",
)
_CITY_MIN_CLASSES = 5
# VOC: how many objects an image asks for (values, probabilities); at most 4 so they fit.
OBJECTS_PER_IMAGE = ((1, 2, 3, 4), (0.3, 0.35, 0.22, 0.13))
_MAX_FORCED_PER_IMAGE = 6  # VOC: most objects one image must carry so every class shows up

# How reliable the class cues are and how much clutter there is, per difficulty:
# P[texture = class texture], P[random hue instead of the class hue], hue spread, max clutter blobs, object
# saturation range, background saturation range. "standard" needs shape and context; "easy"
# makes objects saturated, class-coloured and alone on a greyish background, so that a
# from-scratch ResNet-18 learns it within the quickstart's few minutes on a CPU.
DIFFICULTY: dict[str, dict[str, Any]] = {
    "standard": dict(
        tex_prob=0.6, hue_random=0.3, hue_sd=0.08, max_clutter=3, sat=(0.3, 1.0), bg_sat=(0.05, 0.6)
    ),
    "easy": dict(
        tex_prob=0.9,
        hue_random=0.05,
        hue_sd=0.03,
        max_clutter=0,
        sat=(0.75, 1.0),
        bg_sat=(0.0, 0.25),
    ),
}

# Split codes mixed into the seeds so train and val (and the two datasets) never share draws.
_VOC, _CITY = 0, 1
_TRAIN, _VAL, _SPLITS = 0, 1, 2


def voc_colormap(n: int = 256) -> np.ndarray:
    """The standard PASCAL VOC colour map, (n, 3) uint8, from the bit-interleaving rule.

    Bit j of the label index goes to bit 7 - j//3 of red, green or blue (j mod 3).
    """
    if not 1 <= n <= 256:
        raise CpclError(f"voc_colormap n={n!r}: expected 1..256")
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


# ----------------------------------------------------------------------------- helpers


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CpclError(f"{name}={value!r}: expected an integer")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise CpclError(f"{name}={value!r}: expected an integer {rng}")
    return int(value)


def _rgb(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] (hue wraps) to an RGB float32 triple in [0, 255]."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return np.array([r, g, b], dtype=np.float32) * 255.0


def _smooth(rng: np.random.Generator, h: int, w: int, cells: int, ch: int = 1) -> np.ndarray:
    """Smooth noise in [0, 1]: a coarse random grid upsampled bicubically (float32)."""
    ch_ = max(2, round(cells * h / max(h, w)))
    cw_ = max(2, round(cells * w / max(h, w)))
    small = rng.random((ch_, cw_, ch), dtype=np.float32)
    out = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(out.reshape(h, w, ch), 0.0, 1.0)


def _fill(mask: np.ndarray, polys: Sequence[np.ndarray], value: int = 1) -> None:
    """Fill float (x, y) polygons into `mask` with 1/16-px precision."""
    pts = [np.round(np.asarray(p, dtype=np.float64) * 16).astype(np.int32) for p in polys]
    cv2.fillPoly(mask, pts, value, lineType=cv2.LINE_8, shift=4)


def _texture(
    kind: str,
    u: np.ndarray,
    v: np.ndarray,
    c1: np.ndarray,
    c2: np.ndarray,
    period: float,
) -> np.ndarray:
    """Colour a patch from local (rotated) coordinates u, v: flat, stripes, checker or dots."""
    if kind == "flat":
        t = np.zeros_like(u)
    elif kind == "stripes":
        t = (np.floor(u / period) % 2).astype(np.float32)
    elif kind == "checker":
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif kind == "dots":
        du = (u / period) % 1.0 - 0.5
        dv = (v / period) % 1.0 - 0.5
        t = (du * du + dv * dv < 0.09).astype(np.float32)
    else:  # pragma: no cover - internal names only
        raise CpclError(f"texture {kind!r}: expected one of {', '.join(TEXTURES)}")
    return c1 * (1.0 - t[..., None]) + c2 * t[..., None]


def _second_colour(rng: np.random.Generator, h: float, s: float, v: float) -> np.ndarray:
    """A texture partner colour: clearly darker or lighter, sometimes another hue."""
    v2 = v * rng.uniform(0.3, 0.55) if v > 0.55 else min(1.0, v + rng.uniform(0.3, 0.5))
    h2 = h + (rng.uniform(-0.5, 0.5) if rng.random() < 0.3 else 0.0)
    return _rgb(h2, s * rng.uniform(0.5, 1.0), v2)


# ----------------------------------------------------------------------------- VOC-toy shapes


def _ellipse_pts(a: float, b: float, n: int = 40, dx: float = 0.0) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([a * np.cos(t) + dx, b * np.sin(t)], axis=1)


def _shape_polys(shape: str, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Polygons to fill and to cut out, in unit local coordinates (radius about 1)."""
    if shape == "disc":
        return [_ellipse_pts(1.0, rng.uniform(0.85, 1.0))], []
    if shape == "square":
        a = rng.uniform(0.7, 1.0)
        return [
            np.array([[-0.85, -0.85 * a], [0.85, -0.85 * a], [0.85, 0.85 * a], [-0.85, 0.85 * a]])
        ], []
    if shape == "triangle":
        ang = np.deg2rad(90 + np.arange(3) * 120 + rng.uniform(-12, 12, 3))
        return [np.stack([np.cos(ang), np.sin(ang)], axis=1)], []
    if shape == "ring":
        b = rng.uniform(0.85, 1.0)
        k = rng.uniform(0.45, 0.62)
        return [_ellipse_pts(1.0, b)], [_ellipse_pts(k, k * b)]
    if shape == "cross":
        t = rng.uniform(0.25, 0.35)
        return [
            np.array([[-1, -t], [1, -t], [1, t], [-1, t]]),
            np.array([[-t, -1], [t, -1], [t, 1], [-t, 1]]),
        ], []
    if shape == "star":
        ang = np.deg2rad(-90 + np.arange(10) * 36)
        rad = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.4, 0.5))
        return [np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)], []
    if shape == "hexagon":
        ang = np.deg2rad(np.arange(6) * 60)
        return [np.stack([np.cos(ang), np.sin(ang)], axis=1) * 0.95], []
    if shape == "crescent":
        return [_ellipse_pts(1.0, 1.0)], [_ellipse_pts(0.85, 0.85, dx=rng.uniform(0.45, 0.6))]
    if shape == "bar":
        t = rng.uniform(0.22, 0.32)
        return [np.array([[-1.1, -t], [1.1, -t], [1.1, t], [-1.1, t]])], []
    if shape == "chevron":
        return [np.array([[-1, -0.7], [0, 0.25], [1, -0.7], [1, 0.05], [0, 1.0], [-1, 0.05]])], []
    raise CpclError(f"shape {shape!r}: unknown")  # pragma: no cover - internal names only


def _place(polys: list[np.ndarray], cx: float, cy: float, r: float, ang: float) -> list[np.ndarray]:
    c, s = math.cos(ang), math.sin(ang)
    rot = np.array([[c, s], [-s, c]])
    return [p @ rot * r + np.array([cx, cy]) for p in polys]


class _Grid:
    """Cached pixel-centre coordinate grids per image size."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        if (h, w) not in self._cache:
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            self._cache[(h, w)] = (xx, yy)
        return self._cache[(h, w)]


def _paint_object(
    img: np.ndarray,
    mask: np.ndarray,
    xx: np.ndarray,
    yy: np.ndarray,
    cx: float,
    cy: float,
    r: float,
    ang: float,
    texture: str,
    hsv: tuple[float, float, float],
    rng: np.random.Generator,
) -> None:
    """Paint a textured, shaded object into `img` where `mask` is set (bbox-local work)."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    sub = mask[y0:y1, x0:x1].astype(bool)
    dx, dy = xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy
    c, s = math.cos(ang), math.sin(ang)
    u, v = dx * c + dy * s, -dx * s + dy * c
    c1 = _rgb(*hsv)
    c2 = _second_colour(rng, *hsv)
    period = rng.uniform(2.5, 4.5) * max(1.0, r / 14.0)
    patch = _texture(texture, u, v, c1, c2, period)
    # Directional shading across the object: a cue for 3-D-ish appearance, not for class.
    la = rng.uniform(0, 2 * math.pi)
    shade = 1.0 + rng.uniform(0.0, 0.3) * (dx * math.cos(la) + dy * math.sin(la)) / max(r, 1.0)
    patch = patch * np.clip(shade, 0.5, 1.5)[..., None]
    region = img[y0:y1, x0:x1]
    region[sub] = patch[sub]


def _voc_background(
    rng: np.random.Generator,
    h: int,
    w: int,
    xx: np.ndarray,
    yy: np.ndarray,
    sat: tuple[float, float] = (0.05, 0.6),
) -> np.ndarray:
    """Smooth coloured noise, often split into wall and floor, sometimes weakly textured."""

    def field() -> np.ndarray:
        base = _rgb(rng.random(), rng.uniform(*sat), rng.uniform(0.3, 0.9))
        noise = _smooth(rng, h, w, int(rng.integers(3, 7)), 3) - 0.5
        return base + noise * rng.uniform(40, 110)

    img = field()
    if rng.random() < 0.6:
        y_split = rng.uniform(0.4, 0.8) * h + (xx - w / 2) * rng.uniform(-0.25, 0.25)
        floor = field()
        img = np.where((yy > y_split)[..., None], floor, img)
    if rng.random() < 0.35:
        # Weak full-frame texture so texture alone never means "object".
        ang = rng.uniform(0, math.pi)
        u = xx * math.cos(ang) + yy * math.sin(ang)
        v = -xx * math.sin(ang) + yy * math.cos(ang)
        kind = TEXTURES[int(rng.integers(1, 4))]
        tex = _texture(
            kind, u, v, np.zeros(3, np.float32), np.ones(3, np.float32), rng.uniform(3, 7)
        )
        img = img + (tex[..., :1] - 0.5) * rng.uniform(15, 40)
    return img.astype(np.float32)


def _voc_clutter(
    rng: np.random.Generator, img: np.ndarray, xx: np.ndarray, yy: np.ndarray, n_blobs: int
) -> None:
    """Background distractors with object-like colours and textures but irregular outlines."""
    h, w = img.shape[:2]
    for _ in range(n_blobs):
        r = rng.uniform(0.08, 0.22) * min(h, w)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        d = np.hypot((xx - cx) / r, (yy - cy) / (r * rng.uniform(0.5, 1.5)))
        blob = (_smooth(rng, h, w, 9)[..., 0] * 0.9 + 0.45 - d * 0.7) > 0.5
        if not blob.any():
            continue
        hsv = (rng.random(), rng.uniform(0.2, 1.0), rng.uniform(0.3, 1.0))
        kind = TEXTURES[int(rng.integers(0, 4))]
        _paint_object(
            img, blob.astype(np.uint8), xx, yy, cx, cy, r, rng.uniform(0, 6.3), kind, hsv, rng
        )
    for _ in range(int(rng.integers(0, 3))):
        pts = np.stack([rng.uniform(-5, w + 5, 3), rng.uniform(-5, h + 5, 3)], axis=1)
        col = _rgb(rng.random(), rng.uniform(0, 1), rng.uniform(0.1, 1)).tolist()
        cv2.polylines(img, [np.round(pts).astype(np.int32)], False, col, int(rng.integers(1, 4)))


def _voc_scene(
    rng: np.random.Generator,
    h: int,
    w: int,
    classes: list[int],
    n_forced: int,
    grid: _Grid,
    cues: dict[str, Any] = DIFFICULTY["standard"],
) -> tuple[np.ndarray, np.ndarray]:
    """Render one VOC-toy image (uint8 RGB) and its label (uint8 class ids).

    The first `n_forced` entries of `classes` must be placed; the rest are dropped when no
    placement keeps every earlier object at least half visible.
    """
    xx, yy = grid(h, w)
    img = _voc_background(rng, h, w, xx, yy, cues["bg_sat"])
    tex_prob, hue_random, hue_sd = cues["tex_prob"], cues["hue_random"], cues["hue_sd"]
    _voc_clutter(rng, img, xx, yy, int(rng.integers(0, cues["max_clutter"] + 1)))
    label = np.zeros((h, w), np.uint8)
    inst = np.zeros((h, w), np.int16)  # instance id + 1, for the occlusion rule
    areas: list[int] = []
    side = min(h, w)
    n_total = len(classes)
    for k, cls in enumerate(classes):
        shape, pref_tex = VOC_TOY_OBJECTS[cls - 1]
        # Texture and hue follow the class only part of the time (priors, not answers).
        tex = pref_tex if rng.random() < tex_prob else TEXTURES[int(rng.integers(0, 4))]
        centre = (cls * 0.618034) % 1.0
        hue = rng.random() if rng.random() < hue_random else centre + rng.normal(0, hue_sd)
        hsv = (hue, rng.uniform(*cues["sat"]), rng.uniform(0.35, 1.0))
        r_max = 0.38 if n_total == 1 else 0.3 if n_total <= 2 else 0.24
        r = rng.uniform(0.1, r_max) * side
        base_polys = _shape_polys(shape, rng)
        placed = None
        for _try in range(25):
            cx = rng.uniform(0.3 * r, w - 0.3 * r)
            cy = rng.uniform(0.3 * r, h - 0.3 * r)
            ang = rng.uniform(0, 2 * math.pi)
            fill, cut = (_place(p, cx, cy, r, ang) for p in base_polys)
            mask = np.zeros((h, w), np.uint8)
            _fill(mask, fill, 1)
            if cut:
                _fill(mask, cut, 0)
            full = sum(abs(cv2.contourArea(p.astype(np.float32))) for p in fill)
            full -= sum(abs(cv2.contourArea(p.astype(np.float32))) for p in cut)
            area = int(mask.sum())
            # Truncation at the border is fine (VOC has it), vanishing slivers are not.
            ok = area >= max(30, 0.55 * full)
            if ok and areas:
                left = np.bincount(inst[mask == 0].ravel(), minlength=len(areas) + 1)[1:]
                ok = bool(np.all(left >= np.maximum(30, 0.5 * np.array(areas))))
            if ok:
                placed = (mask, cx, cy, ang)
                break
            r *= 0.93  # smaller objects fit between the others
        if placed is None:
            if k < n_forced:
                raise CpclError(f"toy scene {h}x{w}: could not place {n_forced} objects")
            continue
        mask, cx, cy, ang = placed
        _paint_object(img, mask, xx, yy, cx, cy, r, ang, tex, hsv, rng)
        on = mask.astype(bool)
        # Recount earlier instances: their visible area shrinks under the new object.
        for j in range(len(areas)):
            areas[j] = int(np.count_nonzero((inst == j + 1) & ~on))
        label[on] = cls
        inst[on] = len(areas) + 1
        areas.append(int(on.sum()))
    # Illumination: global gain, a linear light gradient and sometimes a soft shadow.
    gain = rng.uniform(0.65, 1.25)
    gx, gy = rng.uniform(-0.35, 0.35, 2)
    light = gain * (1.0 + gx * (xx / w - 0.5) + gy * (yy / h - 0.5))
    if rng.random() < 0.3:
        sx, sy, sr = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.2, 0.5) * side
        shadow = np.exp(-(((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * sr * sr)))
        light = light * (1.0 - rng.uniform(0.25, 0.5) * shadow)
    img = img * light[..., None]
    img = img + rng.normal(0.0, rng.uniform(2.0, 8.0), img.shape).astype(np.float32)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 0.9))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), label


def voc_toy_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    objects: Sequence[int],
    difficulty: str = "standard",
) -> tuple[np.ndarray, np.ndarray]:
    """Render one VOC-toy scene in memory: (uint8 RGB image, uint8 label of object ids).

    `objects` are ids 1..20 into `VOC_TOY_OBJECTS` (the first one is always placed, the
    others when they fit); label 0 is background. Used to stream pre-training scenes.
    """
    if difficulty not in DIFFICULTY:
        raise CpclError(f"difficulty={difficulty!r}: expected one of {', '.join(DIFFICULTY)}")
    bad = [o for o in objects if not 1 <= int(o) <= len(VOC_TOY_OBJECTS)]
    if not objects or bad:
        raise CpclError(f"objects={list(objects)!r}: expected ids in 1..{len(VOC_TOY_OBJECTS)}")
    return _voc_scene(
        rng, height, width, [int(o) for o in objects], 1, _Grid(), DIFFICULTY[difficulty]
    )


# ----------------------------------------------------------------------------- Cityscapes-toy


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


def make_toy_voc(
    root: str | Path,
    *,
    n_train: int = 320,
    n_val: int = 48,
    height: int = 96,
    width: int = 128,
    num_classes: int = 6,
    vary_size: bool = True,
    seed: int = 0,
    difficulty: str = "standard",
) -> dict[str, Any]:
    """Write a VOC-toy dataset in the CPS `pascal_voc` layout and return a summary dict.

    Layout: `train_aug/{image,label}/<id>.{jpg,png}`, `val/{image,label}/...`,
    `subset_train_aug/train_aug_{labeled,unlabeled}_1-{2,4,8,16}.txt`, `train_aug.txt`,
    `val.txt` (bare ids). Labels are palette PNGs (VOC colour map) with values in
    [0, num_classes); 0 is background, class k is the shape `VOC_TOY_CLASSES[k]`.
    num_classes: 2..21. vary_size: draw each image's size within +-10% of height x width
    (like real VOC's mixed sizes); False gives exactly height x width.
    difficulty: "standard" (shape and context needed) or "easy" (reliable colour/texture
    cues, little clutter), see `DIFFICULTY`.
    """
    _common_checks(n_train, n_val, height, width, seed)
    num_classes = _check_int("num_classes", num_classes, 2, 21)
    if difficulty not in DIFFICULTY:
        raise CpclError(f"difficulty={difficulty!r}: expected one of {', '.join(DIFFICULTY)}")
    cues = DIFFICULTY[difficulty]
    n_fg = num_classes - 1
    need = math.ceil(n_fg / _MAX_FORCED_PER_IMAGE)
    if n_val < need:
        raise CpclError(
            f"n_val={n_val}: too few images to show all {n_fg} foreground classes; expected >= {need}"
        )
    root = Path(root)
    t0 = time.perf_counter()
    palette = voc_colormap(256).tobytes()
    grid = _Grid()
    files: list[str] = []
    pixels: dict[str, np.ndarray] = {}
    sizes: list[tuple[int, int]] = []
    split_ids: dict[str, list[str]] = {}
    for split, code, n, folder in (
        ("train", _TRAIN, n_train, "train_aug"),
        ("val", _VAL, n_val, "val"),
    ):
        # Every class is "forced" into some image (round robin over a seeded class order),
        # so each split shows every class whatever its size.
        cls_order = (_rng(seed, _VOC, code, 10**9).permutation(n_fg) + 1).tolist()
        counts = np.zeros(num_classes, np.int64)
        ids = [f"toy_{split}_{i:05d}" for i in range(n)]
        for i, name in enumerate(ids):
            rng = _rng(seed, _VOC, code, i)
            forced = [c for j, c in enumerate(cls_order) if j % n == i % n]
            k = int(rng.choice(OBJECTS_PER_IMAGE[0], p=OBJECTS_PER_IMAGE[1]))
            extra = rng.integers(1, num_classes, max(0, k - len(forced))).tolist()
            if vary_size:
                h = round(height * rng.uniform(0.9, 1.1))
                w = round(width * rng.uniform(0.9, 1.1))
            else:
                h, w = height, width
            img, label = _voc_scene(rng, h, w, forced + extra, len(forced), grid, cues)
            counts += np.bincount(label.ravel(), minlength=num_classes)
            sizes.append((h, w))
            rel_img, rel_lbl = f"{folder}/image/{name}.jpg", f"{folder}/label/{name}.png"
            bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
            _write_bytes(
                root / rel_img, _encode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            )
            _write_bytes(root / rel_lbl, _voc_label_png(label, palette))
            files += [rel_img, rel_lbl]
        missing = [c for c in range(1, num_classes) if counts[c] == 0]
        if missing:  # pragma: no cover - the forcing above makes this unreachable
            raise CpclError(f"toy VOC {split}: classes {missing} never appear")
        pixels[split] = counts
        split_ids[split] = ids
    splits = _split_ids(split_ids["train"], seed, _VOC)
    files += _write_splits(root, "subset_train_aug", splits)
    _write_lines(root / "train_aug.txt", split_ids["train"])
    _write_lines(root / "val.txt", split_ids["val"])
    files += ["train_aug.txt", "val.txt"]
    params = {
        "dataset": "voc",
        "n_train": n_train,
        "n_val": n_val,
        "height": height,
        "width": width,
        "num_classes": num_classes,
        "vary_size": vary_size,
        "seed": seed,
        "difficulty": difficulty,
    }
    hs, ws = [s[0] for s in sizes], [s[1] for s in sizes]
    summary = _summary(root, params, VOC_TOY_CLASSES[:num_classes], splits, pixels, t0)
    summary["height_range"] = (min(hs), max(hs))
    summary["width_range"] = (min(ws), max(ws))
    _finish(root, params, files, {k: v for k, v in summary.items() if k != "seconds"})
    return summary


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
