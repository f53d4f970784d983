"""CoSA's ViT encoder (official `models/vit/vit.py:219-321`, `models/vit/deit.py:68`), no timm.

timm cannot be imported here (timm 1.0 imports torchvision at import time), so this is a small
pre-norm ViT whose state-dict names are identical to the official / timm ones:
`cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.N.{norm1, attn.qkv, attn.proj, norm2,
mlp.fc1, mlp.fc2}`, `norm`, `head` (1000-way, never used in the forward).

Official semantics reproduced:
* `pos_embed` is a Parameter with `requires_grad=False` (`vit.py:237`); its 14x14 grid part is
  resized **bicubic, align_corners=False** to the token grid on every forward (`vit.py:283-299`).
* Attention is `softmax((q @ k^T) * head_dim**-0.5)` written out as the official code (no fused
  SDPA kernel); LayerNorm eps 1e-6; exact (erf) GELU.
* `forward_features` returns `(cls token, final normed patch tokens, aux patch tokens)` where the
  aux tokens are the output of block `aux_layer` (indexed into the list of block outputs)
  **without** the final norm, except that entry -1 of that list is replaced by the normed tokens
  (`vit.py:315-321`), so `aux_layer=-1` gives normed tokens.

Pretrained weights (`load_vit_pretrained`): the official `vit_base_patch16_224(pretrained=True)`
calls timm 0.9.5 `load_pretrained` with its own `pretrained_cfg`
(`url=.../v0.1-vitjx/jx_vit_base_p16_224-80ecf9dd.pth`, mean/std 0.5), i.e. the original
JAX-ported ViT-B/16 ImageNet-21k pre-trained, ImageNet-1k fine-tuned weights (timm name
`vit_base_patch16_224.orig_in21k_ft_in1k`), loaded **strictly** with the 1000-way head kept
(`_conv_filter` is a no-op for these conv-shaped weights). `deit_tiny_patch16_224(pretrained=True)`
loads `deit_tiny_patch16_224-a1311bcf.pth` (`checkpoint["model"]`) strictly. Nothing is ever
downloaded here: the caller passes the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...checkpoint import load_checkpoint
from ...errors import CheckpointError, CpclError

__all__ = ["VIT_CONFIGS", "ViTConfig", "VisionTransformer", "build_vit", "load_vit_pretrained"]


@dataclass(frozen=True)
class ViTConfig:
    """Size of one official ViT backbone (patch 16, 224 input grid, depth 12, MLP ratio 4)."""

    embed_dim: int
    num_heads: int
    depth: int = 12
    mlp_ratio: int = 4
    patch_size: int = 16
    img_size: int = 224
    num_classes: int = 1000


# The backbone names as the official `backbone` argument spells them.
VIT_CONFIGS: dict[str, ViTConfig] = {
    "vit_base_patch16_224": ViTConfig(embed_dim=768, num_heads=12),
    "deit_tiny_patch16_224": ViTConfig(embed_dim=192, num_heads=3),
    # Not an official backbone: a tiny ViT for tests and the toy benchmark (no pretrained file).
    "vit_toy_patch16": ViTConfig(embed_dim=64, num_heads=2, depth=4, mlp_ratio=2),
}


class PatchEmbed(nn.Module):
    """16x16 stride-16 conv (with bias); a remainder of H or W is dropped (floor)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention, `softmax(q k^T * head_dim^-0.5)` as the official code."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise CpclError(f"ViT attention: dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # Explicit product then scale, as `vit.py:127`. F.scaled_dot_product_attention would
        # also meet the fixture tolerances on CPU (measured: f64 3e-15, f32 1.1e-6 on
        # forward_cosa.pt), but its kernel choice varies by backend; this form is the official.
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> GELU (erf) -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (all drop rates are 0 in CoSA)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """The official `VisionTransformer` (patch input, no hybrid, no dropout)."""

    def __init__(self, cfg: ViTConfig, aux_layer: int = -3) -> None:
        super().__init__()
        if not -cfg.depth <= aux_layer < cfg.depth:
            raise CpclError(
                f"ViT aux_layer={aux_layer!r}: expected an index into {cfg.depth} blocks"
            )
        self.embed_dim = self.num_features = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.aux_layer = aux_layer
        self._size = cfg.img_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        # A parameter (it is in the state dict, the optimiser groups and the EMA) that never
        # receives a gradient, as `vit.py:237`.
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self._size * self._size + 1, cfg.embed_dim), requires_grad=False
        )
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)  # unused, kept for the state dict
        self._init_weights()

    def _init_weights(self) -> None:
        """timm-style init (trunc normal 0.02, zero biases, unit LayerNorms)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with the cls token prepended and the resized position embedding added."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.patch_embed(x)
        grid = self.pos_embed[:, 1:, :].reshape(1, self._size, self._size, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        grid = grid.reshape(1, -1, h * w).permute(0, 2, 1)
        pos_embed = torch.cat((self.pos_embed[:, :1, :], grid), dim=1)
        tokens = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), tokens), dim=1)
        return tokens + pos_embed

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cls token (B,D), normed patch tokens (B,N,D), aux patch tokens (B,N,D))."""
        x = self.prepare_tokens(x)
        embeds = []
        for blk in self.blocks:
            x = blk(x)
            embeds.append(x)
        x = self.norm(x)
        embeds[-1] = x  # only the last entry is replaced by the normed tokens
        return x[:, 0], x[:, 1:], embeds[self.aux_layer][:, 1:]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.forward_features(x)


def build_vit(backbone: str, aux_layer: int = -3) -> VisionTransformer:
    """The encoder for an official backbone name (`vit_base_patch16_224`, `deit_tiny_...`)."""
    if backbone not in VIT_CONFIGS:
        raise CpclError(f"CoSA backbone {backbone!r}: expected one of {sorted(VIT_CONFIGS)}")
    return VisionTransformer(VIT_CONFIGS[backbone], aux_layer=aux_layer)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"ViT pretrained weights {path}: file not found")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise CheckpointError(
                f"ViT pretrained weights {path}: reading .safetensors needs the `safetensors` "
                "package (not installed); convert the file to a .pth state dict"
            ) from err
        return load_file(str(path))
    try:
        # The project's loader: a web page or archive saved as .pth is "not a checkpoint
        # (corrupt or wrong file)", not torch's weights_only=False advice.
        obj = load_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"ViT pretrained weights: {err}") from None
    # DeiT releases wrap the state dict as {"model": ...}.
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"ViT pretrained weights {path}: not a state dict of tensors")
    return obj


def load_vit_pretrained(encoder: VisionTransformer, path: str | Path) -> None:
    """Load timm's ImageNet weights file `path` into `encoder` strictly (no download).

    `.pth`/`.bin` state dicts (optionally under a `"model"` key) or `.safetensors` (when the
    `safetensors` package is importable). Missing / unexpected keys or shape mismatches raise a
    `CheckpointError` that lists them.
    """
    path = Path(path)
    state = _read_state_dict(path)
    own = encoder.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"ViT pretrained weights {path} do not fit the encoder: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''} ({len(missing)}), unexpected {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)}), shape mismatches "
            f"{shapes[:8]} ({len(shapes)})"
        )
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k])
