"""Distributed helpers: process-group setup from torchrun's environment and gradient sync.

How the two branches are kept in sync across ranks: no DDP wrapper. One CPCL iteration calls
each branch four times (supervised, two no-grad teachers, student) before a single backward,
which DDP's reducer does not support without `static_graph` tricks. Instead every rank runs
the identical iteration on its shard of the batch, then `allreduce_grads` averages every
gradient (bucketed, flattened all-reduce) before the optimiser steps. Parameters start equal
(`broadcast_module` from rank 0) and receive equal updates, so they stay identical. BN uses
SyncBatchNorm on CUDA (global batch statistics, as one large GPU would compute); on CPU (gloo)
SyncBN is unavailable and each rank keeps its own running statistics.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from .errors import CpclError

_BUCKET_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one rank is active."""
        return self.world_size > 1


def is_initialized() -> bool:
    """True when torch.distributed is available and a process group exists."""
    return dist.is_available() and dist.is_initialized()


def check_device(device: str) -> None:
    """CpclError for `C.device = "cuda"` on a machine without CUDA (torch's own error is an
    AttributeError from `torch._C` deep inside the start-up)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CpclError(
            f"C.device = {device!r}: CUDA is not available on this machine "
            "(torch.cuda.is_available() is False); use --device=cpu, or --device=auto (GPU 0 "
            "when there is one, else the CPU)"
        )


def init_distributed(device: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's variables (RANK, WORLD_SIZE, ...).

    Without them (plain `python train.py`) this is a single process: GPU 0 when CUDA is
    available, else the CPU. `device` forces "cpu" or "cuda". NCCL is used on CUDA, gloo on CPU.
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method="env://",
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup() -> None:
    """Leave the process group, if any."""
    if is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of rank `src` to every rank (identical starting weights)."""
    if not is_initialized():
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src)


def allreduce_grads(module: nn.Module) -> None:
    """Average the gradients of `module` over all ranks, in flattened buckets.

    Each rank's loss is a mean over its own shard, so the average of the gradients is the
    gradient of the mean over the global batch (equal shard sizes are enforced by the loader).
    """
    if not is_initialized():
        return
    world = dist.get_world_size()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for g in [*grads, None]:
        if g is not None:
            bucket.append(g)
            size += g.numel() * g.element_size()
        if bucket and (g is None or size >= _BUCKET_BYTES):
            flat = torch.cat([b.reshape(-1) for b in bucket])
            dist.all_reduce(flat)
            flat.div_(world)
            offset = 0
            for b in bucket:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()
            bucket, size = [], 0


def maybe_sync_batchnorm(model: nn.Module, info: DistInfo) -> tuple[nn.Module, str | None]:
    """Convert BN to SyncBatchNorm for multi-GPU runs; return the model and a warning (or None)."""
    if not info.distributed:
        return model, None
    if info.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model), None
    return model, (
        "SyncBatchNorm needs CUDA: on CPU each rank normalises with its own batch statistics "
        "and keeps its own BN running statistics (parameters stay identical across ranks)"
    )


class StopFlag:
    """A stop request (SIGINT/SIGTERM) that every rank agrees on at the same iteration.

    Signals can reach ranks a moment apart; if one rank left the loop while another entered
    the next iteration, the latter would wait forever in a collective. `should_stop` combines
    the local flags with a MAX all-reduce over a CPU (gloo) group, which costs no GPU sync.
    """

    def __init__(self) -> None:
        self.local = False
        self._group = None
        if is_initialized():
            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None

    def set(self, *_: object) -> None:
        """Signal-handler compatible: request a stop at the next iteration boundary."""
        self.local = True

    def should_stop(self) -> bool:
        """True on every rank as soon as any rank has requested a stop."""
        if not is_initialized():
            return self.local
        flag = torch.tensor([1 if self.local else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flag.item())

    def gather_objects(self, obj: object) -> list[object]:
        """All ranks' `obj` (e.g. RNG states) over the CPU group; `[obj]` in one process."""
        if not is_initialized():
            return [obj]
        out: list[object] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj, group=self._group)
        return out
