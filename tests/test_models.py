"""Network structure and golden forward outputs against the official code."""

from __future__ import annotations

import pytest
import torch
from conftest import det_network, golden_cases, load_golden, max_rel_diff

from cpcl.models import Network
from cpcl.models.resnet import resnet18, resnet34, resnet50, resnet101


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


# Float32 eval-mode logits: the golden README's tolerance, about 1e-5 absolute on CPU.
EVAL_ATOL = 1e-5
# Train-mode outputs in float64 against the `*_fp64` twins: the README's 1e-6 relative (correct
# code lands around 1e-15; a wrong layer order or align_corners gives 1e-3 and more).
FP64_RTOL = 1e-6


@pytest.fixture(scope="module")
def eval_forward(golden_dir, det_weights):
    ref = load_golden(golden_dir, "forward_voc_r50.pt")
    return det_network(det_weights, golden_dir, "keys_voc_r50.json").eval(), ref


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=EVAL_ATOL, atol=EVAL_ATOL)


def test_eval_forward_matches_official(eval_forward):
    model, ref = eval_forward
    cases = [k[len("x_") :] for k in ref if k.startswith("x_")]
    assert cases
    with torch.no_grad():
        for case in cases:
            x = ref[f"x_{case}"]
            _close(model.branch1(x), ref[f"eval_branch1_{case}"])
            _close(model.branch2(x), ref[f"eval_branch2_{case}"])
            # Network(x) in eval mode is branch 1, as in the official evaluator.
            _close(model(x), ref[f"eval_branch1_{case}"])
            _close(model(x, step=2), ref[f"eval_branch2_{case}"])
            # The two branches really differ (different det weights): the check can fail.
            diff = ref[f"eval_branch1_{case}"] - ref[f"eval_branch2_{case}"]
            assert diff.abs().max() > 100 * EVAL_ATOL


def _bn_buffers(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.{name}": buf
        for name, buf in module.named_buffers()
        if name.endswith(("running_mean", "running_var"))
    }


def test_train_forward_and_bn_buffers_match_official_fp64(golden_dir, det_weights):
    """One train-mode forward in float64 per case: logits, feature, every branch-1 BN buffer."""
    fx = load_golden(golden_dir, "forward_train_voc_r50.pt")
    cases = golden_cases(fx)
    assert cases
    for name, case in cases.items():
        model = det_network(det_weights, golden_dir, case["keys_file"]).double().train()
        with torch.no_grad():
            # The official `net(x, step=1)` in train mode returns (feature, logits).
            feature, logits = model.branch1(case["x"].double(), return_feature=True)
        assert logits.dtype == feature.dtype == torch.float64
        for got, key in ((logits, "train_branch1_fp64"), (feature, "train_branch1_feature_fp64")):
            assert max_rel_diff(got, case[key]) <= FP64_RTOL, (name, key)
        buffers = _bn_buffers(model.branch1, "branch1")
        ref_buffers = case["bn_buffers_after_fp64"]
        assert sorted(ref_buffers) == sorted(buffers), name
        for key, ref in ref_buffers.items():
            assert buffers[key].dtype == torch.float64
            assert max_rel_diff(buffers[key], ref) <= FP64_RTOL, (name, key)
        # One forward: every branch-1 BN counted one batch; branch 2 was not run.
        for b, count in (("branch1", 1), ("branch2", 0)):
            tracked = [
                int(v)
                for k, v in getattr(model, b).named_buffers()
                if k.endswith("batches_tracked")
            ]
            assert tracked and set(tracked) == {count}, (name, b)


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
