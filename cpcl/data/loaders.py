"""Training loader: three independent sample streams per iteration, official epoch composition.

Official sampling (CPS/TorchSemiSeg `BaseDataset._construct_new_file_names` + shuffled
DataLoader): each of the three streams (labeled, unlabeled-0, unlabeled-1) is stretched to
`max_samples = max(n_labeled, n_unlabeled)` items per epoch and shuffled, and an epoch has
`niters_per_epoch = max_samples // batch_size` iterations (drop_last).

Differences from the official code, all in the direction of what it evidently intends:

* the official code rebuilds the whole stretched file-name list in EVERY `__getitem__` (O(n) per
  item) with a fresh `randperm` each time, so the remainder positions are effectively drawn with
  replacement; `StretchSampler` makes one permutation per epoch: whole copies of every item plus a
  random subset (without replacement) for the remainder, shuffled together;
* one worker pool serves all three streams (the official code runs three DataLoaders): every
  worker item is one (labeled, u0, u1) triple of an iteration, and the collate adds the mask batch;
* all randomness is derived from (seed, rank, epoch, iteration, slot), so an epoch's batches do not
  depend on the number of workers, and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ..errors import CpclError, DataError
from .cutmix import BoxMaskSettings, box_masks
from .transforms import TrainTransform

# Salts that keep the seed streams of the different consumers apart.
_SALT_SAMPLER = 0
_SALT_SAMPLE = 1
_SALT_MASK = 2
_SALT_WORKER = 3
_SALT_LOADER = 4

STREAM_LABELED = 0
STREAM_UNLABELED_0 = 1
STREAM_UNLABELED_1 = 2


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


@dataclass(frozen=True)
class _Item:
    """One worker job: the three stream indices of batch slot `slot` of iteration `it`."""

    epoch: int
    it: int
    slot: int
    labeled: int
    u0: int
    u1: int


class _IterationSampler(Sampler[list]):
    """Yields, per iteration, the list of `batch` triples drawn from the three streams."""

    def __init__(self, streams: Sequence[StretchSampler], batch: int, niters: int) -> None:
        self.streams = list(streams)
        self.batch, self.niters = batch, niters
        self.epoch, self.start_iter = 0, 0

    def __len__(self) -> int:
        return self.niters - self.start_iter

    def __iter__(self) -> Iterator[list]:
        e, b = self.epoch, self.batch
        its = [_endless(s, e, self.start_iter * b) for s in self.streams]
        for it in range(self.start_iter, self.niters):
            yield [_Item(e, it, k, next(its[0]), next(its[1]), next(its[2])) for k in range(b)]


@dataclass(frozen=True)
class _Failure:
    """A DataError raised in a worker, carried to the main process as data (clean message)."""

    message: str


class _TripleDataset(Dataset):
    """Loads and transforms one (labeled, u0, u1) triple; per-sample seeded randomness."""

    def __init__(
        self,
        labeled: SampleSource,
        unlabeled: SampleSource,
        transform: TrainTransform,
        *,
        seed: int,
        rank: int,
    ) -> None:
        self.labeled, self.unlabeled, self.transform = labeled, unlabeled, transform
        self.seed, self.rank = seed, rank
        self._seeded_epoch: int | None = None

    def __len__(self) -> int:
        return len(self.unlabeled)

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
            img, gt, name = self.labeled.load(item.labeled)
            if gt is None:
                raise DataError(f"labeled image {name!r} came without a label")
            img, gt = self.transform(img, gt, rng=_rng(*key, 0))
            u0, _ = self.transform(self.unlabeled.load(item.u0)[0], None, rng=_rng(*key, 1))
            u1, _ = self.transform(self.unlabeled.load(item.u1)[0], None, rng=_rng(*key, 2))
        except DataError as err:
            return _Failure(str(err))
        return img, gt, u0, u1, item.epoch, item.it


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
    """Stacks the triples and adds one CutMix mask batch seeded by (seed, rank, epoch, it)."""

    def __init__(self, settings: BoxMaskSettings, *, seed: int, rank: int) -> None:
        self.settings, self.seed, self.rank = settings, seed, rank

    def __call__(self, samples: list[Any]) -> dict[str, torch.Tensor] | _Failure:
        for x in samples:
            if isinstance(x, _Failure):
                return x
        epoch, it = samples[0][4], samples[0][5]
        img, gt, u0, u1 = (_stack([x[k] for x in samples]) for k in range(4))
        # The mask depends on the iteration, not on which worker happens to build the batch.
        s = np.random.SeedSequence([self.seed, _SALT_MASK, self.rank, epoch, it])
        gen = torch.Generator().manual_seed(int(s.generate_state(1, np.uint64)[0] >> 1))
        mask = box_masks(len(samples), img.shape[-2:], generator=gen, settings=self.settings)
        return {"img": img, "gt": gt, "img_u0": u0, "img_u1": u1, "mask": mask}


def seed_worker(seed: int, epoch: int, rank: int, worker: int) -> None:
    """Seed `random`, numpy and torch global generators from (seed, epoch, rank, worker)."""
    s = np.random.SeedSequence([seed, _SALT_WORKER, epoch, rank, worker]).generate_state(2)
    random.seed(int(s[0]) << 32 | int(s[1]))
    np.random.seed(int(s[0]))
    torch.manual_seed(int(s[0]) << 32 | int(s[1]))


class _WorkerInit:
    """Picklable `worker_init_fn`: seeds the globals for the epoch the workers start in.

    Persistent workers outlive an epoch; `_TripleDataset` re-seeds them when the epoch changes.
    """

    def __init__(self, seed: int, rank: int, sampler: _IterationSampler) -> None:
        self.seed, self.rank, self.sampler = seed, rank, sampler

    def __call__(self, worker_id: int) -> None:
        # The sampler state was copied into the worker when it started: its epoch is current.
        seed_worker(self.seed, self.sampler.epoch, self.rank, worker_id)


class TrainLoader:
    """Iterates `niters_per_epoch` dicts per epoch (see `build_train_loader`).

    Call `set_epoch(epoch)` before each epoch; `len(loader)` is the number of iterations of a
    full epoch. A `DataError` inside a worker is re-raised here with its original message.
    """

    def __init__(
        self,
        dataset: _TripleDataset,
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
        for batch in self._loader:
            if isinstance(batch, _Failure):
                raise DataError(batch.message)
            yield batch


def build_train_loader(
    C: Any,
    *,
    rank: int = 0,
    world_size: int = 1,
    labeled: SampleSource | None = None,
    unlabeled: SampleSource | None = None,
) -> TrainLoader:
    """The training loader of a FINALIZED config `C` for one rank.

    Each iteration yields `{"img": (B,3,H,W) float32, "gt": (B,H,W) int64, "img_u0",
    "img_u1": (B,3,H,W) float32, "mask": (B,1,H,W) float32}` with the per-rank batch
    `B = C.batch_size // world_size`, for exactly `C.niters_per_epoch` iterations.
    `labeled` / `unlabeled` replace `build_dataset(C, "labeled" / "unlabeled")` (tests, tools).
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
    if labeled is None or unlabeled is None:
        from .datasets import build_dataset  # helper A's module; imported only when needed

        labeled = labeled if labeled is not None else build_dataset(C, "labeled")
        unlabeled = unlabeled if unlabeled is not None else build_dataset(C, "unlabeled")
    batch = C.batch_size // world_size
    total = int(C.max_samples)
    seed = int(C.seed)
    if total // world_size < 1:
        raise CpclError(
            f"C.max_samples = {total} is smaller than world_size = {world_size}: expected at "
            "least one sample per rank"
        )
    streams = [
        StretchSampler(len(ds), total, seed=seed, rank=rank, world_size=world_size, stream=k)
        for k, ds in (
            (STREAM_LABELED, labeled),
            (STREAM_UNLABELED_0, unlabeled),
            (STREAM_UNLABELED_1, unlabeled),
        )
    ]
    transform = TrainTransform(
        C.image_mean, C.image_std, (C.image_height, C.image_width), C.train_scale_array
    )
    num_workers = int(C.num_workers)
    if num_workers < 0:
        raise CpclError(f"C.num_workers = {num_workers}: expected >= 0")
    return TrainLoader(
        _TripleDataset(labeled, unlabeled, transform, seed=seed, rank=rank),
        _IterationSampler(streams, batch, int(C.niters_per_epoch)),
        _TrainCollate(BoxMaskSettings.from_config(C), seed=seed, rank=rank),
        num_workers=num_workers,
        seed=seed,
        rank=rank,
        pin_memory=torch.cuda.is_available(),
    )
