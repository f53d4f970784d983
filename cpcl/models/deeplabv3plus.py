"""DeepLabv3+ head as in the official CPCL network (ASPP with one shared BN, additive pooling).

Module names (`aspp.map_convs`, `aspp.map_bn`, `reduce`, `last_conv`, ...) are the official ones,
kept so that official checkpoints load strictly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling, official variant.

    The four bias-free branches (1x1 and three dilated 3x3) share ONE BatchNorm over their
    concatenation, then LeakyReLU(0.01) and a 1x1 reduction. The image-pooling branch is
    ADDED to that reduction (not concatenated) before the final BN + LeakyReLU.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        dilation_rates: Sequence[int] = (6, 12, 18),
        hidden_channels: int = 256,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.map_convs = nn.ModuleList(
            [nn.Conv2d(in_channels, hidden_channels, 1, bias=False)]
            + [
                nn.Conv2d(in_channels, hidden_channels, 3, padding=r, dilation=r, bias=False)
                for r in dilation_rates
            ]
        )
        n_maps = len(self.map_convs)
        self.map_bn = nn.BatchNorm2d(hidden_channels * n_maps, eps=bn_eps, momentum=bn_momentum)
        self.global_pooling_conv = nn.Conv2d(in_channels, hidden_channels, 1, bias=False)
        self.global_pooling_bn = nn.BatchNorm2d(hidden_channels, eps=bn_eps, momentum=bn_momentum)
        self.red_conv = nn.Conv2d(hidden_channels * n_maps, out_channels, 1, bias=False)
        self.pool_red_conv = nn.Conv2d(hidden_channels, out_channels, 1, bias=False)
        self.red_bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.leak_relu = nn.LeakyReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([conv(x) for conv in self.map_convs], dim=1)
        out = self.red_conv(self.leak_relu(self.map_bn(out)))
        # Global pooling in train and eval alike (the official pooling_size=None).
        pool = x.mean(dim=(2, 3), keepdim=True)
        pool = self.leak_relu(self.global_pooling_bn(self.global_pooling_conv(pool)))
        out = out + self.pool_red_conv(pool)  # broadcast over H, W == the official repeat
        return self.leak_relu(self.red_bn(out))


class Head(nn.Module):
    """DeepLabv3+ decoder: ASPP on the last stage, fused with stride-4 layer1 features."""

    def __init__(
        self,
        in_channels: int = 2048,
        low_channels: int = 256,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, 256, (6, 12, 18), bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.reduce = nn.Sequential(
            nn.Conv2d(low_channels, 48, 1, bias=False),
            nn.BatchNorm2d(48, eps=bn_eps, momentum=bn_momentum),
            nn.ReLU(),
        )
        self.last_conv = nn.Sequential(
            nn.Conv2d(256 + 48, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256, eps=bn_eps, momentum=bn_momentum),
            nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256, eps=bn_eps, momentum=bn_momentum),
            nn.ReLU(),
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return the fused 256-channel feature at the resolution of `feats[0]` (stride 4)."""
        low = self.reduce(feats[0])
        high = self.aspp(feats[-1])
        high = F.interpolate(high, size=low.shape[2:], mode="bilinear", align_corners=True)
        return self.last_conv(torch.cat([high, low], dim=1))
