"""VOC-toy: the scene generator (`voc_toy_scene`) and `make_toy_voc` (CPS VOC layout)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ...errors import CpclError
from .common import (
    _MAX_FORCED_PER_IMAGE,
    _TRAIN,
    _VAL,
    _VOC,
    DIFFICULTY,
    JPEG_QUALITY,
    OBJECTS_PER_IMAGE,
    TEXTURES,
    VOC_TOY_CLASSES,
    VOC_TOY_OBJECTS,
    _check_int,
    _fill,
    _Grid,
    _paint_object,
    _place,
    _rgb,
    _shape_polys,
    _smooth,
    _texture,
    voc_colormap,
)
from .files import (
    _common_checks,
    _encode,
    _finish,
    _rng,
    _split_ids,
    _summary,
    _voc_label_png,
    _write_bytes,
    _write_lines,
    _write_splits,
)


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
