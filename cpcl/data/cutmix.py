"""CutMix box masks with the semantics of the official `BoxMaskGenerator` (exp_voc/mask_gen.py).

A mask is (N, 1, H, W); value 1 marks pixels taken from the second unlabeled image (u1), value 0
pixels kept from u0 (`mixed = u0 * (1 - m) + u1 * m`, exp_voc/train.py).

Official semantics, with the CPCL settings (prop_range (0.25, 0.5), 3 boxes, random aspect ratio,
proportion by area, boxes inside the image, inverted so the mask starts at 0):

* per box an area proportion p ~ U(prop_range); height fraction exp(u * log p) with u ~ U(0, 1),
  width fraction p / height fraction; both fractions times sqrt(1 / n_boxes);
* box size = np.round(fraction * (H, W)); box corner = np.round((shape - size) * U(0, 1));
* every box TOGGLES its region (m = 1 - m), so where two boxes overlap the mask flips back.

Two implementations:

* `generate_params`: numpy, draws in the official order from the given `RandomState`, so that with
  the same seed it returns exactly the official masks (checked against the golden fixtures);
* `box_masks`: torch, same distribution, parameters drawn in one vectorised pass from a torch
  generator, for the loader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import CpclError


@dataclass(frozen=True)
class BoxMaskSettings:
    """The official `BoxMaskGenerator` options (defaults: the CPCL config values)."""

    prop_range: tuple[float, float] = (0.25, 0.5)
    n_boxes: int = 3
    random_aspect_ratio: bool = True
    prop_by_area: bool = True
    within_bounds: bool = True
    invert: bool = True

    def __post_init__(self) -> None:
        lo, hi = self.prop_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise CpclError(
                f"C.cutmix_mask_prop_range = {self.prop_range!r}: expected (low, high) "
                "with 0 <= low <= high <= 1"
            )
        if not isinstance(self.n_boxes, int) or self.n_boxes < 1:
            raise CpclError(
                f"C.cutmix_boxmask_n_boxes = {self.n_boxes!r}: expected a positive integer"
            )

    @classmethod
    def from_config(cls, C: Any) -> BoxMaskSettings:
        """Read the `cutmix_*` keys of a config, mapped as official train.py does (negated flags)."""
        pr = C.cutmix_mask_prop_range
        # The official generator accepts a bare float meaning (p, p).
        prop_range = (float(pr), float(pr)) if isinstance(pr, (int, float)) else tuple(pr)
        if len(prop_range) != 2:
            raise CpclError(f"C.cutmix_mask_prop_range = {pr!r}: expected two numbers (low, high)")
        return cls(
            prop_range=(float(prop_range[0]), float(prop_range[1])),
            n_boxes=C.cutmix_boxmask_n_boxes,
            random_aspect_ratio=not C.cutmix_boxmask_fixed_aspect_ratio,
            prop_by_area=not C.cutmix_boxmask_by_size,
            within_bounds=not C.cutmix_boxmask_outside_bounds,
            invert=not C.cutmix_boxmask_no_invert,
        )


def _box_fractions_np(
    n: int, s: BoxMaskSettings, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """(n, n_boxes) height and width fractions, drawing from `rng` in the official order."""
    lo, hi = s.prop_range
    fac = np.sqrt(1.0 / s.n_boxes)
    shape = (n, s.n_boxes)
    if s.prop_by_area:
        props = rng.uniform(lo, hi, size=shape)
        zero = props == 0.0
        if s.random_aspect_ratio:
            # log(0) would give NaN heights; those boxes are zeroed below, as official.
            with np.errstate(divide="ignore", invalid="ignore"):
                fy = np.exp(rng.uniform(0.0, 1.0, size=shape) * np.log(props))
                fx = props / fy
            fy = fy * fac
            fx = fx * fac
        else:
            # Official quirk: height and width alias ONE array that is scaled in place twice,
            # so a fixed aspect ratio ends up scaled by fac**2 = 1/n_boxes. Kept for fidelity.
            fy = np.sqrt(props) * fac * fac
            fx = fy.copy()
        fy[zero] = 0.0
        fx[zero] = 0.0
    else:
        if s.random_aspect_ratio:
            fy = rng.uniform(lo, hi, size=shape) * fac
            fx = rng.uniform(lo, hi, size=shape) * fac
        else:
            # Same in-place aliasing quirk as above: scaled by fac twice.
            fy = rng.uniform(lo, hi, size=shape) * fac * fac
            fx = fy.copy()
    return fy, fx


def generate_params(
    n: int,
    shape: Sequence[int],
    rng: np.random.RandomState | None = None,
    settings: BoxMaskSettings | None = None,
) -> np.ndarray:
    """Official-equivalent box masks as a float64 (n, 1, H, W) array.

    Draws from `rng` (a `np.random.RandomState`; default: a fresh unseeded one) in exactly the
    order of the official `BoxMaskGenerator.generate_params`, so the same seed gives the same
    masks. `settings` defaults to the CPCL configuration.
    """
    s = settings or BoxMaskSettings()
    rng = rng if rng is not None else np.random.RandomState()
    hw = np.array([int(shape[0]), int(shape[1])])
    fy, fx = _box_fractions_np(n, s, rng)
    sizes = np.round(np.stack([fy, fx], axis=2) * hw[None, None, :])
    if s.within_bounds:
        starts = np.round((hw - sizes) * rng.uniform(0.0, 1.0, size=sizes.shape))
        ends = starts + sizes
    else:
        centres = np.round(hw * rng.uniform(0.0, 1.0, size=sizes.shape))
        starts = centres - sizes * 0.5
        ends = centres + sizes * 0.5
    masks = np.full((n, 1, hw[0], hw[1]), 0.0 if s.invert else 1.0)
    for i in range(n):
        for b in range(s.n_boxes):
            # int() truncates toward zero and Python slicing clamps (or wraps for negative
            # starts when boxes may leave the image), exactly as the official slicing does.
            ys = slice(int(starts[i, b, 0]), int(ends[i, b, 0]))
            xs = slice(int(starts[i, b, 1]), int(ends[i, b, 1]))
            masks[i, 0, ys, xs] = 1.0 - masks[i, 0, ys, xs]
    return masks


def _slice_bounds(start: torch.Tensor, end: torch.Tensor, length: int) -> tuple[torch.Tensor, ...]:
    """Python slice semantics for integer tensors: negative values count from the end."""
    start = torch.where(start < 0, (start + length).clamp(min=0), start.clamp(max=length))
    end = torch.where(end < 0, (end + length).clamp(min=0), end.clamp(max=length))
    return start, end


def box_masks(
    n: int,
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    settings: BoxMaskSettings | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Box masks, float32 (n, 1, H, W); same distribution as `generate_params`.

    The random numbers come from `generator` (torch), so the values differ from the numpy
    reference for a given seed; sizes, rounding, truncation and toggling follow it exactly.
    """
    s = settings or BoxMaskSettings()
    h, w = int(shape[0]), int(shape[1])
    lo, hi = s.prop_range
    dev = torch.device(device) if device is not None else torch.device("cpu")
    # float64 so that the rounding of sizes and positions matches the numpy reference.
    kw: dict[str, Any] = {"generator": generator, "dtype": torch.float64, "device": dev}
    bshape = (n, s.n_boxes)

    def uniform(a: float, b: float, size: tuple[int, ...]) -> torch.Tensor:
        return a + (b - a) * torch.rand(size, **kw)

    fac = (1.0 / s.n_boxes) ** 0.5
    if s.prop_by_area:
        props = uniform(lo, hi, bshape)
        if s.random_aspect_ratio:
            fy = torch.exp(uniform(0.0, 1.0, bshape) * torch.log(props))
            fx = props / fy
            fy, fx = fy * fac, fx * fac
        else:
            fy = fx = props.sqrt() * fac * fac  # official aliasing quirk, see _box_fractions_np
        zero = props == 0
        fy = torch.where(zero, 0.0, fy)
        fx = torch.where(zero, 0.0, fx)
    elif s.random_aspect_ratio:
        fy = uniform(lo, hi, bshape) * fac
        fx = uniform(lo, hi, bshape) * fac
    else:
        fy = fx = uniform(lo, hi, bshape) * fac * fac  # official aliasing quirk
    hw = torch.tensor([h, w], dtype=torch.float64, device=dev)
    sizes = torch.round(torch.stack([fy, fx], dim=2) * hw)
    if s.within_bounds:
        starts = torch.round((hw - sizes) * torch.rand(sizes.shape, **kw))
        ends = starts + sizes
    else:
        centres = torch.round(hw * torch.rand(sizes.shape, **kw))
        starts, ends = centres - sizes * 0.5, centres + sizes * 0.5
    starts = torch.trunc(starts).long()
    ends = torch.trunc(ends).long()
    y0, y1 = _slice_bounds(starts[..., 0], ends[..., 0], h)
    x0, x1 = _slice_bounds(starts[..., 1], ends[..., 1], w)
    bounds = torch.stack([y0, y1, x0, x1], dim=-1).tolist()  # (n, boxes, 4) Python ints
    # Toggling each box region in place touches only the boxes; this beats a vectorised
    # (n, H, W) parity computation by 10x at 512x512 because the boxes cover little area.
    masks = torch.full((n, 1, h, w), 0.0 if s.invert else 1.0, device=dev)
    for i, boxes in enumerate(bounds):
        for by0, by1, bx0, bx1 in boxes:
            region = masks[i, 0, by0:by1, bx0:bx1]
            region.neg_().add_(1.0)
    return masks
