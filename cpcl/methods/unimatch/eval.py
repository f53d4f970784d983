"""UniMatch's own evaluation protocol (`unimatch.py:222`, `evaluate` in `supervised.py`).

* `original` (Pascal): one forward on the whole (normalised) image, argmax.
* `sliding_window` (Cityscapes): windows of `grid = crop_size` starting at every multiple of
  `int(grid * 2 / 3)` below the image size, **clipped at the border** (the last windows are
  smaller; nothing is padded); the softmax of each window is summed into the full map, then
  argmax. The official loop allocates 19 channels; here the class count comes from the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ...errors import CpclError
from ...evaluate.dataset import evaluate_images, lut_normalise
from .views import unimatch_normalize_lut

__all__ = ["EVAL_MODES", "evaluate_unimatch", "sliding_window_starts", "unimatch_predict"]

EVAL_MODES = ("original", "sliding_window")


def sliding_window_starts(length: int, grid: int) -> list[int]:
    """Window starts along one axis: 0, s, 2s, ... < length with `s = int(grid * 2 / 3)`."""
    step = int(grid * 2 / 3)
    if step < 1:
        raise CpclError(f"sliding window grid={grid!r}: expected a crop size >= 2")
    return list(range(0, length, step))


@torch.no_grad()
def unimatch_predict(
    model: Callable[[Tensor], Tensor], img: Tensor, mode: str, crop_size: int | None = None
) -> Tensor:
    """Predicted labels (B,H,W) of normalised images `img` (B,3,H,W) under UniMatch's protocol."""
    if mode == "original":
        return model(img).argmax(dim=1)
    if mode != "sliding_window":
        raise CpclError(f"UniMatch eval mode={mode!r}: expected one of {EVAL_MODES}")
    if crop_size is None:
        raise CpclError("UniMatch eval mode='sliding_window' needs crop_size (the grid)")
    h, w = img.shape[-2:]
    final = None
    for row in sliding_window_starts(h, crop_size):
        for col in sliding_window_starts(w, crop_size):
            rows, cols = slice(row, min(h, row + crop_size)), slice(col, min(w, col + crop_size))
            prob = model(img[:, :, rows, cols]).softmax(dim=1)
            if final is None:
                final = img.new_zeros(img.shape[0], prob.shape[1], h, w, dtype=prob.dtype)
            final[:, :, rows, cols] += prob
    return final.argmax(dim=1)


def evaluate_unimatch(
    net: Callable[[Tensor], Tensor],
    dataset: Any,
    *,
    num_classes: int,
    mode: str,
    crop_size: int | None = None,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    device: torch.device | str = "cpu",
    exports: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """mIoU of `net` on `dataset` (`load(i) -> (uint8 RGB, label, name)`) with UniMatch's protocol.

    One image at a time, normalised as UniMatch (`unimatch_normalize_lut`), predicted with
    `unimatch_predict(net, img, mode, crop_size)`; returns `cpcl.metrics.scores_all_classes` of
    the summed confusion matrix (label 255 not counted): the official `mIOU`, the mean over ALL
    classes of intersection / (union + 1e-10), so a class absent from both prediction and
    ground truth counts 0. Plus ``hist`` and ``num_images``; `exports` (a
    `cpcl.evaluate.Exports`) writes each prediction. `net` should be in eval mode.
    """

    if mode not in EVAL_MODES:
        raise CpclError(f"UniMatch eval mode={mode!r}: expected one of {EVAL_MODES}")
    lut = torch.from_numpy(unimatch_normalize_lut(mean, std)).to(device)

    def predict(img: Any, label: Any) -> tuple[Tensor, Any]:
        x = lut_normalise(img, lut)
        return unimatch_predict(net, x, mode, crop_size)[0], label

    return evaluate_images(dataset, predict, num_classes, exports=exports, progress=progress)
