"""Generic numeric operators without a method name (permutohedral-lattice filtering, dense CRF)."""

from .dense_crf import DenseCRFParams, dense_crf, unary_from_softmax
from .permutohedral import (
    PermutohedralLattice,
    bilateral_features,
    bilateral_filter,
    lattice_alpha,
    lattice_scale_factors,
    position_features,
)

__all__ = [
    "DenseCRFParams",
    "PermutohedralLattice",
    "bilateral_features",
    "bilateral_filter",
    "dense_crf",
    "lattice_alpha",
    "lattice_scale_factors",
    "position_features",
    "unary_from_softmax",
]
