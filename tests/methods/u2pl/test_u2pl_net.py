"""U2PL network: official key names, strict loading, and the golden forwards (forward_u2pl.pt)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_golden

from cpcl.errors import CheckpointError, CpclError
from cpcl.methods.u2pl.net import U2PLNet, load_u2pl_checkpoint, load_u2pl_imagenet


def _net_for(case: dict, golden_dir, det_weights) -> tuple[U2PLNet, dict]:
    keys = det_weights.load_keys(golden_dir / case["keys_file"])
    sd = det_weights.det_state_dict(keys)
    net = U2PLNet(int(case["num_classes"]), aux_loss=any(k.startswith("auxor.") for k in sd))
    load_u2pl_checkpoint(net, {"model_state": {f"module.{k}": v for k, v in sd.items()}})
    return net, sd


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("keys_file", ["keys_u2pl_voc_r101.json", "keys_u2pl_city_r101.json"])
def test_state_dict_names_and_order_are_official(golden_dir, keys_file):
    keys = json.loads((golden_dir / keys_file).read_text())
    aux = any(k.startswith("auxor.") for k, _, _ in keys)
    num_classes = next(s[0] for k, s, _ in keys if k == "decoder.classifier.8.weight")
    sd = U2PLNet(num_classes, aux_loss=aux).state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == [(k, list(s)) for k, s, _ in keys]


def test_golden_forward(golden_dir, det_weights):
    fx = load_golden(golden_dir, "forward_u2pl.pt")
    assert fx["cases"]
    for name, case in fx["cases"].items():
        net, _ = _net_for(case, golden_dir, det_weights)
        net.eval()
        with torch.no_grad():
            out = net(case["x"])
        outputs = ["pred", "rep"] + (["aux"] if "eval_aux" in case else [])
        assert sorted(out) == sorted(outputs), name
        for key in outputs:
            want = case[f"eval_{key}"]
            assert out[key].shape == want.shape, (name, key)
            # float32 eval: 1e-5 relative to the output's scale (logits reach ~16 here).
            assert _max_rel(out[key], want) < 1e-5, (name, key, _max_rel(out[key], want))

        # float64 train mode: the BN buffers one forward leaves behind (the eval_*_fp64 twins
        # add nothing the float32 eval check misses, and cost a third of the runtime).
        net.double()
        net.train()
        torch.manual_seed(int(case["seed"]))
        with torch.no_grad():
            net(case["x"].double())
        own = net.state_dict()
        want_bufs = case["train_bn_buffers_fp64"]
        assert want_bufs
        for key, want in want_bufs.items():
            got = own[key]
            if want.is_floating_point():
                assert _max_rel(got, want) < 1e-6, (name, key)
            else:
                assert torch.equal(got, want), (name, key)


def test_checkpoint_keys_and_errors(tmp_path):
    net = U2PLNet(3, "resnet50")
    sd = net.state_dict()
    ckpt = {
        "epoch": 1,
        "model_state": {f"module.{k}": v.clone() for k, v in sd.items()},
        "teacher_state": {
            f"module.{k}": v + 1 if v.is_floating_point() else v for k, v in sd.items()
        },
    }
    torch.save(ckpt, tmp_path / "ckpt.pth")
    teacher = U2PLNet(3, "resnet50")
    load_u2pl_checkpoint(teacher, tmp_path / "ckpt.pth", key="teacher_state")
    assert torch.equal(teacher.decoder.classifier[8].bias, sd["decoder.classifier.8.bias"] + 1)
    with pytest.raises(CheckpointError, match="no 'student' entry"):
        load_u2pl_checkpoint(teacher, tmp_path / "ckpt.pth", key="student")
    with pytest.raises(CheckpointError, match="auxor"):
        load_u2pl_checkpoint(U2PLNet(3, "resnet50", aux_loss=True), tmp_path / "ckpt.pth")
    with pytest.raises(CpclError, match="resnet152"):
        U2PLNet(3, "resnet152")


def test_resnet18_extension_shapes():
    net = U2PLNet(3, "resnet18", aux_loss=True).eval()
    out = net(torch.randn(1, 3, 33, 33))
    assert out["pred"].shape == (1, 3, 9, 9) and out["rep"].shape == (1, 256, 9, 9)
    assert out["aux"].shape == (1, 3, 5, 5)
    assert net.decoder.low_conv[0].in_channels == 64 and net.auxor.aux[0].in_channels == 256


def test_imagenet_file_layout(tmp_path):
    net = U2PLNet(3, "resnet50")
    enc = {
        k: v.clone() + 0.5 for k, v in net.encoder.state_dict().items() if "num_batches" not in k
    }
    enc["fc.weight"] = torch.zeros(1000, 2048)
    enc["fc.bias"] = torch.zeros(1000)
    torch.save(enc, tmp_path / "resnet50.pth")
    load_u2pl_imagenet(net, tmp_path / "resnet50.pth")
    assert torch.equal(net.encoder.conv1[0].weight, enc["conv1.0.weight"])
    del enc["layer4.2.conv3.weight"]
    torch.save(enc, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"(?s)bad\.pth.*layer4\.2\.conv3\.weight"):
        load_u2pl_imagenet(net, tmp_path / "bad.pth")
