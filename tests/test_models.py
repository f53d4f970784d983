"""Network structure and golden forward outputs against the official code."""

from __future__ import annotations

import pytest
import torch

from cpcl.models import Network
from cpcl.models.resnet import resnet18, resnet34, resnet50, resnet101
from tests.conftest import load_golden


def _keys(det_weights, golden_dir, name):
    return det_weights.load_keys(golden_dir / name)


@pytest.mark.parametrize(
    ("key_file", "num_classes", "backbone"),
    [
        ("keys_voc_r50.json", 21, "resnet50"),
        ("keys_voc_r101.json", 21, "resnet101"),
        ("keys_city_r50.json", 19, "resnet50"),
    ],
)
def test_state_dict_keys_match_official(golden_dir, det_weights, key_file, num_classes, backbone):
    ref = _keys(det_weights, golden_dir, key_file)
    sd = Network(num_classes, backbone).state_dict()
    assert list(sd) == [k for k, _, _ in ref]  # same names, same order
    for key, shape, dtype in ref:
        assert list(sd[key].shape) == shape, key
        assert str(sd[key].dtype) == f"torch.{dtype}", key


@pytest.mark.parametrize(
    ("key_file", "ctor"),
    [("backbone_keys_r50.json", resnet50), ("backbone_keys_r101.json", resnet101)],
)
def test_backbone_keys_match_imagenet_layout(golden_dir, det_weights, key_file, ctor):
    ref = _keys(det_weights, golden_dir, key_file)
    sd = ctor(deep_stem=True, stem_width=64).state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == [(k, s) for k, s, _ in ref]


@pytest.fixture(scope="module")
def golden_forward(golden_dir, det_weights):
    model = Network(21, "resnet50")
    model.load_state_dict(
        det_weights.det_state_dict(_keys(det_weights, golden_dir, "keys_voc_r50.json"))
    )
    return model, load_golden(golden_dir, "forward_voc_r50.pt")


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape
    # Tolerance from the golden README: ~1e-5 absolute for CPU float32 logits.
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_eval_forward_matches_official(golden_forward):
    model, ref = golden_forward
    model.eval()
    with torch.no_grad():
        for case in "ab":
            x = ref[f"x_{case}"]
            _close(model.branch1(x), ref[f"eval_branch1_{case}"])
            _close(model.branch2(x), ref[f"eval_branch2_{case}"])
            # Network(x) in eval mode is branch 1, as in the official evaluator.
            _close(model(x), ref[f"eval_branch1_{case}"])
            _close(model(x, step=2), ref[f"eval_branch2_{case}"])
    # The two branches really differ (different det weights): a test that could not fail otherwise.
    assert (ref["eval_branch1_a"] - ref["eval_branch2_a"]).abs().max() > 0.1


def test_train_forward_and_bn_buffers_match_official(golden_forward, golden_dir, det_weights):
    _, ref = golden_forward
    model = Network(21, "resnet50")  # fresh weights: BN buffers must start from the det values
    model.load_state_dict(
        det_weights.det_state_dict(_keys(det_weights, golden_dir, "keys_voc_r50.json"))
    )
    model.train()
    with torch.no_grad():
        feature, logits = model.branch1(ref["x_a"], return_feature=True)
    _close(logits, ref["train_branch1_a"])
    _close(feature, ref["train_branch1_feature_a"])
    bn1 = model.branch1.backbone.bn1
    _close(bn1.running_mean, ref["train_after_bn1_running_mean"])
    _close(bn1.running_var, ref["train_after_bn1_running_var"])
    assert int(bn1.num_batches_tracked) == int(ref["train_after_bn1_num_batches_tracked"]) == 1
    _close(model.branch1.head.aspp.map_bn.running_mean, ref["train_after_aspp_map_bn_running_mean"])
    _close(
        model.branch1.head.last_conv[4].running_var,
        ref["train_after_classifier_input_bn_running_var"],
    )
    # Branch 2 was not run: its buffers are untouched.
    assert int(model.branch2.backbone.bn1.num_batches_tracked) == 0


@pytest.mark.parametrize("ctor", [resnet18, resnet34])
def test_small_backbones_output_stride_16_and_dilation(ctor):
    net = ctor(deep_stem=True, stem_width=64, output_stride=16).eval()
    feats = net(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (4, 6)]
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512]
    # Multi-grid: layer4 block i dilated 2**(i+1) (both 3x3 convs of a BasicBlock), no stride.
    expected = [(2 ** (i + 1), 2 ** (i + 1)) for i in range(len(net.layer4))]
    assert [(b.conv1.dilation[0], b.conv2.dilation[0]) for b in net.layer4] == expected
    assert len(net.layer4) == (2 if ctor is resnet18 else 3)
    assert net.layer4[0].conv1.stride == (1, 1) and net.layer4[0].downsample[0].stride == (1, 1)


def test_resnet50_layer4_multigrid():
    net = resnet50(output_stride=16)
    assert [b.conv2.dilation[0] for b in net.layer4] == [2, 4, 8]
    assert [b.conv2.padding[0] for b in net.layer4] == [2, 4, 8]
    assert net.layer4[0].conv2.stride == (1, 1)
    assert resnet50(output_stride=32).layer4[0].conv2.stride == (2, 2)


def test_logits_at_input_size_for_odd_sizes_and_steps():
    torch.manual_seed(0)
    model = Network(5, "resnet18").eval()
    x = torch.randn(1, 3, 37, 53)
    with torch.no_grad():
        a, b = model(x, step=1), model(x, step=2)
    assert a.shape == b.shape == (1, 5, 37, 53)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="step=3"):
        model(x, step=3)
    with pytest.raises(ValueError, match="backbone='resnet99'"):
        Network(5, "resnet99")
