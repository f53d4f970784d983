"""UniMatch's DeepLabV3+ against the official network (forward_unimatch.pt, unimatch_fp.pt)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import load_golden

from cpcl.checkpoint import load_weights, save_checkpoint
from cpcl.errors import CheckpointError
from cpcl.methods.unimatch.net import (
    UniMatchDeepLabV3Plus,
    load_unimatch_checkpoint,
    load_unimatch_pretrained,
)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module")
def forward_cases(golden_dir):
    return load_golden(golden_dir, "forward_unimatch.pt")["cases"]


def _det_model(det_weights, golden_dir, case) -> UniMatchDeepLabV3Plus:
    keys = det_weights.load_keys(golden_dir / case["keys_file"])
    model = UniMatchDeepLabV3Plus(case["num_classes"])
    # Official names are our names: the strict loader must accept the det state dict as is.
    report = load_weights(model, det_weights.det_state_dict(keys), strict=True)
    assert report == {"missing": [], "unexpected": [], "shape_mismatch": []}
    return model


def test_state_dict_keys_are_official(golden_dir):
    for name, classes in (
        ("keys_unimatch_voc_r101.json", 21),
        ("keys_unimatch_city_r101.json", 19),
    ):
        official = json.loads((golden_dir / name).read_text())
        ours = UniMatchDeepLabV3Plus(classes).state_dict()
        assert [k for k, _, _ in official] == list(ours)
        assert [list(s) for _, s, _ in official] == [list(v.shape) for v in ours.values()]


def test_forward_golden(forward_cases, det_weights, golden_dir):
    for name, case in forward_cases.items():
        model = _det_model(det_weights, golden_dir, case)
        x = case["x"]
        model.eval()
        with torch.no_grad():
            out = model(x)
        assert out.shape == case["eval_out"].shape, name
        # Golden README: eval-mode float32 outputs "stay comparable at 1e-5", relative to the
        # tensor's magnitude (max |logit|). An absolute 1e-5 would fail correct code whenever
        # the logits are large: the official float32 output alone is up to ~2e-5 (absolute)
        # from its own float64 twin, which is compared at 1e-6 relative below.
        assert _rel(out, case["eval_out"]) < 1e-5, name
        # Train mode is ill-conditioned in float32: compare in float64.
        model.double()
        with torch.no_grad():
            out64 = model(x.double())
        assert _rel(out64, case["eval_out_fp64"]) < 1e-6, name
        model.train()
        torch.manual_seed(case["seed"])
        with torch.no_grad():
            model(x.double())
        sd = model.state_dict()
        for key, ref in case["train_bn_buffers_fp64"].items():
            assert _rel(sd[key], ref) < 1e-6, f"{name}: {key}"
        assert len(case["train_bn_buffers_fp64"]) == sum(
            1 for k in sd if k.endswith(("running_mean", "running_var"))
        )


def test_feature_perturbation_golden(golden_dir):
    fx = load_golden(golden_dir, "unimatch_fp.pt")
    for name, case in fx["cases"].items():
        seen = {}

        def decode(c1, c4, size, seen=seen):
            seen["c1"], seen["c4"] = c1, c4
            out = c1[:, :4] + F.interpolate(
                c4[:, :4], c1.shape[-2:], mode="bilinear", align_corners=True
            )
            return F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=True)

        stub = SimpleNamespace(
            features=lambda x, c=case: (c["c1"], c["c4"]), decode=decode, fp_dropout=0.5
        )
        x = torch.zeros(case["x_shape"])
        torch.manual_seed(case["seed"])
        out, out_fp = UniMatchDeepLabV3Plus.forward(stub, x, need_fp=True)
        torch.testing.assert_close(seen["c1"], case["decode_in_c1"], rtol=0, atol=1e-6)
        torch.testing.assert_close(seen["c4"], case["decode_in_c4"], rtol=0, atol=1e-6)
        torch.testing.assert_close(out, case["out"], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(out_fp, case["out_fp"], rtol=1e-6, atol=1e-6)
        n = case["c1"].shape[0]
        kept1 = seen["c1"][n:].flatten(2).abs().amax(-1) > 0
        kept4 = seen["c4"][n:].flatten(2).abs().amax(-1) > 0
        assert torch.equal(kept1, case["c1_channel_kept"]), name
        assert torch.equal(kept4, case["c4_channel_kept"]), name
        plain = UniMatchDeepLabV3Plus.forward(stub, x)
        torch.testing.assert_close(plain, case["out_plain"], rtol=1e-6, atol=1e-6)


def test_need_fp_one_decoder_pass_shapes():
    model = UniMatchDeepLabV3Plus(5, backbone="resnet50").eval()
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        out, out_fp = model(x, need_fp=True)
        plain = model(x)
    assert out.shape == out_fp.shape == (2, 5, 33, 33)
    # In eval mode BN uses running statistics, so the clean half equals the plain forward.
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, out_fp)


def test_official_checkpoint_and_pretrained_load_strictly(tmp_path):
    model = UniMatchDeepLabV3Plus(3, backbone="resnet50")
    sd = {f"module.{k}": v.clone() + 1 for k, v in model.state_dict().items()}
    ckpt = tmp_path / "latest.pth"
    torch.save({"model": sd, "optimizer": {}, "epoch": 3, "previous_best": 1.0}, ckpt)
    other = UniMatchDeepLabV3Plus(3, backbone="resnet50")
    load_unimatch_checkpoint(other, ckpt)
    torch.testing.assert_close(other.classifier.bias, model.classifier.bias + 1)

    # UniMatch's pretrained/resnet50.pth: bare ResNet keys, possibly with an ImageNet fc.
    bb = {k: v.clone() * 2 for k, v in model.backbone.state_dict().items()}
    bb["fc.weight"], bb["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    torch.save(bb, tmp_path / "resnet50.pth")
    load_unimatch_pretrained(other, tmp_path / "resnet50.pth")
    torch.testing.assert_close(other.backbone.bn1.weight, model.backbone.bn1.weight * 2)

    # A file of the wrong network is refused, naming what does not fit.
    save_checkpoint(tmp_path / "bad.pth", UniMatchDeepLabV3Plus(4, backbone="resnet50"))
    with pytest.raises(CheckpointError, match="classifier"):
        load_unimatch_checkpoint(other, tmp_path / "bad.pth")
    torch.save({k: v for k, v in bb.items() if not k.startswith("layer4")}, tmp_path / "part.pth")
    with pytest.raises(CheckpointError, match="missing"):
        load_unimatch_pretrained(other, tmp_path / "part.pth")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backbone": "resnet152"}, "backbone"),
        ({"dilations": (6, 12)}, "dilations"),
        ({"fp_dropout": 1.0}, "fp_dropout"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_settings(kwargs, match):
    args = {"num_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        UniMatchDeepLabV3Plus(**args)
