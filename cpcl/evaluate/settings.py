"""The evaluation protocol as one immutable settings object."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..amp import AMP_MODES

RESIZE_BACKENDS = ("auto", "cv2", "torch")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(v) for v in size)
    return h, w


@dataclass(frozen=True)
class EvalSettings:
    """The sliding-window protocol (official `Evaluator` settings) plus execution choices.

    num_classes: logits channels. crop_size: window (int or (h, w)). stride_rate: window stride
    as a fraction of the crop. scales: image scales, e.g. (1.0,) or (0.75, 1, 1.25). flip: add
    the mirrored input's logits. mean, std: RGB normalisation of ``x/255``. window_batch:
    network inputs per forward, 0 = sized to the device (a window and its mirror always share
    a forward). amp: "none" | "bf16" | "fp16" autocast. resize: "auto" (cv2 on CPU, torch
    elsewhere), "cv2" (official, CPU only) or "torch" (same formula on the device).
    channels_last: run the network on channels-last tensors, None = on a CPU (oneDNN's
    convolutions are faster there). The default False keeps the official NCHW layout, whose
    sums match the official ones to ~7e-7 relative; channels-last changes the convolutions'
    float rounding (up to ~2e-6 relative on eval_sliding.pt, labels equal). `from_config`
    (the eval CLI and the training loop) picks None.
    """

    num_classes: int
    crop_size: tuple[int, int]
    stride_rate: float
    scales: tuple[float, ...]
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    window_batch: int = 0
    amp: str = "none"
    resize: str = "auto"
    channels_last: bool | None = False

    def __post_init__(self) -> None:
        # Normalise the loose forms (int crop, lists) so equal settings compare equal.
        set_ = object.__setattr__
        set_(self, "crop_size", _pair(self.crop_size))
        set_(self, "scales", tuple(float(s) for s in self.scales))
        set_(self, "mean", tuple(float(v) for v in self.mean))
        set_(self, "std", tuple(float(v) for v in self.std))
        set_(self, "flip", bool(self.flip))
        if self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes}: expected >= 1")
        if min(self.crop_size) < 1:
            raise ValueError(f"crop_size={self.crop_size}: expected positive sizes")
        if not 0 < self.stride_rate <= 1:
            raise ValueError(f"stride_rate={self.stride_rate}: expected in (0, 1]")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales={self.scales}: expected one or more positive scales")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean={self.mean}, std={self.std}: expected 3 values each")
        if self.window_batch < 0:
            raise ValueError(f"window_batch={self.window_batch}: expected >= 1, or 0 (auto)")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp={self.amp!r}: expected one of {', '.join(AMP_MODES)}")
        if self.resize not in RESIZE_BACKENDS:
            raise ValueError(
                f"resize={self.resize!r}: expected one of {', '.join(RESIZE_BACKENDS)}"
            )

    @classmethod
    def from_config(cls, C: Any) -> EvalSettings:
        """The settings of a finalized experiment config (``C.eval_*``, ``C.image_*``, ``C.amp``)."""
        return cls(
            num_classes=C.num_classes,
            crop_size=C.eval_crop_size,
            stride_rate=C.eval_stride_rate,
            scales=tuple(C.eval_scale_array),
            flip=bool(C.eval_flip),
            mean=tuple(C.image_mean),
            std=tuple(C.image_std),
            window_batch=C.eval_window_batch,
            amp=C.amp,
            channels_last=None,
        )

    @classmethod
    def coerce(cls, settings: EvalSettings | None, fields: dict[str, Any]) -> EvalSettings:
        """`settings`, or one built from the loose keyword `fields` (the older calling form)."""
        if settings is None:
            return cls(**fields)
        if fields:
            raise TypeError(
                f"pass either an EvalSettings or its fields, not both (got {', '.join(fields)})"
            )
        return settings


FIELDS = frozenset(f.name for f in dataclasses.fields(EvalSettings))


def eval_settings(C: Any) -> dict[str, Any]:
    """The protocol of a finalized config as keyword arguments of `evaluate_dataset`.

    Kept for callers of the keyword form: the `EvalSettings` fields plus ``branch``
    (C.eval_branch). New code: ``EvalSettings.from_config(C)`` and ``select_branch``.
    """
    return {**dataclasses.asdict(EvalSettings.from_config(C)), "branch": C.eval_branch}
