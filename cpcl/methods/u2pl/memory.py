"""U2PL's class-wise memory banks of negative keys (`u2pl/utils/utils.py:16-47`).

One FIFO queue of teacher representations per class. The official update
(`dequeue_and_enqueue`): the keys of every rank are gathered in rank order and appended; when
the queue then holds `>= queue_size` rows only the last `queue_size` are kept and the pointer
is set to `queue_size`, otherwise `ptr = (ptr + n) % queue_size`. The pointer never selects
rows (the queue is a plain truncating FIFO); it is kept because it is part of the official
state. Officially the queues live on the CPU; here they live on the device of the keys (the
same rows, no device-host copy per class and iteration, and no host-device copy of a whole
queue per sampled class); `state_dict` saves them on the CPU, and a resumed run samples the
same negatives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ...errors import CheckpointError, ConfigError

GatherFn = Callable[[Tensor], list[Tensor]]

# Official sizes (`train_semi.py:162-169`): 30000 keys per class, 50000 for class 0.
OFFICIAL_QUEUE_SIZE = 30000
OFFICIAL_QUEUE_SIZE_CLASS0 = 50000


def official_queue_sizes(num_classes: int) -> list[int]:
    """`[50000, 30000, 30000, ...]` for `num_classes` classes."""
    return [OFFICIAL_QUEUE_SIZE_CLASS0] + [OFFICIAL_QUEUE_SIZE] * (int(num_classes) - 1)


def all_gather_keys(keys: Tensor) -> list[Tensor]:
    """The keys of every rank, in rank order (`[keys]` without an active process group).

    Same result as the official `gather_together` (`all_gather_object`), done with two tensor
    all-gathers (row counts, then rows padded to the longest), so no pickling is involved.
    Every rank must call it the same number of times (once per class per iteration).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [keys]
    world = dist.get_world_size()
    keys = keys.contiguous()
    count = torch.tensor([keys.shape[0]], dtype=torch.long, device=keys.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    longest = max(sizes)
    if longest == 0:
        return [keys[:0] for _ in range(world)]
    padded = keys.new_zeros((longest, *keys.shape[1:]))
    padded[: keys.shape[0]] = keys
    rows = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(rows, padded)
    return [r[:n] for r, n in zip(rows, sizes, strict=True)]


class ClassMemoryBank:
    """Per-class FIFO queues of negative keys with the official update and pointers.

    Args:
        queue_sizes: the capacity of each class's queue (official: `official_queue_sizes`).
        feat_dim: the key width (256, the representation head).
        gather: `keys -> [keys of rank 0, rank 1, ...]`; default `all_gather_keys`.
    """

    def __init__(
        self, queue_sizes: Sequence[int], feat_dim: int = 256, gather: GatherFn | None = None
    ) -> None:
        sizes = list(queue_sizes)
        if not sizes:
            raise ConfigError("memory bank queue_sizes is empty: expected one size per class")
        for cls, size in enumerate(sizes):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ConfigError(
                    f"memory bank queue_sizes[{cls}] = {size!r}: expected an integer >= 1"
                )
        if int(feat_dim) < 1:
            raise ConfigError(f"memory bank feat_dim = {feat_dim!r}: expected >= 1")
        self.queue_sizes = sizes
        self.feat_dim = int(feat_dim)
        self.gather = gather if gather is not None else all_gather_keys
        self.queues: list[Tensor] = [torch.zeros(0, self.feat_dim) for _ in sizes]
        self.queue_ptr: list[int] = [0] * len(sizes)

    @classmethod
    def official(cls, num_classes: int, gather: GatherFn | None = None) -> ClassMemoryBank:
        """The official banks: 256-d keys, 50000 for class 0 and 30000 for the others."""
        return cls(official_queue_sizes(num_classes), 256, gather)

    def __len__(self) -> int:
        return len(self.queues)

    def __getitem__(self, cls: int) -> Tensor:
        return self.queues[cls]

    @torch.no_grad()
    def enqueue(self, cls: int, keys: Tensor) -> int:
        """Gather `keys` (n, feat_dim) over ranks, append them to class `cls`'s queue, truncate
        to its size; returns the number of gathered keys (official `dequeue_and_enqueue`)."""
        if keys.dim() != 2 or keys.shape[1] != self.feat_dim:
            raise ValueError(
                f"memory bank class {cls}: keys of shape {tuple(keys.shape)}, "
                f"expected (n, {self.feat_dim})"
            )
        gathered = torch.cat([k.detach() for k in self.gather(keys.detach())], dim=0)
        n = gathered.shape[0]
        size = self.queue_sizes[cls]
        queue = torch.cat((self.queues[cls].to(gathered.device), gathered), dim=0)
        if queue.shape[0] >= size:
            self.queues[cls] = queue[-size:, :]
            self.queue_ptr[cls] = size
        else:
            self.queues[cls] = queue
            self.queue_ptr[cls] = (self.queue_ptr[cls] + n) % size
        return n

    def state_dict(self) -> dict[str, Any]:
        """Plain data (tensors and ints) for a checkpoint; exact resume needs all of it."""
        return {
            "queues": [q.detach().cpu().clone() for q in self.queues],
            "queue_ptr": torch.tensor(self.queue_ptr, dtype=torch.long),
            "queue_size": torch.tensor(self.queue_sizes, dtype=torch.long),
            "feat_dim": self.feat_dim,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore queues and pointers saved by `state_dict` (sizes must match)."""
        try:
            queues, ptr, size = state["queues"], state["queue_ptr"], state["queue_size"]
        except KeyError as err:
            raise CheckpointError(f"memory bank state lacks {err.args[0]!r}") from None
        if [int(s) for s in size] != self.queue_sizes:
            raise CheckpointError(
                f"memory bank queue sizes in the checkpoint {[int(s) for s in size]} differ "
                f"from the configured {self.queue_sizes}"
            )
        if len(queues) != len(self.queues) or len(ptr) != len(self.queues):
            raise CheckpointError(
                f"memory bank state has {len(queues)} queues / {len(ptr)} pointers, "
                f"expected {len(self.queues)}"
            )
        for cls, q in enumerate(queues):
            if q.dim() != 2 or q.shape[1] != self.feat_dim or q.shape[0] > self.queue_sizes[cls]:
                raise CheckpointError(
                    f"memory bank queue {cls} in the checkpoint has shape {tuple(q.shape)}; "
                    f"expected (<= {self.queue_sizes[cls]}, {self.feat_dim})"
                )
        self.queues = [q.detach().cpu().clone() for q in queues]
        self.queue_ptr = [int(p) for p in ptr]
