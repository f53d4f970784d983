"""CoSA's training transform (`VOC12ClsDatasetNew` / `COCOClsDatasetNew`, files of the official
repository cited as `file:line`), randomness passed in.

Official pipeline of one training image (`dataloaders/voc.py:320-333`, `coco.py:118-130`), on
the decoded uint8 RGB image:

1. `random_scaling` (`transforms.py:54-77`): ratio ``random.uniform(0.5, 2.0)`` (`args.scales`,
   the same for VOC and COCO); new size ``(int(ratio * w), int(ratio * h))``, PIL bilinear;
2. `random_fliplr` (`transforms.py:99-111`): flip left-right when ``random.random() > 0.5``;
3. `random_crop` (`transforms.py:141-192`, ``crop_size=448``, ``mean_rgb=[0,0,0]``): the image is
   placed in a zero canvas of ``max(448, h) x max(448, w)`` at ``np.random.randint(H-h+1)``,
   ``np.random.randint(W-w+1)``, then a 448x448 window at ``random.randrange(0, H-448+1, 1)``,
   ``random.randrange(0, W-448+1, 1)`` is cut. ``img_box = (y0, y1, x0, x1)``: the rows
   y0:y1 and columns x0:x1 of the crop that hold image pixels (int16 officially; int64 here);
   the rest is padding, 0 before normalisation. With a mask (`VOC12SegDatasetNew`,
   `voc.py:426-438`) the window is redrawn up to 10 times until no class covers 75% of the
   non-255 pixels of the window, tested on the UNPADDED mask with the padded-canvas
   coordinates (as the official code does); the mask is padded with 255;
4. `GaussianBlur(p=0.5)` (`transforms.py:9-27`): when ``random.random() <= 0.5``, PIL
   `GaussianBlur(radius=random.uniform(0.1, 2.0))`. The (blurred) crop is the WEAK view;
5. the STRONG view: `randaug.OneOf` of 9 ops on the weak PIL image (`randaug.py`):
   ``np.random.choice`` of Identity, AutoContrast, Equalize, Solarize, Color, Contrast,
   Brightness, Sharpness, Posterize; the op then draws ``np.random.random() < 1.0`` (always
   applies) and the magnitude ``np.random.randint(1, 10)`` (1..9, even for the ops without
   one). Solarize threshold ``min(int(m * 256 / 10), 255)`` (`mmcv.solarize`: values >= thr
   become 255 - v); the enhancers use factor ``m * 1.8 / 10 + 0.1``; Posterize keeps
   ``4 - int(m * 4 / 10)`` bits;
6. both views: `ToTensor` + `Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))` in float32
   (x / 255, ImageNet mean/std on the 0-1 scale), CHW. The padding is normalised too (0 ->
   -mean/std), not zeroed.

The official train `__getitem__` returns ``img_name, wimg, simg, cls_label, img_box``
(`voc.py:336-346`); `main.py:114-121` consumes the last four. `CosaTrainTransform` returns the
arrays under those names.

Validation (`VOC12SegDataset`, ``aug=False``): `normalize_img` (`transforms.py:43-51`) with mean
(123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375) on the 0-255 scale in float64, stored
float32 (`val_normalize_lut`); no resize in the loader (the evaluator resizes, `evaluate.py`).

Randomness: every draw comes from an `AugRng` (Python `random.Random`, numpy `RandomState`) in
the official order, built from the loader's per-sample `numpy.random.Generator` (`aug_rng`), so a
sample does not depend on the worker that makes it, and a seeded `AugRng` reproduces the
official code run after ``random.seed(s); np.random.seed(s)`` exactly.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from ...data.aug_rng import AugRng
from ...errors import DataError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "STRONG_OPS",
    "VAL_MEAN_255",
    "VAL_STD_255",
    "CosaCrop",
    "CosaTrainTransform",
    "CosaTransformSettings",
    "aug_rng",
    "strong_op",
    "train_normalize_lut",
    "val_normalize_lut",
]

IGNORE_INDEX = 255
# Training views: torchvision Normalize on the 0-1 scale; validation: normalize_img on 0-255.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VAL_MEAN_255, VAL_STD_255 = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)

# `randaug.OneOf` list, in the official order (`voc.py:305-314`).
STRONG_OPS = (
    "identity",
    "autocontrast",
    "equalize",
    "solarize",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "posterize",
)
_ENHANCERS = {
    "color": ImageEnhance.Color,
    "contrast": ImageEnhance.Contrast,
    "brightness": ImageEnhance.Brightness,
    "sharpness": ImageEnhance.Sharpness,
}
_MAX_LEVEL = 10  # randaug.PARAMETER_MAX and magnitude_limit


def train_normalize_lut(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """(256, 3) float32: torchvision `ToTensor` + `Normalize(mean, std)` of each uint8 value
    (all float32: ``x / 255``, then ``(x - mean) / std`` with float32 mean and std)."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1)
    if m.shape != (1, 3) or s.shape != (1, 3) or np.any(s <= 0):
        raise DataError(f"CoSA normalisation mean={mean!r}, std={std!r}: expected 3 values each")
    return (np.arange(256, dtype=np.float32)[:, None] / np.float32(255) - m) / s


