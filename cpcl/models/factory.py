"""One model factory for training, evaluation, the quickstart and the benchmarks.

`build_model(arch, settings)` builds a registered architecture from a `ModelSettings`:

* "two_branch": the official CPCL `Network` (`branch1`, `branch2`; sup, CPS, CPCL);
* "deeplabv3plus": one `SingleNetwork` (ResNet + DeepLabv3+ head + classifier).

A network that only one method uses lives in that method's package (`cpcl/methods/<name>/`)
and is built there; a shared one registers a builder in `ARCHITECTURES`: a function
`(ModelSettings) -> nn.Module`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import CpclError
from .network import Network, SingleNetwork


@dataclass(frozen=True)
class ModelSettings:
    """What a segmentation network is built from (config keys of the same names)."""

    num_classes: int
    backbone: str = "resnet50"
    pretrained: str | None = None
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1

    @classmethod
    def from_config(cls, C: Any, *, pretrained: bool = True) -> ModelSettings:
        """Read `num_classes`, `backbone`, `pretrained_model` (unless `pretrained=False`, as
        for evaluation, where the snapshot replaces every weight), `bn_eps`, `bn_momentum`."""
        return cls(
            num_classes=int(C.num_classes),
            backbone=str(C.backbone),
            pretrained=C.get("pretrained_model") if pretrained else None,
            bn_eps=float(C.bn_eps),
            bn_momentum=float(C.bn_momentum),
        )


def _two_branch(s: ModelSettings) -> nn.Module:
    return Network(s.num_classes, s.backbone, s.pretrained, s.bn_eps, s.bn_momentum)


def _single(s: ModelSettings) -> nn.Module:
    return SingleNetwork(s.num_classes, s.backbone, s.pretrained, s.bn_eps, s.bn_momentum)


ARCHITECTURES: dict[str, Callable[[ModelSettings], nn.Module]] = {
    "two_branch": _two_branch,
    "deeplabv3plus": _single,
}


def build_model(arch: str, settings: ModelSettings) -> nn.Module:
    """The network `arch` (a key of `ARCHITECTURES`) built from `settings`, on the CPU."""
    if arch not in ARCHITECTURES:
        raise CpclError(f"architecture {arch!r}: expected one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](settings)
