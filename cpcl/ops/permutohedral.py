"""Permutohedral-lattice Gaussian filtering (Adams et al. 2010) in vectorised PyTorch.

This is the lattice of the official CoSA / DenseCRF-loss extension
(`utils/bilateralfilter/permutohedral.cpp`, Krähenbühl's NIPS 2011 code as modified by L.-C. Chen),
rebuilt operation by operation so that a user needs no compiler. It reproduces the x86 build of
that file (the `SSE_PERMUTOHEDRAL` branch, which every x86-64 compiler takes):

* elevation `y = E f` with the diagonal scale `sqrt(2/3)(d+1) / sqrt((i+1)(i+2))`, in float32 and
  in the official operation order;
* rounding to the nearest remainder-0 point with round-half-to-even (`_mm_cvtps_epi32` under the
  default MXCSR mode), the rank of each coordinate by pairwise `<` comparisons (ties resolved the
  same way), the wrap-around of points off the plane, the barycentric weights with the same
  wrap-around of the last weight;
* lattice keys are the first `d` coordinates of each simplex vertex (the last one is implied);
* splat with the barycentric weights (no normalisation channel: the official filters the values
  alone), blur along the `d+1` lattice axes in order 0..d with the kernel `[1/2, 1, 1/2]`
  (missing neighbours count as 0), slice with the barycentric weights times
  `alpha = 1 / (1 + 2^-d)`;
* the SSE init processes points in blocks of 4 and inserts the keys of the zero feature vectors
  that pad the last block into the lattice. Those vertices receive no splatted value but take part
  in the blur, so they are reproduced (`sse_padding=True`).

The filter is linear in the values and NOT normalised, so it is not an exact Gaussian: it differs
from a dense Gaussian by far more than rounding error (the golden fixtures tell them apart).

Vectorisation: the keys of all points (and of all images of a batch, with the image index as an
extra key digit so that images never share vertices) are packed into one int64 code each,
deduplicated with `torch.unique`, and blur neighbours are found with `searchsorted` on the sorted
codes. Everything runs on the device of the inputs (CPU or CUDA); the only host syncs are the
key range (one `tolist`) and the size of `torch.unique`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..errors import CpclError

__all__ = [
    "PermutohedralLattice",
    "bilateral_features",
    "bilateral_filter",
    "lattice_alpha",
    "lattice_scale_factors",
]

# The official SSE init loads features in blocks of 4 floats (one __m128 register per dimension).
_SSE_BLOCK = 4
# Packed keys must stay below 2**62 so that neighbour codes (key ± a few strides) fit in int64.
_MAX_CODE_BITS = 62


def lattice_scale_factors(d: int) -> list[float]:
    """The diagonal of the elevation matrix E, as the float32 values of the official SSE init.

    `inv_std_dev = sqrt(2/3)(d+1)` is stored as a float, then `1/sqrt((i+2)(i+1)) * inv_std_dev`
    is evaluated in double and rounded to float32 (`_mm_set1_ps`).
    """
    inv_std_dev = float(np.float32(math.sqrt(2.0 / 3.0) * (d + 1)))
    return [float(np.float32(1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std_dev)) for i in range(d)]


def lattice_alpha(d: int) -> float:
    """The official slice scale `1 / (1 + 2^-d)` in float32 ("a magic scaling constant")."""
    return float(np.float32(1.0) / (np.float32(1.0) + np.float32(2.0) ** np.float32(-d)))


def _check_features(features: Tensor) -> None:
    if not isinstance(features, Tensor) or features.dim() != 3:
        raise CpclError(
            f"permutohedral lattice: features must be a (B, N, d) tensor, got "
            f"{type(features).__name__} {tuple(getattr(features, 'shape', ()))}"
        )
    if features.shape[1] == 0 or features.shape[2] == 0:
        raise CpclError(
            f"permutohedral lattice: features {tuple(features.shape)} has no points or no dims"
        )
    if not features.is_floating_point():
        raise CpclError(f"permutohedral lattice: features must be floating, got {features.dtype}")
    if not bool(torch.isfinite(features).all()):
        raise CpclError("permutohedral lattice: features contain NaN or inf")


def _elevate(f: Tensor) -> Tensor:
    """`y = E f` (P, d) -> (P, d+1) in float32, in the official order of operations."""
    d = f.shape[1]
    scale = lattice_scale_factors(d)
    sm = torch.zeros_like(f[:, 0])
    elevated: list[Tensor] = [sm] * (d + 1)
    for j in range(d, 0, -1):
        cf = f[:, j - 1] * scale[j - 1]
        elevated[j] = sm - cf * float(j)  # float32 product, then the difference
        sm = sm + cf
    elevated[0] = sm
    return torch.stack(elevated, dim=1)


def _simplex(elevated: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Remainder-0 point, rank and barycentric weights of each elevated point (float32).

    Returns `rem0` (P, d+1) int64, `rank` (P, d+1) int64 and `bary` (P, d+1) float32, the weight
    of the vertex of remainder r in column r.
    """
    d = elevated.shape[1] - 1
    down = float(np.float32(1.0) / np.float32(d + 1))
    up = float(d + 1)
    # round-half-to-even, as _mm_cvtps_epi32 under the default MXCSR rounding mode
    v = torch.round(elevated * down)
    rem0 = v * up
    total = v.sum(dim=1).to(torch.int64)  # integer-valued: the float sum is exact
    diff = elevated - rem0
    rank = torch.zeros(elevated.shape, dtype=torch.int64, device=elevated.device)
    for i in range(d):
        for j in range(i + 1, d + 1):
            c = (diff[:, i] < diff[:, j]).to(torch.int64)
            rank[:, i] += c
            rank[:, j] += 1 - c
    rank = rank + total[:, None]
    # bring points off the plane back: one wrap of d+1, applied to rank and rem0 alike
    shift = (rank < 0).to(torch.int64) * (d + 1) - (rank > d).to(torch.int64) * (d + 1)
    rank = rank + shift
    rem0 = rem0 + shift.to(rem0.dtype)
    vals = (elevated - rem0) * down
    # by_rank[:, r] = the coordinate value of rank r (rank is a permutation of 0..d)
    by_rank = torch.zeros_like(vals).scatter_(1, rank, vals)
    bary = torch.empty_like(vals)
    # official: b[d-rank] += v, b[d-rank+1] -= v, then b[0] += 1 + b[d+1]
    bary[:, 1:] = by_rank[:, :d].flip(1) - by_rank[:, 1:].flip(1)
    bary[:, 0] = by_rank[:, d] + (1.0 - by_rank[:, 0])
    return rem0.to(torch.int64), rank, bary


