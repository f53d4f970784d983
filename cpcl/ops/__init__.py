"""Generic numeric operators without a method name (permutohedral-lattice filtering)."""

from .permutohedral import (
    PermutohedralLattice,
    bilateral_features,
    bilateral_filter,
    lattice_alpha,
    lattice_scale_factors,
)

__all__ = [
    "PermutohedralLattice",
    "bilateral_features",
    "bilateral_filter",
    "lattice_alpha",
    "lattice_scale_factors",
]
