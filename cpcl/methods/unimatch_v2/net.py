"""UniMatch V2's network: DINOv2 encoder + DPT head (`model/semseg/dpt.py:116-172` of
LiheYoung/UniMatch-V2@f6afb4d), plus `comp_drop`, `lock_backbone`, the official optimiser
groups and the weight loaders.

State-dict names are the official `DPT` module's (`backbone.*` = DINOv2, `head.*` = DPTHead; no
buffers), so official checkpoints (`{'model': ...}` with the DDP `module.` prefix) load strictly
through `load_unimatch_v2_checkpoint`, and the official `pretrained/dinov2_{small,base,large}.pth`
(bare encoder keys, loaded officially by `model.backbone.load_state_dict`, `unimatch_v2.py:60-61`)
load strictly into `.backbone` through `load_dinov2_pretrained`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...checkpoint import extract_state_dict, load_checkpoint, load_weights
from ...errors import CheckpointError, ConfigError
from .dinov2 import PATCH_SIZE, DinoVisionTransformer
from .dpt import DPTHead

__all__ = [
    "BACKBONES",
    "CompDropDraws",
    "UniMatchV2Net",
    "build_unimatch_v2_net",
    "draw_comp_drop",
    "load_dinov2_pretrained",
    "load_unimatch_v2_checkpoint",
    "lock_backbone",
    "param_groups",
]


def _cfg(size: str, dim: int, depth: int, heads: int, idx: tuple, feat: int, out: tuple, **kw):
    return MappingProxyType(
        {
            "encoder_size": size,
            "embed_dim": dim,
            "depth": depth,
            "num_heads": heads,
            "img_size": kw.get("img_size", 518),
            "ffn_layer": kw.get("ffn_layer", "mlp"),
            "intermediate_layer_idx": idx,
            "features": feat,
            "out_channels": out,
        }
    )


# Official configs: encoder sizes from `model/backbone/dinov2.py:341-417` (img_size 518 =
# pretraining grid 37x37), layer indices from `dpt.py:123-128`, DPT `features`/`out_channels`
# from `unimatch_v2.py:54-59`. The giant size (SwiGLU FFN) has no UniMatch V2 config file.
# `dinov2_toy` is the fixtures' `tiny` config (pretraining grid 3x3 at img_size 42), for tests
# and the toy benchmark.
BACKBONES: Mapping[str, Mapping] = MappingProxyType(
    {
        "dinov2_small": _cfg("small", 384, 12, 6, (2, 5, 8, 11), 64, (48, 96, 192, 384)),
        "dinov2_base": _cfg("base", 768, 12, 12, (2, 5, 8, 11), 128, (96, 192, 384, 768)),
        "dinov2_large": _cfg("large", 1024, 24, 16, (4, 11, 17, 23), 256, (256, 512, 1024, 1024)),
        "dinov2_giant": _cfg(
            "giant", 1536, 40, 24, (9, 19, 29, 39), 384, (1536,) * 4, ffn_layer="swiglufused"
        ),
        "dinov2_toy": _cfg("toy", 32, 6, 2, (1, 2, 4, 5), 16, (8, 16, 32, 32), img_size=42),
    }
)


class CompDropDraws(NamedTuple):
    """The random draws of one `comp_drop` forward (the official locals of `dpt.py:149-160`)."""

    binomial_sample: Tensor  # (B/2, D) float32 0/1, drawn first
    randperm: Tensor  # int64 randperm(B/2), drawn second
    kept_indexes: Tensor  # its first int(B/2 * 0.5) entries: pairs that keep every channel
    dropout_mask: Tensor  # (B, D) float32: cat(2*b, 2 - 2*b) with the kept rows set to 1


def draw_comp_drop(bs: int, dim: int, generator: torch.Generator | None = None) -> CompDropDraws:
    """Complementary channel dropout masks for a batch cat(s1, s2) of `bs` images.

    As `dpt.py:149-160`: `Binomial(0.5).sample((bs//2, dim)) * 2` for the s1 half, `2 - that`
    for the s2 half, then `randperm(bs//2)[:int(bs//2 * 0.5)]` pairs keep every channel (1).
    The draws come from `generator` (a CPU generator; None = torch's global RNG, which is
    what the official code uses, so seeding it reproduces the official draws exactly).
    """
    if bs % 2:
        raise ConfigError(
            f"comp_drop needs an even batch cat(s1, s2) of complementary pairs, got {bs} images"
        )
    half = bs // 2
    # `torch.binomial` is what `Binomial(probs=0.5).sample` calls, with the same arguments.
    sample = torch.binomial(
        torch.ones(half, dim), torch.full((half, dim), 0.5), generator=generator
    )
    mask1 = sample * 2.0
    mask2 = 2.0 - mask1
    perm = torch.randperm(half, generator=generator)
    kept = perm[: int(half * (1 - 0.5))]
    mask1[kept, :] = 1.0
    mask2[kept, :] = 1.0
    return CompDropDraws(sample, perm, kept, torch.cat((mask1, mask2)))


class UniMatchV2Net(nn.Module):
    """The official `DPT`: `backbone` (DINOv2) and `head` (DPTHead).

    `forward(x, comp_drop=False, generator=None, drop_masks=None)` returns logits at
    (H//14*14, W//14*14) (H, W must be multiples of 14): the head output (8x the patch grid)
    upsampled bilinearly with align_corners=True. With `comp_drop=True` every intermediate
    feature is multiplied by the (B, D) complementary mask of `draw_comp_drop` (drawn from
    `generator`), or by `drop_masks` when given (e.g. stored draws); it applies in eval mode
    too, as officially.
    """

    def __init__(
        self,
        nclass: int,
        *,
        encoder_size: str,
        embed_dim: int,
        depth: int,
        num_heads: int,
        img_size: int,
        ffn_layer: str,
        intermediate_layer_idx: tuple[int, ...],
        features: int,
        out_channels: tuple[int, ...],
    ) -> None:
        super().__init__()
        if len(intermediate_layer_idx) != 4 or not all(
            0 <= i < depth for i in intermediate_layer_idx
        ):
            raise ConfigError(
                f"intermediate_layer_idx {list(intermediate_layer_idx)}: expected 4 block "
                f"indices in [0, {depth})"
            )
        self.encoder_size = encoder_size
        self.intermediate_layer_idx = tuple(intermediate_layer_idx)
        self.backbone = DinoVisionTransformer(
            embed_dim, depth, num_heads, img_size=img_size, ffn_layer=ffn_layer
        )
        self.head = DPTHead(nclass, embed_dim, features, out_channels)

    def lock_backbone(self) -> None:
        """The official `DPT.lock_backbone`."""
        lock_backbone(self)

    def forward(
        self,
        x: Tensor,
        comp_drop: bool = False,
        generator: torch.Generator | None = None,
        drop_masks: Tensor | None = None,
    ) -> Tensor:
        """Official `DPT.forward` (`dpt.py:141-172`); see the class docstring."""
        patch_h, patch_w = x.shape[-2] // PATCH_SIZE, x.shape[-1] // PATCH_SIZE
        features = self.backbone.get_intermediate_layers(x, self.intermediate_layer_idx)
        if comp_drop:
            bs, dim = features[0].shape[0], features[0].shape[-1]
            if drop_masks is None:
                drop_masks = draw_comp_drop(bs, dim, generator).dropout_mask
            elif tuple(drop_masks.shape) != (bs, dim):
                raise ConfigError(
                    f"drop_masks has shape {tuple(drop_masks.shape)}, expected {(bs, dim)}"
                )
            # The mask stays float32 as officially (a float64 feature promotes it).
            mask = drop_masks.to(features[0].device).unsqueeze(1)
            features = tuple(f * mask for f in features)
        out = self.head(features, patch_h, patch_w)
        return F.interpolate(
            out, (patch_h * PATCH_SIZE, patch_w * PATCH_SIZE), mode="bilinear", align_corners=True
        )


def build_unimatch_v2_net(backbone: str, nclass: int, **overrides) -> UniMatchV2Net:
    """The official `DPT(**model_configs[size], nclass=nclass)` for `backbone` (a BACKBONES key).

    `overrides` replace config values (`embed_dim`, `depth`, `num_heads`, `img_size`,
    `ffn_layer`, `intermediate_layer_idx`, `features`, `out_channels`), e.g. for tests.
    """
    if backbone not in BACKBONES:
        raise ConfigError(f"backbone {backbone!r}: expected one of {', '.join(BACKBONES)}")
    cfg = dict(BACKBONES[backbone])
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ConfigError(f"unknown UniMatch V2 network settings {unknown}; known: {sorted(cfg)}")
    cfg.update(overrides)
    if int(nclass) < 1:
        raise ConfigError(f"nclass {nclass}: expected a positive number of classes")
    cfg["intermediate_layer_idx"] = tuple(int(i) for i in cfg["intermediate_layer_idx"])
    cfg["out_channels"] = tuple(int(c) for c in cfg["out_channels"])
    return UniMatchV2Net(int(nclass), **cfg)


def lock_backbone(model: nn.Module) -> None:
    """The official `DPT.lock_backbone`: `requires_grad=False` on every encoder parameter."""
    for p in model.backbone.parameters():
        p.requires_grad = False


def param_groups(model: nn.Module, lr: float, lr_multi: float) -> list[dict]:
    """The official AdamW groups (`unimatch_v2.py:67-73`): the trainable encoder parameters at
    `lr` (empty with a locked backbone), every parameter whose name lacks `backbone` at
    `lr * lr_multi`. No parameter is excluded from weight decay."""
    return [
        {"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": lr},
        {
            "params": [p for n, p in model.named_parameters() if "backbone" not in n],
            "lr": lr * lr_multi,
        },
    ]


def _size_hint(sd: Mapping[str, Tensor], encoder: DinoVisionTransformer) -> str:
    hints = []
    if any(k.startswith("backbone.") for k in sd):
        hints.append(
            "the file holds a whole segmentation network (backbone.* keys): load it with "
            "load_unimatch_v2_checkpoint"
        )
    cls = sd.get("cls_token")
    if torch.is_tensor(cls) and cls.shape[-1] != encoder.embed_dim:
        sizes = [n for n, c in BACKBONES.items() if c["embed_dim"] == cls.shape[-1]]
        hints.append(
            f"the file's embed dim is {cls.shape[-1]} ({' or '.join(sizes) or 'no known size'}),"
            f" the model's {encoder.embed_dim}: choose --backbone to match"
        )
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    if blocks and len(blocks) != len(encoder.blocks):
        hints.append(f"the file has {len(blocks)} blocks, the model {len(encoder.blocks)}")
    return ("\n  hint: " + "; ".join(hints)) if hints else ""


def load_dinov2_pretrained(model_or_backbone: nn.Module, path: str | os.PathLike) -> None:
    """Load an official `dinov2_{small,base,large}.pth` (bare encoder keys: `cls_token`,
    `pos_embed`, `mask_token`, `patch_embed.*`, `blocks.*`, `norm.*`) strictly into the
    network's `.backbone` (or into a bare `DinoVisionTransformer`).

    Missing, unexpected or mis-shaped keys raise CheckpointError listing them, with a hint
    when the file is of another size or is a whole-network checkpoint.
    """
    encoder = getattr(model_or_backbone, "backbone", model_or_backbone)
    if not isinstance(encoder, DinoVisionTransformer):
        raise CheckpointError(
            f"load_dinov2_pretrained({path}): expected a UniMatch V2 network or its DINOv2 "
            f"encoder, got {type(model_or_backbone).__name__}"
        )
    sd = extract_state_dict(load_checkpoint(path), str(path))
    try:
        load_weights(encoder, sd, strict=True)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}{_size_hint(sd, encoder)}") from None


def load_unimatch_v2_checkpoint(
    model: UniMatchV2Net, path: str | os.PathLike
) -> dict[str, list[str]]:
    """Load an official UniMatch V2 `latest.pth`/`best.pth` (`model` entry, DDP `module.`
    prefix) or a bare `DPT` state dict strictly."""
    return load_weights(model, path, strict=True)
