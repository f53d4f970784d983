"""UniMatch's DeepLabV3+ (`model/semseg/deeplabv3plus.py` of LiheYoung/UniMatch@0324f3d).

Not the CPCL head: five ASPP branches (1x1, three dilated 3x3 at 6/12/18, image pooling) each
with BN+ReLU, a 1x1 projection with no dropout, a 48-channel low-level `reduce`, a `fuse` of
[low-level, ASPP] (low-level first) through two 3x3 conv+BN+ReLU, and a 1x1 classifier with
bias. The backbone is the deep-stem ResNet (stem 64-64-128) with torchvision's
`replace_stride_with_dilation=[False, False, True]` (output stride 16; the first layer4 block
keeps dilation 1) and a floor-mode 3x3/2 max-pool. Every upsample is bilinear with
`align_corners=True`. BN layers are plain `BatchNorm2d(eps=1e-5, momentum=0.1)`; the official
training converts them to SyncBatchNorm, whose state-dict keys are the same.

State-dict names are the official ones (`backbone.*`, `head.b0..b4`, `head.project`, `reduce`,
`fuse`, `classifier`), so official checkpoints (`{'model': ..., 'optimizer': ...}` with the DDP
`module.` prefix) load strictly through `cpcl.checkpoint.load_weights`, and UniMatch's ImageNet
file `pretrained/resnet101.pth` (backbone keys without the `backbone.` prefix; the official
`_resnet` loads it into the bare ResNet with `strict=False`) loads strictly into `.backbone`
through `load_unimatch_pretrained`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...checkpoint import load_backbone_weights, load_weights
from ...models.resnet import ResNet, dilated_layout, resnet18, resnet34, resnet50, resnet101

__all__ = [
    "ASPPModule",
    "UniMatchDeepLabV3Plus",
    "feature_dropout",
    "load_unimatch_checkpoint",
    "load_unimatch_pretrained",
]

# resnet18/34 (BasicBlock, 64/512 channels) are not in UniMatch: small-test and toy sizes only.
_BACKBONES = {
    "resnet18": (resnet18, (2, 2, 2, 2)),
    "resnet34": (resnet34, (3, 4, 6, 3)),
    "resnet50": (resnet50, (3, 4, 6, 3)),
    "resnet101": (resnet101, (3, 4, 23, 3)),
}


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    pad = 0 if kernel == 1 else dilation
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _up(x: Tensor, size: Sequence[int]) -> Tensor:
    # `size` is passed as given (no tuple(...)): a torch.fx trace (`fold_batchnorm`) cannot
    # iterate the traced `x.shape[-2:]`.
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ASPPPooling(nn.Module):
    """Image pooling branch: GAP, 1x1 conv, BN, ReLU (`gap.0..3`), upsampled back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.gap = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(in_channels, out_channels, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return _up(self.gap(x), x.shape[-2:])


class ASPPModule(nn.Module):
    """Official ASPP: b0 (1x1), b1..b3 (3x3 at `atrous_rates`), b4 (pooling), `project` (1x1)."""

    def __init__(self, in_channels: int, atrous_rates: Sequence[int]) -> None:
        super().__init__()
        if len(atrous_rates) != 3:
            raise ValueError(f"ASPP dilations={list(atrous_rates)}: expected three rates")
        out = in_channels // 8
        self.b0 = _conv_bn_relu(in_channels, out, 1)
        self.b1 = _conv_bn_relu(in_channels, out, 3, atrous_rates[0])
        self.b2 = _conv_bn_relu(in_channels, out, 3, atrous_rates[1])
        self.b3 = _conv_bn_relu(in_channels, out, 3, atrous_rates[2])
        self.b4 = ASPPPooling(in_channels, out)
        self.project = _conv_bn_relu(5 * out, out, 1)

    def forward(self, x: Tensor) -> Tensor:
        feats = [branch(x) for branch in (self.b0, self.b1, self.b2, self.b3, self.b4)]
        return self.project(torch.cat(feats, 1))


def feature_dropout(c1: Tensor, c4: Tensor, p: float = 0.5) -> tuple[Tensor, Tensor]:
    """UniMatch's feature perturbation: a fresh `nn.Dropout2d(p)` on c1, then one on c4.

    The official code builds the two modules inside `forward`, so they are always in training
    mode (whatever the network's mode): each (sample, channel) map is zeroed with probability
    p and kept maps are scaled by 1/(1-p). The c1 mask is drawn before the c4 mask, from the
    torch global RNG, as in the official call order.
    """
    return F.dropout2d(c1, p, training=True), F.dropout2d(c4, p, training=True)


class UniMatchDeepLabV3Plus(nn.Module):
    """The official UniMatch segmentation network.

    Args:
        num_classes: classifier outputs (`nclass`: 21 Pascal, 19 Cityscapes).
        backbone: "resnet101" (official), "resnet50", or "resnet18"/"resnet34" (not in
            UniMatch; the same head on 64/512-channel features, for tests and toy runs).
        dilations: ASPP rates (`dilations`, official [6, 12, 18]).
        replace_stride_with_dilation: torchvision flags for layer2..4 (official [F, F, T]).
        fp_dropout: channel-dropout probability of the feature perturbation (official 0.5).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet101",
        dilations: Sequence[int] = (6, 12, 18),
        replace_stride_with_dilation: Sequence[bool] = (False, False, True),
        fp_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if backbone not in _BACKBONES:
            raise ValueError(
                f"UniMatch backbone={backbone!r}: expected one of {sorted(_BACKBONES)}"
            )
        if int(num_classes) < 1:
            raise ValueError(f"UniMatch num_classes={num_classes!r}: expected a positive count")
        if not 0.0 <= fp_dropout < 1.0:
            raise ValueError(f"UniMatch fp_dropout={fp_dropout!r}: expected 0 <= p < 1")
        build, blocks = _BACKBONES[backbone]
        strides, layer_dilations = dilated_layout(blocks, replace_stride_with_dilation)
        self.backbone: ResNet = build(
            deep_stem=True, stem_width=64, layer_strides=strides, layer_dilations=layer_dilations
        )
        low_channels, high_channels = self.backbone.out_channels[0], self.backbone.out_channels[3]
        self.head = ASPPModule(high_channels, dilations)
        self.reduce = _conv_bn_relu(low_channels, 48, 1)
        self.fuse = nn.Sequential(
            *_conv_bn_relu(high_channels // 8 + 48, 256, 3),
            *_conv_bn_relu(256, 256, 3),
        )
        self.classifier = nn.Conv2d(256, num_classes, 1, bias=True)
        self.fp_dropout = float(fp_dropout)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Backbone pass: (c1, c4), the layer1 (stride 4) and layer4 outputs (256 / 2048 ch for
        ResNet-50/101)."""
        feats = self.backbone(x)
        return feats[0], feats[-1]

    def decode(self, c1: Tensor, c4: Tensor, size: Sequence[int] | None = None) -> Tensor:
        """The official `_decode` (logits at c1 resolution), upsampled to `size` when given."""
        c4 = _up(self.head(c4), c1.shape[-2:])
        out = self.classifier(self.fuse(torch.cat([self.reduce(c1), c4], dim=1)))
        return out if size is None else _up(out, size)

    def forward(self, x: Tensor, need_fp: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits at the input size; with `need_fp`, `(out, out_fp)` from one decoder pass.

        need_fp: the decoder runs once on `cat(clean, dropped)` so that its BN layers
        normalise clean and perturbed features together, then `chunk(2)` splits the result.
        """
        size = x.shape[-2:]
        c1, c4 = self.features(x)
        if not need_fp:
            return self.decode(c1, c4, size)
        d1, d4 = feature_dropout(c1, c4, self.fp_dropout)
        outs = self.decode(torch.cat((c1, d1)), torch.cat((c4, d4)), size)
        out, out_fp = outs.chunk(2)
        return out, out_fp


def load_unimatch_checkpoint(
    model: UniMatchDeepLabV3Plus, path: str | os.PathLike
) -> dict[str, list[str]]:
    """Load an official `latest.pth` / `best.pth` (`model` entry, `module.` prefix) strictly."""
    return load_weights(model, path, strict=True)


def load_unimatch_pretrained(model: UniMatchDeepLabV3Plus, path: str | os.PathLike) -> None:
    """Load UniMatch's ImageNet `pretrained/resnet{50,101}.pth` into `model.backbone` strictly.

    The file holds the bare ResNet keys (`conv1.0.weight`, `bn1.*`, `layer1.0.conv1.weight`,
    ...); a classifier (`fc.*`) stored in it is dropped, every other key must fit.
    """
    load_backbone_weights(model.backbone, path)
