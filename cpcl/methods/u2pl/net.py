"""U2PL's DeepLabv3+ (`u2pl/models/{resnet,base,decoder,model_helper}.py`, commit ab3d2be).

`U2PLNet` reproduces the official `ModelBuilder` of the `ours` configs with the official
state-dict names (`encoder.*`, `decoder.{low_conv,aspp,head,classifier,representation}.*`,
`auxor.aux.*`), so official `ckpt.pth` files load strictly:

* encoder: deep-stem ResNet-50/101 (3x3 convs 3-64-64-128, `bn1`, ceil-mode max-pool),
  `replace_stride_with_dilation=[False, True, True]` with multi-grid `[2, 2, 4]` on layer4
  (output stride 8), returning all four stages (`fpn=True`);
* decoder (`dec_deeplabv3_plus`): ASPP with five branches CONCATENATED (image pooling first,
  upsampled bilinear align_corners=True, then 1x1 and 3x3 at dilations 12/24/36, each
  conv+BN+ReLU, no projection), `head` (3x3 conv 1280->256, BN, ReLU, Dropout2d(0.1)),
  `low_conv` (1x1 conv WITH bias on layer1, BN, ReLU), `cat([low, up(head)])`, then the
  `classifier` and the 256-d `representation` heads (conv3x3+BN+ReLU+Dropout2d twice, 1x1);
* `auxor` (Cityscapes): 3x3 conv (with bias) 1024->256, BN, ReLU, Dropout2d(0.1), 1x1 conv on
  the layer3 output.

`forward` returns the official dict: `pred` and `rep` at 1/4 of the input (NOT upsampled: the
training loop upsamples) and, with the aux head, `aux` at 1/8. All BN layers are plain
`BatchNorm2d` (eps 1e-5, momentum 0.1); the official training converts them to SyncBatchNorm,
which has the same state-dict keys. Module call order (aspp, low_conv, head, classifier,
representation, auxor) is the official one, so train-mode Dropout2d draws come in the same
order from the global generator.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...checkpoint import load_backbone_weights, load_checkpoint, load_weights, unwrap
from ...errors import CheckpointError, CpclError
from ...models.resnet import BasicBlock, Bottleneck, ResNet, dilated_layout

__all__ = [
    "U2PLASPP",
    "U2PLAux",
    "U2PLDecoder",
    "U2PLNet",
    "load_u2pl_checkpoint",
    "load_u2pl_imagenet",
]

# Official: ResNet-50/101 (Bottleneck). ResNet-18/34 (BasicBlock, same layout and key names
# per block type) are a small-model extension for the toy data and the tests.
_LAYERS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1, bias: bool = False):
    pad = dilation if kernel == 3 else 0
    return [
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=bias),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class U2PLASPP(nn.Module):
    """Official `u2pl.models.base.ASPP`: five branches concatenated, no projection."""

    def __init__(
        self, in_planes: int, inner_planes: int = 256, dilations: Sequence[int] = (12, 24, 36)
    ) -> None:
        super().__init__()
        if len(dilations) != 3:
            raise CpclError(f"U2PL ASPP dilations={list(dilations)}: expected 3 rates")
        self.conv1 = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)), *_conv_bn_relu(in_planes, inner_planes, 1)
        )
        self.conv2 = nn.Sequential(*_conv_bn_relu(in_planes, inner_planes, 1))
        self.conv3 = nn.Sequential(*_conv_bn_relu(in_planes, inner_planes, 3, dilations[0]))
        self.conv4 = nn.Sequential(*_conv_bn_relu(in_planes, inner_planes, 3, dilations[1]))
        self.conv5 = nn.Sequential(*_conv_bn_relu(in_planes, inner_planes, 3, dilations[2]))
        self.out_planes = (len(dilations) + 2) * inner_planes

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        pooled = F.interpolate(self.conv1(x), size=(h, w), mode="bilinear", align_corners=True)
        branches = (self.conv2(x), self.conv3(x), self.conv4(x), self.conv5(x))
        return torch.cat((pooled, *branches), dim=1)


def _two_conv_head(out_channels: int) -> nn.Sequential:
    # classifier / representation: (3x3 conv + BN + ReLU + Dropout2d) x 2, then a 1x1 conv.
    return nn.Sequential(
        *_conv_bn_relu(512, 256, 3, bias=True),
        nn.Dropout2d(0.1),
        *_conv_bn_relu(256, 256, 3, bias=True),
        nn.Dropout2d(0.1),
        nn.Conv2d(256, out_channels, 1, bias=True),
    )


class U2PLDecoder(nn.Module):
    """Official `dec_deeplabv3_plus` (with the 256-d representation head when `rep_head`)."""

    def __init__(
        self,
        in_planes: int,
        num_classes: int,
        inner_planes: int = 256,
        dilations: Sequence[int] = (12, 24, 36),
        rep_head: bool = True,
        low_planes: int = 256,
    ) -> None:
        super().__init__()
        self.rep_head = rep_head
        # Registration order = official state-dict order: low_conv, aspp, head, classifier, rep.
        # `low_planes`: layer1 channels (256 officially; 64 for the ResNet-18/34 extension).
        self.low_conv = nn.Sequential(*_conv_bn_relu(low_planes, 256, 1, bias=True))
        self.aspp = U2PLASPP(in_planes, inner_planes, dilations)
        self.head = nn.Sequential(*_conv_bn_relu(self.aspp.out_planes, 256, 3), nn.Dropout2d(0.1))
        self.classifier = _two_conv_head(num_classes)
        if rep_head:
            self.representation = _two_conv_head(256)

    def forward(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        """`feats` = the four encoder stages; returns `{"pred", "rep"}` at layer1 size."""
        x1, _, _, x4 = feats
        aspp_out = self.aspp(x4)
        low_feat = self.low_conv(x1)
        aspp_out = self.head(aspp_out)
        aspp_out = F.interpolate(
            aspp_out, size=low_feat.shape[-2:], mode="bilinear", align_corners=True
        )
        fused = torch.cat((low_feat, aspp_out), dim=1)
        out = {"pred": self.classifier(fused)}
        if self.rep_head:
            out["rep"] = self.representation(fused)
        return out


class U2PLAux(nn.Module):
    """Official `Aux_Module`: auxiliary logits from the layer3 output (1/8 resolution)."""

    def __init__(self, in_planes: int, num_classes: int) -> None:
        super().__init__()
        self.aux = nn.Sequential(
            *_conv_bn_relu(in_planes, 256, 3, bias=True),
            nn.Dropout2d(0.1),
            nn.Conv2d(256, num_classes, 1, bias=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.aux(x)


class U2PLNet(nn.Module):
    """U2PL's `ModelBuilder` for the `ours` configs (DeepLabv3+, ResNet-50/101, OS 8).

    Args:
        num_classes: 21 (VOC) or 19 (Cityscapes).
        backbone: "resnet101" (official), "resnet50", or "resnet18" / "resnet34" (BasicBlock
            trunk of the same layout, not official: small runs on the toy data and tests).
        aux_loss: add the layer3 auxiliary head `auxor` (Cityscapes config).
        aux_planes: input channels of the auxiliary head (official 1024, layer3; None: the
            layer3 width of the backbone).
        inner_planes, dilations: ASPP width and rates (official 256, (12, 24, 36)).
        rep_head: build the representation head (`rep` output; always on in `ours`).
        zero_init_residual: zero the last BN weight of each block before any weights are
            loaded (official config: True; ImageNet / checkpoint loading overwrites it).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet101",
        *,
        aux_loss: bool = False,
        aux_planes: int | None = None,
        inner_planes: int = 256,
        dilations: Sequence[int] = (12, 24, 36),
        rep_head: bool = True,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if backbone not in _LAYERS:
            raise CpclError(f"U2PLNet backbone={backbone!r}: expected one of {', '.join(_LAYERS)}")
        if int(num_classes) < 2:
            raise CpclError(f"U2PLNet num_classes={num_classes!r}: expected >= 2")
        block, layers = _LAYERS[backbone]
        # Official multi-grid [2, 2, 4]; the 2-block layer4 of ResNet-18 takes its first two.
        grid = [2, 2, 4][: layers[3]]
        strides, dils = dilated_layout(layers, [False, True, True], multi_grid=grid)
        self.encoder = ResNet(
            block,
            layers,
            deep_stem=True,
            stem_width=64,
            layer_strides=strides,
            layer_dilations=dils,
            maxpool_ceil_mode=True,
        )
        if zero_init_residual:
            for m in self.encoder.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)
        widths = self.encoder.out_channels
        self.decoder = U2PLDecoder(
            widths[-1], num_classes, inner_planes, dilations, rep_head, low_planes=widths[0]
        )
        aux_in = widths[2] if aux_planes is None else int(aux_planes)
        self.auxor = U2PLAux(aux_in, num_classes) if aux_loss else None
        self.num_classes = int(num_classes)

    def features(self, x: Tensor) -> list[Tensor]:
        """The four encoder stages (strides 4, 8, 8, 8)."""
        return self.encoder(x)

    def decode(self, feats: Sequence[Tensor]) -> dict[str, Tensor]:
        """Decoder (+ auxiliary head) outputs from the encoder stages, in official order."""
        out = self.decoder(feats)
        if self.auxor is not None:
            out["aux"] = self.auxor(feats[2])
        return out

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """`{"pred": (B,C,H/4,W/4), "rep": (B,256,H/4,W/4)[, "aux": (B,C,H/8,W/8)]}`."""
        return self.decode(self.features(x))


