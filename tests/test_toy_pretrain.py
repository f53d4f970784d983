"""Toy backbone pre-training: labels never show the benchmark classes, weights load strictly,
the cache is reused only for identical settings, and runs are deterministic."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cpcl.checkpoint import load_checkpoint
from cpcl.errors import CpclError
from cpcl.models.network import Network
from cpcl.toy_pretrain import PRETRAIN_OBJECTS, _batch, pretrain_toy_backbone

TINY = dict(iters=2, batch_size=2, size=48, progress=False)


def test_batch_labels_use_only_the_pretraining_objects():
    x, y = _batch(np.random.default_rng(0), 6, 48, "standard", (0.5, 0.5, 0.5), (0.25,) * 3)
    assert x.shape == (6, 3, 48, 48) and x.dtype == torch.float32
    assert x.min() >= -2.0 and x.max() <= 2.0  # (v/255 - 0.5) / 0.25 spans [-2, 2]
    assert y.dtype == torch.int64 and y.shape == (6, 48, 48)
    values = set(torch.unique(y).tolist())
    # 15 objects -> classes 1..15; every scene carries at least one object.
    assert values <= set(range(len(PRETRAIN_OBJECTS) + 1)) and len(values) > 1
    assert all((y[i] > 0).any() for i in range(6))


def test_pretrained_file_loads_strictly_into_both_branches(tmp_path):
    path = pretrain_toy_backbone(tmp_path / "r18.pth", **TINY)
    saved = load_checkpoint(path)["model"]
    net = Network(6, "resnet18", pretrained=str(path))
    for branch in (net.branch1, net.branch2):
        got = branch.backbone.state_dict()
        assert got.keys() == saved.keys()
        assert all(torch.equal(got[k], saved[k]) for k in saved)


def test_cache_reuse_and_determinism(tmp_path):
    a = pretrain_toy_backbone(tmp_path / "a.pth", **TINY)
    stamp = a.stat().st_mtime_ns
    assert pretrain_toy_backbone(tmp_path / "a.pth", **TINY) == a
    assert a.stat().st_mtime_ns == stamp  # same settings: not trained again
    record = json.loads((tmp_path / "a.pth.json").read_text())
    assert record["params"]["iters"] == 2 and record["params"]["objects"] == list(range(6, 21))
    b = pretrain_toy_backbone(tmp_path / "b.pth", **TINY)
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    pretrain_toy_backbone(tmp_path / "a.pth", **{**TINY, "seed": 1})
    assert a.stat().st_mtime_ns != stamp  # other settings: trained again
    wc = load_checkpoint(a)["model"]
    assert not torch.equal(wc["conv1.0.weight"], wb["conv1.0.weight"])


@pytest.mark.parametrize(("key", "value"), [("iters", 0), ("batch_size", 1.5), ("size", 32)])
def test_bad_settings_name_the_key(tmp_path, key, value):
    with pytest.raises(CpclError, match=f"{key}={value!r}: expected an integer"):
        pretrain_toy_backbone(tmp_path / "x.pth", **{**TINY, key: value})
    assert not (tmp_path / "x.pth").exists()
