"""Training loader: independent sample streams per iteration, official epoch composition.

The method's data view (`cpcl.data.views`) names the streams a batch slot draws from: sup
only the labeled one, CPS/CPCL the official three (labeled, unlabeled-0, unlabeled-1).

Official sampling (CPS/TorchSemiSeg `BaseDataset._construct_new_file_names` + shuffled
DataLoader): each stream is stretched to
`max_samples = max(n_labeled, n_unlabeled)` items per epoch and shuffled, and an epoch has
`niters_per_epoch = max_samples // batch_size` iterations (drop_last).

Differences from the official code, all in the direction of what it evidently intends:

* the official code rebuilds the whole stretched file-name list in EVERY `__getitem__` (O(n) per
  item) with a fresh `randperm` each time, so the remainder positions are effectively drawn with
  replacement; `StretchSampler` makes one permutation per epoch: whole copies of every item plus a
  random subset (without replacement) for the remainder, shuffled together;
* one worker pool serves all streams (the official code runs three DataLoaders): every worker
  item is one batch slot of an iteration (e.g. a (labeled, u0, u1) triple), and the collate
  adds the per-batch tensors of the view (the CutMix masks);
* all randomness is derived from (seed, rank, epoch, iteration, slot), so an epoch's batches do not
  depend on the number of workers, and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ..errors import CpclError, DataError
from .datasets import build_dataset
from .views import DataView

# Salts that keep the seed streams of the different consumers apart.
_SALT_SAMPLER = 0
_SALT_SAMPLE = 1
_SALT_MASK = 2
_SALT_WORKER = 3
_SALT_LOADER = 4


class SampleSource(Protocol):
    """What the loader needs from a dataset (helper A's `SegDataset`)."""

    def __len__(self) -> int: ...

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None, str]: ...


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


class StretchSampler(Sampler[int]):
    """Official epoch composition for one stream, one permutation per epoch.

    An epoch is `total` dataset indices in [0, n_items): `total // n_items` whole copies of every
    item plus a random subset of `total % n_items` distinct items, shuffled together. The order
    depends only on (seed, stream, epoch), never on earlier epochs (exact resume). With
    `world_size > 1` rank r takes positions r, r + world_size, ... of the epoch, `total //
    world_size` of them, so ranks are disjoint and together cover the epoch's first
    `world_size * (total // world_size)` positions.
    """

    def __init__(
        self,
        n_items: int,
        total: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        stream: int = 0,
    ) -> None:
        if n_items < 1:
            raise DataError(f"a training split with {n_items} items: expected at least one")
        if total < 1:
            raise CpclError(f"samples per epoch = {total}: expected a positive integer")
        if world_size < 1 or not 0 <= rank < world_size:
            raise CpclError(f"rank {rank} of world_size {world_size}: expected 0 <= rank < size")
        if seed < 0:
            raise CpclError(f"C.seed = {seed}: expected a non-negative integer")
        self.n_items, self.total = int(n_items), int(total)
        self.seed, self.stream = int(seed), int(stream)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self._cache: tuple[tuple[int, int], np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order `__iter__` yields."""
        if epoch < 0:
            raise CpclError(f"epoch {epoch}: expected a non-negative integer")
        self.epoch = int(epoch)

    def epoch_order(self, epoch: int, cycle: int = 0) -> np.ndarray:
        """All ranks' indices of `epoch` (int64, length `total`).

        `cycle` > 0 gives further independent passes, used when one epoch needs more items than
        `total` (a user-set `niters_per_epoch` larger than the official one).
        """
        key = (int(epoch), int(cycle))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        rng = _rng(self.seed, _SALT_SAMPLER, self.stream, epoch, cycle)
        n, copies = self.n_items, self.total // self.n_items
        subset = rng.permutation(n)[: self.total % n]
        perm = rng.permutation(self.total)
        # Virtual slot v < copies*n is item v % n; slot copies*n + j is the j-th subset item.
        order = perm % n
        tail = perm >= copies * n
        order[tail] = subset[perm[tail] - copies * n]
        self._cache = (key, order)
        return order

    def shard(self, epoch: int, cycle: int = 0) -> np.ndarray:
        """This rank's indices of `epoch`, `len(self)` of them."""
        return self.epoch_order(epoch, cycle)[self.rank :: self.world_size][: len(self)]

    def __len__(self) -> int:
        return self.total // self.world_size

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard(self.epoch).tolist())


