"""Sliding-window prediction of one image with the official CPCL numerics.

Official semantics (`furnace/engine/evaluator.py` `sliding_eval` / `scale_process`,
`furnace/utils/img_utils.py`):

* per scale, ``cv2.resize(img, None, fx=s, fy=s, INTER_LINEAR)`` on the uint8 image (output
  size ``cvRound(s*dim)``, source coordinates from exactly ``1/s``);
* long side <= crop: normalise, then zero-pad (zeros in normalised space) centred to the crop,
  one forward, un-pad;
* otherwise: zero-pad the *raw* image to at least the crop (pad pixels become
  ``(0 - mean)/std``), windows with stride ``ceil(crop*stride_rate)``, the last window moved
  back to end at the border, window logits SUMMED (the official ``count_scale`` is unused);
* flip: the logits of the mirrored input, mirrored back, are added to the window's (summed);
* padding is ``pad//2`` before and the rest after; no softmax anywhere;
* each scale's map is resized back to the image size with bilinear half-pixel interpolation
  and the scales are summed in float64; the prediction is the argmax.

The network is any module ``x (B,3,h,w) -> logits (B,C,h,w)`` at the input size (see
`select_branch` for the two-branch CPCL model). Windows (with their mirrors) go through it in
batches; in eval mode BatchNorm uses running statistics, so a batch computes the same function
as single windows up to the convolution's float rounding. All working tensors (padded image,
window batch, score accumulators) are kept by the `SlidingPredictor` and reused across windows,
scales and images.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..amp import autocast, check_amp
from ..data.transforms import normalize_lut
from .branch import select_branch
from .settings import EvalSettings, _pair

# window_batch=0 (auto): network inputs per forward so that one forward covers about this many
# input pixels (crop 128: 8 inputs, 256: 2, 512: 1 on a CPU). Small windows gain from batching
# (the small late-stage convolutions are inefficient alone); large ones do not, and their
# activations would only raise the peak memory.
CPU_PIXELS_PER_FORWARD = 2 * 256 * 256
GPU_PIXELS_PER_FORWARD = 8 * 512 * 512


def normalisation_lut(mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A (3, 256) float32 table: entry [c, v] is the official normalisation of value v.

    The training pipeline's table (`cpcl.data.transforms.normalize_lut`, official arithmetic
    bit for bit), transposed for a per-channel lookup on any device.
    """
    return torch.from_numpy(np.ascontiguousarray(normalize_lut(mean, std).T))


