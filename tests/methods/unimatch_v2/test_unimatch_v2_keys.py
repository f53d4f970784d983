"""UniMatch V2 state-dict names, order and shapes against the official key lists
(`keys_unimatch_v2_*.json`: DINOv2-S/B/L VOC, S Cityscapes, the tiny configs), and strict
loading of official-named `dinov2_*.pth` encoder files."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_golden

from cpcl.checkpoint import load_weights
from cpcl.methods.unimatch_v2.net import build_unimatch_v2_net

PREFIX = "keys_unimatch_v2_"


def _tiny_overrides(golden_dir, keys_file: str) -> dict:
    # The tiny network's sizes are stored with the forward cases (`tiny_config`): those of a
    # case using this key file, else those of any tiny case (the class count differs only).
    cases = load_golden(golden_dir, "forward_unimatch_v2.pt")["cases"].values()
    tiny = [c for c in cases if c["tiny_config"]]
    assert tiny, "forward_unimatch_v2.pt has no tiny case"
    own = [c for c in tiny if c["keys_file"] == keys_file]
    return tiny_config_overrides((own or tiny)[0]["tiny_config"])


def tiny_config_overrides(tc: dict) -> dict:
    """`build_unimatch_v2_net("dinov2_toy", ...)` overrides for a fixture's `tiny_config`."""
    return {
        "img_size": tc["img_size"],
        "embed_dim": tc["embed_dim"],
        "depth": tc["depth"],
        "num_heads": tc["num_heads"],
        "intermediate_layer_idx": tc["idx"],
        "features": tc["features"],
        "out_channels": tc["out_channels"],
    }


def _key_files(golden_dir):
    files = sorted(golden_dir.glob(f"{PREFIX}*.json"))
    if not files:
        pytest.skip(f"no {PREFIX}*.json in {golden_dir}")
    return files


def _build_meta(golden_dir, path, official):
    stem = path.stem[len(PREFIX) :]
    nclass = dict((k, s) for k, s, _ in official)["head.scratch.output_conv.2.weight"][0]
    # Shapes only: the meta device builds even ViT-L without memory or time.
    with torch.device("meta"):
        if stem.startswith("tiny"):
            return build_unimatch_v2_net(
                "dinov2_toy", nclass, **_tiny_overrides(golden_dir, path.name)
            )
        return build_unimatch_v2_net("_".join(stem.split("_")[:2]), nclass)


def test_state_dict_keys_are_official(golden_dir):
    for path in _key_files(golden_dir):
        official = json.loads(path.read_text())
        sd = _build_meta(golden_dir, path, official).state_dict()
        assert [k for k, _, _ in official] == list(sd), path.name
        assert [list(s) for _, s, _ in official] == [list(v.shape) for v in sd.values()], path.name
        assert {d for _, _, d in official} == {"float32"}
        assert all(v.dtype == torch.float32 for v in sd.values()), path.name


def test_official_encoder_files_load_strictly(golden_dir):
    """An official `dinov2_*.pth` holds the `backbone.*` keys without the prefix
    (`unimatch_v2.py:60-61` loads it with `model.backbone.load_state_dict`)."""
    for path in _key_files(golden_dir):
        official = json.loads(path.read_text())
        model = _build_meta(golden_dir, path, official)
        encoder_sd = {
            k[len("backbone.") :]: torch.empty(s, device="meta")
            for k, s, _ in official
            if k.startswith("backbone.")
        }
        report = load_weights(model.backbone, encoder_sd, strict=True)
        assert report == {"missing": [], "unexpected": [], "shape_mismatch": []}, path.name
        # The whole network loads strictly with the official names as well.
        full = {k: torch.empty(s, device="meta") for k, s, _ in official}
        assert load_weights(model, full, strict=True)["missing"] == [], path.name
