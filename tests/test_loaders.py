"""Stretch sampling, rank shards, exact resume, loader batches and worker error propagation."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from cpcl.config import load_preset
from cpcl.data.loaders import StretchSampler, _IterationSampler, build_train_loader
from cpcl.engine.resolve import finalize
from cpcl.errors import CpclError, DataError
from cpcl.methods import get_method

MEAN = np.array((0.485, 0.456, 0.406))
STD = np.array((0.229, 0.224, 0.225))


class FakeDataset:
    """Random RGB images; the label of item i is the constant i (so batches reveal indices)."""

    def __init__(self, n: int, labeled: bool, *, bad: int | None = None, hw=(24, 30)) -> None:
        self.n, self.labeled, self.bad, self.hw = n, labeled, bad, hw

    def __len__(self) -> int:
        return self.n

    def load(self, i: int):
        if i == self.bad:
            raise DataError(f"cannot decode image 'JPEGImages/{i:06d}.jpg': not a JPEG file")
        rng = np.random.default_rng(1000 + i)
        img = rng.integers(0, 256, (*self.hw, 3), dtype=np.uint8)
        label = np.full(self.hw, i, dtype=np.uint8) if self.labeled else None
        return img, label, f"{i:06d}"


def _config(n_lab=5, n_unl=13, batch=4, workers=0, **kw):
    C = load_preset("voc")
    C.image_height, C.image_width = 16, 20
    C.batch_size, C.num_workers = batch, workers
    for k, v in kw.items():
        C[k] = v
    return finalize(C, root="/tmp", n_labeled=n_lab, n_unlabeled=n_unl)


def _view(C, world_size=1):
    """The data view of `C.method` (the caller hands it to the loader)."""
    return (
        get_method(C.method).from_config(C, per_rank_batch=C.batch_size // world_size).data_view()
    )


def _loader(C, rank=0, world_size=1, n_lab=5, n_unl=13, bad=None):
    return build_train_loader(
        C,
        view=_view(C, world_size),
        rank=rank,
        world_size=world_size,
        labeled=FakeDataset(n_lab, True),
        unlabeled=FakeDataset(n_unl, False, bad=bad),
    )


def _labeled_ids(batch) -> list[int]:
    gt = batch["gt"]
    ids = []
    for g in gt:
        vals = torch.unique(g[g != 255])
        assert len(vals) == 1
        ids.append(int(vals))
    return ids


# --------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("n,total", [(7, 23), (5, 5), (10, 4), (3, 100), (1, 6)])
def test_epoch_composition_whole_copies_plus_distinct_remainder(n, total):
    s = StretchSampler(n, total, seed=1)
    for epoch in range(3):
        s.set_epoch(epoch)
        order = list(s)
        assert len(order) == total and all(0 <= i < n for i in order)
        counts = Counter(order)
        copies, rem = divmod(total, n)
        assert all(counts[i] in (copies, copies + 1) for i in range(n))
        assert sum(counts[i] == copies + 1 for i in range(n)) == rem


def test_epochs_differ_seed_determines_order():
    a, b = StretchSampler(50, 120, seed=7), StretchSampler(50, 120, seed=7)
    orders = []
    for e in range(3):
        a.set_epoch(e)
        b.set_epoch(e)
        orders.append(list(a))
        assert orders[-1] == list(b)
    assert orders[0] != orders[1] != orders[2]
    assert list(StretchSampler(50, 120, seed=8)) != orders[0]
    assert list(StretchSampler(50, 120, seed=7, stream=1)) != orders[0]
    # Remainder subsets change between epochs too (not only the shuffle).
    extra = [
        {i for i, c in Counter(StretchSampler(50, 70, seed=7).epoch_order(e)).items() if c == 2}
        for e in range(3)
    ]
    assert extra[0] != extra[1]


def test_exact_resume_epoch_depends_only_on_seed_and_epoch():
    run = StretchSampler(30, 45, seed=3)
    seen = {}
    for e in range(4):
        run.set_epoch(e)
        seen[e] = list(run)
    fresh = StretchSampler(30, 45, seed=3)
    fresh.set_epoch(3)
    assert list(fresh) == seen[3]


@pytest.mark.parametrize("total", [23, 24])
def test_rank_shards_are_disjoint_and_complete(total):
    full = StretchSampler(7, total, seed=5).epoch_order(2)
    shards = []
    for rank in range(2):
        s = StretchSampler(7, total, seed=5, rank=rank, world_size=2)
        s.set_epoch(2)
        shards.append(list(s))
        assert len(s) == total // 2 == len(shards[-1])
    # Rank r holds positions r, r+2, ...: interleaving them rebuilds the epoch's order.
    rebuilt = np.empty(2 * (total // 2), dtype=np.int64)
    rebuilt[0::2], rebuilt[1::2] = shards
    np.testing.assert_array_equal(rebuilt, full[: len(rebuilt)])


def test_sampler_argument_errors():
    with pytest.raises(DataError, match="0 items"):
        StretchSampler(0, 10, seed=0)
    with pytest.raises(CpclError, match="rank 2 of world_size 2"):
        StretchSampler(5, 10, seed=0, rank=2, world_size=2)


# --------------------------------------------------------------------------- loader


def test_loader_batches_shapes_dtypes_ranges():
    C = _config()
    assert (C.max_samples, C.niters_per_epoch) == (13, 3)
    loader = _loader(C)
    assert len(loader) == 3
    batches = list(loader)
    assert len(batches) == 3
    lo, hi = (-MEAN / STD).min(), ((1 - MEAN) / STD).max()
    for b in batches:
        assert set(b) == {"img", "gt", "img_u0", "img_u1", "mask"}
        for k in ("img", "img_u0", "img_u1"):
            assert b[k].shape == (4, 3, 16, 20) and b[k].dtype == torch.float32
            assert lo - 1e-6 <= float(b[k].min()) and float(b[k].max()) <= hi + 1e-6
        assert b["gt"].shape == (4, 16, 20) and b["gt"].dtype == torch.int64
        assert set(torch.unique(b["gt"]).tolist()) <= {*range(5), 255}
        assert b["mask"].shape == (4, 1, 16, 20) and b["mask"].dtype == torch.float32
        assert set(torch.unique(b["mask"]).tolist()) <= {0.0, 1.0}
        assert not torch.equal(b["img_u0"], b["img_u1"])
    # The labeled stream follows the sampler: 12 of the 13 stretched items, floor/ceil counts.
    ids = [i for b in batches for i in _labeled_ids(b)]
    want = StretchSampler(5, 13, seed=C.seed, stream=0).epoch_order(0)[:12]
    assert ids == want.tolist()


def test_loader_resume_and_worker_count_do_not_change_batches():
    C = _config()
    a = _loader(C)
    epochs = []
    for e in range(2):
        a.set_epoch(e)
        epochs.append(list(a))
    b = _loader(_config(workers=2))
    b.set_epoch(1)
    resumed = list(b)
    b.set_epoch(1, start_iter=2)  # mid-epoch resume with persistent workers
    tail = list(b)
    assert len(resumed) == 3 and len(tail) == 1
    for x, y in zip([*epochs[1], epochs[1][2]], [*resumed, *tail], strict=True):
        for k in x:
            assert torch.equal(x[k], y[k]), k
    assert not torch.equal(epochs[0][0]["img"], epochs[1][0]["img"])


def test_ranks_get_disjoint_labeled_positions_and_half_batches():
    C = _config(n_lab=5, n_unl=16, batch=4)
    assert C.niters_per_epoch == 4
    per_rank = []
    for rank in range(2):
        loader = _loader(C, rank=rank, world_size=2, n_unl=16)
        batches = list(loader)
        assert len(batches) == 4 and batches[0]["img"].shape[0] == 2
        per_rank.append([i for b in batches for i in _labeled_ids(b)])
    rebuilt = np.empty(16, dtype=np.int64)
    rebuilt[0::2], rebuilt[1::2] = per_rank
    full = StretchSampler(5, 16, seed=C.seed, stream=0).epoch_order(0)
    np.testing.assert_array_equal(rebuilt, full)
    with pytest.raises(CpclError, match=r"batch_size = 4 .*world_size = 3"):
        _loader(C, rank=0, world_size=3)


def test_streams_restart_when_epoch_needs_more_items():
    C = _config(n_lab=5, n_unl=6, batch=4, niters_per_epoch=5)  # 20 items > max_samples 6
    batches = list(_loader(C, n_unl=6))
    assert len(batches) == 5
    counts = Counter(i for b in batches for i in _labeled_ids(b))
    assert sum(counts.values()) == 20 and set(counts) == set(range(5))


def test_worker_data_error_reaches_main_process_cleanly():
    C = _config(workers=1)
    loader = _loader(C, bad=3)
    with pytest.raises(DataError) as info:
        list(loader)
    assert str(info.value) == "cannot decode image 'JPEGImages/000003.jpg': not a JPEG file"
    assert type(info.value) is DataError


def test_unfinalized_config_is_rejected():
    C = load_preset("voc")
    with pytest.raises(CpclError, match="finalized"):
        build_train_loader(
            C, view=None, labeled=FakeDataset(2, True), unlabeled=FakeDataset(2, False)
        )


@pytest.mark.parametrize("world_size", [1, 2])
def test_continuous_passes_run_each_permutation_to_its_end(world_size):
    # An endless official loader (`DataView.continuous_passes`, CoSA): 23 items, 2 per rank
    # and iteration, 4-iteration epochs: each pass is one permutation cut to whole batches
    # (drop_last), continued across epochs, and a resume from any (epoch, iteration) goes on
    # with exactly the same items.
    n, batch, niters = 23, 2, 4
    for rank in range(world_size):
        sampler = StretchSampler(n, n, seed=3, rank=rank, world_size=world_size)
        per_pass = len(sampler) // batch * batch
        run = _IterationSampler([sampler], batch, niters, continuous_passes=True)
        seen = []
        for epoch in range(6):
            run.epoch, run.start_iter = epoch, 0
            seen += [item.indices[0] for its in run for item in its]
        want = np.concatenate(
            [sampler.shard(p)[:per_pass] for p in range(len(seen) // per_pass + 1)]
        )
        assert seen == want[: len(seen)].tolist()
        assert len(set(seen[:per_pass])) == per_pass  # a pass holds no repeat
        run.epoch, run.start_iter = 3, 1
        resumed = [item.indices[0] for its in run for item in its]
        start = (3 * niters + 1) * batch
        assert resumed == seen[start : start + len(resumed)]