def _vertex_keys(rem0: Tensor, rank: Tensor) -> Tensor:
    """Keys (P, d+1, d) of the d+1 simplex vertices: `rem0 + canonical[r][rank]`, first d coords."""
    d = rem0.shape[1] - 1
    r = torch.arange(d + 1, device=rem0.device)[None, :, None]  # remainder
    k = rank[:, None, :d]  # rank of coordinate i < d
    canonical = torch.where(k <= d - r, r, r - (d + 1))
    return rem0[:, None, :d] + canonical


class PermutohedralLattice:
    """One permutohedral lattice over B images of N points with d-dimensional features.

    Build it once per batch of feature maps and call `filter` on any number of value channels
    (the official code builds one lattice per image and filters every class channel with it).
    The image index is a key digit, so the images of a batch never share lattice vertices.
    """

    def __init__(self, features: Tensor, *, sse_padding: bool = True) -> None:
        """`features` (B, N, d): position of each point, already divided by the filter's sigmas.

        Computed in float32 like the official (float64 input is rounded to float32 first).
        `sse_padding` reproduces the x86 build, whose init also inserts the vertices of the zero
        feature vectors that pad each image's points up to a multiple of 4.
        """
        _check_features(features)
        b, n, d = features.shape
        pad = (-n) % _SSE_BLOCK if sse_padding else 0
        f = features.to(torch.float32)
        if pad:
            f = torch.cat([f, f.new_zeros(b, pad, d)], dim=1)
        self.batch, self.n_points, self.dim = b, n, d
        self._n_padded = n + pad
        device = f.device

        rem0, rank, bary = _simplex(_elevate(f.reshape(-1, d)))
        keys = _vertex_keys(rem0, rank)  # (P, d+1, d)
        image = torch.arange(b, device=device).repeat_interleave(n + pad)
        codes, strides = self._pack(keys, image)
        uniq, inverse = torch.unique(codes.reshape(-1), sorted=True, return_inverse=True)
        self.n_vertices = int(uniq.numel())
        self._offsets = inverse.reshape(-1, d + 1)  # (P, d+1) vertex index of each remainder
        self._weights = bary  # (P, d+1)
        self._neighbours = self._find_neighbours(uniq, strides, d)
        self._alpha = lattice_alpha(d)

    @staticmethod
    def _pack(keys: Tensor, image: Tensor) -> tuple[Tensor, list[int]]:
        """Mixed-radix int64 code of each key with the image index as the top digit.

        Each digit range is widened by d on both sides so that blur neighbours (key ± 1, one
        coordinate ± d) have valid codes too; the code is then linear in the key.
        """
        d = keys.shape[-1]
        flat = keys.reshape(-1, d)
        lo_hi = torch.cat([flat.amin(dim=0), flat.amax(dim=0)]).tolist()
        lo, hi = lo_hi[:d], lo_hi[d:]
        span = [h - lo_k + 2 * d + 1 for lo_k, h in zip(lo, hi, strict=True)]
        n_images = int(image[-1].item()) + 1 if image.numel() else 1
        bits = sum(math.log2(s) for s in span) + math.log2(max(n_images, 1))
        if bits > _MAX_CODE_BITS:
            raise CpclError(
                f"permutohedral lattice: the key range {span} x {n_images} images needs "
                f"{bits:.1f} bits (> {_MAX_CODE_BITS}); the features are spread too far for the "
                "lattice (sigmas too small for the feature range)"
            )
        strides = [1] * d
        for k in range(d - 2, -1, -1):
            strides[k] = strides[k + 1] * span[k + 1]
        image_stride = strides[0] * span[0]
        base = torch.tensor([lo_k - d for lo_k in lo], dtype=torch.int64, device=keys.device)
        weights = torch.tensor(strides, dtype=torch.int64, device=keys.device)
        codes = ((keys - base) * weights).sum(dim=-1)
        codes = codes + (image * image_stride).reshape(-1, 1)
        return codes, strides

    @staticmethod
    def _find_neighbours(uniq: Tensor, strides: list[int], d: int) -> Tensor:
        """(d+1, M+1, 2) indices of the two blur neighbours along each axis; M = missing.

        Official: along axis j, n1 = key - 1 except n1[j] = key[j] + d, n2 = key + 1 except
        n2[j] = key[j] - d; only the first d coordinates are keys (axis d changes all of them
        by ∓1). Row M is a zero vertex whose neighbours are itself, so it stays zero.
        """
        m = uniq.numel()
        total = sum(strides)
        out = torch.full((d + 1, m + 1, 2), m, dtype=torch.int64, device=uniq.device)
        for j in range(d + 1):
            delta = -total + ((d + 1) * strides[j] if j < d else 0)
            for side, step in enumerate((delta, -delta)):
                target = uniq + step
                pos = torch.searchsorted(uniq, target).clamp_(max=m - 1)
                found = uniq[pos] == target
                out[j, :m, side] = torch.where(found, pos, torch.full_like(pos, m))
        return out

    def filter(self, values: Tensor) -> Tensor:
        """Splat, blur and slice `values` (B, N, C) -> (B, N, C) float32 (not normalised)."""
        if values.dim() != 3 or tuple(values.shape[:2]) != (self.batch, self.n_points):
            raise CpclError(
                f"permutohedral lattice: values must be (B, N, C) = ({self.batch}, "
                f"{self.n_points}, C), got {tuple(values.shape)}"
            )
        c = values.shape[2]
        v = values.to(device=self._offsets.device, dtype=torch.float32)
        pad = self._n_padded - self.n_points
        if pad:  # the padding points carry no value (the official splats only N points)
            v = torch.cat([v, v.new_zeros(self.batch, pad, c)], dim=1)
        v = v.reshape(-1, c)
        d = self.dim
        lattice = v.new_zeros(self.n_vertices + 1, c)
        contrib = self._weights[:, :, None] * v[:, None, :]  # (P, d+1, C)
        lattice.index_add_(0, self._offsets.reshape(-1), contrib.reshape(-1, c))
        for j in range(d + 1):  # official axis order; kernel [1/2, 1, 1/2]
            nb = self._neighbours[j]
            lattice = lattice + 0.5 * (lattice[nb[:, 0]] + lattice[nb[:, 1]])
        out = torch.zeros_like(v)
        w = self._weights * self._alpha  # official SSE slice: (weight * alpha) * value
        for r in range(d + 1):
            out = out + w[:, r : r + 1] * lattice[self._offsets[:, r]]
        return out.reshape(self.batch, self._n_padded, c)[:, : self.n_points]


