"""UniMatch V2's network: DINOv2 encoder + DPT head (`model/semseg/dpt.py` of
LiheYoung/UniMatch-V2@f6afb4d). INTERFACE STUB: the bodies follow in the next commits.

State-dict names are the official `DPT` module's (`backbone.*` = DINOv2, `head.*` = DPTHead),
so official checkpoints and the official `dinov2_{small,base,large}.pth` backbone files load
strictly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType

import torch
from torch import nn

__all__ = [
    "BACKBONES",
    "build_unimatch_v2_net",
    "load_dinov2_pretrained",
    "lock_backbone",
    "param_groups",
]


def _cfg(**kw) -> Mapping:
    return MappingProxyType(kw)


# Official configs: encoder sizes from `model/backbone/dinov2.py:327-417`, layer indices from
# `dpt.py:125-130`, DPT `features`/`out_channels` from `unimatch_v2.py:54-59`. `dinov2_toy` is
# the fixtures' `tiny` config (pretraining grid 3x3 at img_size 42), for tests and the toy.
BACKBONES: Mapping[str, Mapping] = MappingProxyType(
    {
        "dinov2_small": _cfg(
            encoder_size="small",
            embed_dim=384,
            depth=12,
            num_heads=6,
            img_size=518,
            ffn_layer="mlp",
            intermediate_layer_idx=(2, 5, 8, 11),
            features=64,
            out_channels=(48, 96, 192, 384),
        ),
        "dinov2_base": _cfg(
            encoder_size="base",
            embed_dim=768,
            depth=12,
            num_heads=12,
            img_size=518,
            ffn_layer="mlp",
            intermediate_layer_idx=(2, 5, 8, 11),
            features=128,
            out_channels=(96, 192, 384, 768),
        ),
        "dinov2_large": _cfg(
            encoder_size="large",
            embed_dim=1024,
            depth=24,
            num_heads=16,
            img_size=518,
            ffn_layer="mlp",
            intermediate_layer_idx=(4, 11, 17, 23),
            features=256,
            out_channels=(256, 512, 1024, 1024),
        ),
        "dinov2_giant": _cfg(
            encoder_size="giant",
            embed_dim=1536,
            depth=40,
            num_heads=24,
            img_size=518,
            ffn_layer="swiglufused",
            intermediate_layer_idx=(9, 19, 29, 39),
            features=384,
            out_channels=(1536, 1536, 1536, 1536),
        ),
        "dinov2_toy": _cfg(
            encoder_size="toy",
            embed_dim=32,
            depth=6,
            num_heads=2,
            img_size=42,
            ffn_layer="mlp",
            intermediate_layer_idx=(1, 2, 4, 5),
            features=16,
            out_channels=(8, 16, 32, 32),
        ),
    }
)


def build_unimatch_v2_net(backbone: str, nclass: int, **overrides) -> nn.Module:
    """The official `DPT(**model_configs[size], nclass)`; `overrides` replace BACKBONES values.

    The module's `forward(x, comp_drop=False, generator=None, drop_masks=None)` is the official
    `DPT.forward`: logits at (H//14*14, W//14*14). With `comp_drop=True` the batch must be
    cat(s1, s2) (even size); the Binomial(0.5) channel masks and the kept-pair randperm are
    drawn from `generator` (a CPU generator; None = the global RNG, as officially) in the
    official order, or taken from `drop_masks` ((B, D) float, the official `dropout_mask`).
    """
    raise NotImplementedError("stub")


def lock_backbone(model: nn.Module) -> None:
    """The official `DPT.lock_backbone`: `requires_grad=False` on every encoder parameter."""
    for p in model.backbone.parameters():
        p.requires_grad = False


def param_groups(model: nn.Module, lr: float, lr_multi: float) -> list[dict]:
    """The official AdamW groups (`unimatch_v2.py:67-73`): trainable encoder parameters at `lr`,
    every parameter whose name lacks `backbone` at `lr * lr_multi`."""
    return [
        {"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": lr},
        {
            "params": [p for n, p in model.named_parameters() if "backbone" not in n],
            "lr": lr * lr_multi,
        },
    ]


def load_dinov2_pretrained(model_or_backbone: nn.Module, path: str | os.PathLike) -> None:
    """Load an official `dinov2_{small,base,large}.pth` (bare encoder keys) strictly into the
    network's `.backbone` (or into a bare encoder); mismatches raise CheckpointError."""
    raise NotImplementedError("stub")


_ = torch  # stub
