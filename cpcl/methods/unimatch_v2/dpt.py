"""UniMatch V2's DPT head (`model/semseg/dpt.py:21-113` and `model/util/blocks.py` of
LiheYoung/UniMatch-V2@f6afb4d), with the official state-dict names.

* `projects[i]`: 1x1 conv D -> out_channels[i] on the (B, D, ph, pw) token map.
* `resize_layers`: ConvTranspose k4 s4, ConvTranspose k2 s2, Identity, Conv 3x3 s2 p1
  (scales x4, x2, x1, /2 of the patch grid).
* `scratch.layer{1..4}_rn`: 3x3 convs without bias -> `features` (`_make_scratch`, expand False).
* `scratch.refinenet{1..4}`: FeatureFusionBlock (`blocks.py:83-148`) with ReLU, no BN,
  bilinear align_corners=True. `refinenet4` is called with one input, so its `resConfUnit1`
  is never used (it stays in the state dict and gets no gradient).
* `scratch.output_conv`: 3x3 conv, ReLU, 1x1 conv -> nclass, at 8x the patch grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DPTHead", "FeatureFusionBlock", "ResidualConvUnit"]


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x)))) (the official unit with `bn=False`)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(F.relu(self.conv1(F.relu(x))))
        return out + x


class FeatureFusionBlock(nn.Module):
    """path (+ resConfUnit1(skip)), resConfUnit2, bilinear upsample (to `size`, else x2,
    align_corners=True), then the 1x1 `out_conv` (expand False: same width)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        # Registration order = the official state-dict order.
        self.out_conv = nn.Conv2d(features, features, kernel_size=1, bias=True)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, *xs: Tensor, size: Sequence[int] | None = None) -> Tensor:
        output = xs[0]
        if len(xs) == 2:
            output = output + self.resConfUnit1(xs[1])
        output = self.resConfUnit2(output)
        if size is None:
            output = F.interpolate(output, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            output = F.interpolate(output, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(output)


def _fusion_stack(in_channels: Sequence[int], features: int, nclass: int) -> nn.Module:
    # The official `_make_scratch` container plus what DPTHead adds to it, in its order.
    scratch = nn.Module()
    for i, cin in enumerate(in_channels, start=1):
        conv = nn.Conv2d(cin, features, kernel_size=3, padding=1, bias=False)
        scratch.add_module(f"layer{i}_rn", conv)
    for i in range(1, 5):
        scratch.add_module(f"refinenet{i}", FeatureFusionBlock(features))
    scratch.output_conv = nn.Sequential(
        nn.Conv2d(features, features, kernel_size=3, padding=1),
        nn.ReLU(True),
        nn.Conv2d(features, nclass, kernel_size=1),
    )
    return scratch


class DPTHead(nn.Module):
    """The official `DPTHead(nclass, in_channels, features, use_bn=False, out_channels)`."""

    def __init__(
        self, nclass: int, in_channels: int, features: int, out_channels: Sequence[int]
    ) -> None:
        super().__init__()
        c = list(out_channels)
        if len(c) != 4:
            raise ValueError(f"DPT out_channels must have 4 entries, got {c}")
        self.projects = nn.ModuleList(nn.Conv2d(in_channels, ch, kernel_size=1) for ch in c)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(c[3], c[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = _fusion_stack(c, features, nclass)

    def forward(self, out_features: Sequence[Tensor], patch_h: int, patch_w: int) -> Tensor:
        """Four (B, ph*pw, D) token maps (row-major) -> logits (B, nclass, 8*ph, 8*pw)."""
        layers = []
        for i, x in enumerate(out_features):
            x = x.permute(0, 2, 1).reshape(x.shape[0], x.shape[-1], patch_h, patch_w)
            layers.append(self.resize_layers[i](self.projects[i](x)))
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(t) for i, t in enumerate(layers, start=1))
        path = s.refinenet4(l4, size=l3.shape[2:])
        path = s.refinenet3(path, l3, size=l2.shape[2:])
        path = s.refinenet2(path, l2, size=l1.shape[2:])
        path = s.refinenet1(path, l1)
        return s.output_conv(path)
