"""UniMatch V2's own evaluation protocol (`supervised.py:36-102`, called by
`unimatch_v2.py:239-241` with `multiplier=14` for the model and for the EMA model).

* `original` (Pascal, ADE20K, COCO): each side is resized to the nearest multiple of 14,
  `int(h / 14 + 0.5) * 14` (`multiplier == 512` forces 512x512), bilinear with
  **align_corners=True**; the logits are resized back the same way to (h, w); argmax.
* `sliding_window` (Cityscapes): windows of `grid = crop_size` at rows/cols 0, s, 2s, ...
  (`s = int(grid * 2 / 3)`), the last one **clamped** to `h - grid` / `w - grid` (the loop
  stops after it); the softmax of each window is added into the full map; argmax. For an
  image smaller than the grid the clamp is negative and Python slicing reads `[h-grid:]`,
  i.e. the last `grid-h` rows get a second softmax from a smaller crop: kept (it changes the
  official number). The official map has **19 channels hard-coded** (`:50`), so it runs only
  for 19-class models; here it has the model's channel count: identical for 19 classes, and
  defined where the official loop would fail to broadcast.
* Scores: per-class intersection and union summed over the dataset with 255 not counted
  (`util/utils.py:44-56`); `iou_class = I / (U + 1e-10) * 100` and the mIoU its mean over
  **all** classes, absent ones as 0 (`cpcl.metrics.scores_all_classes`, as UniMatch V1).
* Both networks each epoch, best tracking (`unimatch_v2.py:239-277`): `BestTracker`, and
  `evaluate_student_and_teacher` for a training loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import CpclError
from ...evaluate.dataset import evaluate_images, lut_normalise
from ..unimatch.views import IMAGENET_MEAN, IMAGENET_STD, unimatch_normalize_lut

__all__ = [
    "EVAL_MODES",
    "OFFICIAL_MULTIPLIER",
    "BestTracker",
    "Multiple14",
    "evaluate_student_and_teacher",
    "evaluate_unimatch_v2",
    "multiple_of",
    "sliding_windows",
    "unimatch_v2_logits",
]

EVAL_MODES = ("original", "sliding_window")
OFFICIAL_MULTIPLIER = 14  # `unimatch_v2.py:240-241`: the ViT patch size


def multiple_of(h: int, w: int, multiplier: int) -> tuple[int, int]:
    """The size `original` mode runs the network at (`supervised.py:72-75`)."""
    if multiplier == 512:
        return 512, 512
    if multiplier < 1:
        raise CpclError(f"UniMatch V2 eval multiplier={multiplier!r}: expected a positive int")
    return int(h / multiplier + 0.5) * multiplier, int(w / multiplier + 0.5) * multiplier


def _starts(length: int, grid: int) -> list[int]:
    """The official `while` loop along one axis (`supervised.py:52-63`)."""
    step = int(grid * 2 / 3)
    if step < 1:
        raise CpclError(f"UniMatch V2 sliding window grid={grid!r}: expected a crop size >= 2")
    out, pos = [], 0
    while pos < length:
        out.append(pos)
        if pos == length - grid:
            break
        pos = min(pos + step, length - grid)
    return out


def sliding_windows(h: int, w: int, grid: int) -> list[tuple[int, int]]:
    """[row, col] of every window in the official order (negative starts for small images)."""
    cols = _starts(w, grid)
    return [(row, col) for row in _starts(h, grid) for col in cols]


class Multiple14(torch.nn.Module):
    """`net` on any input size: an input whose sides are not multiples of 14 is resized to
    the nearest multiples (`multiple_of`, bilinear, align_corners=True) and the logits are
    resized back, i.e. the official `original` step; sides that are multiples run as they are.

    The official network asserts multiples of 14; this lets the project's evaluator (sliding
    windows of any size) and `eval.py` run on it. Under the official protocol the inputs are
    already multiples of 14 and nothing changes.
    """

    def __init__(self, net: torch.nn.Module, multiplier: int = OFFICIAL_MULTIPLIER) -> None:
        super().__init__()
        self.net, self.multiplier = net, multiplier

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B,C,H,W) at the input size."""
        h, w = x.shape[-2:]
        size = multiple_of(h, w, self.multiplier)
        if size == (h, w):
            return self.net(x)
        out = self.net(F.interpolate(x, size, mode="bilinear", align_corners=True))
        return F.interpolate(out, (h, w), mode="bilinear", align_corners=True)