def _endless(sampler: StretchSampler, epoch: int, skip: int) -> Iterator[int]:
    """The rank's shard of `epoch`, continued by further cycles if the epoch needs more items."""
    cycle = 0
    n = len(sampler)
    if n == 0:
        raise CpclError(
            f"{sampler.total} samples per epoch cannot be split over {sampler.world_size} ranks"
        )
    cycle, skip = divmod(skip, n)
    while True:
        yield from sampler.shard(epoch, cycle)[skip:].tolist()
        skip = 0
        cycle += 1


def _passes(sampler: StretchSampler, batch: int, start: int) -> Iterator[int]:
    """The rank's items from position `start` of an endless run of passes: pass p is the
    rank's shard of permutation p (`sampler.shard(p)`) cut to whole batches (drop_last)."""
    per_pass = len(sampler) // batch * batch
    if per_pass == 0:
        raise CpclError(
            f"a pass of {len(sampler)} items per rank holds no whole batch of {batch}: "
            "expected at least one"
        )
    p, skip = divmod(start, per_pass)
    while True:
        yield from sampler.shard(p)[skip:per_pass].tolist()
        skip = 0
        p += 1


@dataclass(frozen=True)
class _Item:
    """One worker job: the stream indices of batch slot `slot` of iteration `it`."""

    epoch: int
    it: int
    slot: int
    indices: tuple[int, ...]


class _IterationSampler(Sampler[list]):
    """Yields, per iteration, the list of `batch` items, one index from each stream."""

    def __init__(
        self,
        streams: Sequence[StretchSampler],
        batch: int,
        niters: int,
        continuous_passes: bool = False,
    ) -> None:
        self.streams = list(streams)
        self.batch, self.niters = batch, niters
        self.continuous = continuous_passes  # `DataView.continuous_passes`
        self.epoch, self.start_iter = 0, 0

    def __len__(self) -> int:
        return self.niters - self.start_iter

    def __iter__(self) -> Iterator[list]:
        e, b = self.epoch, self.batch
        if self.continuous:  # the global position: every earlier epoch's items were drawn
            its = [_passes(s, b, (e * self.niters + self.start_iter) * b) for s in self.streams]
        else:
            its = [_endless(s, e, self.start_iter * b) for s in self.streams]
        for it in range(self.start_iter, self.niters):
            yield [_Item(e, it, k, tuple(next(i) for i in its)) for k in range(b)]


@dataclass(frozen=True)
class _Failure:
    """A DataError raised in a worker, carried to the main process as data (clean message)."""

    message: str


class _ViewDataset(Dataset):
    """Loads the images of one batch slot and builds its sample with the method's view."""

    def __init__(
        self,
        sources: Sequence[SampleSource],
        view: DataView,
        *,
        seed: int,
        rank: int,
    ) -> None:
        self.sources, self.view = list(sources), view
        self.seed, self.rank = seed, rank
        self._seeded_epoch: int | None = None

    def __len__(self) -> int:
        return len(self.sources[-1])

    def _reseed_worker_globals(self, epoch: int) -> None:
        # Third-party code in a worker may use the global generators; make them depend on
        # (seed, epoch, rank, worker) too. Never done in the main process (the trainer's RNG).
        info = get_worker_info()
        if info is None or self._seeded_epoch == epoch:
            return
        seed_worker(self.seed, epoch, self.rank, info.id)
        self._seeded_epoch = epoch

    def __getitem__(self, item: _Item) -> tuple[Any, ...] | _Failure:
        self._reseed_worker_globals(item.epoch)
        key = (self.seed, _SALT_SAMPLE, self.rank, item.epoch, item.it, item.slot)
        try:
            loaded = [src.load(i) for src, i in zip(self.sources, item.indices, strict=True)]
            sample = self.view.sample(loaded, lambda k: _rng(*key, k))
        except DataError as err:
            return _Failure(str(err))
        return sample, item.epoch, item.it


