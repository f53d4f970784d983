"""UniMatch V2's per-sample views (`dataset/semi.py`, `dataset/transform.py` at f6afb4d).

They are UniMatch V1's blocks (`cpcl.methods.unimatch.views`: the same `resize` over (0.5, 2.0),
`crop` padding the image with 0 and the mask with 255 (labeled) or 254 (unlabeled), `hflip`,
two strong views with ColorJitter / grayscale / blur and a CutMix box each, the ignore mask
255 exactly on the 254 padding, `ToTensor` + ImageNet `Normalize`), with one difference: V2
has **no mixing partner**. Its CutMix pastes the batch flipped along dim 0 (`unimatch_v2.py:
175-190`), so a slot reads one labeled and one unlabeled image, nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from ...data.views import DataView, Loaded, RngFor, labeled_pair
from ...errors import CpclError
from ..unimatch.strong_aug import StrongAugSettings
from ..unimatch.views import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    aug_rng,
    labeled_view,
    unimatch_normalize_lut,
    unlabeled_views,
)

__all__ = ["BATCH_KEYS", "UniMatchV2View", "UniMatchV2ViewSettings"]

# The keys of one batch: the labeled pair is `img`, `gt` as in every view (`img_x`, `mask_x` of
# the official loop), the rest as named there (`unimatch_v2.py:163-164`).
BATCH_KEYS = (
    "img",
    "gt",
    "img_u_w",
    "img_u_s1",
    "img_u_s2",
    "ignore_mask",
    "cutmix_box1",
    "cutmix_box2",
)


@dataclass(frozen=True)
class UniMatchV2ViewSettings:
    """Square crop, resize range and normalisation of the view."""

    crop_size: int
    scale_range: tuple[float, float] = (0.5, 2.0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    strong: StrongAugSettings = field(default_factory=StrongAugSettings)

    def __post_init__(self) -> None:
        if int(self.crop_size) < 1:
            raise CpclError(f"UniMatch V2 crop_size={self.crop_size!r}: expected a positive int")


def _chw(img: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """CHW float32 of a uint8 HxWx3 crop through the (256, 1, 3) normalisation table."""
    return np.ascontiguousarray(cv2.LUT(np.ascontiguousarray(img), lut).transpose(2, 0, 1))


class UniMatchV2View(DataView):
    """One UniMatch V2 batch slot: the labeled weak view and the unlabeled views.

    Keys: `img` (3,S,S) float32, `gt` (S,S) int64 (255 = ignore); `img_u_w`, `img_u_s1`,
    `img_u_s2` (3,S,S) float32, `ignore_mask` (S,S) int64 (255 on the crop padding),
    `cutmix_box1/2` (S,S) float32 0/1. Randomness: labeled view from `rng(0)`, unlabeled from
    `rng(1)`, each through V1's `aug_rng` in the official draw order.
    """

    streams = ("labeled", "unlabeled")
    keys = BATCH_KEYS

    def __init__(self, settings: UniMatchV2ViewSettings) -> None:
        self.settings = settings
        self.lut = unimatch_normalize_lut(settings.mean, settings.std).reshape(256, 1, 3)

    def sample(self, loaded: Sequence[Loaded], rng: RngFor) -> dict[str, np.ndarray]:
        """The arrays of one slot from the (labeled, unlabeled) decoded images."""
        s = self.settings
        img_x, mask_x = labeled_view(
            *labeled_pair(loaded[0]), s.crop_size, aug_rng(rng(0)), s.scale_range
        )
        u = unlabeled_views(
            loaded[1][0], None, s.crop_size, aug_rng(rng(1)), s.strong, s.scale_range
        )
        return {
            "img": _chw(img_x, self.lut),
            "gt": mask_x.astype(np.int64),
            "img_u_w": _chw(u["img_w"], self.lut),
            "img_u_s1": _chw(u["img_s1"], self.lut),
            "img_u_s2": _chw(u["img_s2"], self.lut),
            "ignore_mask": u["ignore_mask"].astype(np.int64),
            "cutmix_box1": u["cutmix_box1"],
            "cutmix_box2": u["cutmix_box2"],
        }
