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
finiteness check of the features, the key range (one `tolist`) and the size of `torch.unique`.
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
    "position_features",
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
    """`y = E f`: (d, P) -> (d+1, P) in float32, in the official order of operations.

    Coordinates are rows (contiguous per coordinate, which is what every later step reads).
    """
    d = f.shape[0]
    scale = lattice_scale_factors(d)
    sm = torch.zeros_like(f[0])
    elevated: list[Tensor] = [sm] * (d + 1)
    for j in range(d, 0, -1):
        cf = f[j - 1] * scale[j - 1]
        elevated[j] = sm - cf * float(j)  # float32 product, then the difference
        sm = sm + cf
    elevated[0] = sm
    return torch.stack(elevated)


def _simplex(elevated: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Remainder-0 point, rank and barycentric weights of each elevated point (d+1, P).

    Returns `rem0` (d+1, P) int64, `rank` (d+1, P) int64 and `bary` (d+1, P) float32, the weight
    of the vertex of remainder r in row r.
    """
    d = elevated.shape[0] - 1
    down = float(np.float32(1.0) / np.float32(d + 1))
    # round-half-to-even, as _mm_cvtps_epi32 under the default MXCSR rounding mode
    v = torch.round(elevated * down)
    rem0 = v * float(d + 1)
    total = v.sum(dim=0).to(torch.int64)  # integer-valued: the float sum is exact
    diff = elevated - rem0
    rank = torch.zeros(elevated.shape, dtype=torch.int64, device=elevated.device)
    for i in range(d):  # the official pairwise `<` (ties counted the same way)
        for j in range(i + 1, d + 1):
            c = diff[i] < diff[j]
            rank[i] += c
            rank[j] += ~c
    rank += total
    # bring points off the plane back: one wrap of d+1, applied to rank and rem0 alike
    shift = (rank < 0).to(torch.int64) * (d + 1) - (rank > d).to(torch.int64) * (d + 1)
    rank += shift
    rem0 = rem0 + shift.to(rem0.dtype)
    vals = (elevated - rem0) * down
    # by_rank[r] = the coordinate value of rank r (rank is a permutation of 0..d)
    by_rank = torch.zeros_like(vals).scatter_(0, rank, vals)
    bary = torch.empty_like(vals)
    # official: b[d-rank] += v, b[d-rank+1] -= v, then b[0] += 1 + b[d+1]
    bary[1:] = by_rank[:d].flip(0) - by_rank[1:].flip(0)
    bary[0] = by_rank[d] + (1.0 - by_rank[0])
    return rem0.to(torch.int64), rank, bary


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
        rem0, rank, bary = _simplex(_elevate(f.reshape(-1, d).t().contiguous()))
        codes = self._vertex_codes(rem0, rank, b)
        uniq, inverse = torch.unique(codes, sorted=True, return_inverse=True)
        self.n_vertices = int(uniq.numel())
        self._codes = uniq
        self._offsets = inverse  # (d+1, P): vertex index of each point's remainder-r vertex
        self._weights = bary  # (d+1, P)
        # point-major copies for the splat, which adds in the official order (point by point)
        self._splat_index = inverse.t().reshape(-1)
        self._splat_weights = bary.t().contiguous()[:, :, None]  # (P, d+1, 1)
        self._neighbours = self._find_neighbours(uniq)
        self._alpha = lattice_alpha(d)

    def _vertex_codes(self, rem0: Tensor, rank: Tensor, n_images: int) -> Tensor:
        """(d+1, P) int64 code of each point's remainder-r vertex, image index as top digit.

        Vertex r has the key `rem0 + canonical[r][rank]` (first d coordinates), where
        canonical[r][k] = r - (d+1)·[k > d - r]. The key is packed in mixed radix with every digit
        range widened by 2d on both sides (vertices are within d of rem0, blur neighbours
        another d away), so the code is linear in the key and neighbours have valid codes.
        """
        d = rem0.shape[0] - 1
        ext = torch.cat([rem0[:d].amin(dim=1), rem0[:d].amax(dim=1)]).tolist()
        lo, hi = ext[:d], ext[d:]
        span = [h - low + 4 * d + 1 for low, h in zip(lo, hi, strict=True)]
        bits = sum(math.log2(s) for s in span) + math.log2(n_images)
        if bits > _MAX_CODE_BITS:
            raise CpclError(
                f"permutohedral lattice: the key range {span} x {n_images} images needs "
                f"{bits:.1f} bits (> {_MAX_CODE_BITS}); the features are spread too far for the "
                "lattice (sigmas too small for the feature range)"
            )
        strides = [1] * d
        for k in range(d - 2, -1, -1):
            strides[k] = strides[k + 1] * span[k + 1]
        self._strides, self._base = strides, [low - 2 * d for low in lo]
        self._image_stride = strides[0] * span[0]
        dev = rem0.device
        col = torch.tensor([*strides, 0], dtype=torch.int64, device=dev)[:, None]
        base = torch.tensor([*self._base, 0], dtype=torch.int64, device=dev)[:, None]
        image = torch.arange(n_images, device=dev).repeat_interleave(self._n_padded)
        code0 = ((rem0 - base) * col).sum(dim=0) + image * self._image_stride
        # [rank_k > d - r] switches on one coordinate per remainder, the one of rank d - r + 1:
        # a cumulative sum over the strides sorted by rank.
        by_rank = torch.zeros_like(rem0).scatter_(0, rank, col.expand_as(rem0))
        cum = torch.cumsum(by_rank.flip(0)[:d], dim=0)  # rank d, then d-1, ...: r = 1..d
        total = sum(strides)
        codes = [code0]
        for r in range(1, d + 1):
            codes.append(code0 + r * total - (d + 1) * cum[r - 1])
        return torch.stack(codes)

    def _find_neighbours(self, uniq: Tensor) -> Tensor:
        """(d+1, 2(M+1)) indices of the two blur neighbours along each axis (n1 rows, then n2).

        Official: along axis j, n1 = key - 1 except n1[j] = key[j] + d, n2 = key + 1 except
        n2[j] = key[j] - d; only the first d coordinates are keys (axis d changes all of them
        by ∓1). n2 is the inverse of n1, so only n1 is searched. Index M is a zero vertex that
        missing neighbours point to; its own neighbours are itself, so it stays zero.
        """
        d, m = self.dim, uniq.numel()
        total = sum(self._strides)
        out = torch.full((d + 1, 2, m + 1), m, dtype=torch.int64, device=uniq.device)
        ids = torch.arange(m, device=uniq.device)
        for j in range(d + 1):
            target = uniq + (-total + ((d + 1) * self._strides[j] if j < d else 0))
            pos = torch.searchsorted(uniq, target).clamp_(max=m - 1)
            found = uniq[pos] == target
            n1 = torch.where(found, pos, m)
            out[j, 0, :m] = n1
            # n2[n1[i]] = i; the missing ones all write M into row M (same value: no race)
            out[j, 1].scatter_(0, n1, torch.where(found, ids, m))
        return out.reshape(d + 1, 2 * (m + 1))

    def vertex_keys(self) -> tuple[Tensor, Tensor]:
        """(M, d) int64 keys (first d lattice coordinates) and (M,) image index of each vertex."""
        rest = self._codes.clone()
        image = torch.div(rest, self._image_stride, rounding_mode="floor")
        rest -= image * self._image_stride
        keys = []
        for stride, base in zip(self._strides, self._base, strict=True):
            digit = torch.div(rest, stride, rounding_mode="floor")
            rest -= digit * stride
            keys.append(digit + base)
        return torch.stack(keys, dim=1), image

    def point_vertices(self) -> tuple[Tensor, Tensor]:
        """(B, N, d+1) vertex index and barycentric weight of each point's remainder-r vertex."""
        shape = (self.dim + 1, self.batch, self._n_padded)
        off = self._offsets.reshape(shape)[:, :, : self.n_points].permute(1, 2, 0)
        w = self._weights.reshape(shape)[:, :, : self.n_points].permute(1, 2, 0)
        return off, w

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
        d, m = self.dim, self.n_vertices
        # Splat in the official order (point by point, remainders 0..d within a point).
        contrib = self._splat_weights * v[:, None, :]  # (P, d+1, C), contiguous
        lattice = v.new_zeros(m + 1, c)
        lattice.index_add_(0, self._splat_index, contrib.reshape(-1, c))
        del contrib
        # Without autograd, one gather buffer serves every axis (`out=` is not differentiable).
        reuse = not (torch.is_grad_enabled() and v.requires_grad)
        pair = v.new_empty(2 * (m + 1), c) if reuse else None
        for j in range(d + 1):  # official axis order; new = old + 1/2 (n1 + n2)
            if reuse:
                torch.index_select(lattice, 0, self._neighbours[j], out=pair)
            else:
                pair = lattice.index_select(0, self._neighbours[j])
            # in place is safe: the neighbours were gathered before the update
            lattice.add_(pair[: m + 1].add_(pair[m + 1 :]).mul_(0.5))
        # Slice as the official SSE code: out = Σ_r (weight_r · alpha) · vertex_r, r = 0..d.
        w = (self._weights * self._alpha)[:, :, None]
        out = lattice.index_select(0, self._offsets[0]).mul_(w[0])
        for r in range(1, d + 1):
            out += lattice.index_select(0, self._offsets[r]).mul_(w[r])
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


def position_features(b: int, h: int, w: int, sigma_xy: float, device=None) -> Tensor:
    """(B, H*W, 2) features `(x/σxy, y/σxy)` in float32, pixels in row-major order.

    x is the column and y the row, as in `initializePermutohedral` (bilateralfilter.cpp) and
    densecrf's `addPairwiseGaussian`. Float32 division by a full tensor: a scalar divisor may be
    turned into a multiplication by its reciprocal, which rounds differently.
    """
    if not (isinstance(sigma_xy, (int, float)) and math.isfinite(sigma_xy) and sigma_xy > 0):
        raise CpclError(f"lattice features: sigma_xy must be a positive number, got {sigma_xy!r}")
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device),
        torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    pos = torch.stack([xs, ys], dim=-1).reshape(1, h * w, 2).expand(b, h * w, 2)
    return pos / torch.full_like(pos, float(np.float32(sigma_xy)))


def bilateral_features(image: Tensor, sigma_rgb: float, sigma_xy: float) -> Tensor:
    """(B, H*W, 5) features `(x/σxy, y/σxy, r/σrgb, g/σrgb, b/σrgb)` in float32.

    As `initializePermutohedral` (bilateralfilter.cpp) and densecrf's `addPairwiseBilateral`:
    pixels in row-major order, float32 divisions (see `position_features`).
    """
    if not (isinstance(sigma_rgb, (int, float)) and math.isfinite(sigma_rgb) and sigma_rgb > 0):
        raise CpclError(f"lattice features: sigma_rgb must be a positive number, got {sigma_rgb!r}")
    b, _, h, w = image.shape
    pos = position_features(b, h, w, sigma_xy, image.device)
    rgb = image.to(torch.float32).reshape(b, 3, h * w).transpose(1, 2)
    rgb = rgb / torch.full_like(rgb, float(np.float32(sigma_rgb)))
    return torch.cat([pos, rgb], dim=2)


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
