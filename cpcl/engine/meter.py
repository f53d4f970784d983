"""Per-iteration logs kept on the device (`Meter`) and the non-finite loss stop."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import CpclError
from ..runlog import Scalars


def format_means(means: Mapping[str, float]) -> str:
    """`loss=0.1234 loss_sup_1=...`: the epoch log line's values."""
    return " ".join(f"{k}={v:.4f}" for k, v in means.items())


class NonFiniteLossError(CpclError):
    """A loss became NaN or inf; the message names the iteration and every loss part."""


def _short(key: str) -> str:
    """Progress-bar name of a log key: loss_unsup_inter -> inter, loss_sup_1 -> sup_1."""
    return key.removeprefix("loss_unsup_").removeprefix("loss_") if key != "loss" else key


class Meter:
    """Per-key sums of the step outputs, kept on the device (one stack per iteration).

    The keys are those of the first step; the host reads the values only when asked.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.keys: list[str] = []
        self.sums = self.window = self.bad_parts = None
        self.bad_iter = torch.full((), -1, dtype=torch.int64, device=device)
        self.seen = self.in_window = 0

    def add(self, out: Mapping[str, Tensor], it: int) -> None:
        if not self.keys:
            self.keys = list(out)
            self.sums = torch.zeros(len(self.keys), dtype=torch.float64, device=self.device)
            self.window = torch.zeros_like(self.sums)
            self.bad_parts = torch.zeros_like(self.sums)
        elif list(out) != self.keys:
            raise CpclError(f"train_step returned keys {list(out)}; earlier {self.keys}")
        parts = torch.stack([v.double() for v in out.values()])
        newly_bad = (~torch.isfinite(parts).all()) & (self.bad_iter < 0)
        self.bad_iter = torch.where(newly_bad, torch.full_like(self.bad_iter, it), self.bad_iter)
        self.bad_parts = torch.where(newly_bad, parts, self.bad_parts)
        self.sums += parts
        self.window += parts
        self.seen += 1
        self.in_window += 1

    def window_means(self) -> dict[str, float]:
        """Means since the last call (host sync)."""
        means = (self.window / max(self.in_window, 1)).tolist()
        self.window.zero_()
        self.in_window = 0
        return dict(zip(self.keys, means, strict=True))

    def show_window(self, bar: Any, lr: float, it: int, scalars: Scalars | None) -> None:
        """Show the window means (and `lr`) on the progress bar and in the scalar log."""
        means = self.window_means()
        bar.set_postfix_str(
            " ".join(f"{_short(k)}={v:.4f}" for k, v in means.items()) + f" lr={lr:.2e}",
            refresh=False,
        )
        if scalars is not None:
            scalars.add({f"train/{k}": v for k, v in means.items()}, it)
            scalars.add({"train/lr": lr}, it)

    def epoch_means(self) -> dict[str, float]:
        """Means over the epoch (host sync)."""
        if not self.keys:
            return {}
        return dict(zip(self.keys, (self.sums / max(self.seen, 1)).tolist(), strict=True))

    def check_finite(self, niters: int) -> None:
        """Raise NonFiniteLossError naming the first bad iteration and its values."""
        it = int(self.bad_iter)
        if it >= 0:
            values = ", ".join(
                f"{k}={v:.6g}" for k, v in zip(self.keys, self.bad_parts.tolist(), strict=True)
            )
            raise NonFiniteLossError(
                f"non-finite loss at iteration {it} (epoch-{it // niters}, iteration "
                f"{it % niters + 1} of {niters}): {values}. Training stopped; the last saved "
                "checkpoint is kept. Try a lower C.lr, amp=none, or check the labels."
            )
