"""Training pre-processing with the official semantics (exp_voc/dataloader.py `TrainPre`,
furnace/utils/img_utils.py), randomness taken from an explicit `np.random.Generator`.

Order (image RGB uint8 HxWx3, label HxW uint8 or None):

1. mirror with p = 0.5 (official: flip when `random.random() >= 0.5`);
2. scale s drawn uniformly from the scale list; new size `(int(h*s), int(w*s))`, image
   `cv2.INTER_LINEAR`, label `cv2.INTER_NEAREST`;
3. normalise `(x/255 - mean)/std`;
4. crop position per axis: `randint(0, size - crop + 1)` INCLUSIVE when size > crop, else 0. The
   official bound is one past the last full crop (Python's `random.randint` includes both ends),
   so with probability 1/(size - crop + 2) the crop is one pixel short and the padding of step 5
   fills the last row/column. Kept for fidelity;
5. crop, then centred padding up to the crop size (top/left `pad//2`, the rest bottom/right),
   image with 0 (in normalised space), label with 255.

Output: image CHW float32, label HW int64.

`TrainTransform.geometric` does steps 1, 2, 4 and 5 on the uint8 image (where a method can
add photometric augmentation, see `cpcl.data.views`) and `TrainTransform.normalize` step 3.

Speed without changing a single value: normalisation is a per-channel function of a uint8, so it
is a 3x256 lookup table computed once with the official float32/float64 arithmetic; and since it
is pixel-wise it is applied only to the cropped window (not the whole rescaled image), written
straight into the zero-padded CHW output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import DataError

IGNORE_LABEL = 255


def normalize_lut(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A (256, 3) float32 table: entry [v, c] is the official normalisation of value v, channel c.

    Official arithmetic: `x.astype(float32) / 255.0` stays float32; subtracting the float64 mean
    array and dividing by the float64 std promotes to float64; the tensor conversion then rounds
    to float32.
    """
    mean64 = np.asarray(mean, dtype=np.float64).reshape(1, -1)
    std64 = np.asarray(std, dtype=np.float64).reshape(1, -1)
    if mean64.shape != (1, 3) or std64.shape != (1, 3):
        raise DataError(
            f"image_mean={tuple(mean)!r}, image_std={tuple(std)!r}: expected 3 values each"
        )
    if np.any(std64 <= 0):
        raise DataError(f"image_std={tuple(std)!r}: expected positive values")
    x = np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0)
    return ((x.astype(np.float64) - mean64) / std64).astype(np.float32)