@torch.no_grad()
def unimatch_v2_logits(
    model: Callable[[Tensor], Tensor],
    img: Tensor,
    mode: str,
    *,
    crop_size: int | None = None,
    multiplier: int | None = OFFICIAL_MULTIPLIER,
) -> Tensor:
    """The map the official `evaluate` takes the argmax of: (B,C,h,w) logits resized back
    (`original`) or the sum of window softmaxes (`sliding_window`), for normalised `img`."""
    if mode == "original":
        if multiplier is None:
            return model(img)
        h, w = img.shape[-2:]
        x = F.interpolate(img, multiple_of(h, w, multiplier), mode="bilinear", align_corners=True)
        return F.interpolate(model(x), (h, w), mode="bilinear", align_corners=True)
    if mode != "sliding_window":
        raise CpclError(f"UniMatch V2 eval mode={mode!r}: expected one of {EVAL_MODES}")
    if crop_size is None:
        raise CpclError("UniMatch V2 eval mode='sliding_window' needs crop_size (the grid)")
    grid = int(crop_size)
    h, w = img.shape[-2:]
    final = None
    for row, col in sliding_windows(h, w, grid):
        # Python slice semantics on purpose: a negative start reads the last rows (see above).
        prob = model(img[:, :, row : row + grid, col : col + grid]).softmax(dim=1)
        if final is None:
            final = img.new_zeros(img.shape[0], prob.shape[1], h, w, dtype=prob.dtype)
        final[:, :, row : row + grid, col : col + grid] += prob
    return final


def evaluate_unimatch_v2(
    net: Callable[[Tensor], Tensor],
    dataset: Any,
    *,
    num_classes: int,
    mode: str,
    crop_size: int | None = None,
    multiplier: int | None = OFFICIAL_MULTIPLIER,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str = "cpu",
    exports: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """mIoU of `net` on `dataset` (`load(i) -> (uint8 RGB, label, name)`) with UniMatch V2's
    protocol: one whole image at a time, normalised as the official `normalize`
    (`ToTensor` + `Normalize`, V1's table), `unimatch_v2_logits(...).argmax(1)`.

    Returns `cpcl.metrics.scores_all_classes` of the summed confusion matrix (``miou`` is a
    fraction; the official log prints 100x) plus ``hist`` and ``num_images``. `net` should be
    in eval mode (the official `evaluate` calls `model.eval()`).
    """
    if mode not in EVAL_MODES:
        raise CpclError(f"UniMatch V2 eval mode={mode!r}: expected one of {EVAL_MODES}")
    lut = torch.from_numpy(unimatch_normalize_lut(mean, std)).to(device)

    def predict(img: Any, label: Any) -> tuple[Tensor, Any]:
        x = lut_normalise(img, lut)
        logits = unimatch_v2_logits(net, x, mode, crop_size=crop_size, multiplier=multiplier)
        return logits.argmax(dim=1)[0], label

    return evaluate_images(dataset, predict, num_classes, exports=exports, progress=progress)


@dataclass
class BestTracker:
    """The official best-epoch bookkeeping of model and EMA model (`unimatch_v2.py:255-262`).

    `previous_best` starts at 0.0 and `best_epoch` at 0; `is_best` (which writes `best.pth`
    officially) follows the **student's** mIoU with `>=`.
    """

    previous_best: float = 0.0
    previous_best_ema: float = 0.0
    best_epoch: int = 0
    best_epoch_ema: int = 0

    def update(self, epoch: int, miou: float, miou_ema: float) -> bool:
        """Record one epoch's two mIoUs; True when the student's is the best so far."""
        is_best = miou >= self.previous_best
        self.previous_best = max(miou, self.previous_best)
        self.previous_best_ema = max(miou_ema, self.previous_best_ema)
        if miou == self.previous_best:
            self.best_epoch = epoch
        if miou_ema == self.previous_best_ema:
            self.best_epoch_ema = epoch
        return is_best

    def state_dict(self) -> dict[str, Any]:
        """The four official checkpoint entries."""
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()`; other keys are a CpclError."""
        if set(state) != set(asdict(self)):
            raise CpclError(
                f"UniMatch V2 best tracking: state has keys {sorted(state)}; expected "
                f"{sorted(asdict(self))}"
            )
        for key, value in state.items():
            setattr(self, key, value)


def evaluate_student_and_teacher(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    dataset: Any,
    tracker: BestTracker,
    epoch: int,
    **settings: Any,
) -> dict[str, Any]:
    """The official end of an epoch: `evaluate(model)`, then `evaluate(model_ema)` (both
    switched to eval mode, as officially; the student's train mode is restored afterwards,
    the loop sets it at the start of each epoch), then the best tracking.

    `settings` are `evaluate_unimatch_v2`'s keywords. Returns ``miou``, ``miou_ema`` (fractions),
    ``is_best``, both full results (``model``, ``ema``) and the tracker's state.
    """
    was_training = student.training
    results = {}
    for name, net in (("model", student), ("ema", teacher)):
        net.eval()
        results[name] = evaluate_unimatch_v2(net, dataset, **settings)
    student.train(was_training)
    miou, miou_ema = results["model"]["miou"], results["ema"]["miou"]
    # Official values are percentages; the order of ties is the same in either unit.
    is_best = tracker.update(epoch, miou, miou_ema)
    return {
        "miou": miou,
        "miou_ema": miou_ema,
        "is_best": is_best,
        **results,
        "best": tracker.state_dict(),
    }
