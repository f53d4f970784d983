"""The official ImageNet weights files: where each comes from, its layout, and the start-up check.

The shipped configs name, per method, the file its official code trains from (paths relative to
the repository root, see `cpcl.config.resolve_weights_path`). A run checks the file before any
image is read (`weights_problem`): a missing or unreadable file stops it with the path, the
expected layout and where the file comes from; the strict key check happens when the model is
built, and its error gets the same explanation (`explain_weights`). `C.pretrained_model = None`
(given explicitly) trains from random weights, with a warning line. docs/datasets.md has the
same table for readers ("Pretrained weights").
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

_RESNET_KEYS = (
    "conv1.0.weight, conv1.1.{weight,bias,running_mean,running_var}, conv1.3.weight, "
    "conv1.4.*, conv1.6.weight, bn1.*, layer1.0.conv1.weight, layer1.0.bn1.*, "
    "layer1.0.downsample.0.weight, ..., layer4.2.bn3.running_var (fc.* is dropped)"
)


@dataclass(frozen=True)
class WeightsInfo:
    """One official pretrained file: what it holds and where its official code gets it."""

    name: str  # the file name the official code/README uses
    layout: str  # the state-dict key names it holds (a sample)
    origin: str  # where it comes from: URL / README instructions
    sha256: str | None = None  # where published


# Keyed by the default path the shipped configs use (relative to the repository root).
OFFICIAL_WEIGHTS: dict[str, WeightsInfo] = {
    "DATA/pytorch-weight/resnet50_v1c.pth": WeightsInfo(
        "resnet50_v1c.pth",
        "deep-stem ResNet-50 (stem 64-64-128, v1c): " + _RESNET_KEYS,
        "the CPCL README (github.com/leofansq/CPCL, 'Download the ResNet-50/ResNet-101 for "
        "training and move it to ./DATA/pytorch-weight/'): Baidu Cloud "
        "https://pan.baidu.com/s/1agsf6BSvmVVGTvk23JXxaw (code skrv); the same file as "
        "TorchSemiSeg (CPS) distributes",
    ),
    "DATA/pytorch-weight/resnet101_v1c.pth": WeightsInfo(
        "resnet101_v1c.pth",
        "deep-stem ResNet-101 (stem 64-64-128, v1c): " + _RESNET_KEYS,
        "the CPCL README: Baidu Cloud https://pan.baidu.com/s/1PLg22P_Nv9GwR-KEzGdvTA "
        "(code 0g8u); the same file as TorchSemiSeg (CPS) distributes",
    ),
    "DATA/pytorch-weight/u2pl/resnet101.pth": WeightsInfo(
        "resnet101.pth",
        "deep-stem ResNet-101 (U2PL's `model_urls['resnet101']`): " + _RESNET_KEYS,
        "the U2PL README ('Prepare Pretrained Backbone'): Google Drive "
        "https://drive.google.com/file/d/1nzSX8bX3zoRREn6WnoEeAPbKYPPOa-3Y/view or Baidu "
        "https://pan.baidu.com/s/1FDQGlhjzQENfPp4HTYfbeA (code 3p9h)",
    ),
    "DATA/pytorch-weight/unimatch/resnet101.pth": WeightsInfo(
        "resnet101.pth",
        "deep-stem ResNet-101 (UniMatch's `pretrained/resnet101.pth`): " + _RESNET_KEYS,
        "the UniMatch README ('Pretrained Backbone'): Google Drive "
        "https://drive.google.com/file/d/1Rx0legsMolCWENpfvE2jUScT3ogalMO8/view",
    ),
    "DATA/pytorch-weight/jx_vit_base_p16_224-80ecf9dd.pth": WeightsInfo(
        "jx_vit_base_p16_224-80ecf9dd.pth",
        "timm ViT-B/16: cls_token, pos_embed, patch_embed.proj.{weight,bias}, "
        "blocks.0.norm1.weight, blocks.0.attn.qkv.weight, ..., blocks.11.mlp.fc2.bias, "
        "norm.{weight,bias}, head.{weight,bias} (same names as ours, no conversion)",
        "timm 0.9.5 (CoSA's requirements.txt), `vit_base_patch16_224(pretrained=True)` as in "
        "CoSA's args.py downloads https://github.com/rwightman/pytorch-image-models/releases/"
        "download/v0.1-vitjx/jx_vit_base_p16_224-80ecf9dd.pth (timm name "
        "vit_base_patch16_224.orig_in21k_ft_in1k); the hash prefix 80ecf9dd is in the name",
    ),
    **{
        f"DATA/pytorch-weight/dinov2_{size}.pth": WeightsInfo(
            f"dinov2_{size}.pth",
            f"DINOv2 ViT-{letter}/14 (official names, no conversion): cls_token, pos_embed, "
            "mask_token, patch_embed.proj.{weight,bias}, blocks.0.norm1.*, blocks.0.attn.qkv.*, "
            "blocks.0.ls1.gamma, blocks.0.mlp.fc1.*, ..., norm.{weight,bias}",
            "the UniMatch V2 README ('Pre-trained Encoders'): the DINOv2 release "
            f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{letter.lower()}14/"
            f"dinov2_vit{letter.lower()}14_pretrain.pth, saved as "
            f"pretrained/dinov2_{size}.pth in the official run folder",
        )
        for size, letter in (("small", "S"), ("base", "B"), ("large", "L"))
    },
}


def weights_info(path: str | os.PathLike) -> WeightsInfo | None:
    """The official file `path` names (matched on its trailing path parts), or None."""
    parts = Path(path).parts
    for key, info in OFFICIAL_WEIGHTS.items():
        # The part below DATA/pytorch-weight: u2pl/resnet101.pth and unimatch/resnet101.pth
        # share a file name, so their folder is part of the match.
        want = Path(key).parts[2:]
        if tuple(parts[-len(want) :]) == want:
            return info
    return None


def explain_weights(path: str | os.PathLike) -> str:
    """Lines saying what file `path` should be and where it comes from."""
    info = weights_info(path)
    if info is None:
        return (
            "  expected: an ImageNet weights file in the layout of the method's backbone (see "
            "docs/datasets.md, 'Pretrained weights')\n"
            "  to train from random weights instead: --pretrained_model=None"
        )
    return (
        f"  expected: {info.name}, {info.layout}\n"
        f"  where it comes from: {info.origin}\n"
        "  (docs/datasets.md, 'Pretrained weights'); to train from random weights instead: "
        "--pretrained_model=None"
    )


def weights_problem(path: str | os.PathLike | None) -> str | None:
    """Why the weights file `path` cannot be used (missing, not a file, unreadable), with what
    it should be and where it comes from; None when it can be opened (or `path` is None)."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        why = "file not found"
    elif not p.is_file():
        why = "not a file"
    elif not os.access(p, os.R_OK):
        why = "not readable (permissions)"
    elif p.stat().st_size == 0:
        why = "empty file"
    else:
        return None
    return f"C.pretrained_model = {p}: {why}\n{explain_weights(p)}"


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The SHA-256 of file `path` (hex), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