def window_starts(padded: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the official window grid along one axis of length `padded` >= `crop`.

    ``ceil((padded - crop)/stride) + 1`` windows at ``k*stride``; a window that would cross the
    border is moved back to end at it.
    """
    n = math.ceil((padded - crop) / stride) + 1
    return [min(k * stride + crop, padded) - crop for k in range(n)]


def window_grid(
    height: int, width: int, crop_size: int | Sequence[int], stride_rate: float
) -> list[tuple[int, int]]:
    """(y, x) starts, in the official raster order, of the windows for an h x w scaled image.

    An image whose long side fits in the crop is one window at (0, 0) of the padded crop.
    """
    ch, cw = _pair(crop_size)
    if max(height, width) <= min(ch, cw):
        return [(0, 0)]
    ph, pw = max(height, ch), max(width, cw)
    ys = window_starts(ph, ch, math.ceil(ch * stride_rate))
    xs = window_starts(pw, cw, math.ceil(cw * stride_rate))
    return [(y, x) for y in ys for x in xs]


def auto_window_batch(device: torch.device, crop_size: Sequence[int]) -> int:
    """Network inputs per forward for ``window_batch=0``: a pixel budget per forward.

    Measured on a 2-core CPU (ResNet-50, CPU time per window): crop 128 costs 0.157 s alone and
    0.100 s in a batch of 4; crop 256 gains nothing from a batch of 2.
    """
    budget = CPU_PIXELS_PER_FORWARD if device.type == "cpu" else GPU_PIXELS_PER_FORWARD
    return max(1, budget // (crop_size[0] * crop_size[1]))


def _module_device(net: nn.Module) -> torch.device:
    first = next(net.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _module_dtype(net: nn.Module) -> torch.dtype:
    # The windows are fed in the network's own float type (float64 for a .double() model).
    for p in net.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _check_image(image: Any) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError("sliding_predict: image must be an HxWx3 uint8 numpy array")
    if image.shape[2] != 3:
        raise ValueError(f"sliding_predict: image has {image.shape[2]} channels, expected 3")


class SlidingPredictor:
    """Summed multi-scale (and flip) sliding-window logits, official semantics, reusable.

    One predictor holds the settings and the working buffers; call it once per image, or, for
    many images, ``with predictor.prepared(net): predictor.predict(net, img)`` (the network is
    converted once). The buffers grow to the largest image seen and are reused, so a dataset
    evaluation allocates nothing per window, scale or image outside the network itself.
    """

    def __init__(self, settings: EvalSettings, device: torch.device | str | None = None) -> None:
        self.settings = settings
        self.device = torch.device(device) if device is not None else None
        self._buffers: dict[str, torch.Tensor] = {}
        self._lut: torch.Tensor | None = None
        self._ready: tuple[torch.device, torch.dtype | None, str, bool] | None = None

    def _buffer(self, name: str, shape: Sequence[int], dtype: torch.dtype, device) -> torch.Tensor:
        """A tensor of `shape` on reused storage (contents undefined)."""
        n = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(n, dtype=dtype, device=device)
            self._buffers[name] = buf
        return buf[:n].view(*shape)

    def _chw_buffer(self, name, shape, dtype, device, last: bool) -> torch.Tensor:
        """A (..., C, H, W) buffer, stored channels-last (H, W, C innermost) when `last`."""
        if not last:
            return self._buffer(name, shape, dtype, device)
        *lead, c, h, w = shape
        buf = self._buffer(name, (*lead, h, w, c), dtype, device)
        n = len(lead)
        return buf.permute(*range(n), n + 2, n, n + 1)

    @contextmanager
    def prepared(self, net: nn.Module) -> Iterator[nn.Module]:
        """Make `net` ready for `predict`: eval mode, channels-last weights where enabled.

        Checks amp at once (AmpError before any forward). The conversion is in place and
        exact (a layout change); the mode and the weight layout are restored on exit.
        """
        device = self.device if self.device is not None else _module_device(net)
        amp_dtype = check_amp(self.settings.amp, device)
        resize = self.settings.resize
        if resize == "auto":
            resize = "cv2" if device.type == "cpu" else "torch"
        if resize == "cv2" and device.type != "cpu":
            raise ValueError(f"resize='cv2' runs on the CPU only (device is {device})")
        last = self.settings.channels_last
        if last is None:
            last = device.type == "cpu"
        was_training = net.training
        net.eval()
        if last:
            net.to(memory_format=torch.channels_last)
        self._ready = (device, amp_dtype, resize, last)
        try:
            yield net
        finally:
            self._ready = None
            if last:
                net.to(memory_format=torch.contiguous_format)
            net.train(was_training)

    def __call__(self, net: nn.Module, image: np.ndarray) -> torch.Tensor:
        """`predict` for one image, with `net` prepared for this call only."""
        _check_image(image)
        with self.prepared(net):
            return self.predict(net, image)

    def predict(self, net: nn.Module, image: np.ndarray) -> torch.Tensor:
        """The (C, H, W) score sum over scales of the HxWx3 uint8 RGB `image`.

        net: ``x -> logits`` at the input size, inside ``with self.prepared(net)``. Returns
        float64 (the official host-side accumulation; float32 on MPS) on the device;
        ``scores.argmax(0)`` is the prediction. The tensor lives in the predictor's buffers:
        it is valid until the next call.
        """
        _check_image(image)
        if self._ready is None:
            raise RuntimeError("SlidingPredictor.predict: call it inside `with prepared(net):`")
        with torch.inference_mode():
            return self._predict(net, image, *self._ready)

    def _predict(
        self,
        net: nn.Module,
        image: np.ndarray,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        resize: str,
        last: bool,
    ) -> torch.Tensor:
        st = self.settings
        height, width = image.shape[:2]
        total_dtype = torch.float32 if device.type == "mps" else torch.float64
        # (H, W, C) like the official host-side sum, returned as a (C, H, W) view.
        total = self._buffer("total", (height, width, st.num_classes), total_dtype, device)
        total.zero_()
        dtype = _module_dtype(net)
        for s in st.scales:
            scaled = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
            score = self._scale_scores(net, scaled, device, dtype, amp_dtype, last)
            self._add_resized(total, score, resize)
        return total.permute(2, 0, 1)

    def _padded(self, scaled: np.ndarray, device: torch.device, dtype: torch.dtype, last: bool):
        """The normalised, padded scaled image (3, P, Q) and the (top, left) of the image in it."""
        ch, cw = self.settings.crop_size
        h, w = scaled.shape[:2]
        if self._lut is None or self._lut.device != device:
            self._lut = normalisation_lut(self.settings.mean, self.settings.std).to(device)
        lut = self._lut
        if max(h, w) <= min(ch, cw):
            # Whole image: pad with zeros in normalised space.
            ph, pw, fill = ch, cw, torch.zeros_like(lut[:, 0])
        else:
            # Raw image padded with 0, i.e. each channel with its normalised value of 0.
            ph, pw, fill = max(h, ch), max(w, cw), lut[:, 0]
        top, left = (ph - h) // 2, (pw - w) // 2
        padded = self._chw_buffer("padded", (3, ph, pw), dtype, device, last)
        if (ph, pw) != (h, w):
            padded.copy_(fill[:, None, None].expand(3, ph, pw))
        raw = torch.from_numpy(np.ascontiguousarray(scaled)).to(device, non_blocking=True)
        # (h,w,3) uint8 -> (3,h,w) via the exact per-channel lookup table.
        norm = lut.gather(1, raw.permute(2, 0, 1).reshape(3, -1).long()).view(3, h, w)
        padded[:, top : top + h, left : left + w] = norm
        return padded, top, left

    def _scale_scores(
        self,
        net: nn.Module,
        scaled: np.ndarray,
        device: torch.device,
        dtype: torch.dtype,
        amp_dtype: torch.dtype | None,
        last: bool,
    ) -> torch.Tensor:
        """The (C, h, w) window-sum logits of one scaled image (network dtype)."""
        st = self.settings
        ch, cw = st.crop_size
        h, w = scaled.shape[:2]
        c = st.num_classes
        padded, top, left = self._padded(scaled, device, dtype, last)
        acc = self._chw_buffer("acc", (c, *padded.shape[1:]), dtype, device, last)
        acc.zero_()
        views = 2 if st.flip else 1
        per_forward = max(1, (st.window_batch or auto_window_batch(device, st.crop_size)) // views)
        grid = window_grid(h, w, (ch, cw), st.stride_rate)
        pair = self._chw_buffer("pair", (c, ch, cw), dtype, device, last) if st.flip else None
        for i in range(0, len(grid), per_forward):
            chunk = grid[i : i + per_forward]
            k = len(chunk)
            batch = self._chw_buffer("windows", (views * k, 3, ch, cw), dtype, device, last)
            for j, (y, x) in enumerate(chunk):
                batch[j].copy_(padded[:, y : y + ch, x : x + cw])
            if st.flip:
                batch[k:].copy_(batch[:k].flip(-1))
            with autocast(amp_dtype, device):
                out = net(batch)
            if out.shape[1] != c:
                raise ValueError(f"the model returns {out.shape[1]} classes, num_classes={c}")
            for j, (y, x) in enumerate(chunk):
                region = acc[:, y : y + ch, x : x + cw]
                if pair is None:
                    region += out[j]
                else:
                    # Official order: (window + mirrored-back mirror), then into the sum.
                    torch.add(out[j], out[k + j].flip(-1), out=pair)
                    region += pair
        return acc[:, top : top + h, left : left + w]

    def _add_resized(self, total: torch.Tensor, score: torch.Tensor, backend: str) -> None:
        """total (H, W, C) += `score` (C, h, w) resized bilinearly (half-pixel) to (H, W).

        backend "cv2" runs OpenCV's INTER_LINEAR (the official call, bit for bit) on the CPU;
        "torch" runs ``F.interpolate(bilinear, align_corners=False)``, the same formula (cv2
        does not antialias when shrinking either) on the device, which differs from cv2 only
        by float32 coordinate rounding (~1e-6 relative on logit maps).
        """
        height, width, c = total.shape
        h, w = score.shape[1:]
        if (h, w) == (height, width):
            total += score.permute(1, 2, 0)
        elif backend == "cv2":
            hwc = self._buffer("hwc", (h, w, c), score.dtype, score.device)
            hwc.copy_(score.permute(1, 2, 0))
            out = self._buffer("resized", (height, width, c), score.dtype, score.device)
            cv2.resize(
                hwc.numpy(), (width, height), dst=out.numpy(), interpolation=cv2.INTER_LINEAR
            )
            total += out
        else:
            out = F.interpolate(score[None], size=(height, width), mode="bilinear")
            total += out[0].permute(1, 2, 0)


def sliding_predict(
    model: nn.Module,
    image: np.ndarray,
    settings: EvalSettings | None = None,
    *,
    device: torch.device | str | None = None,
    branch: str | None = None,
    **fields: Any,
) -> torch.Tensor:
    """Summed multi-scale (and flip) sliding-window logits of one image, official semantics.

    model: a segmenter ``x -> logits (B,C,H,W)``, or a two-branch model with `branch` ("1",
    "2", "avg"; see `select_branch`). image: HxWx3 uint8 RGB. settings: an `EvalSettings`, or
    its fields as keywords (num_classes, crop_size, stride_rate, scales, flip, mean, std,
    window_batch, amp, resize). device: where to run (default: the model's).

    Returns the (C, H, W) score sum over scales on the device: float64 (the official host-side
    accumulation; float32 on MPS). ``scores.argmax(0)`` is the prediction. For many images,
    call one `SlidingPredictor` instead (it reuses its buffers).
    """
    settings = EvalSettings.coerce(settings, fields)
    net = select_branch(model, branch) if branch is not None else model
    return SlidingPredictor(settings, device)(net, image)