def _stack(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack equal-shape arrays into one tensor; inside a worker straight into shared memory.

    A batch leaves a worker through shared memory; writing it there directly (as torch's
    default collate does) saves a full copy of the batch, 370 MB per Cityscapes iteration.
    """
    elem = torch.from_numpy(arrays[0])
    if get_worker_info() is None:
        out = torch.empty((len(arrays), *elem.shape), dtype=elem.dtype)
    else:
        storage = elem._typed_storage()._new_shared(elem.numel() * len(arrays), device="cpu")
        out = elem.new(storage).resize_(len(arrays), *elem.shape)
    return torch.stack([torch.from_numpy(a) for a in arrays], out=out)


class _TrainCollate:
    """Stacks the samples, then lets the view add per-batch tensors (e.g. CutMix masks) drawn
    from a generator seeded by (seed, rank, epoch, it)."""

    def __init__(self, view: DataView, *, seed: int, rank: int) -> None:
        self.view, self.seed, self.rank = view, seed, rank

    def __call__(self, samples: list[Any]) -> dict[str, torch.Tensor] | _Failure:
        for x in samples:
            if isinstance(x, _Failure):
                return x
        epoch, it = samples[0][1], samples[0][2]
        batch = {k: _stack([x[0][k] for x in samples]) for k in samples[0][0]}
        # Per-batch randomness depends on the iteration, not on which worker builds the batch.
        s = np.random.SeedSequence([self.seed, _SALT_MASK, self.rank, epoch, it])
        gen = torch.Generator().manual_seed(int(s.generate_state(1, np.uint64)[0] >> 1))
        return self.view.collate(batch, gen)


def seed_worker(seed: int, epoch: int, rank: int, worker: int) -> None:
    """Seed `random`, numpy and torch global generators from (seed, epoch, rank, worker)."""
    s = np.random.SeedSequence([seed, _SALT_WORKER, epoch, rank, worker]).generate_state(2)
    random.seed(int(s[0]) << 32 | int(s[1]))
    np.random.seed(int(s[0]))
    torch.manual_seed(int(s[0]) << 32 | int(s[1]))


class _WorkerInit:
    """Picklable `worker_init_fn`: seeds the globals for the epoch the workers start in.

    Persistent workers outlive an epoch; `_ViewDataset` re-seeds them when the epoch changes.
    """

    def __init__(self, seed: int, rank: int, sampler: _IterationSampler) -> None:
        self.seed, self.rank, self.sampler = seed, rank, sampler

    def __call__(self, worker_id: int) -> None:
        ignore_stop_signals()
        # The sampler state was copied into the worker when it started: its epoch is current.
        seed_worker(self.seed, self.sampler.epoch, self.rank, worker_id)


# Ctrl-C in a terminal, `timeout` and Slurm preemption signal the whole process group,
# workers included. Only the main process decides how a run stops (it writes interrupted.pth):
# workers start with these signals blocked and ignore them from their first instruction on.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def ignore_stop_signals() -> None:
    """In a loader worker: ignore SIGINT/SIGTERM (pending ones are dropped), then unblock them."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@functools.cache
def _kill_workers_at_exit() -> None:
    """Once per process: at exit, SIGKILL the daemonic children still alive.

    multiprocessing's own exit handler ends daemonic children with SIGTERM, which loader
    workers ignore (see `ignore_stop_signals`), and then waits for them forever. This handler
    is registered after it, so it runs first.
    """
    import atexit
    import multiprocessing

    def kill() -> None:
        for child in multiprocessing.active_children():
            if child.daemon and child.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)

    atexit.register(kill)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block SIGINT/SIGTERM while worker processes are started, so that they inherit the block.

    A signal that arrives meanwhile stays pending and reaches the main process's handler when
    the block ends; in a worker it is dropped by `ignore_stop_signals`.
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no process groups to worry about
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class TrainLoader:
    """Iterates `niters_per_epoch` dicts per epoch (see `build_train_loader`).

    Call `set_epoch(epoch)` before each epoch; `len(loader)` is the number of iterations of a
    full epoch. A `DataError` inside a worker is re-raised here with its original message.
    """

    def __init__(
        self,
        dataset: _ViewDataset,
        sampler: _IterationSampler,
        collate: _TrainCollate,
        *,
        num_workers: int,
        seed: int,
        rank: int,
        pin_memory: bool,
    ) -> None:
        self.sampler = sampler
        self.niters = sampler.niters
        self.num_workers = num_workers
        self._loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
            worker_init_fn=_WorkerInit(seed, rank, sampler) if num_workers > 0 else None,
            # An own generator: creating an iterator must not consume the trainer's global RNG.
            generator=torch.Generator().manual_seed(seed + _SALT_LOADER),
        )

    def __len__(self) -> int:
        return self.niters

    @property
    def batch_size(self) -> int:
        """Per-rank batch size."""
        return self.sampler.batch

    def set_epoch(self, epoch: int, start_iter: int = 0) -> None:
        """Select the epoch to iterate; `start_iter` > 0 resumes inside it (skips iterations)."""
        if epoch < 0:
            raise CpclError(f"epoch {epoch}: expected a non-negative integer")
        if not 0 <= start_iter <= self.niters:
            raise CpclError(f"start_iter {start_iter}: expected 0..{self.niters}")
        self.sampler.epoch, self.sampler.start_iter = int(epoch), int(start_iter)
        for s in self.sampler.streams:
            s.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        with stop_signals_blocked():  # workers (re)start here
            batches = iter(self._loader)
        if self._loader.num_workers > 0:
            _kill_workers_at_exit()
        try:
            for batch in batches:
                if isinstance(batch, _Failure):
                    raise DataError(batch.message)
                yield batch
        except Exception:
            # Workers ignore SIGTERM, so multiprocessing's exit-time terminate() cannot end
            # them: after an error, shut them down now (persistent workers of a loop that goes
            # on are reused, so nothing else is shut down here; `_kill_workers_at_exit`).
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            raise


