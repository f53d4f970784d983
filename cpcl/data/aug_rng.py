"""`AugRng`: the three generators an official augmentation draws from, passed explicitly.

Official augmentations draw from the global Python `random`, numpy's legacy global
`RandomState` and torch's global generator. Passing seeded instances of the three instead
reproduces those draws call for call while keeping a sample independent of the worker that
builds it (`cpcl.data.views`: one per-sample numpy Generator seeds them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["AugRng"]


@dataclass
class AugRng:
    """The three generators of an official augmentation (Python, numpy legacy, torch)."""

    py: random.Random
    np: np.random.RandomState
    torch: torch.Generator

    @classmethod
    def seeded(cls, seed: int) -> AugRng:
        """Generators in the state of `random.seed(s); np.random.seed(s); torch.manual_seed(s)`."""
        return cls(
            random.Random(seed), np.random.RandomState(seed), torch.Generator().manual_seed(seed)
        )
