"""`--cuda_graphs` (EXPERIMENTAL, `cpcl.engine.graphs`) without a GPU: the refusals, a no-sync
check of every capturable method's forward_loss + backward on meta tensors
(`cpcl.engine.capture_check`), the emulated replay (static inputs and gradients, the captured
callable re-run) equal to the eager iteration bitwise in float32 and float64, and the pointer
guard that re-captures after a rebind."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import cpcl.engine as engine
from cpcl.config import ConfigError, load_preset
from cpcl.data.toy import make_toy_voc
from cpcl.engine.capture_check import describe, find_host_syncs
from cpcl.engine.graphs import GraphedIteration, check_graph_settings, make_graphed_iteration
from cpcl.engine.resolve import apply_overrides
from cpcl.methods import Method, StepInfo, get_method, method_names

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_cuda_graphs
import bench_train

CAPTURABLE = [n for n in method_names() if get_method(n).capturable]


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: one thread is ~50x faster than two on a loaded machine (spin waits), and
    # eager and replay are compared under the same setting anyway.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(method: str) -> bench_train.Spec:
    return bench_train.Spec(
        method=method,
        backbone="resnet18",
        dataset="voc",
        crop=16,  # tiny: 2x2 features at output stride 8
        batch=2,
        amp="none",
        channels_last=False,
        compile=False,
        device="cpu",
        threads=1,
        seed=0,
    )


def _built(name: str, dtype: torch.dtype = torch.float32):
    spec = _spec(name)
    C = bench_train.build_config(spec)
    method = get_method(name).from_config(C, per_rank_batch=spec.batch)
    torch.manual_seed(0)
    model = method.build_model(pretrained=False).to(dtype)
    method.setup(model)
    return C, spec, method, model


def _batches(C, spec, method, n: int, dtype: torch.dtype) -> list[dict]:
    out = []
    for i in range(n):
        spec_i = bench_train.Spec(**{**spec.__dict__, "seed": i})
        b = bench_train.synthetic_batch(method.batch_keys, spec_i, int(C.num_classes))
        out.append({k: v.to(dtype) if v.is_floating_point() else v for k, v in b.items()})
    return out


def test_expected_methods_declare_capturability():
    assert {"sup", "cps", "cpcl", "unimatch"} <= set(CAPTURABLE)
    assert "u2pl" not in CAPTURABLE and get_method("u2pl").not_capturable_because


def test_refusals_name_the_keys():
    cpu = torch.device("cpu")
    check_graph_settings(cuda_graphs=False, device=cpu, compile=True, world_size=4)  # off: ok
    with pytest.raises(ConfigError, match=r"cuda_graphs = True needs a CUDA device.*cpu"):
        check_graph_settings(cuda_graphs=True, device=cpu, compile=False, world_size=1)
    with pytest.raises(ConfigError, match=r"cuda_graphs = True with C.compile = True"):
        check_graph_settings(cuda_graphs=True, device=cpu, compile=True, world_size=1)
    with pytest.raises(ConfigError, match=r"cuda_graphs = True with 2 processes"):
        check_graph_settings(cuda_graphs=True, device=cpu, compile=False, world_size=2)


def test_a_method_that_is_not_capturable_runs_eagerly_with_one_log_line(caplog):
    C, _, method, model = _built("sup")
    C.cuda_graphs = True
    u2pl = get_method("u2pl")
    with caplog.at_level(logging.INFO, logger="t"):
        graph = make_graphed_iteration(C, model, object.__new__(u2pl), logging.getLogger("t"))
    assert graph is None
    assert "'u2pl' runs eagerly" in caplog.text and u2pl.not_capturable_because in caplog.text
    C.cuda_graphs = False
    assert make_graphed_iteration(C, model, method, logging.getLogger("t")) is None


@pytest.mark.parametrize("name", CAPTURABLE)
def test_capturable_methods_never_sync_with_the_host(name):
    C, spec, method, model = _built(name)
    batch = _batches(C, spec, method, 1, torch.float32)[0]
    found = find_host_syncs(method, model, batch)
    assert found == [], describe(found)


class _Syncing(Method):
    """forward_loss with one kind of host synchronisation (checks that the check can fail)."""

    name = "syncing"

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def forward_loss(self, model, batch, step, aux=None):
        y = model(batch["x"])
        k = self.kind
        if k == "item":
            return y.sum() * float(y.mean()), {}
        if k == "mask_read":
            return y[y > 0].sum(), {}
        if k == "mask_write":
            z = y.clone()
            z[y > 0] = 0
            return z.sum(), {}
        if k == "nonzero":
            return y.sum() * torch.nonzero(y).shape[0], {}
        if k == "tolist":
            return y.sum() * len(y.tolist()), {}
        if k == "tensor":
            return (y * torch.tensor([2.0], device=y.device)).sum(), {}
        if k == "to_device":
            return (y * torch.ones(1).to(y.device)).sum(), {}
        if k == "branch":
            return (y.sum() if (y > 0).any() else y.mean()), {}
        if k == "unique":
            return y.sum() * len(torch.unique(y)), {}
        return y.masked_fill(y > 0, 0).sum(), {}  # "none": masked_fill_ needs no sync


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        ("item", "_local_scalar_dense"),
        ("mask_read", "index with a boolean mask"),
        ("mask_write", "index_put_ with a boolean mask"),
        ("nonzero", "nonzero"),
        ("tolist", "tolist"),
        ("tensor", "torch.tensor(..., device=)"),
        ("to_device", "host-to-device copy"),
        ("branch", "_local_scalar_dense"),
        ("unique", "unique"),
        ("none", None),
    ],
)
def test_the_sync_check_finds_each_kind(kind, what):
    found = find_host_syncs(_Syncing(kind), nn.Linear(3, 2), {"x": torch.randn(4, 3)})
    if what is None:
        assert found == []
    else:
        assert len(found) == 1 and what in found[0] and "test_cuda_graphs.py" in found[0], found


def _train(name: str, dtype: torch.dtype, graphed: bool, n: int = 3, rebind_at: int = -1):
    C, spec, method, model = _built(name, dtype)
    opts = method.build_optimizers(model)
    graph = GraphedIteration(model, method, warmup=1, emulate=True) if graphed else None
    losses = []
    torch.manual_seed(1)  # the methods' own random draws (e.g. UniMatch's dropout)
    for it, batch in enumerate(_batches(C, spec, method, n, dtype)):
        if it == rebind_at:
            p = next(model.parameters())
            p.data = p.data.clone()  # what a state load with new tensors does
        step = StepInfo(0, it, n, n)
        method.set_lr(opts, step)
        out = engine.train_step(model, opts, batch, method=method, step=step, graph=graph)
        losses.append(out["loss"])
    return model.state_dict(), torch.stack(losses), graph


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", CAPTURABLE)
def test_emulated_replay_equals_eager_bitwise(name, dtype):
    eager, eager_losses, _ = _train(name, dtype, graphed=False)
    replay, replay_losses, graph = _train(name, dtype, graphed=True)
    assert graph.captures == 1 and graph.replays == 1  # 1 eager warm-up, capture, replay
    assert torch.equal(eager_losses, replay_losses)
    for key in eager:
        assert torch.equal(eager[key], replay[key]), key


def test_pointer_guard_recaptures_after_a_rebind(caplog):
    eager, eager_losses, _ = _train("sup", torch.float32, graphed=False, n=4)
    with caplog.at_level(logging.WARNING, logger="cpcl"):
        replay, losses, graph = _train("sup", torch.float32, graphed=True, n=4, rebind_at=3)
    assert graph.captures == 2 and "capturing again" in caplog.text
    assert torch.equal(eager_losses, losses)
    for key in eager:
        assert torch.equal(eager[key], replay[key]), key


def test_a_batch_of_another_shape_runs_eagerly():
    C, spec, method, model = _built("sup")
    opts = method.build_optimizers(model)
    graph = GraphedIteration(model, method, warmup=1, emulate=True)
    batches = _batches(C, spec, method, 3, torch.float32)
    batches[2] = {k: v[..., :12, :12] for k, v in batches[2].items()}  # another crop
    for it, batch in enumerate(batches):
        engine.train_step(
            model, opts, batch, method=method, step=StepInfo(0, it, 3, 3), graph=graph
        )
    assert graph.captures == 1
    assert all(p.grad is None or p.grad.data_ptr() in graph.pointers for p in model.parameters())


def test_the_gpu_scripts_parse_and_refuse_without_cuda(capsys):
    args = bench_cuda_graphs.parse_args(["speed"])
    assert set(args.method) == set(CAPTURABLE) and args.batch == [2, 8]
    with pytest.raises(SystemExit) as exit_info:
        bench_cuda_graphs.parse_args(["--help"])
    assert exit_info.value.code == 0 and "identity" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench_cuda_graphs.parse_args(["speed", "--method", "u2pl"])  # not capturable
    if not torch.cuda.is_available():
        assert bench_cuda_graphs.main(["identity"]) == 2
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0


def test_a_cpu_run_with_cuda_graphs_is_refused_before_any_work(tmp_path):
    make_toy_voc(tmp_path / "toy", n_train=16, n_val=2, height=32, width=32, num_classes=4, seed=0)
    argv = [
        "--method=sup",
        f"--dataset_path={tmp_path / 'toy'}",
        f"--log_dir={tmp_path / 'log'}",
        "--labeled_ratio=4",
        "--num_classes=4",
        "--device=cpu",
        "--pretrained_model=None",
        "--cuda_graphs=true",
    ]
    C = apply_overrides(load_preset("voc"), argv)
    with pytest.raises(ConfigError, match="cuda_graphs = True needs a CUDA device"):
        engine.fit(C, root=str(tmp_path))
    assert not list((tmp_path / "log").rglob("*.pth"))  # nothing trained, nothing saved