def val_normalize_lut(
    mean: Sequence[float] = VAL_MEAN_255, std: Sequence[float] = VAL_STD_255
) -> np.ndarray:
    """(256, 3) float32: the official `normalize_img` of each uint8 value (0-255 scale mean and
    std; the uint8 minus a Python float is float64, rounded to float32 when stored)."""
    m = np.asarray(mean, dtype=np.float64).reshape(1, -1)
    s = np.asarray(std, dtype=np.float64).reshape(1, -1)
    if m.shape != (1, 3) or s.shape != (1, 3) or np.any(s <= 0):
        raise DataError(f"CoSA normalisation mean={mean!r}, std={std!r}: expected 3 values each")
    return ((np.arange(256, dtype=np.float64)[:, None] - m) / s).astype(np.float32)


def aug_rng(gen: np.random.Generator | AugRng) -> AugRng:
    """An `AugRng` for one sample: `gen` itself, or one seeded from the loader's generator."""
    if isinstance(gen, AugRng):
        return gen
    if not isinstance(gen, np.random.Generator):
        raise TypeError(f"rng: a {type(gen).__name__}; expected a numpy Generator or an AugRng")
    py_seed, np_seed = (int(s) for s in gen.integers(0, 2**32, size=2))
    # The torch generator is unused by CoSA's transform; AugRng carries one for other methods.
    return AugRng(random.Random(py_seed), np.random.RandomState(np_seed), torch.Generator())


def strong_op(img: Image.Image, op: str, magnitude: int) -> Image.Image:
    """One `randaug` op (`randaug.py:57-121`) at `magnitude` (1..9) on an RGB PIL image."""
    if op == "identity":
        return img
    if op == "autocontrast":
        return ImageOps.autocontrast(img)
    if op == "equalize":
        return ImageOps.equalize(img)
    if op == "solarize":
        arr = np.asarray(img)
        thr = min(int(magnitude * 256 / _MAX_LEVEL), 255)
        return Image.fromarray(np.where(arr < thr, arr, 255 - arr))  # mmcv.solarize
    if op in _ENHANCERS:
        factor = float(magnitude) * 1.8 / _MAX_LEVEL + 0.1
        return _ENHANCERS[op](img).enhance(factor)
    if op == "posterize":
        return ImageOps.posterize(img, 4 - int(magnitude * 4 / _MAX_LEVEL))
    raise DataError(f"CoSA strong op {op!r}: expected one of {', '.join(STRONG_OPS)}")


