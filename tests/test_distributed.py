"""Two CPU processes (gloo): identical parameters across ranks, global pseudo-label weights,
failure propagation, and `torchrun train.py` end to end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cpcl import dist as cdist
from cpcl.engine import train_step
from cpcl.methods.cpcl import CPCL, cpcl_pseudo_supervision
from cpcl.models import Network
from cpcl.optim import build_optimizers

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    cdist.init_distributed("cpu", timeout_s=60)


def _batch(seed: int, b: int = 2, size: int = 32, classes: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "img": torch.randn(b, 3, size, size, generator=g),
        "gt": torch.randint(0, classes, (b, size, size), generator=g),
        "img_u0": torch.randn(b, 3, size, size, generator=g),
        "img_u1": torch.randn(b, 3, size, size, generator=g),
        "mask": (torch.rand(b, 1, size, size, generator=g) > 0.5).float(),
    }


def _train_worker(rank: int, world: int, port: int, out: str) -> None:
    _init(rank, world, port)
    torch.manual_seed(100 + rank)  # different local init: the broadcast must make them equal
    model = Network(3, "resnet18").train()
    cdist.broadcast_module(model)
    opts = build_optimizers(model, 0.01, 0.9, 1e-4)
    for it in range(3):
        train_step(
            model,
            opts,
            _batch(1000 * it + rank),  # each rank sees its own shard
            0.01,
            method=CPCL(
                sup_criterion=torch.nn.CrossEntropyLoss(ignore_index=255), unsup_weight=1.0
            ),
            grad_sync=lambda: cdist.allreduce_grads(model),
        )
    torch.save({k: v.detach().clone() for k, v in model.named_parameters()}, f"{out}/rank{rank}.pt")
    cdist.cleanup()


def test_parameters_stay_identical_across_ranks(tmp_path):
    mp.spawn(_train_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    p0, p1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    torch.manual_seed(100)
    init = dict(Network(3, "resnet18").named_parameters())
    assert list(p0) == list(p1)
    for key in p0:
        assert torch.equal(p0[key], p1[key]), key
    moved = sum(not torch.equal(p0[k], init[k]) for k in p0)
    assert moved > 0.9 * len(p0)  # trained, not merely identical by accident


def _logits(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t1 = 2 * torch.randn(4, 5, 12, 12, generator=g)
    t2 = 0.7 * t1 + 1.4 * torch.randn(4, 5, 12, 12, generator=g)
    return [t1, t2, torch.randn(4, 5, 12, 12, generator=g), torch.randn(4, 5, 12, 12, generator=g)]


def _weight_worker(rank: int, world: int, port: int, out: str) -> None:
    _init(rank, world, port)
    shard = [x[2 * rank : 2 * rank + 2] for x in _logits(7)]
    res = cpcl_pseudo_supervision(*shard, num_classes=5)
    torch.save({"w": res["class_weight"], "overlap": res["overlap"]}, f"{out}/w{rank}.pt")
    cdist.cleanup()


def test_pseudo_label_weights_are_those_of_the_global_batch(tmp_path):
    mp.spawn(_weight_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ref = cpcl_pseudo_supervision(*_logits(7), num_classes=5)
    local = cpcl_pseudo_supervision(*[x[:2] for x in _logits(7)], num_classes=5)
    for r in (0, 1):
        got = torch.load(tmp_path / f"w{r}.pt")
        torch.testing.assert_close(got["w"], ref["class_weight"], rtol=0, atol=1e-12)
        torch.testing.assert_close(
            torch.as_tensor(got["overlap"]).double(), torch.as_tensor(ref["overlap"]).double()
        )
    assert not torch.allclose(local["class_weight"], ref["class_weight"])  # the test can fail


def _failing_worker(rank: int, world: int, port: int) -> None:
    _init(rank, world, port)
    if rank == 1:
        raise RuntimeError("rank 1 broke on purpose")
    t = torch.ones(1)
    try:
        dist.all_reduce(t)  # rank 0 would wait here forever if nobody ended it
    except RuntimeError:
        # Gloo ends rank 0 with "connection closed by peer" at once; let rank 1's exit reach
        # mp.spawn first so the reported error is deterministically the root cause.
        time.sleep(2)
        raise
    cdist.cleanup()


def test_failure_on_one_rank_ends_all_ranks():
    start = time.monotonic()
    with pytest.raises(mp.ProcessRaisedException, match="rank 1 broke on purpose"):
        mp.spawn(_failing_worker, args=(2, _free_port()), nprocs=2, join=True)
    assert time.monotonic() - start < 60


@pytest.mark.slow
def test_torchrun_two_processes_train_end_to_end(tmp_path):
    from cpcl.data.toy import make_toy_voc

    make_toy_voc(tmp_path / "toy", n_train=16, n_val=4, height=40, width=48, num_classes=4, seed=0)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
        f"--dataset_path={tmp_path / 'toy'}", f"--log_dir={tmp_path / 'log'}", "--device=cpu",
        "--backbone=resnet18", "--pretrained_model=None", "--batch_size=4", "--image_height=32",
        "--image_width=32", "--nepochs=1", "--niters_per_epoch=2", "--num_workers=0", "--num_classes=4", "--labeled_ratio=4",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(
        cmd, cwd=REPO / "exp_voc", capture_output=True, text=True, timeout=300, env=env
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "on cpu x2" in res.stderr and "SyncBatchNorm needs CUDA" in res.stderr
    assert sorted(os.listdir(tmp_path / "log" / "snapshot")) == ["epoch-0.pth", "epoch-last.pth"]
