"""Data: split lists, datasets, training transforms, CutMix masks, loaders and toy datasets."""

from .splits import read_split

__all__ = ["read_split"]