@dataclass(frozen=True)
class CosaTransformSettings:
    """The official training transform values (VOC and COCO use the same)."""

    crop_size: int = 448
    scale_range: tuple[float, float] = (0.5, 2.0)
    blur_p: float = 0.5
    blur_radius: tuple[float, float] = (0.1, 2.0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    cat_max_ratio: float = 0.75  # the crop retry rule, only with a mask

    def __post_init__(self) -> None:
        lo, hi = (float(v) for v in self.scale_range)
        if int(self.crop_size) < 1:
            raise DataError(f"CoSA crop_size={self.crop_size!r}: expected a positive int")
        if not 0 < lo <= hi:
            raise DataError(f"CoSA scales={self.scale_range!r}: expected 0 < min <= max")
        if not 0.0 <= float(self.blur_p) <= 1.0:
            raise DataError(f"CoSA blur probability {self.blur_p!r}: expected 0..1")


@dataclass
class CosaCrop:
    """The geometric stage's output: `img` (S,S,3) uint8 (0 in the padding), `mask` (S,S)
    uint8 (255 in the padding) or None, `img_box` int64 (y0, y1, x0, x1) of the image pixels."""

    img: np.ndarray
    mask: np.ndarray | None
    img_box: np.ndarray


def _check_image(img: np.ndarray, mask: np.ndarray | None) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3:
        raise DataError(
            f"CoSA training image of dtype {getattr(img, 'dtype', None)}, shape "
            f"{getattr(img, 'shape', None)}: expected an HxWx3 uint8 RGB array"
        )
    if img.shape[2] != 3:
        raise DataError(f"CoSA training image of shape {img.shape}: expected 3 channels")
    if mask is not None and mask.shape != img.shape[:2]:
        raise DataError(
            f"label of shape {mask.shape} for an image of shape {img.shape[:2]}: expected "
            "the same height and width"
        )


class CosaTrainTransform:
    """The official CoSA training transform (module docstring), a picklable callable.

    ``transform(img, mask=None, *, rng)`` with `img` HxWx3 uint8 RGB, `mask` HxW uint8 or None,
    `rng` a `numpy.random.Generator` (the loader's per-sample one) or an `AugRng`, returns
    ``{"wimg": (3,S,S) float32, "simg": (3,S,S) float32, "img_box": (4,) int64}`` plus
    ``"mask": (S,S) int64`` (255 = padding / ignore) when a mask is given.
    """

    def __init__(self, settings: CosaTransformSettings | None = None) -> None:
        self.settings = settings or CosaTransformSettings()
        s = self.settings
        self.lut = train_normalize_lut(s.mean, s.std).reshape(256, 1, 3)

    # -- stage 1: geometry (uint8) ------------------------------------------------------------
    def geometric(
        self, img: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator | AugRng
    ) -> CosaCrop:
        """Rescale, flip, pad and crop (steps 1-3), still uint8."""
        _check_image(img, mask)
        r = aug_rng(rng)
        s = self.settings
        ratio = r.py.uniform(float(s.scale_range[0]), float(s.scale_range[1]))
        img, mask = self._rescale(img, mask, ratio)
        if r.py.random() > 0.5:
            img = img[:, ::-1]
            mask = None if mask is None else mask[:, ::-1]
        return self._crop(img, mask, r)

    @staticmethod
    def _rescale(
        img: np.ndarray, mask: np.ndarray | None, ratio: float
    ) -> tuple[np.ndarray, np.ndarray | None]:
        h, w = img.shape[:2]
        size = (int(ratio * w), int(ratio * h))
        if min(size) < 1:
            raise DataError(f"scale {ratio:.4g} turns a {h}x{w} image into {size[1]}x{size[0]}")
        out = np.asarray(Image.fromarray(img).resize(size, resample=Image.BILINEAR))
        if mask is not None:
            mask = np.asarray(Image.fromarray(mask).resize(size, resample=Image.NEAREST))
        return out, mask

    def _crop(self, img: np.ndarray, mask: np.ndarray | None, r: AugRng) -> CosaCrop:
        crop = int(self.settings.crop_size)
        h, w = img.shape[:2]
        big_h, big_w = max(crop, h), max(crop, w)
        pad_h = int(r.np.randint(big_h - h + 1))
        pad_w = int(r.np.randint(big_w - w + 1))
        for _ in range(10):
            y = r.py.randrange(0, big_h - crop + 1, 1)
            x = r.py.randrange(0, big_w - crop + 1, 1)
            if mask is None or self._balanced(mask[y : y + crop, x : x + crop]):
                break
        canvas = np.zeros((big_h, big_w, 3), dtype=np.uint8)
        canvas[pad_h : pad_h + h, pad_w : pad_w + w] = img
        box = np.asarray(
            [
                max(pad_h - y, 0),
                min(crop, h + pad_h - y),
                max(pad_w - x, 0),
                min(crop, w + pad_w - x),
            ],
            dtype=np.int64,
        )
        out_mask = None
        if mask is not None:
            full = np.full((big_h, big_w), IGNORE_INDEX, dtype=np.uint8)
            full[pad_h : pad_h + h, pad_w : pad_w + w] = mask
            out_mask = np.ascontiguousarray(full[y : y + crop, x : x + crop])
        return CosaCrop(np.ascontiguousarray(canvas[y : y + crop, x : x + crop]), out_mask, box)

    def _balanced(self, window: np.ndarray) -> bool:
        """The official retry test: some labelled pixel, and no class over cat_max_ratio of them."""
        index, cnt = np.unique(window, return_counts=True)
        cnt = cnt[index != IGNORE_INDEX]
        return bool(len(cnt)) and cnt.max() / cnt.sum() < self.settings.cat_max_ratio

    # -- stage 2: photometric (uint8) ---------------------------------------------------------
    def photometric(
        self, img: np.ndarray, rng: np.random.Generator | AugRng
    ) -> tuple[np.ndarray, np.ndarray]:
        """(weak, strong) uint8 views of a crop: blur (step 4), then one strong op (step 5)."""
        r = aug_rng(rng)
        s = self.settings
        pil = Image.fromarray(img)
        if r.py.random() <= s.blur_p:
            radius = r.py.uniform(float(s.blur_radius[0]), float(s.blur_radius[1]))
            pil = pil.filter(ImageFilter.GaussianBlur(radius=radius))
        op = STRONG_OPS[int(r.np.choice(len(STRONG_OPS)))]
        strong = pil
        if r.np.random() < 1.0:  # RandAug(prob=1.0): the draw is made, the op always runs
            strong = strong_op(pil, op, int(r.np.randint(1, _MAX_LEVEL)))
        return np.asarray(pil), np.asarray(strong)

    # -- stage 3: normalisation ---------------------------------------------------------------
    def normalize(self, img: np.ndarray) -> np.ndarray:
        """(3,S,S) float32: `ToTensor` + `Normalize` of a uint8 (S,S,3) view (step 6)."""
        return np.ascontiguousarray(cv2.LUT(np.ascontiguousarray(img), self.lut).transpose(2, 0, 1))

    def __call__(
        self,
        img: np.ndarray,
        mask: np.ndarray | None = None,
        *,
        rng: np.random.Generator | AugRng,
    ) -> dict[str, np.ndarray]:
        """One training sample's arrays (class docstring)."""
        r = aug_rng(rng)
        crop = self.geometric(img, mask, r)
        weak, strong = self.photometric(crop.img, r)
        out = {
            "wimg": self.normalize(weak),
            "simg": self.normalize(strong),
            "img_box": crop.img_box,
        }
        if crop.mask is not None:
            out["mask"] = crop.mask.astype(np.int64)
        return out
