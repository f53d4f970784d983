"""CoSA's network: the official `VITNetwork` (`models/__init__.py:82-206`) with LargeFOV.

State-dict keys (order included) equal the official ones: `encoder.*` (the ViT), `decoder.conv6`,
`decoder.conv7`, `decoder.conv8` (no biases), `classifier.weight`, `aux_classifier.weight`
((C-1, D, 1, 1), no bias). The model has no buffers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CpclError
from .vit import build_vit, load_vit_pretrained

__all__ = ["CoSANet", "LargeFOV"]


class LargeFOV(nn.Module):
    """conv6 3x3 dil 5 -> ReLU -> conv7 3x3 dil 5 -> ReLU -> conv8 1x1 (`conv_head.py`)."""

    def __init__(
        self, in_planes: int, out_planes: int, dilation: int = 5, width: int = 512
    ) -> None:
        super().__init__()
        self.embed_dim = width  # official 512; smaller only for toy networks
        self.dilation = dilation
        self.conv6 = nn.Conv2d(in_planes, width, 3, padding=dilation, dilation=dilation, bias=False)
        self.relu6 = nn.ReLU(inplace=True)
        self.conv7 = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation, bias=False)
        self.relu7 = nn.ReLU(inplace=True)
        self.conv8 = nn.Conv2d(width, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv8(self.relu7(self.conv7(self.relu6(self.conv6(x)))))


class CoSANet(nn.Module):
    """`VITNetwork(backbone, num_classes, pretrained, aux_layer, isgap, decoder="LargeFOV")`.

    `pretrained` is a path to timm's ImageNet weights for the encoder (see
    `vit.load_vit_pretrained`), or None/False for the random timm-style init (nothing is ever
    downloaded). `decoder_width` is LargeFOV's channel count (official 512; smaller only for toy
    networks). `num_classes` counts the background; the classifiers have `num_classes - 1`
    outputs. `isgap=False` (the official setting) pools with adaptive max pooling.
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        pretrained: str | bool | None = None,
        aux_layer: int = -3,
        isgap: bool = False,
        decoder: str = "LargeFOV",
        decoder_width: int = 512,
    ) -> None:
        super().__init__()
        if decoder != "LargeFOV":
            raise CpclError(f"CoSA decoder {decoder!r}: only 'LargeFOV' is implemented")
        if num_classes < 2:
            raise CpclError(f"CoSA num_classes={num_classes!r}: expected >= 2 (with background)")
        self.num_classes = num_classes
        self.encoder = build_vit(backbone, aux_layer=aux_layer)
        if pretrained is True:
            raise CpclError(
                "CoSA pretrained=True: pass the path of the timm ImageNet weights file "
                "(no download is done)"
            )
        if pretrained:
            load_vit_pretrained(self.encoder, pretrained)
        dim = self.encoder.embed_dim
        self.pooling = F.adaptive_avg_pool2d if isgap else F.adaptive_max_pool2d
        self.decoder = LargeFOV(dim, num_classes, width=decoder_width)
        self.classifier = nn.Conv2d(dim, num_classes - 1, kernel_size=1, bias=False)
        self.aux_classifier = nn.Conv2d(dim, num_classes - 1, kernel_size=1, bias=False)

    def param_groups(self) -> list[list[nn.Parameter]]:
        """The official `get_param_groups` (`models/__init__.py:126-144`).

        [encoder params without "norm" in the name (incl. cls_token, pos_embed, head),
        encoder params with "norm", classifier + aux_classifier weights, decoder params].
        """
        groups: list[list[nn.Parameter]] = [[], [], [], []]
        for name, param in self.encoder.named_parameters():
            groups[1 if "norm" in name else 0].append(param)
        groups[2] += [self.classifier.weight, self.aux_classifier.weight]
        groups[3] += list(self.decoder.parameters())
        return groups

    @staticmethod
    def _to_2d(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        n, _, c = x.shape
        return x.transpose(1, 2).reshape(n, c, h, w)

    def forward(
        self, x: torch.Tensor, cam_only: bool = False, seg_only: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Official forward (`detach='none'`).

        Returns `(cls, cls_aux, feature, seg, cam, cam_aux)`; `(cam, cam_aux)` with `cam_only`;
        `seg` with `seg_only` (checked first, as the official code). `seg` stays at 1/16.
        """
        if x.dim() != 4:
            raise CpclError(f"CoSANet input of shape {tuple(x.shape)}: expected (B, 3, H, W)")
        _, feat, feat_aux = self.encoder.forward_features(x)
        p = self.encoder.patch_size
        h, w = x.shape[-2] // p, x.shape[-1] // p
        feature = self._to_2d(feat, h, w)
        feature_aux = self._to_2d(feat_aux, h, w)
        seg = self.decoder(feature)
        if seg_only:
            return seg
        cam = F.conv2d(feature, self.classifier.weight)
        cam_aux = F.conv2d(feature_aux, self.aux_classifier.weight)
        if cam_only:
            return cam, cam_aux
        cls_aux = self.aux_classifier(self.pooling(feature_aux, (1, 1)))
        cls = self.classifier(self.pooling(feature, (1, 1)))
        k = self.num_classes - 1
        return cls.view(-1, k), cls_aux.view(-1, k), feature, seg, cam, cam_aux
