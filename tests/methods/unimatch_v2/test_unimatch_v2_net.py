"""UniMatch V2's network (DINOv2 + DPT) against the official code (`forward_unimatch_v2.pt`):
intermediate features, position-embedding interpolation, head output and logits in float32
and float64, `comp_drop` draws and logits; plus the loaders, `lock_backbone` and errors."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import load_golden, max_rel_diff
from test_unimatch_v2_keys import tiny_config_overrides

from cpcl.checkpoint import load_weights
from cpcl.errors import CheckpointError, ConfigError, CpclError
from cpcl.methods.unimatch_v2.dinov2 import DinoVisionTransformer
from cpcl.methods.unimatch_v2.net import (
    BACKBONES,
    build_unimatch_v2_net,
    draw_comp_drop,
    load_dinov2_pretrained,
    load_unimatch_v2_checkpoint,
    lock_backbone,
    param_groups,
)
from cpcl.methods.unimatch_v2.toy_pretrain import pretrain_toy_dinov2

# Golden README, "forward_unimatch_v2.pt": float32 keys at 1e-5 relative to the tensor's max
# magnitude, `*_fp64` at 1e-9, `pos_interp.outputs` at 1e-6; draws exact.
TOL32, TOL64, TOL_INTERP = 1e-5, 1e-9, 1e-6


def _empty_net(case: dict):
    """The case's network with uninitialised float32 weights: built on the meta device (no
    initialisation cost for a ViT-S), then given CPU storage for the weights to be loaded."""
    tc = case.get("tiny_config")
    with torch.device("meta"):
        if tc:
            model = build_unimatch_v2_net("dinov2_toy", case["nclass"], **tiny_config_overrides(tc))
        else:
            model = build_unimatch_v2_net(f"dinov2_{case['encoder_size']}", case["nclass"])
    return model.to_empty(device="cpu")


def _forward(model, x, **kwargs):
    """One forward: the head's inputs (the four intermediate features), its output and the
    logits, read by a hook so that the encoder runs once."""
    seen = {}

    def hook(_module, args, out):
        seen["features"], seen["head_out"] = tuple(args[0]), out

    handle = model.head.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(x, **kwargs)
    finally:
        handle.remove()
    return seen["features"], seen["head_out"], logits


@pytest.fixture(scope="module")
def forward_fx(golden_dir):
    return load_golden(golden_dir, "forward_unimatch_v2.pt")


@pytest.fixture(scope="module")
def det_models(det_weights, golden_dir, forward_fx):
    """One float32 det-weight network per (keys file, tiny config), shared by the cases."""
    models = {}
    for case in forward_fx["cases"].values():
        tc = case["tiny_config"]
        key = (case["keys_file"], repr(tc))
        if key in models:
            continue
        model = _empty_net(case)
        keys = det_weights.load_keys(golden_dir / case["keys_file"])
        report = load_weights(model, det_weights.det_state_dict(keys), strict=True)
        assert report == {"missing": [], "unexpected": [], "shape_mismatch": []}
        models[key] = model.eval()
    return lambda case: models[(case["keys_file"], repr(case["tiny_config"]))]


def _check_forward(model, case, name: str, suffix: str, tol: float, dtype) -> None:
    x = case["x"].to(dtype)
    ph, pw = case["patch_hw"]
    assert (ph, pw) == (x.shape[-2] // 14, x.shape[-1] // 14), name
    assert list(model.intermediate_layer_idx) == list(case["intermediate_layer_idx"]), name
    enc = model.backbone
    grid = round((enc.pos_embed.shape[1] - 1) ** 0.5)
    assert [grid, grid] == list(case["pos_embed_grid"]), name
    with torch.no_grad():
        tokens = torch.zeros(x.shape[0], 1 + ph * pw, enc.embed_dim, dtype=dtype)
        pos = enc.interpolate_pos_encoding(tokens, x.shape[-2], x.shape[-1])
        # Not interpolated = the parameter itself is returned (`dinov2.py:183-184`).
        assert (pos is not enc.pos_embed) == case["pos_embed_interpolated"], name
        assert max_rel_diff(pos, case["pos_embed_interp" + suffix]) < tol, name
    feats, head_out, logits = _forward(model, x)
    assert len(feats) == len(case["features" + suffix]) == 4, name
    for i, (got, ref) in enumerate(zip(feats, case["features" + suffix], strict=True)):
        assert got.dtype == ref.dtype, (name, i)
        assert max_rel_diff(got, ref) < tol, (name, i)
    assert head_out.dtype == logits.dtype == dtype
    assert max_rel_diff(head_out, case["head_out" + suffix]) < tol, name
    assert max_rel_diff(logits, case["logits" + suffix]) < tol, name


def test_forward_float32(forward_fx, det_models):
    for name, case in forward_fx["cases"].items():
        _check_forward(det_models(case), case, name, "", TOL32, torch.float32)


def test_forward_float64(forward_fx, det_models):
    """The float64 twin at 1e-9; its position embedding is the float32 interpolation cast to
    float64 (a float64 interpolation differs at ~1e-8), as officially."""
    doubles = {}
    for name, case in forward_fx["cases"].items():
        net = det_models(case)
        if id(net) not in doubles:
            doubles[id(net)] = copy.deepcopy(net).double()
        model = doubles[id(net)]
        _check_forward(model, case, name, "_fp64", TOL64, torch.float64)


def test_comp_drop_draws_and_logits(forward_fx, det_models):
    cases = {n: c for n, c in forward_fx["cases"].items() if c["comp_drop_seed"] >= 0}
    assert cases, "no comp_drop case in forward_unimatch_v2.pt"
    for name, case in cases.items():
        model, x, seed = det_models(case), case["x"], case["comp_drop_seed"]
        bs, dim = x.shape[0], model.backbone.embed_dim
        # The official draws come from the global RNG (Binomial.sample, then randperm); our
        # generator draws in the same order, so a generator seeded alike gives them exactly.
        torch.manual_seed(seed)
        from_global = draw_comp_drop(bs, dim)
        draws = draw_comp_drop(bs, dim, torch.Generator().manual_seed(seed))
        for d in (from_global, draws):
            assert list(d.binomial_sample.shape) == list(case["binomial_sample_shape"]), name
            assert torch.equal(d.binomial_sample, case["binomial_sample"]), name
            assert len(d.randperm) == case["randperm_n"], name
            assert torch.equal(d.randperm, case["randperm_result"]), name
            assert torch.equal(d.kept_indexes, case["kept_indexes"]), name
            assert len(d.kept_indexes) == case["num_kept"], name
            assert torch.equal(d.dropout_mask, case["dropout_mask"]), name
        _, _, injected = _forward(model, x, comp_drop=True, drop_masks=case["dropout_mask"])
        assert max_rel_diff(injected, case["comp_drop_logits"]) < TOL32, name
        _, _, drawn = _forward(
            model, x, comp_drop=True, generator=torch.Generator().manual_seed(seed)
        )
        assert torch.equal(drawn, injected), name


def test_pos_interp(forward_fx):
    """`interpolate_pos_encoding` alone, on a unit-scale random embedding (`pos_interp`)."""
    p = forward_fx["pos_interp"]
    assert (p["mode"], p["antialias"]) == ("bicubic", False)
    enc = DinoVisionTransformer(p["embed_dim"], 1, 1, img_size=p["img_size"])
    assert enc.interpolate_offset == p["interpolate_offset"]
    assert list(enc.pos_embed.shape) == list(p["pos_embed"].shape)
    assert [round((enc.pos_embed.shape[1] - 1) ** 0.5)] * 2 == list(p["grid"])
    n = len(p["sizes"])
    assert n == len(p["out_grids"]) == len(p["outputs"]) == len(p["outputs_fp64"])
    for dtype, refs, tol in (
        (torch.float32, p["outputs"], TOL_INTERP),
        (torch.float64, p["outputs_fp64"], TOL64),
    ):
        enc = enc.to(dtype)
        with torch.no_grad():
            enc.pos_embed.copy_(p["pos_embed"])
            for (h, w), grid, ref in zip(p["sizes"], p["out_grids"], refs, strict=True):
                tokens = torch.zeros(1, 1 + (h // 14) * (w // 14), p["embed_dim"], dtype=dtype)
                out = enc.interpolate_pos_encoding(tokens, h, w)
                assert [h // 14, w // 14] == list(grid)
                assert out.dtype == dtype and out.shape == ref.shape, (h, w)
                assert max_rel_diff(out, ref) < tol, (dtype, h, w)


def test_unused_parameters_and_official_groups(golden_dir):
    """`mask_token` and `refinenet4.resConfUnit1` get no gradient; names and optimiser groups
    as the official step fixture records them (`unimatch_v2_step.pt`)."""
    step = load_golden(golden_dir, "unimatch_v2_step.pt")["cases"]
    for name, case in step.items():
        model = _empty_net(case)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02)
        assert [n for n, _ in model.named_parameters()] == list(case["param_names"]), name
        assert sum(1 for _ in model.buffers()) == case["n_buffers"], name
        groups = param_groups(model, case["lr"], case["lr_multi"])
        assert [len(g["params"]) for g in groups] == list(case["optimizer_group_sizes"]), name
        assert [g["lr"] for g in groups] == [case["lr"], case["lr"] * case["lr_multi"]]
        model(torch.randn(2, 3, 28, 28), comp_drop=True).square().mean().backward()
        no_grad = [n for n, p in model.named_parameters() if p.grad is None]
        assert no_grad == list(case["params_without_grad"]), name


def _toy(nclass: int = 3, **overrides):
    torch.manual_seed(0)
    return build_unimatch_v2_net("dinov2_toy", nclass, **overrides)


def test_lock_backbone_and_groups():
    model = _toy()
    lock_backbone(model)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    groups = param_groups(model, 1e-3, 40)
    assert groups[0]["params"] == [] and len(groups[1]["params"]) == len(
        list(model.head.parameters())
    )
    model.backbone.requires_grad_(True)
    model.lock_backbone()
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_loaders_strict_with_hints(tmp_path):
    model = _toy()
    # An official encoder file: the bare DINOv2 keys.
    enc_sd = {k: v.clone() + 1 for k, v in model.backbone.state_dict().items()}
    torch.save(enc_sd, tmp_path / "dinov2_toy.pth")
    other = _toy()
    load_dinov2_pretrained(other, tmp_path / "dinov2_toy.pth")
    torch.testing.assert_close(other.backbone.pos_embed, model.backbone.pos_embed + 1)
    load_dinov2_pretrained(other.backbone, tmp_path / "dinov2_toy.pth")
    # An official latest.pth: DDP `module.` prefix under `model`.
    ckpt = {"model": {f"module.{k}": v + 2 for k, v in model.state_dict().items()}, "epoch": 1}
    torch.save(ckpt, tmp_path / "latest.pth")
    load_unimatch_v2_checkpoint(other, tmp_path / "latest.pth")
    torch.testing.assert_close(other.head.projects[0].bias, model.head.projects[0].bias + 2)
    # Another size, and a whole-network file given as an encoder file, are refused with hints.
    torch.save(_toy(embed_dim=16).backbone.state_dict(), tmp_path / "small_dim.pth")
    with pytest.raises(CheckpointError, match="embed dim is 16"):
        load_dinov2_pretrained(other, tmp_path / "small_dim.pth")
    torch.save(model.state_dict(), tmp_path / "whole.pth")
    with pytest.raises(CheckpointError, match="load_unimatch_v2_checkpoint"):
        load_dinov2_pretrained(other, tmp_path / "whole.pth")
    with pytest.raises(CheckpointError, match="DINOv2 encoder"):
        load_dinov2_pretrained(torch.nn.Linear(2, 2), tmp_path / "dinov2_toy.pth")


def test_bad_inputs_raise_clear_errors():
    model = _toy()
    with pytest.raises(ConfigError, match="multiple of the patch size 14"):
        model(torch.randn(1, 3, 28, 30))
    with pytest.raises(ConfigError, match="even batch"):
        model(torch.randn(3, 3, 28, 28), comp_drop=True)
    with pytest.raises(ConfigError, match="drop_masks has shape"):
        model(torch.randn(2, 3, 28, 28), comp_drop=True, drop_masks=torch.ones(2, 5))
    with pytest.raises(ConfigError, match="expected one of"):
        build_unimatch_v2_net("dinov2_tiny", 3)
    with pytest.raises(ConfigError, match="unknown UniMatch V2 network settings"):
        build_unimatch_v2_net("dinov2_toy", 3, width=3)
    with pytest.raises(ConfigError, match="intermediate_layer_idx"):
        build_unimatch_v2_net("dinov2_toy", 3, intermediate_layer_idx=(1, 2, 4, 6))
    assert set(BACKBONES) >= {"dinov2_small", "dinov2_base", "dinov2_large", "dinov2_toy"}


def test_toy_pretrain_writes_an_official_layout_encoder(tmp_path):
    out = tmp_path / "dinov2_toy_seed0.pth"
    path = pretrain_toy_dinov2(out, iters=2, batch_size=2, warmup=1, progress=False)
    model = _toy(6)
    load_dinov2_pretrained(model, path)  # strict: the official encoder names
    stamp = path.stat().st_mtime_ns
    assert pretrain_toy_dinov2(out, iters=2, batch_size=2, warmup=1, progress=False) == path
    assert path.stat().st_mtime_ns == stamp  # the same settings reuse the cached file
    with pytest.raises(CpclError, match="multiple of 14"):
        pretrain_toy_dinov2(tmp_path / "x.pth", size=60, progress=False)
    with pytest.raises(CpclError, match="iters=0"):
        pretrain_toy_dinov2(tmp_path / "x.pth", iters=0, progress=False)