def load_u2pl_checkpoint(
    model: nn.Module,
    path_or_obj: str | os.PathLike | Mapping[str, Any],
    key: str = "model_state",
) -> dict[str, list[str]]:
    """Load the student (`key="model_state"`) or teacher (`"teacher_state"`) of an official
    U2PL `ckpt.pth` strictly (the `module.` prefix of the DDP-saved weights is removed)."""
    source = "the given checkpoint" if isinstance(path_or_obj, Mapping) else str(path_or_obj)
    obj = path_or_obj if isinstance(path_or_obj, Mapping) else load_checkpoint(path_or_obj)
    inner = obj.get(key)
    if not isinstance(inner, Mapping):
        raise CheckpointError(
            f"{source}: no {key!r} entry (a U2PL ckpt.pth has 'model_state' and "
            f"'teacher_state'; top-level keys: {', '.join(map(str, list(obj)[:8]))})"
        )
    try:
        return load_weights(model, dict(inner), strict=True)
    except CheckpointError as err:
        raise CheckpointError(f"{source} [{key}]: {err}") from None


def load_u2pl_imagenet(model: nn.Module, path: str | os.PathLike) -> None:
    """Load the ImageNet ResNet file U2PL trains from (`model_urls['resnet101']`).

    The official code loads it into its bare `ResNet` (no `encoder.` prefix) with
    `strict=False`. Here every encoder key must be present and fit, except that a missing
    `num_batches_tracked` counter keeps its value (0) and an ImageNet `fc.*` classifier is
    dropped; both are logged. `model` is a `U2PLNet` (or its encoder).
    """
    target = unwrap(model)
    load_backbone_weights(getattr(target, "encoder", target), path, keep_missing_counters=True)
