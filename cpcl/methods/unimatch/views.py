"""UniMatch's per-sample views in the uint8 stage (`dataset/semi.py`, `dataset/transform.py`).

Weak view (labeled and unlabeled): `resize` (long side ~ randint over [0.5, 2.0] x the
original long side, PIL bilinear for the image and nearest for the mask), `crop` (pad
bottom/right up to the crop size, image with 0 and mask with `ignore_value`, then a random
square crop), `hflip` (p = 0.5). The unlabeled mask is padded with 254 so that the crop
padding can be told apart; its ignore mask is 255 exactly where the padded mask is 254 (the
dataset's own 255 pixels are *not* ignored in the unlabeled losses, as in the official code).
Then two strong views of the same crop (`strong_aug.strong_view`), each with its CutMix box.

All randomness comes from one `AugRng` (Python, numpy legacy, torch), in the official order:
resize `py.randint`; crop two `py.randint` (x, then y); flip `py.random`; strong view 1
(`py.random` jitter coin, torch ColorJitter draws, torch grayscale draw, `py.random` blur
coin [+ `np.uniform`], `py.random` box coin [+ numpy box draws]); strong view 2 (same).

Images go through PIL (exactly the official operations); the arrays stay uint8 until the
normalisation stage (`ToTensor` + `Normalize(ImageNet mean/std)` in the official code).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from PIL import Image

from ...data.views import DataView, Loaded, RngFor, labeled_pair
from ...errors import CpclError, DataError
from .strong_aug import AugRng, StrongAugSettings, check_rgb, strong_view

__all__ = [
    "MIX_PARTNERS",
    "UNLABELED_KEYS",
    "UNLABELED_PAD",
    "UniMatchView",
    "UniMatchViewSettings",
    "aug_rng",
    "crop",
    "hflip",
    "labeled_view",
    "mixing_partner",
    "repeat_to_length",
    "resize",
    "unimatch_normalize_lut",
    "unlabeled_views",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

UNLABELED_PAD = 254  # mask value of the crop padding of unlabeled images
IGNORE = 255


def _check_pair(img: np.ndarray, mask: np.ndarray) -> None:
    check_rgb(img, "UniMatch views")
    if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8 or mask.shape != img.shape[:2]:
        got = f"{mask.dtype} {mask.shape}" if isinstance(mask, np.ndarray) else type(mask).__name__
        raise DataError(
            f"UniMatch views: expected a uint8 HxW mask of the image size {img.shape[:2]}, got {got}"
        )


def resize(
    img: np.ndarray, mask: np.ndarray, ratio_range: Sequence[float], py_random: random.Random
) -> tuple[np.ndarray, np.ndarray]:
    """The official `resize`: random long side, aspect kept (`int(x + 0.5)` rounding)."""
    h, w = img.shape[:2]
    long_side = py_random.randint(int(max(h, w) * ratio_range[0]), int(max(h, w) * ratio_range[1]))
    if h > w:
        oh, ow = long_side, int(1.0 * w * long_side / h + 0.5)
    else:
        ow, oh = long_side, int(1.0 * h * long_side / w + 0.5)
    img = np.asarray(Image.fromarray(img, "RGB").resize((ow, oh), Image.Resampling.BILINEAR))
    mask = np.asarray(Image.fromarray(mask, "L").resize((ow, oh), Image.Resampling.NEAREST))
    return img, mask


def crop(
    img: np.ndarray, mask: np.ndarray, size: int, ignore_value: int, py_random: random.Random
) -> tuple[np.ndarray, np.ndarray]:
    """The official `crop`: pad bottom/right to `size` (image 0, mask `ignore_value`), crop.

    The corner is `x = randint(0, w - size)` then `y = randint(0, h - size)` (both inclusive).
    """
    h, w = img.shape[:2]
    padh, padw = max(size - h, 0), max(size - w, 0)
    if padh or padw:
        img = np.pad(img, ((0, padh), (0, padw), (0, 0)), constant_values=0)
        mask = np.pad(mask, ((0, padh), (0, padw)), constant_values=ignore_value)
        h, w = img.shape[:2]
    x = py_random.randint(0, w - size)
    y = py_random.randint(0, h - size)
    return img[y : y + size, x : x + size], mask[y : y + size, x : x + size]


def hflip(
    img: np.ndarray, mask: np.ndarray, p: float, py_random: random.Random
) -> tuple[np.ndarray, np.ndarray]:
    """The official `hflip`: mirror both when `py_random.random() < p`."""
    if py_random.random() < p:
        return img[:, ::-1], mask[:, ::-1]
    return img, mask


def _weak(
    img: np.ndarray,
    mask: np.ndarray,
    crop_size: int,
    pad_value: int,
    rng: AugRng,
    scale_range: Sequence[float],
    flip_p: float,
) -> tuple[np.ndarray, np.ndarray]:
    _check_pair(img, mask)
    if int(crop_size) < 1:
        raise CpclError(f"UniMatch views: crop_size={crop_size!r}, expected a positive int")
    if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
        raise CpclError(f"UniMatch views: scale_range={list(scale_range)}, expected 0 < lo <= hi")
    img, mask = resize(img, mask, scale_range, rng.py)
    img, mask = crop(img, mask, crop_size, pad_value, rng.py)
    img, mask = hflip(img, mask, flip_p, rng.py)
    return np.ascontiguousarray(img), np.ascontiguousarray(mask)


def labeled_view(
    img: np.ndarray,
    mask: np.ndarray,
    crop_size: int,
    rng: AugRng,
    scale_range: Sequence[float] = (0.5, 2.0),
    flip_p: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """`train_l`: the weak view of a labeled sample (mask padded with 255)."""
    return _weak(img, mask, crop_size, IGNORE, rng, scale_range, flip_p)


def unlabeled_views(
    img: np.ndarray,
    mask: np.ndarray | None,
    crop_size: int,
    rng: AugRng,
    settings: StrongAugSettings | None = None,
    scale_range: Sequence[float] = (0.5, 2.0),
    flip_p: float = 0.5,
) -> dict[str, np.ndarray]:
    """`train_u`: weak view, two strong views, the padding ignore mask and two CutMix boxes.

    `mask` is the stored label (the official loader reads one for unlabeled images too; only
    its 254 padding matters) or None (zeros). Returns uint8 `img_w`, `img_s1`, `img_s2`
    (crop x crop x 3), uint8 `ignore_mask` (0 / 255) and float32 `cutmix_box1/2` (0 / 1).
    """
    settings = settings or StrongAugSettings()
    if mask is None:
        mask = np.zeros(img.shape[:2], dtype=np.uint8)
    img, mask = _weak(img, mask, crop_size, UNLABELED_PAD, rng, scale_range, flip_p)
    img_s1, box1 = strong_view(img, settings, rng)
    img_s2, box2 = strong_view(img, settings, rng)
    ignore_mask = np.where(mask == UNLABELED_PAD, IGNORE, 0).astype(np.uint8)
    return {
        "img_w": img,
        "img_s1": img_s1,
        "img_s2": img_s2,
        "ignore_mask": ignore_mask,
        "cutmix_box1": box1,
        "cutmix_box2": box2,
    }


def repeat_to_length(ids: Sequence[str], n: int) -> list[str]:
    """The labeled list repeated to the unlabeled length (`semi.py:25-27`), then cut to n."""
    if not ids:
        raise DataError("UniMatch: the labeled id list is empty")
    return (list(ids) * math.ceil(n / len(ids)))[:n]


def mixing_partner(index: int, num_unlabeled: int, mode: str, py_random: random.Random) -> int:
    """Index of the unlabeled sample whose views are pasted into `index`'s CutMix boxes.

    "same" (official): `zip(loader_u, loader_u)` iterates one loader twice with the same
    sampler permutation, so the partner is the same image with independent augmentation
    (UniMatch issues #51, #85: unintended, reported to perform about the same). "different"
    (opt-in): a uniformly drawn other index (one `py_random.randrange` call).
    """
    if mode == "same":
        return index
    if mode == "different":
        if num_unlabeled < 2:
            raise CpclError("mixing_partner mode='different' needs at least 2 unlabeled images")
        return (index + 1 + py_random.randrange(num_unlabeled - 1)) % num_unlabeled
    raise CpclError(f"mixing_partner mode={mode!r}: expected 'same' (official) or 'different'")


def unimatch_normalize_lut(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """(256, 3) float32 table of UniMatch's `ToTensor()` + `Normalize(mean, std)` per uint8 value.

    torchvision computes everything in float32 (`x.float().div(255)`, then `sub_(mean)` and
    `div_(std)` with float32 tensors). CPCL's `transforms.normalize_lut` subtracts and divides
    in float64 and rounds at the end, which differs by one float32 ulp for about 500 of the
    768 entries, so UniMatch gets its own table.
    """
    mean32 = np.asarray(mean, dtype=np.float32).reshape(1, -1)
    std32 = np.asarray(std, dtype=np.float32).reshape(1, -1)
    if mean32.shape != (1, 3) or std32.shape != (1, 3) or np.any(std32 <= 0):
        raise DataError(
            f"UniMatch normalisation mean={tuple(mean)!r}, std={tuple(std)!r}: expected 3 "
            f"values each and a positive std"
        )
    x = np.arange(256, dtype=np.float32)[:, None] / np.float32(255)
    return (x - mean32) / std32


MIX_PARTNERS = ("same", "different")
# The unlabeled keys of a batch, as named in the official loop (`unimatch.py:123-127`).
UNLABELED_KEYS = (
    "img_u_w",
    "img_u_s1",
    "img_u_s2",
    "ignore_mask",
    "cutmix_box1",
    "cutmix_box2",
    "img_u_w_mix",
    "img_u_s1_mix",
    "img_u_s2_mix",
    "ignore_mask_mix",
)


def aug_rng(gen: np.random.Generator) -> AugRng:
    """An `AugRng` seeded from one per-sample generator of the loader (`rng(k)`).

    The three seeds depend only on (seed, rank, epoch, iteration, slot, k), never on the worker
    that builds the sample (the official code uses each worker's global generators instead).
    """
    py_seed, np_seed, torch_seed = (int(s) for s in gen.integers(0, 2**32, size=3))
    return AugRng(
        random.Random(py_seed),
        np.random.RandomState(np_seed),
        torch.Generator().manual_seed(torch_seed),
    )


@dataclass(frozen=True)
class UniMatchViewSettings:
    """What the UniMatch view needs: square crop, resize range, normalisation, partner mode."""

    crop_size: int
    scale_range: tuple[float, float] = (0.5, 2.0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    partner: str = "same"
    strong: StrongAugSettings = field(default_factory=StrongAugSettings)

    def __post_init__(self) -> None:
        if self.partner not in MIX_PARTNERS:
            raise CpclError(
                f"UniMatch mixing partner {self.partner!r}: expected one of {MIX_PARTNERS}"
            )
        if int(self.crop_size) < 1:
            raise CpclError(f"UniMatch crop_size={self.crop_size!r}: expected a positive int")


def _chw(img: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """CHW float32 of a uint8 HxWx3 crop through the (256, 1, 3) normalisation table."""
    return np.ascontiguousarray(cv2.LUT(np.ascontiguousarray(img), lut).transpose(2, 0, 1))


class UniMatchView(DataView):
    """One UniMatch batch slot: the labeled weak view, the unlabeled sample and its partner.

    Keys: `img` (3,S,S) float32 and `gt` (S,S) int64 (labeled, 255 = ignore: `img_x`,
    `mask_x` of the official loop); `img_u_w`, `img_u_s1`, `img_u_s2` (3,S,S) float32,
    `ignore_mask` (S,S) int64 (255 on the crop padding), `cutmix_box1/2` (S,S) float32; the
    same four image/mask keys with the suffix `_mix` for the mixing partner (its boxes are
    drawn, as in the official loader, and dropped).

    Partner (`settings.partner`): "same" (official) reads the unlabeled image of the slot a
    second time with independent augmentation (`zip(loader_u, loader_u)` iterates one
    sampler permutation twice), so the view has two streams; "different" (opt-in) reads a
    third stream, an independent permutation of the unlabeled list (the partner is then
    another image, except by chance, 1 / n_unlabeled).

    Randomness: labeled view from `rng(0)`, unlabeled from `rng(1)`, partner from `rng(2)`,
    each through `aug_rng` in the official draw order (see the module docstring).
    """

    keys = ("img", "gt", *UNLABELED_KEYS)

    def __init__(self, settings: UniMatchViewSettings) -> None:
        self.settings = settings
        same = settings.partner == "same"
        self.streams = ("labeled", "unlabeled") if same else ("labeled", "unlabeled", "unlabeled")
        self.lut = unimatch_normalize_lut(settings.mean, settings.std).reshape(256, 1, 3)

    def _unlabeled(self, loaded: Loaded, gen: np.random.Generator) -> dict[str, np.ndarray]:
        s = self.settings
        return unlabeled_views(loaded[0], None, s.crop_size, aug_rng(gen), s.strong, s.scale_range)

    def sample(self, loaded: Sequence[Loaded], rng: RngFor) -> dict[str, np.ndarray]:
        """The arrays of one slot from (labeled, unlabeled[, partner]) decoded images."""
        s = self.settings
        img_x, mask_x = labeled_view(
            *labeled_pair(loaded[0]), s.crop_size, aug_rng(rng(0)), s.scale_range
        )
        u = self._unlabeled(loaded[1], rng(1))
        mix = self._unlabeled(loaded[1 if s.partner == "same" else 2], rng(2))
        out = {"img": _chw(img_x, self.lut), "gt": mask_x.astype(np.int64)}
        for suffix, views in (("", u), ("_mix", mix)):
            out[f"img_u_w{suffix}"] = _chw(views["img_w"], self.lut)
            out[f"img_u_s1{suffix}"] = _chw(views["img_s1"], self.lut)
            out[f"img_u_s2{suffix}"] = _chw(views["img_s2"], self.lut)
            out[f"ignore_mask{suffix}"] = views["ignore_mask"].astype(np.int64)
        out["cutmix_box1"], out["cutmix_box2"] = u["cutmix_box1"], u["cutmix_box2"]
        return out