def _check_image_values(image: Tensor, values: Tensor) -> None:
    if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[1] != 3:
        raise CpclError(
            f"bilateral filter: image must be a (B, 3, H, W) tensor, got "
            f"{tuple(getattr(image, 'shape', ()))}"
        )
    if (
        not isinstance(values, Tensor)
        or values.dim() != 4
        or values.shape[0] != image.shape[0]
        or values.shape[2:] != image.shape[2:]
    ):
        raise CpclError(
            f"bilateral filter: values must be (B, C, H, W) = ({image.shape[0]}, C, "
            f"{image.shape[2]}, {image.shape[3]}), got {tuple(getattr(values, 'shape', ()))}"
        )


def bilateral_features(image: Tensor, sigma_rgb: float, sigma_xy: float) -> Tensor:
    """(B, H*W, 5) features `(x/σxy, y/σxy, r/σrgb, g/σrgb, b/σrgb)` in float32.

    As `initializePermutohedral` (bilateralfilter.cpp): x is the column, y the row, pixels in
    row-major order, float32 divisions (by a full tensor: a scalar divisor may be turned into a
    multiplication by its reciprocal, which rounds differently).
    """
    for name, sigma in (("sigma_rgb", sigma_rgb), ("sigma_xy", sigma_xy)):
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise CpclError(f"bilateral filter: {name} must be a positive number, got {sigma!r}")
    b, _, h, w = image.shape
    img = image.to(torch.float32)
    dev = img.device
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=dev),
        torch.arange(w, dtype=torch.float32, device=dev),
        indexing="ij",
    )
    pos = torch.stack([xs, ys]).reshape(1, 2, h * w).expand(b, 2, h * w)
    pos = pos / torch.full_like(pos, float(np.float32(sigma_xy)))
    rgb = img.reshape(b, 3, h * w)
    rgb = rgb / torch.full_like(rgb, float(np.float32(sigma_rgb)))
    return torch.cat([pos, rgb], dim=1).transpose(1, 2)


def bilateral_filter(
    image: Tensor, values: Tensor, sigma_rgb: float, sigma_xy: float, *, sse_padding: bool = True
) -> Tensor:
    """The official `bilateralfilter_batch`: (B, 3, H, W) image, (B, C, H, W) values -> float32.

    One lattice per image over (x, y, r, g, b) features; every channel is filtered with it.
    The result is not normalised (no ones channel), exactly as the official extension.
    Differentiable in `values` (autograd goes through splat/blur/slice), not in `image`.
    """
    _check_image_values(image, values)
    b, c, h, w = values.shape
    lattice = PermutohedralLattice(
        bilateral_features(image, sigma_rgb, sigma_xy), sse_padding=sse_padding
    )
    flat = values.reshape(b, c, h * w).transpose(1, 2)
    return lattice.filter(flat).transpose(1, 2).reshape(b, c, h, w)
