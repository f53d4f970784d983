"""Toy data: class tables, difficulty settings and the drawing primitives both scenes use."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from ...errors import CpclError

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
