"""ResNet-18/34/50/101 backbones returning the four stage outputs (no avgpool, no fc).

Parameter names follow the official furnace ResNet (and torchvision), so the ImageNet files
`resnet50_v1c.pth` / `resnet101_v1c.pth` load by name. The deep stem of the official network is
three 3x3 convs (3->w, w->w, w->2w) kept in one `nn.Sequential` called `conv1` (indices 0..6)
followed by `bn1`: those names are kept for checkpoint compatibility.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ResNet", "dilated_layout", "resnet18", "resnet34", "resnet50", "resnet101"]


def _bn(channels: int, eps: float, momentum: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34); both get the block's dilation."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = _bn(planes, bn_eps, bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = _bn(planes, bn_eps, bn_momentum)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # In place, as the official ResNets (`out += residual`): the same sum without a fresh
        # activation-sized tensor (batch norm's backward does not need its output).
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck with the stride on the 3x3 conv (ResNet v1.5 / v1c)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _bn(planes, bn_eps, bn_momentum)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = _bn(planes, bn_eps, bn_momentum)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _bn(planes * 4, bn_eps, bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity  # in place, as the official ResNets (see BasicBlock.forward)
        return self.relu(out)


def dilated_layout(
    blocks: Sequence[int],
    replace_stride_with_dilation: Sequence[bool],
    multi_grid: Sequence[int] | None = None,
) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """Per-layer strides and per-block dilations of torchvision's `replace_stride_with_dilation`.

    This is the scheme of the U2PL and UniMatch backbones (both copy torchvision's `_make_layer`):
    a replaced layer gets stride 1 and doubles the running dilation, but its *first* block keeps
    the previous dilation (times `multi_grid[0]`); the other blocks get the new dilation (times
    `multi_grid[i]`). `multi_grid` applies to layer4 only (U2PL: `[2, 2, 4]`). Returns
    `(strides, dilations)` for layer1..layer4, to pass to `ResNet(layer_strides=...,
    layer_dilations=...)`.
    """
    if len(blocks) != 4 or len(replace_stride_with_dilation) != 3:
        raise ValueError(
            f"dilated_layout: expected 4 block counts and 3 replace flags, got {list(blocks)} "
            f"and {list(replace_stride_with_dilation)}"
        )
    if multi_grid is not None and len(multi_grid) != blocks[3]:
        raise ValueError(
            f"multi_grid={list(multi_grid)}: expected one factor per layer4 block ({blocks[3]})"
        )
    strides, dilations = [1], [(1,) * blocks[0]]
    dilation = 1
    for i, replace in enumerate(replace_stride_with_dilation):
        n = blocks[i + 1]
        previous = dilation
        if replace:
            dilation *= 2
        grids = list(multi_grid) if (multi_grid is not None and i == 2) else [1] * n
        strides.append(1 if replace else 2)
        dilations.append((previous * grids[0], *(dilation * g for g in grids[1:])))
    return tuple(strides), tuple(dilations)


class ResNet(nn.Module):
    """ResNet trunk returning `[layer1, layer2, layer3, layer4]` outputs.

    output_stride 16 (the official segmentation setting) removes the stride of layer4 and
    dilates the 3x3 convs of its blocks by 2, 4, 8 (the official multi-grid); the first
    block's 1x1 downsample conv then has stride 1. output_stride 32 is the plain classifier trunk.
    `layer_strides` / `layer_dilations` (see `dilated_layout`) replace that choice with an explicit
    layout (U2PL: output stride 8 with multi-grid; UniMatch: torchvision-style output stride 16);
    `maxpool_ceil_mode` is U2PL's stem max-pool (`ceil_mode=True`).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        deep_stem: bool = True,
        stem_width: int = 64,
        output_stride: int = 16,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        layer_strides: Sequence[int] | None = None,
        layer_dilations: Sequence[Sequence[int]] | None = None,
        maxpool_ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride={output_stride}: expected 16 or 32")
        self._bn_args = (bn_eps, bn_momentum)
        if deep_stem:
            self.conv1 = nn.Sequential(
                _conv3x3(3, stem_width, stride=2),
                _bn(stem_width, bn_eps, bn_momentum),
                nn.ReLU(inplace=True),
                _conv3x3(stem_width, stem_width),
                _bn(stem_width, bn_eps, bn_momentum),
                nn.ReLU(inplace=True),
                _conv3x3(stem_width, stem_width * 2),
            )
            self.inplanes = stem_width * 2
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.inplanes = 64
        self.bn1 = _bn(self.inplanes, bn_eps, bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=maxpool_ceil_mode)
        if (layer_strides is None) != (layer_dilations is None):
            raise ValueError("layer_strides and layer_dilations must be given together")
        if layer_strides is None:
            # The official CPCL layout: layer4 unstrided with multi-grid dilations 2, 4, 8.
            layer_strides = (1, 2, 2, 1 if output_stride == 16 else 2)
            layer_dilations = [[1] * n for n in layers]
            if output_stride == 16:
                layer_dilations[3] = [2 ** (i + 1) for i in range(layers[3])]
        for n, dil in zip(layers, layer_dilations, strict=True):
            if len(dil) != n:
                raise ValueError(
                    f"layer_dilations={layer_dilations}: expected {list(layers)} blocks"
                )
        stages = [
            self._make_layer(block, planes, n, stride=s, dilations=d)
            for planes, n, s, d in zip(
                (64, 128, 256, 512), layers, layer_strides, layer_dilations, strict=True
            )
        ]
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = (64, 128, 256, 512) if block is BasicBlock else (256, 512, 1024, 2048)
        self._init_weights()

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int,
        dilations: Sequence[int] | None = None,
    ) -> nn.Sequential:
        dilations = list(dilations) if dilations is not None else [1] * blocks
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                _bn(planes * block.expansion, *self._bn_args),
            )
        layers = [block(self.inplanes, planes, stride, dilations[0], downsample, *self._bn_args)]
        self.inplanes = planes * block.expansion
        for i in range(1, blocks):
            layers.append(block(self.inplanes, planes, 1, dilations[i], None, *self._bn_args))
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # Used only without ImageNet weights (training from scratch, tests, the toy quickstart).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats


def resnet18(**kwargs) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2])."""
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet34(**kwargs) -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3])."""
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3])."""
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def resnet101(**kwargs) -> ResNet:
    """ResNet-101 (Bottleneck, [3, 4, 23, 3])."""
    return ResNet(Bottleneck, [3, 4, 23, 3], **kwargs)


BACKBONES = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
}
