"""DINOv2 ViT encoder as UniMatch V2 builds it (`model/backbone/dinov2.py` and `dinov2_layers/`
of LiheYoung/UniMatch-V2@f6afb4d, the official `DINOv2(model_name)` arguments).

What is kept from the official code, and why:

* State-dict names and order: `cls_token`, `pos_embed`, `mask_token`, `patch_embed.proj.*`,
  `blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}`,
  `norm.*` (the giant size has `mlp.w12`/`mlp.w3`). No buffers. `mask_token` is never used by
  the forward (it is in the pretrained files, so it is kept and gets no gradient).
* `block_chunks=0`, no register tokens, LayerScale (`init_values=1.0`), LayerNorm eps 1e-6,
  exact GELU, qkv with bias, drop rates 0 (UniMatch V2 sets none, so no DropPath here).
* Attention is the plain path (`attention.py:49-62`, what `MemEffAttention` runs without
  xformers): `softmax((q * scale) @ k^T) @ v`, the scale applied to q before the product.
* Position embedding (`dinov2.py:179-210`): returned as is only for a square input with the
  pretraining patch count; otherwise the grid is resized by bicubic `F.interpolate` with
  `scale_factor=((h0 + 0.1) / 37, (w0 + 0.1) / 37)` (no antialias). The sampling positions
  follow that scale factor, not the output size, and the interpolation runs on
  `pos_embed.float()` (cast back afterwards), also in a float64 model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.init import trunc_normal_

from ...errors import ConfigError

__all__ = ["PATCH_SIZE", "DinoVisionTransformer"]

PATCH_SIZE = 14


class PatchEmbed(nn.Module):
    """`proj`: a patch_size x patch_size conv with stride patch_size; tokens in row-major order."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            # The official `patch_embed.py:72-73` asserts this.
            raise ConfigError(
                f"DINOv2 input {h}x{w} is not a multiple of the patch size {self.patch_size} "
                f"in both sides (crop_size and evaluation sizes must be multiples of 14)"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention, the official plain path (`attention.py:49-62`)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """`fc1`, exact GELU, `fc2` (the official `Mlp` with drop 0)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """The giant size's FFN (`swiglu_ffn.py`, the fallback without xformers): `w12`, `w3`, with
    the official hidden width `(int(hidden * 2 / 3) + 7) // 8 * 8`."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    """Per-channel scale `gamma` (official name), initialised to `init_values`."""

    def __init__(self, dim: int, init_values: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


_FFN = {"mlp": Mlp, "swiglufused": SwiGLUFFN}


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale: x + ls1(attn(norm1(x))), + ls2(mlp(norm2))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, ffn_layer: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _FFN[ffn_layer](dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    """The official `DinoVisionTransformer` as `DINOv2(model_name)` configures it.

    `img_size` sets the pretraining grid (`pos_embed` has 1 + (img_size // 14)^2 rows).
    `forward` returns the pre-norm patch tokens (official `forward`); UniMatch V2 calls
    `get_intermediate_layers`.
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        img_size: int = 518,
        patch_size: int = PATCH_SIZE,
        in_chans: int = 3,
        mlp_ratio: float = 4.0,
        ffn_layer: str = "mlp",
        interpolate_offset: float = 0.1,
    ) -> None:
        super().__init__()
        if ffn_layer not in _FFN:
            raise ConfigError(f"DINOv2 ffn_layer {ffn_layer!r}: expected one of {sorted(_FFN)}")
        if embed_dim % num_heads:
            raise ConfigError(f"DINOv2 embed_dim {embed_dim} is not divisible by {num_heads} heads")
        self.embed_dim = self.num_features = embed_dim
        self.n_blocks = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.interpolate_offset = interpolate_offset
        num_patches = (img_size // patch_size) ** 2
        # Registration order = the official state-dict order (cls_token, pos_embed, mask_token).
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, ffn_layer) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """The official init (`dinov2.py:172-177`): trunc-normal(0.02) `pos_embed` and Linear
        weights with zero biases, normal(1e-6) `cls_token`; the rest keeps PyTorch's init."""
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, x: Tensor, w: int, h: int) -> Tensor:
        """The position embedding for tokens `x` (B, 1 + N, D) of an image with `w` rows and
        `h` columns (the official names: `B, nc, w, h = x.shape`), as officially."""
        previous_dtype = x.dtype
        npatch = x.shape[1] - 1
        n = self.pos_embed.shape[1] - 1
        if npatch == n and w == h:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos_embed = pos_embed[:, 0]
        patch_pos_embed = pos_embed[:, 1:]
        dim = x.shape[-1]
        w0 = w // self.patch_size + self.interpolate_offset
        h0 = h // self.patch_size + self.interpolate_offset
        sqrt_n = math.sqrt(n)
        grid = int(sqrt_n)
        patch_pos_embed = F.interpolate(
            patch_pos_embed.reshape(1, grid, grid, dim).permute(0, 3, 1, 2),
            scale_factor=(w0 / sqrt_n, h0 / sqrt_n),
            mode="bicubic",
            antialias=False,
        )
        if patch_pos_embed.shape[-2:] != (int(w0), int(h0)):  # official assert (:207-208)
            raise ConfigError(
                f"position-embedding interpolation gave a {tuple(patch_pos_embed.shape[-2:])} "
                f"grid for a {int(w0)}x{int(h0)} patch grid"
            )
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(previous_dtype)

    def prepare_tokens(self, x: Tensor) -> Tensor:
        """Patch tokens with the cls token in front, plus the (interpolated) position embedding."""
        _, _, w, h = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        return tokens + self.interpolate_pos_encoding(tokens, w, h)

    def get_intermediate_layers(
        self, x: Tensor, n: int | Sequence[int] = 1, norm: bool = True
    ) -> tuple[Tensor, ...]:
        """Outputs of the blocks `n` (indices, or the last `n`), each through the final `norm`
        when `norm`, cls token dropped: a tuple of (B, ph*pw, D) (`dinov2.py:271-321`)."""
        depth = len(self.blocks)
        take = set(range(depth - n, depth) if isinstance(n, int) else n)
        if not take or min(take) < 0 or max(take) >= depth:
            raise ConfigError(f"intermediate layers {sorted(take)} outside the {depth} blocks")
        x = self.prepare_tokens(x)
        outputs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in take:
                outputs.append(x)
        if norm:
            outputs = [self.norm(out) for out in outputs]
        return tuple(out[:, 1:] for out in outputs)

    def forward(self, x: Tensor) -> Tensor:
        """Pre-norm patch tokens of the last block (the official `forward`)."""
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x = blk(x)
        return x[:, 1:]