def normalize(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """`(img/255 - mean)/std` on an HxWx3 uint8 RGB image, float32 HxWx3 (official values)."""
    _check_image(img)
    lut = normalize_lut(mean, std)
    return cv2.LUT(img, lut.reshape(256, 1, 3))


def random_mirror(
    img: np.ndarray, label: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """Flip image and label left-right together with probability 0.5."""
    if rng.random() >= 0.5:
        img = cv2.flip(img, 1)
        if label is not None:
            label = cv2.flip(label, 1)
    return img, label


def random_scale(
    img: np.ndarray,
    label: np.ndarray | None,
    scales: Sequence[float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Resize by a scale drawn uniformly from `scales`; returns (img, label, scale).

    New size `(int(h*s), int(w*s))`; bilinear for the image, nearest for the label.
    """
    if len(scales) == 0:
        raise DataError("train_scale_array is empty: expected at least one scale such as (1.0,)")
    s = float(scales[int(rng.integers(len(scales)))])
    h, w = img.shape[:2]
    sh, sw = int(h * s), int(w * s)
    if sh < 1 or sw < 1:
        raise DataError(f"scale {s} turns a {h}x{w} image into {sh}x{sw}: expected >= 1x1")
    img = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_LINEAR)
    if label is not None:
        label = cv2.resize(label, (sw, sh), interpolation=cv2.INTER_NEAREST)
    return img, label, s


def random_crop_pos(
    size: Sequence[int], crop: Sequence[int], rng: np.random.Generator
) -> tuple[int, int]:
    """Official crop corner: per axis uniform in [0, size - crop + 1] (inclusive) if size > crop."""
    pos = [0, 0]
    for ax in (0, 1):
        if size[ax] > crop[ax]:
            pos[ax] = int(rng.integers(0, size[ax] - crop[ax] + 2))  # +2: inclusive upper bound
    return pos[0], pos[1]


def _pad_margins(got: int, want: int) -> tuple[int, int]:
    pad = max(want - got, 0)
    return pad // 2, pad - pad // 2


def crop_pad(
    arr: np.ndarray, pos: Sequence[int], crop: Sequence[int], pad_value: float
) -> np.ndarray:
    """Cut `crop` (h, w) at `pos` (top, left), then pad centred to exactly `crop` with `pad_value`.

    Works on HxW and HxWxC arrays; the top/left margin is `pad//2`, the rest goes bottom/right.
    """
    ch, cw = int(crop[0]), int(crop[1])
    y, x = int(pos[0]), int(pos[1])
    if not (0 <= y < arr.shape[0] and 0 <= x < arr.shape[1]):
        raise DataError(f"crop position {(y, x)} outside an array of shape {arr.shape[:2]}")
    win = arr[y : y + ch, x : x + cw]
    top, _ = _pad_margins(win.shape[0], ch)
    left, _ = _pad_margins(win.shape[1], cw)
    out = np.full((ch, cw, *arr.shape[2:]), pad_value, dtype=arr.dtype)
    out[top : top + win.shape[0], left : left + win.shape[1]] = win
    return out


def _check_image(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3:
        raise DataError(
            f"training image of type {type(img).__name__}, dtype "
            f"{getattr(img, 'dtype', None)}, shape {getattr(img, 'shape', None)}: "
            "expected an HxWx3 uint8 RGB array"
        )
    if img.shape[2] != 3:
        raise DataError(f"training image of shape {img.shape}: expected 3 channels (HxWx3 RGB)")


@dataclass
class Crop:
    """A training crop before normalisation.

    img: (crop_h, crop_w, 3) uint8 RGB, 0 in the padding. label: (crop_h, crop_w) int64 with
    255 in the padding, or None. window: (top, left, height, width) of the real pixels.
    """

    img: np.ndarray
    label: np.ndarray | None
    window: tuple[int, int, int, int]


class TrainTransform:
    """The official training transform: mirror, rescale, normalise, crop, pad.

    `TrainTransform(mean, std, crop_size, scales)(img, label, rng=rng)` returns
    `(img CHW float32, label HW int64 or None)`. Random draws in the official order:
    mirror, scale, crop row, crop column. `scales=None` keeps the size (official
    `train_scale_array = None`).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        crop_size: int | Sequence[int],
        scales: Sequence[float] | None,
    ) -> None:
        self.lut = normalize_lut(mean, std).reshape(256, 1, 3)
        crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        if len(crop) != 2 or any(int(c) < 1 for c in crop):
            raise DataError(f"crop size {crop_size!r}: expected a positive int or (height, width)")
        self.crop = (int(crop[0]), int(crop[1]))
        self.scales = None if scales is None else tuple(float(s) for s in scales)
        if self.scales is not None and (not self.scales or min(self.scales) <= 0):
            raise DataError(f"train_scale_array = {scales!r}: expected positive scales")

    def geometric(
        self,
        img: np.ndarray,
        label: np.ndarray | None = None,
        *,
        rng: np.random.Generator,
    ) -> Crop:
        """Mirror, rescale, crop and pad, still uint8 (the stage for photometric augmentation).

        The image padding is 0 and `Crop.window` marks the real pixels; `normalize` then
        writes 0 (in normalised space) into the padding, as the official code does.
        """
        _check_image(img)
        # A BGR->RGB view (`img[..., ::-1]`) has negative strides, which cv2 cannot take.
        img = np.ascontiguousarray(img)
        if label is not None and label.shape != img.shape[:2]:
            raise DataError(
                f"label of shape {label.shape} for an image of shape {img.shape[:2]}: "
                "expected the same height and width"
            )
        img, label = random_mirror(img, label, rng)
        if self.scales is not None:
            img, label, _ = random_scale(img, label, self.scales, rng)
        ch, cw = self.crop
        y, x = random_crop_pos(img.shape[:2], self.crop, rng)
        win = img[y : y + ch, x : x + cw]
        top, _ = _pad_margins(win.shape[0], ch)
        left, _ = _pad_margins(win.shape[1], cw)
        out = np.zeros((ch, cw, 3), dtype=np.uint8)
        out[top : top + win.shape[0], left : left + win.shape[1]] = win
        out_label = None
        if label is not None:
            out_label = crop_pad(label, (y, x), self.crop, IGNORE_LABEL).astype(np.int64)
        return Crop(out, out_label, (top, left, win.shape[0], win.shape[1]))

    def normalize(self, crop: Crop) -> np.ndarray:
        """CHW float32: the official normalisation of the crop's real pixels, 0 in the padding.

        Normalising only the window is identical to normalising first and padding with 0 after
        (the official order) because the normalisation is pixel-wise.
        """
        top, left, h, w = crop.window
        ch, cw = crop.img.shape[:2]
        norm = cv2.LUT(np.ascontiguousarray(crop.img[top : top + h, left : left + w]), self.lut)
        out = np.zeros((3, ch, cw), dtype=np.float32)
        out[:, top : top + h, left : left + w] = norm.transpose(2, 0, 1)
        return out

    def __call__(
        self,
        img: np.ndarray,
        label: np.ndarray | None = None,
        *,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Transform one sample; `label` None for unlabeled images."""
        crop = self.geometric(img, label, rng=rng)
        return self.normalize(crop), crop.label
