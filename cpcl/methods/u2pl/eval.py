"""U2PL's own evaluation protocol (`Haochen-Wang409/U2PL`, files cited as `file:line`).

`net` is the method's `eval_net`: ``x -> model(x)["pred"]`` upsampled to the input size
(bilinear, align_corners=True), which is the official `net_process` (`eval.py:159-165`) and
the upsampling of `validate` (`train_semi.py:622-625`).

* `whole` (VOC; `validate` in `train_semi.py:595-654`, the number U2PL reports on VOC): the
  val transform (`pascal_voc.py:48-70` with the val `crop` of the config) normalises the image
  in float32, pads it centred to at least `crop_size` with 0 (after normalisation) and takes
  the centre crop; the LABEL is padded with 0 = background, not 255 (`augmentation.py:241-256`,
  ``##!!!!!!change to 0``), so padded pixels count as background. One forward, argmax.
* `sliding` (Cityscapes; `validate_city` in `eval.py:235-310`, run by `eval.sh` with
  `--base_size 2048 --scales 1.0`): per scale the image (normalised in float64, then float32)
  is resized to long side ``round(scale * base_size)`` (bilinear, align_corners=True), padded
  centred with 0 to at least the crop, cut into `crop_size` windows with stride
  ``ceil(crop * 2/3)`` (the last one moved back to end at the border), the window LOGITS (no
  softmax) summed and divided by the per-pixel window count, unpadded, resized back to the
  image (align_corners=True) and summed over scales; argmax (`eval.py:184-223, 269-283`).

Both accumulate `intersectionAndUnion` counts (`utils.py:568-580`; label 255 ignored) and
reduce ``mean(I / (U + 1e-10))`` over all classes (`metrics.scores_all_classes`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import CpclError
from ...evaluate.dataset import evaluate_images, lut_normalise
from ...evaluate.predict import window_starts

__all__ = [
    "EVAL_MODES",
    "evaluate_u2pl",
    "u2pl_normalize_lut",
    "u2pl_sliding_logits",
    "u2pl_whole_predict",
]

EVAL_MODES = ("whole", "sliding")

Net = Callable[[Tensor], Tensor]


def u2pl_normalize_lut(
    mean: Sequence[float], std: Sequence[float], *, float64: bool
) -> torch.Tensor:
    """(256, 3) float32 table of U2PL's normalisation of each uint8 value and channel.

    `mean`, `std`: the project's 0-1 values (U2PL's configs hold them times 255: 123.675 =
    0.485 x 255). ``float64=False``: the train/val loader (`augmentation.py:50-111`: float32
    ``(x - mean) / std``); True: `eval.py:264` (the float32 image minus Python lists promotes to
    float64; `torch.Tensor` rounds to float32).
    """
    m = np.asarray(mean, dtype=np.float64).reshape(1, 3) * 255.0
    s = np.asarray(std, dtype=np.float64).reshape(1, 3) * 255.0
    x = np.arange(256, dtype=np.float64)[:, None]
    if float64:
        return torch.from_numpy(((x - m) / s).astype(np.float32))
    x32, m32, s32 = x.astype(np.float32), m.astype(np.float32), s.astype(np.float32)
    return torch.from_numpy((x32 - m32) / s32)


def _pad_centred(x: Tensor, crop: tuple[int, int], value: float) -> tuple[Tensor, int, int]:
    """`x` (..., H, W) padded with `value` to at least `crop`, the extra split as the official
    ``int(pad / 2)`` before and the rest after (`augmentation.py:249-256`, `eval.py:186-192`);
    plus the top and left pad."""
    h, w = x.shape[-2:]
    pad_h, pad_w = max(crop[0] - h, 0), max(crop[1] - w, 0)
    top, left = pad_h // 2, pad_w // 2
    if pad_h or pad_w:
        x = F.pad(x, (left, pad_w - left, top, pad_h - top), mode="constant", value=value)
    return x, top, left


@torch.no_grad()
def u2pl_whole_predict(
    net: Net, img: Tensor, label: Tensor, crop_size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """`validate` on one normalised image (1,3,H,W) and its label (H,W): (pred, label) of the
    centre `crop_size` crop after padding the image with 0 and the label with 0."""
    img, _, _ = _pad_centred(img, crop_size, 0.0)
    label, _, _ = _pad_centred(label, crop_size, 0)
    h, w = img.shape[-2:]
    top, left = (h - crop_size[0]) // 2, (w - crop_size[1]) // 2
    rows, cols = slice(top, top + crop_size[0]), slice(left, left + crop_size[1])
    return net(img[:, :, rows, cols]).argmax(dim=1)[0], label[rows, cols]


def _scale_crop(
    net: Net, image: Tensor, crop: tuple[int, int], stride_rate: float, size: tuple[int, int]
) -> Tensor:
    """`scale_crop_process` (`eval.py:184-223`): (C, *size) averaged window logits."""

    ori_h, ori_w = image.shape[-2:]
    image, top, left = _pad_centred(image, crop, 0.0)
    new_h, new_w = image.shape[-2:]
    ys = window_starts(new_h, crop[0], math.ceil(crop[0] * stride_rate))
    xs = window_starts(new_w, crop[1], math.ceil(crop[1] * stride_rate))
    total = count = None
    for y in ys:
        for x in xs:
            logits = net(image[:, :, y : y + crop[0], x : x + crop[1]])
            if total is None:
                total = logits.new_zeros(1, logits.shape[1], new_h, new_w)
                count = logits.new_zeros(new_h, new_w)
            total[:, :, y : y + crop[0], x : x + crop[1]] += logits
            count[y : y + crop[0], x : x + crop[1]] += 1
    total = (total / count)[:, :, top : top + ori_h, left : left + ori_w]
    return F.interpolate(total, size=size, mode="bilinear", align_corners=True)[0]


@torch.no_grad()
def u2pl_sliding_logits(
    net: Net,
    img: Tensor,
    crop_size: tuple[int, int],
    *,
    stride_rate: float = 2 / 3,
    scales: Sequence[float] = (1.0,),
    base_size: int | None = None,
) -> Tensor:
    """`validate_city`'s summed score map (C,H,W) of one normalised image (1,3,H,W).

    `base_size`: the long side at scale 1 (official `--base_size 2048`, the Cityscapes width);
    None: the image's own long side.
    """
    h, w = img.shape[-2:]
    long_side = max(h, w) if base_size is None else base_size
    out = None
    for scale in scales:
        new_long = round(scale * long_side)  # Python's round, as `eval.py:270-276`
        new_h = new_w = new_long
        if h > w:
            new_w = round(new_long / float(h) * w)
        else:
            new_h = round(new_long / float(w) * h)
        scaled = F.interpolate(img, size=(new_h, new_w), mode="bilinear", align_corners=True)
        pred = _scale_crop(net, scaled, crop_size, stride_rate, (h, w))
        out = pred if out is None else out + pred
    return out


def evaluate_u2pl(
    net: Net,
    dataset: Any,
    *,
    num_classes: int,
    mode: str,
    crop_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    stride_rate: float = 2 / 3,
    scales: Sequence[float] = (1.0,),
    base_size: int | None = None,
    device: torch.device | str = "cpu",
    exports: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """mIoU of `net` (`eval_net`, in eval mode) on `dataset` (`load(i) -> (uint8 RGB, label,
    name)`) with U2PL's protocol `mode` (module docstring).

    Returns `metrics.scores_all_classes` of the summed confusion matrix plus ``hist`` and
    ``num_images``. `whole` scores the padded centre crop, not the image, so it cannot export
    predictions (CpclError with `exports`).
    """

    if mode not in EVAL_MODES:
        raise CpclError(f"U2PL eval mode={mode!r}: expected one of {', '.join(EVAL_MODES)}")
    if mode == "whole" and exports is not None:
        raise CpclError(
            "U2PL's official 'whole' validation predicts a padded centre crop, not the image: "
            "it writes no prediction PNGs; export with --eval_protocol=cpcl (or "
            "--u2pl_eval_mode=sliding)"
        )
    crop = (int(crop_size[0]), int(crop_size[1]))
    lut = u2pl_normalize_lut(mean, std, float64=mode == "sliding").to(device)

    def predict(img: np.ndarray, label: np.ndarray | None) -> tuple[Tensor, Any]:
        x = lut_normalise(img, lut)
        if mode == "sliding":
            logits = u2pl_sliding_logits(
                net, x, crop, stride_rate=stride_rate, scales=scales, base_size=base_size
            )
            return logits.argmax(dim=0), label
        if label is None:
            raise CpclError("U2PL 'whole' validation: an image has no label")
        return u2pl_whole_predict(
            net, x, torch.tensor(label, dtype=torch.long, device=device), crop
        )

    return evaluate_images(dataset, predict, num_classes, exports=exports, progress=progress)
