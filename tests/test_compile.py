"""`C.compile` (torch.compile of the network, opt-in): one training step equals eager.

Compared in float64, where the only difference left is the order of floating-point
operations inside the fused kernels (inductor reorders sums): the golden rule for float64
twins, 1e-6 relative, is far above that (~1e-13) and far below a wrong result (O(1)).
The engine compiles the whole network once (`cpcl.engine.loop`: `torch.compile(model)`) and
`train_step` runs it; this test does the same on a small ResNet-18 network, method "sup".
Slow: the first compiled step builds two graphs (one per branch), ~1 minute on a CPU.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import max_rel_diff

from cpcl.engine import train_step
from cpcl.methods import get_method
from cpcl.models import Network
from cpcl.optim import build_optimizers

RTOL = 1e-6  # float64 twins (golden README); reordering alone is ~1e-13
NC = 5


def _step(model: torch.nn.Module, run_model: torch.nn.Module, batch: dict) -> dict:
    opts = build_optimizers(model, 0.01, 0.9, 1e-4)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    method = get_method("sup")(sup_criterion=criterion, unsup_weight=1.0)
    return train_step(run_model, opts, batch, 0.01, method=method)


@pytest.mark.slow
def test_compiled_step_equals_eager_in_float64():
    torch.manual_seed(0)
    eager = Network(NC, backbone="resnet18").double().train()
    compiled = copy.deepcopy(eager)
    start = {n: p.detach().clone() for n, p in eager.named_parameters()}
    g = torch.Generator().manual_seed(3)
    batch = {
        "img": torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64),
        "gt": torch.randint(0, NC, (2, 32, 32), generator=g),
    }
    batch["gt"][:, :3] = 255
    torch._dynamo.reset()
    try:
        out_c = _step(compiled, torch.compile(compiled), batch)
    finally:
        torch._dynamo.reset()
    out_e = _step(eager, eager, batch)
    assert out_e.keys() == out_c.keys()
    for key in out_e:
        assert max_rel_diff(out_c[key], out_e[key]) < RTOL, key
    params_c = dict(compiled.named_parameters())
    for name, p in eager.named_parameters():
        assert max_rel_diff(params_c[name], p) < RTOL, name
        assert not torch.equal(p, start[name]), name  # the step moved it (not a no-op)
    buffers_c = dict(compiled.named_buffers())
    for name, b in eager.named_buffers():
        if b.is_floating_point():
            assert max_rel_diff(buffers_c[name], b) < RTOL, name
        else:
            assert torch.equal(buffers_c[name], b), name
