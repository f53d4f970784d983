"""CoSA network vs the official `VITNetwork` (`forward_cosa.pt`, `keys_cosa_*.json`)."""

from __future__ import annotations

import pytest
import torch
from conftest import golden_cases, load_golden, max_rel_diff

from cpcl.errors import CheckpointError, CpclError
from cpcl.methods.cosa.network import CoSANet
from cpcl.methods.cosa.vit import build_vit, load_vit_pretrained

OUTPUTS = ("cls", "cls_aux", "feature", "seg", "cam", "cam_aux")
KEY_FILES = {
    "keys_cosa_vitb16_voc.json": "vit_base_patch16_224",
    "keys_cosa_vitb16_coco.json": "vit_base_patch16_224",
    "keys_cosa_deit_tiny_voc.json": "deit_tiny_patch16_224",
}


def det_cosa(det_weights, golden_dir, keys_file, backbone, aux_layer, prefix=""):
    """A CoSANet loaded strictly with the det weights of `keys_file` (class count from it)."""
    keys = det_weights.load_keys(golden_dir / keys_file)
    shapes = {k: s for k, s, _ in keys}
    model = CoSANet(backbone, shapes["decoder.conv8.weight"][0], aux_layer=aux_layer)
    state = {k: det_weights.det_tensor(prefix + k, s) for k, s, _ in keys}
    model.load_state_dict(state, strict=True)
    return model


@pytest.fixture(scope="module")
def forward_fx(golden_dir):
    return golden_cases(load_golden(golden_dir, "forward_cosa.pt"))


@pytest.mark.parametrize("keys_file", sorted(KEY_FILES))
def test_state_dict_keys_match_official(golden_dir, det_weights, keys_file):
    path = golden_dir / keys_file
    if not path.is_file():
        pytest.skip(f"{path} not found")
    keys = det_weights.load_keys(path)
    n_cls = {k: s for k, s, _ in keys}["decoder.conv8.weight"][0]
    model = CoSANet(KEY_FILES[keys_file], n_cls)
    state = model.state_dict()
    assert list(state) == [k for k, _, _ in keys]
    assert [list(v.shape) for v in state.values()] == [s for _, s, _ in keys]
    assert list(model.buffers()) == []
    assert not model.encoder.pos_embed.requires_grad


def test_forward_matches_official(forward_fx, golden_dir, det_weights):
    for name, case in forward_fx.items():
        model = det_cosa(
            det_weights, golden_dir, case["keys_file"], case["backbone"], case["aux_layer"]
        )
        assert case["decoder"] == "LargeFOV"
        assert model.num_classes == case["num_classes"], name
        assert sum(p.numel() for p in model.parameters()) == case["n_params"], name
        x = case["x"]
        with torch.no_grad():
            outs = dict(zip(OUTPUTS, model(x), strict=True))
            cam_only = model(x, cam_only=True)
            seg_only = model(x, seg_only=True)
            model.eval()
            eval_outs = model(x)
        for key in OUTPUTS:
            diff = max_rel_diff(outs[key], case[key])
            assert diff < 1e-5, (name, key, diff)
        assert max_rel_diff(cam_only[0], case["cam_only_cam"]) < 1e-5, name
        assert max_rel_diff(cam_only[1], case["cam_only_cam_aux"]) < 1e-5, name
        assert max_rel_diff(seg_only, case["seg_only"]) < 1e-5, name
        # All drop rates are 0: eval and train mode agree exactly.
        for a, b in zip(eval_outs, outs.values(), strict=True):
            assert (a - b).abs().max().item() == case["eval_minus_train_max_abs"]

        model.double().train()
        with torch.no_grad():
            outs64 = dict(zip(OUTPUTS, model(x.double()), strict=True))
        for key in OUTPUTS:
            diff = max_rel_diff(outs64[key], case[key + "_fp64"])
            assert diff < 1e-9, (name, key, diff)


def test_aux_layer_minus_one_is_normed_tokens():
    torch.manual_seed(0)
    enc = build_vit("deit_tiny_patch16_224", aux_layer=-1)
    with torch.no_grad():
        _, tokens, aux = enc.forward_features(torch.randn(1, 3, 32, 48))
    assert tokens.shape == (1, 6, 192)
    assert torch.equal(tokens, aux)


def test_param_groups_follow_official_rule():
    model = CoSANet("deit_tiny_patch16_224", 21)
    groups = model.param_groups()
    names = {id(p): n for n, p in model.named_parameters()}
    g = [[names[id(p)] for p in group] for group in groups]
    assert all("norm" not in n and n.startswith("encoder.") for n in g[0])
    assert {"encoder.cls_token", "encoder.pos_embed", "encoder.head.weight"} <= set(g[0])
    assert all("norm" in n and n.startswith("encoder.") for n in g[1])
    assert g[2] == ["classifier.weight", "aux_classifier.weight"]
    assert g[3] == ["decoder.conv6.weight", "decoder.conv7.weight", "decoder.conv8.weight"]
    assert sum(map(len, g)) == len(names)


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(CpclError, match="backbone"):
        CoSANet("resnet50", 21)
    with pytest.raises(CpclError, match="decoder"):
        CoSANet("deit_tiny_patch16_224", 21, decoder="Maskformer")
    with pytest.raises(CpclError, match="aux_layer"):
        build_vit("deit_tiny_patch16_224", aux_layer=12)
    with pytest.raises(CpclError, match="path"):
        CoSANet("deit_tiny_patch16_224", 21, pretrained=True)


def test_load_pretrained_strict(tmp_path):
    src = build_vit("deit_tiny_patch16_224")
    dst = build_vit("deit_tiny_patch16_224")
    path = tmp_path / "deit.pth"
    torch.save({"model": src.state_dict()}, path)  # DeiT release layout
    load_vit_pretrained(dst, path)
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    bad = dict(src.state_dict())
    bad.pop("head.bias")
    bad["extra"] = torch.zeros(1)
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match=r"missing \['head.bias'\].*unexpected \['extra'\]"):
        load_vit_pretrained(dst, path)
    with pytest.raises(CheckpointError, match="not found"):
        load_vit_pretrained(dst, tmp_path / "none.pth")
    (tmp_path / "w.safetensors").write_bytes(b"x")
    try:
        import safetensors  # noqa: F401
    except ImportError:
        with pytest.raises(CheckpointError, match="safetensors"):
            load_vit_pretrained(dst, tmp_path / "w.safetensors")
