"""BatchNorm folding for evaluation: equivalence, the source network untouched, eval only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_evaluate import _check_against_golden, _golden_run

from cpcl.evaluate.fold import FoldedNet, fold_batchnorm
from cpcl.models import Network


def _network(num_classes: int = 5, backbone: str = "resnet18") -> Network:
    torch.manual_seed(0)
    return _randomise_bn(Network(num_classes, backbone=backbone))


def _batchnorms(net: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def _folded_vs_source(dtype: torch.dtype) -> tuple[float, FoldedNet]:
    net = _network().branch1.to(dtype)
    folded = fold_batchnorm(net)
    x = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(1), dtype=dtype)
    with torch.no_grad():
        ref, out = net(x), folded(x)
    assert out.dtype == dtype and out.shape == ref.shape
    return ((out - ref).abs().max() / ref.abs().max()).item(), folded


def test_fold_float64_is_exact_up_to_rounding():
    rel, folded = _folded_vs_source(torch.float64)
    assert isinstance(folded, FoldedNet)
    assert rel <= 1e-12
    # Every BatchNorm is either folded or still in the graph (e.g. after a concatenation).
    assert folded.folded > 0
    assert folded.folded + _batchnorms(folded) == _batchnorms(_network().branch1)


def test_fold_float32_within_tolerance():
    rel, _ = _folded_vs_source(torch.float32)
    assert rel <= 1e-5


def test_fold_branch_mean_folds_both_branches():
    from cpcl.evaluate import BranchMean, select_branch

    model = _network().double()
    folded = fold_batchnorm(select_branch(model, "avg"))
    assert isinstance(folded, BranchMean)
    assert isinstance(folded.first, FoldedNet) and isinstance(folded.second, FoldedNet)
    x = torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        ref = (model.branch1(x) + model.branch2(x)) / 2
        assert ((folded(x) - ref).abs().max() / ref.abs().max()).item() <= 1e-12


def test_golden_sliding_eval_folded(golden_dir, det_weights):
    from conftest import det_network, golden_cases, load_golden

    g = load_golden(golden_dir, "eval_sliding.pt")
    folded = fold_batchnorm(det_network(det_weights, golden_dir, "keys_voc_r50.json").branch1)
    assert isinstance(folded, FoldedNet)
    for name, d in golden_cases(g).items():
        out, ref = _golden_run(folded, g, d)
        try:
            _check_against_golden(out, ref, d)
        except AssertionError as err:
            raise AssertionError(f"case {name!r}: {err}") from err


def test_source_untouched_and_folded_is_eval_only():
    model = _network()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model.branch1)
    # The source keeps its weights, modules and BatchNorms; only its mode becomes eval.
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert _batchnorms(model) == 2 * _batchnorms(model.branch1) > 0
    source = {p.data_ptr() for p in model.parameters()}
    changed = [p for p in folded.parameters() if p.data_ptr() not in source]
    assert len(changed) >= folded.folded  # a fresh weight per folded conv, none shared
    # The folded network can only evaluate: train mode is refused, eval is fine.
    with pytest.raises(RuntimeError, match="inference-only"):
        folded.train()
    assert folded.eval() is folded and not folded.training


class _Untraceable(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.bn(self.conv(x))
        return self.conv(x)


def test_untraceable_network_is_returned_as_is():
    net = _Untraceable()
    assert fold_batchnorm(net) is net and not net.training


def test_cli_evaluates_a_folded_copy(tmp_path: Path):
    from cpcl.checkpoint import save_checkpoint
    from cpcl.cli.snapshot import load_eval_net as _load_eval_net
    from cpcl.config import load_preset
    from cpcl.engine.resolve import finalize

    model = _network(21)
    save_checkpoint(tmp_path / "epoch-4.pth", model, epoch=4, iteration=40)
    C = finalize(load_preset("voc"), root=str(tmp_path))
    C.backbone = "resnet18"
    net, epoch = _load_eval_net(C, tmp_path / "epoch-4.pth", "cpu")
    assert epoch == 4 and isinstance(net, FoldedNet) and not net.training
    x = torch.randn(1, 3, 40, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, out = model.branch1(x), net(x)
    assert ((out - ref).abs().max() / ref.abs().max()).item() <= 1e-5


def test_dataset_evaluation_of_a_live_network_does_not_fold_it():
    # The training loop's evaluation (`--eval_every`) passes its live network: it must come
    # back with the same modules and weights (no folding, no layout change left behind).
    from test_evaluate import MEAN, STD, _FakeDataset

    from cpcl.evaluate import evaluate_dataset

    model = _network()
    model.train()
    modules = list(model.modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = dict(num_classes=5, crop_size=48, stride_rate=2 / 3, scales=(1.0,), flip=False)
    evaluate_dataset(model, _FakeDataset(2), mean=MEAN, std=STD, device="cpu", progress=False, **kw)
    assert list(model.modules()) == modules and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.is_contiguous() for p in model.parameters())


def _randomise_bn(net: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters (the fold must carry all four), eval."""
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return net.eval()


@pytest.mark.parametrize("method", ["u2pl", "unimatch"])
def test_u2pl_and_unimatch_eval_networks_fold(method: str):
    """The eval networks of U2PL (teacher wrapper) and UniMatch trace, so the eval CLI folds
    them too (an untraceable one would silently stay unfolded), with equal outputs."""
    if method == "u2pl":
        from cpcl.methods.u2pl import U2PLEvalNet
        from cpcl.methods.u2pl.net import U2PLNet

        net = U2PLEvalNet(U2PLNet(6, "resnet18"))
    else:
        from cpcl.methods.unimatch.net import UniMatchDeepLabV3Plus

        net = UniMatchDeepLabV3Plus(6, "resnet18")
    net = _randomise_bn(net).double()
    folded = fold_batchnorm(net)
    assert isinstance(folded, FoldedNet) and folded.folded > 0
    assert _batchnorms(folded) == _batchnorms(net) - folded.folded
    x = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        ref, out = net(x), folded(x)
    assert out.shape == ref.shape == (2, 6, 48, 64)
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-12
