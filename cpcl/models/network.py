"""The two-branch CPCL network: two independent DeepLabv3+ (ResNet) segmenters.

`state_dict` keys are identical to the official `exp_voc/network.py` / `exp_city/network.py`
(`branch{1,2}.backbone.*`, `branch{1,2}.head.*`, `branch{1,2}.classifier.*`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_backbone_weights
from .deeplabv3plus import Head
from .resnet import BACKBONES


class SingleNetwork(nn.Module):
    """ResNet backbone (deep stem, output stride 16) + DeepLabv3+ head + 1x1 classifier."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: str | None = None,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone={backbone!r}: expected one of {', '.join(BACKBONES)}")
        self.backbone = BACKBONES[backbone](
            deep_stem=True,
            stem_width=64,
            output_stride=16,
            bn_eps=bn_eps,
            bn_momentum=bn_momentum,
        )
        if pretrained:
            load_backbone_weights(self.backbone, pretrained)
        low, high = self.backbone.out_channels[0], self.backbone.out_channels[-1]
        self.head = Head(high, low, bn_eps=bn_eps, bn_momentum=bn_momentum)
        self.classifier = nn.Conv2d(256, num_classes, 1, bias=True)
        # The official code re-initialises only the new layers (head + classifier).
        for module in (self.head, self.classifier):
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's four stage outputs (strides 4, 8, 16, 16)."""
        return self.backbone(x)

    def decode(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(head feature, logits)` at stride 4 from `features(x)` (perturbed or not)."""
        feature = self.head(feats)
        return feature, self.classifier(feature)

    def forward(
        self, x: torch.Tensor, return_feature: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, C, H, W) at the input size; with `return_feature` also the head feature."""
        feature, logits = self.decode(self.features(x))
        logits = F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=True)
        return (feature, logits) if return_feature else logits


class Network(nn.Module):
    """Two `SingleNetwork` branches with identical architecture and different weights.

    `forward(x, step=1)` runs branch 1 and `step=2` branch 2; `Network(x)` in eval mode is
    branch 1, which is what the official evaluator measures.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: str | None = None,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        kwargs = dict(
            backbone=backbone, pretrained=pretrained, bn_eps=bn_eps, bn_momentum=bn_momentum
        )
        self.branch1 = SingleNetwork(num_classes, **kwargs)
        self.branch2 = SingleNetwork(num_classes, **kwargs)

    def forward(self, x: torch.Tensor, step: int = 1) -> torch.Tensor:
        """Logits of branch `step` (1 or 2)."""
        if step == 1:
            return self.branch1(x)
        if step == 2:
            return self.branch2(x)
        raise ValueError(f"step={step!r}: expected 1 or 2")
