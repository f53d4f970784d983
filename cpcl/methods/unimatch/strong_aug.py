"""UniMatch's strong view and CutMix box, on uint8 HWC RGB arrays (`dataset/semi.py:50-60`).

The official pipeline works on PIL images with torchvision 0.13 transforms. torchvision cannot
be imported here, so this module calls what torchvision calls on a PIL image, which is PIL
itself (bit-identical results, not a re-derivation of the formulas):

* `ColorJitter(0.5, 0.5, 0.5, 0.25)` with probability 0.8: factors
  brightness/contrast/saturation ~ U(0.5, 1.5), hue ~ U(-0.25, 0.25), applied in the order of
  `torch.randperm(4)` (0 brightness, 1 contrast, 2 saturation, 3 hue). torchvision's PIL path
  uses `ImageEnhance.Brightness` (blend with black), `ImageEnhance.Contrast` (blend with the
  rounded mean of the "L" image), `ImageEnhance.Color` (blend with the "L" image) and, for the
  hue, an HSV round trip through PIL that adds `uint8(hue * 255)` to H with wrap-around
  (a negative shift truncates toward zero and wraps: -10.2 -> 246, as the C cast on x86 that
  numpy 1.x performed);
* `RandomGrayscale(p=0.2)`: PIL `convert("L")` (ITU-R 601-2 luma 299/587/114 in PIL's fixed
  point), replicated to 3 channels;
* blur with probability 0.5: PIL `GaussianBlur(radius=sigma)`, sigma ~ U(0.1, 2.0);
* `obtain_cutmix_box` (`dataset/transform.py:66-84`) with probability 0.5.

Random draws, in the official order, come from three explicitly passed generators
(`AugRng`): Python's `random.Random` (the 0.8 coin, the blur coin, the box coin), numpy's
legacy `RandomState` (blur sigma, box geometry) and a `torch.Generator` (ColorJitter's
permutation and factors, the grayscale coin). Seeded like the official globals, they reproduce
its draws call for call.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from ...data.aug_rng import AugRng
from ...errors import CpclError, DataError

__all__ = [
    "AugRng",
    "CutMixBox",
    "StrongAugSettings",
    "check_rgb",
    "color_jitter",
    "cutmix_box_mask",
    "draw_cutmix_box",
    "gaussian_blur",
    "obtain_cutmix_box",
    "random_grayscale",
    "strong_view",
]


def _range(name: str, lo: float, hi: float) -> None:
    if not lo <= hi:
        raise CpclError(f"StrongAugSettings.{name}=({lo}, {hi}): expected lo <= hi")


@dataclass(frozen=True)
class StrongAugSettings:
    """Parameters of one strong view; the defaults are the official ones."""

    jitter_p: float = 0.8
    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 0.25
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    cutmix_p: float = 0.5
    cutmix_area: tuple[float, float] = (0.02, 0.4)
    cutmix_ratio: tuple[float, float] = field(default=(0.3, 1 / 0.3))

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_p") and not 0.0 <= value <= 1.0:
                raise CpclError(f"StrongAugSettings.{f.name}={value!r}: expected 0 <= p <= 1")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise CpclError(f"StrongAugSettings.{name}={getattr(self, name)!r}: expected >= 0")
        if not 0.0 <= self.hue <= 0.5:
            raise CpclError(f"StrongAugSettings.hue={self.hue!r}: expected 0 <= hue <= 0.5")
        for name in ("blur_sigma", "cutmix_area", "cutmix_ratio"):
            lo, hi = getattr(self, name)
            _range(name, lo, hi)
        if self.blur_sigma[0] < 0:
            raise CpclError(f"StrongAugSettings.blur_sigma={self.blur_sigma}: expected >= 0")
        if not (self.cutmix_area[0] > 0.0 and self.cutmix_area[1] <= 1.0):
            raise CpclError(f"StrongAugSettings.cutmix_area={self.cutmix_area}: expected in (0, 1]")
        if self.cutmix_ratio[0] <= 0:
            raise CpclError(f"StrongAugSettings.cutmix_ratio={self.cutmix_ratio}: expected > 0")


def check_rgb(img: np.ndarray, what: str = "strong augmentation") -> None:
    """Raise DataError unless `img` is a uint8 HxWx3 array."""
    if (
        not isinstance(img, np.ndarray)
        or img.dtype != np.uint8
        or img.ndim != 3
        or img.shape[2] != 3
    ):
        got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise DataError(f"{what}: expected a uint8 HxWx3 RGB array, got {got}")


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return float(torch.empty(1).uniform_(lo, hi, generator=gen))


def _adjust_hue(img: Image.Image, hue_factor: float) -> Image.Image:
    h, s, v = img.convert("HSV").split()
    shift = int(hue_factor * 255) % 256  # truncation toward zero, then uint8 wrap-around
    np_h = ((np.asarray(h, dtype=np.int64) + shift) % 256).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert("RGB")


def color_jitter(
    img: np.ndarray,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    gen: torch.Generator,
) -> np.ndarray:
    """torchvision's `ColorJitter(brightness, contrast, saturation, hue)` on a uint8 RGB array.

    Draws `randperm(4)`, then one factor per non-zero setting (brightness, contrast,
    saturation, hue, in that order) from `gen`; applies them in the permutation's order.
    """
    check_rgb(img)
    order = torch.randperm(4, generator=gen).tolist()
    factors = [
        _uniform(gen, max(0.0, 1 - v), 1 + v) if v > 0 else None
        for v in (brightness, contrast, saturation)
    ]
    factors.append(_uniform(gen, -hue, hue) if hue > 0 else None)
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    out = Image.fromarray(img, "RGB")
    for idx in order:
        factor = factors[idx]
        if factor is None:
            continue
        out = _adjust_hue(out, factor) if idx == 3 else enhancers[idx](out).enhance(factor)
    return np.asarray(out, dtype=np.uint8).copy()


def random_grayscale(img: np.ndarray, p: float, gen: torch.Generator) -> np.ndarray:
    """torchvision's `RandomGrayscale(p)`: one `torch.rand(1)` draw, PIL "L" on 3 channels."""
    check_rgb(img)
    if float(torch.rand(1, generator=gen)) < p:
        gray = np.asarray(Image.fromarray(img, "RGB").convert("L"), dtype=np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return img


def gaussian_blur(
    img: np.ndarray,
    p: float,
    sigma_range: tuple[float, float],
    py_random: random.Random,
    np_random: np.random.RandomState,
) -> np.ndarray:
    """The official `blur`: `py_random.random() < p`, then sigma ~ `np_random.uniform`, PIL blur."""
    check_rgb(img)
    if py_random.random() < p:
        sigma = np_random.uniform(sigma_range[0], sigma_range[1])
        blurred = Image.fromarray(img, "RGB").filter(ImageFilter.GaussianBlur(radius=sigma))
        return np.asarray(blurred, dtype=np.uint8).copy()
    return img


class CutMixBox(NamedTuple):
    """A box of rows `y:y+h` and columns `x:x+w`; `tries` = rejection-loop iterations."""

    y: int
    x: int
    h: int
    w: int
    tries: int


def draw_cutmix_box(
    size: int,
    p: float = 0.5,
    size_min: float = 0.02,
    size_max: float = 0.4,
    ratio_1: float = 0.3,
    ratio_2: float = 1 / 0.3,
    *,
    py_random: random.Random,
    np_random: np.random.RandomState,
) -> CutMixBox | None:
    """The draws of the official `obtain_cutmix_box`, call for call; None when no box.

    `py_random.random() > p` means no box (and no numpy draw). Otherwise the area is
    `U(size_min, size_max) * size**2`; then, until the box fits, `ratio = U(ratio_1, ratio_2)`,
    `w = int(sqrt(area/ratio))`, `h = int(sqrt(area*ratio))`, `x = randint(0, size)`,
    `y = randint(0, size)` (the box is never clipped). `np_random` must be a legacy
    `np.random.RandomState` (or the `np.random` module) to match the official stream.
    """
    if not hasattr(np_random, "randint"):
        raise CpclError(
            f"draw_cutmix_box: np_random must be a numpy RandomState (legacy stream, as the "
            f"official np.random.* calls), got {type(np_random).__name__}"
        )
    if int(size) < 1:
        raise CpclError(f"draw_cutmix_box: size={size!r}, expected a positive int")
    if py_random.random() > p:
        return None
    area = np_random.uniform(size_min, size_max) * size * size
    tries = 0
    while True:
        tries += 1
        ratio = np_random.uniform(ratio_1, ratio_2)
        w = int(np.sqrt(area / ratio))
        h = int(np.sqrt(area * ratio))
        x = np_random.randint(0, size)
        y = np_random.randint(0, size)
        if x + w <= size and y + h <= size:
            return CutMixBox(int(y), int(x), h, w, tries)


def cutmix_box_mask(size: int, box: CutMixBox | None) -> np.ndarray:
    """The (size, size) float32 0/1 mask of a box (all zero for None)."""
    mask = np.zeros((size, size), dtype=np.float32)
    if box is not None:
        mask[box.y : box.y + box.h, box.x : box.x + box.w] = 1
    return mask


def obtain_cutmix_box(
    size: int,
    p: float = 0.5,
    *,
    py_random: random.Random,
    np_random: np.random.RandomState,
    **geometry: float,
) -> np.ndarray:
    """The official `obtain_cutmix_box` as a (size, size) float32 0/1 array.

    `geometry`: `size_min`, `size_max`, `ratio_1`, `ratio_2` of `draw_cutmix_box`.
    """
    box = draw_cutmix_box(size, p, py_random=py_random, np_random=np_random, **geometry)
    return cutmix_box_mask(size, box)


def strong_view(
    img: np.ndarray, settings: StrongAugSettings, rng: AugRng
) -> tuple[np.ndarray, np.ndarray]:
    """One official strong view of a square uint8 crop: (augmented image, CutMix box mask).

    Order (`semi.py:50-54`): `py.random() < jitter_p` -> ColorJitter (torch draws);
    RandomGrayscale (one torch draw, always); blur (`py.random()`, then `np.uniform` when
    applied); the box (`py.random()`, then numpy draws when applied). Labels are never touched.
    """
    check_rgb(img)
    height, width = img.shape[:2]
    if height != width:
        raise CpclError(
            f"strong_view: the crop is {height}x{width}; UniMatch's CutMix box is square "
            f"(crop_size x crop_size), so a square crop is expected"
        )
    s = settings
    out = img
    if rng.py.random() < s.jitter_p:
        out = color_jitter(out, s.brightness, s.contrast, s.saturation, s.hue, rng.torch)
    out = random_grayscale(out, s.grayscale_p, rng.torch)
    out = gaussian_blur(out, s.blur_p, s.blur_sigma, rng.py, rng.np)
    box = obtain_cutmix_box(
        width,
        s.cutmix_p,
        py_random=rng.py,
        np_random=rng.np,
        size_min=s.cutmix_area[0],
        size_max=s.cutmix_area[1],
        ratio_1=s.cutmix_ratio[0],
        ratio_2=s.cutmix_ratio[1],
    )
    return out, box