def build_train_loader(
    C: Any,
    *,
    view: DataView,
    rank: int = 0,
    world_size: int = 1,
    labeled: SampleSource | None = None,
    unlabeled: SampleSource | None = None,
) -> TrainLoader:
    """The training loader of a FINALIZED config `C` for one rank.

    Each iteration yields the dict of `view` (the method's `data_view()`; for CPS and
    CPCL `{"img": (B,3,H,W) float32, "gt": (B,H,W) int64, "img_u0", "img_u1": (B,3,H,W)
    float32, "mask": (B,1,H,W) float32}`) with the per-rank batch
    `B = C.batch_size // world_size`, for exactly `C.niters_per_epoch` iterations. Only the
    streams the view declares (`view.streams`) are built and read (sup reads no unlabeled
    image); `labeled` / `unlabeled` replace `build_dataset(C, "labeled" / "unlabeled")`
    (tests, tools), any other declared stream is `build_dataset(C, name)`.
    """
    for key in ("max_samples", "niters_per_epoch"):
        if C.get(key) is None:
            raise CpclError(f"C.{key} is None: build_train_loader needs a finalized config")
    if world_size < 1 or not 0 <= rank < world_size:
        raise CpclError(f"rank {rank} of world_size {world_size}: expected 0 <= rank < size")
    if C.batch_size % world_size != 0:
        raise CpclError(
            f"C.batch_size = {C.batch_size} is not divisible by world_size = {world_size}: "
            "expected a global batch that splits evenly over the ranks"
        )
    batch = C.batch_size // world_size
    given = {"labeled": labeled, "unlabeled": unlabeled}
    sources = {name: given.get(name) for name in view.streams}
    if any(src is None for src in sources.values()):
        sources = {n: build_dataset(C, n) if src is None else src for n, src in sources.items()}
    total = int(C.max_samples)
    seed = int(C.seed)
    if total // world_size < 1:
        raise CpclError(
            f"C.max_samples = {total} is smaller than world_size = {world_size}: expected at "
            "least one sample per rank"
        )
    # Stream k of the view gets sampler stream id k (labeled 0, unlabeled 1, 2, ...), so the
    # CPS/CPCL triple keeps the ids of the official three loaders.
    streams = [
        StretchSampler(
            len(sources[name]), total, seed=seed, rank=rank, world_size=world_size, stream=k
        )
        for k, name in enumerate(view.streams)
    ]
    num_workers = int(C.num_workers)
    if num_workers < 0:
        raise CpclError(f"C.num_workers = {num_workers}: expected >= 0")
    return TrainLoader(
        _ViewDataset([sources[name] for name in view.streams], view, seed=seed, rank=rank),
        _IterationSampler(
            streams, batch, int(C.niters_per_epoch), bool(getattr(view, "continuous_passes", False))
        ),
        _TrainCollate(view, seed=seed, rank=rank),
        num_workers=num_workers,
        seed=seed,
        rank=rank,
        pin_memory=torch.cuda.is_available(),
    )
