"""U2PL class-wise memory banks: FIFO semantics, checkpoint round trip, 2-rank gloo gather."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cpcl.config import ConfigError
from cpcl.errors import CheckpointError
from cpcl.methods.u2pl.losses import reduce_contra_loss
from cpcl.methods.u2pl.memory import ClassMemoryBank, official_queue_sizes


def _keys(n: int, start: float, dim: int = 4) -> torch.Tensor:
    return torch.arange(n * dim, dtype=torch.float32).reshape(n, dim) + start


def test_fifo_truncation_and_pointer():
    bank = ClassMemoryBank([5, 3], feat_dim=4)
    assert bank.enqueue(0, _keys(2, 0)) == 2 and bank.queue_ptr == [2, 0]
    assert bank.enqueue(0, _keys(2, 100)) == 2 and bank.queue_ptr == [4, 0]
    bank.enqueue(0, _keys(3, 200))  # 7 rows >= 5: keep the last 5, ptr = size
    assert bank.queue_ptr[0] == 5
    assert torch.equal(bank[0], torch.cat((_keys(2, 0), _keys(2, 100), _keys(3, 200)))[-5:])
    bank.enqueue(1, _keys(0, 0))
    assert bank[1].shape == (0, 4) and bank.queue_ptr[1] == 0
    assert official_queue_sizes(3) == [50000, 30000, 30000]
    assert ClassMemoryBank.official(19).queue_sizes[:2] == [50000, 30000]


def test_state_round_trip_keeps_later_updates_identical(tmp_path):
    bank = ClassMemoryBank([6, 4, 3], feat_dim=4)
    for i, n in enumerate((3, 5, 1)):
        bank.enqueue(i, _keys(n, 10 * i))
    torch.save({"method_state": {"memobank": bank.state_dict()}}, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)["method_state"]["memobank"]
    resumed = ClassMemoryBank([6, 4, 3], feat_dim=4)
    resumed.load_state_dict(state)
    for b in (bank, resumed):
        b.enqueue(0, _keys(4, 7))
        b.enqueue(2, _keys(2, 9))
    assert resumed.queue_ptr == bank.queue_ptr
    for q1, q2 in zip(bank.queues, resumed.queues, strict=True):
        assert torch.equal(q1, q2)
    with pytest.raises(CheckpointError, match="queue sizes"):
        ClassMemoryBank([6, 4, 2], feat_dim=4).load_state_dict(state)
    with pytest.raises(CheckpointError, match="queue_ptr"):
        resumed.load_state_dict({"queues": state["queues"], "queue_size": state["queue_size"]})


def test_bad_queue_sizes_are_named_errors():
    with pytest.raises(ConfigError, match=r"queue_sizes\[1\] = 0"):
        ClassMemoryBank([5, 0])
    with pytest.raises(ConfigError, match="queue_sizes"):
        ClassMemoryBank([])
    with pytest.raises(ValueError, match="keys of shape"):
        ClassMemoryBank([5], feat_dim=4).enqueue(0, torch.zeros(2, 3))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_keys(rank: int, it: int, cls: int) -> torch.Tensor:
    n = (rank + it + cls) % 3 if rank == 0 else (2 * it + cls) % 4  # zero rows happen too
    return _keys(n, 1000 * rank + 100 * it + 10 * cls)


def _gather_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        bank = ClassMemoryBank([5, 3, 50], feat_dim=4)
        counts = []
        for it in range(4):
            for cls in range(3):
                counts.append(bank.enqueue(cls, _rank_keys(rank, it, cls)))
        # Official contrastive rank average: value = mean over ranks, gradient = local / world.
        x = torch.tensor(2.0 + rank, requires_grad=True)
        reduced = reduce_contra_loss(x * 3, loss_weight=0.5)
        reduced.backward()
        torch.save(
            {
                "state": bank.state_dict(),
                "counts": counts,
                "contra": [reduced.item(), x.grad.item()],
            },
            f"{out}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_banks_identical_across_two_gloo_ranks(tmp_path):
    mp.spawn(_gather_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["counts"] == r1["counts"]
    for r in (r0, r1):
        assert r["contra"] == [pytest.approx((6 + 9) / 2 * 0.5), pytest.approx(3 * 0.5 / 2)]
    assert torch.equal(r0["state"]["queue_ptr"], r1["state"]["queue_ptr"])
    # Expected: the official update on the keys of rank 0 then rank 1, single process.
    ref = ClassMemoryBank([5, 3, 50], feat_dim=4, gather=lambda k: [k])
    for it in range(4):
        for cls in range(3):
            ref.enqueue(cls, torch.cat([_rank_keys(r, it, cls) for r in (0, 1)]))
    assert r0["state"]["queue_ptr"].tolist() == ref.queue_ptr
    for q0, q1, qr in zip(r0["state"]["queues"], r1["state"]["queues"], ref.queues, strict=True):
        assert torch.equal(q0, q1) and torch.equal(q0, qr)
