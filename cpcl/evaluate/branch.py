"""Which network of a two-branch CPCL/CPS model is evaluated, as a plain segmenter module."""

from __future__ import annotations

import torch
from torch import nn

from ..checkpoint import unwrap

BRANCHES = ("1", "2", "avg")


def _widen(logits: torch.Tensor) -> torch.Tensor:
    # Autocast outputs (bf16/fp16) are averaged in float32; float32/float64 stay as they are.
    return logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits


class BranchMean(nn.Module):
    """x -> the mean of two segmenters' logits (``eval_branch=avg``)."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (_widen(self.first(x)) + _widen(self.second(x))) / 2


def select_branch(model: nn.Module, branch: str) -> nn.Module:
    """The segmenter ``x -> logits (B, C, H, W)`` that `branch` names in `model`.

    "1": ``model.branch1`` (the official evaluation), or `model` itself when it has no
    branches (a plain segmenter); "2": ``model.branch2``; "avg": `BranchMean` of both. DDP and
    torch.compile wrappers are looked through. ValueError for an unknown branch, or for "2" /
    "avg" on a model without two branches.
    """
    if branch not in BRANCHES:
        raise ValueError(f"branch={branch!r}: expected one of {', '.join(BRANCHES)}")

    model = unwrap(model)
    if branch == "1":
        return getattr(model, "branch1", model)
    if not (hasattr(model, "branch1") and hasattr(model, "branch2")):
        raise ValueError(f"branch={branch!r} needs a two-branch model with .branch1/.branch2")
    return model.branch2 if branch == "2" else BranchMean(model.branch1, model.branch2)
