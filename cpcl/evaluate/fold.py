"""Eval-mode BatchNorm folded into the preceding convolutions: an inference-only copy.

In eval mode ``bn(conv(x)) = conv'(x)`` with ``w' = w * g / sqrt(v + eps)`` and
``b' = (b - m) * g / sqrt(v + eps) + beta`` (per output channel), which saves one pass over
every BatchNorm's activations (ResNet-50 DeepLabv3+: 59 of its 61 BatchNorms, ~20% of a CPU
forward). The result differs from the unfolded network only by float rounding (~1e-6
relative in float32, ~1e-15 in float64).

The folded network is a separate module built by tracing (`torch.fx`): the input network is
never modified, the folded one shares none of the folded weights with it, and it refuses
train mode, so it can only serve evaluation (the evaluator folds the network it loads from a
checkpoint, never the live network of a training run).
"""

from __future__ import annotations

import inspect

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .branch import BranchMean


class FoldedNet(nn.Module):
    """An inference-only network with BatchNorm folded into its convolutions (`fold_batchnorm`).

    ``forward(x)`` is the source network's ``forward(x)`` with its other arguments at their
    defaults. ``train(True)`` raises: the folded weights are not the trained parameters.
    """

    def __init__(self, graph: fx.GraphModule, folded: int) -> None:
        super().__init__()
        self.graph = graph
        self.folded = folded  # number of BatchNorms folded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def train(self, mode: bool = True) -> FoldedNet:
        if mode:
            raise RuntimeError(
                "FoldedNet is an inference-only copy (BatchNorm folded into the convolutions); "
                "train the source network instead"
            )
        return super().train(False)


def _trace(net: nn.Module) -> fx.GraphModule:
    # Arguments after the input (e.g. `return_feature=False`) are fixed at their defaults.
    params = list(inspect.signature(net.forward).parameters.values())[1:]
    concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    return fx.symbolic_trace(net, concrete_args=concrete or None)


def _foldable(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """`node` is an eval BatchNorm2d whose only input is a Conv2d used by nothing else."""
    if node.op != "call_module" or type(modules.get(node.target)) is not nn.BatchNorm2d:
        return False
    src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
    return (
        isinstance(src, fx.Node)
        and src.op == "call_module"
        and type(modules.get(src.target)) is nn.Conv2d
        and len(src.users) == 1
        and modules[node.target].track_running_stats
        and modules[node.target].running_mean is not None
    )


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """An inference-only copy of `net` with every Conv2d -> BatchNorm2d pair folded.

    `net` is put in eval mode and otherwise left unchanged. Returns a `FoldedNet` (eval mode;
    a `BranchMean` of two for ``eval_branch=avg``), or `net` itself when it cannot be traced by `torch.fx` (data-dependent control flow) or
    has nothing to fold: folding is an optimisation, never a requirement.
    """
    net.eval()
    if isinstance(net, BranchMean):  # its dtype check cannot be traced: fold each branch
        return BranchMean(fold_batchnorm(net.first), fold_batchnorm(net.second)).eval()
    try:
        gm = _trace(net)
    except Exception:  # untraceable forward: evaluate the network as it is
        return net
    modules = dict(gm.named_modules())
    folded = 0
    for node in list(gm.graph.nodes):
        if not _foldable(node, modules):
            continue
        conv = node.args[0]
        # fuse_conv_bn_eval works on a copy of the convolution: the source keeps its weights.
        fused = fuse_conv_bn_eval(modules[conv.target], modules[node.target])
        parent, _, name = conv.target.rpartition(".")
        setattr(gm.get_submodule(parent), name, fused)
        node.replace_all_uses_with(conv)
        gm.graph.erase_node(node)
        gm.delete_submodule(node.target)
        folded += 1
    if not folded:
        return net
    gm.graph.lint()
    gm.recompile()
    return FoldedNet(gm, folded).eval()
