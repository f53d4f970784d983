"""Checkpoint loading (strict, weights_only, prefixes, ImageNet files) and atomic saving."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from cpcl.checkpoint import (
    load_backbone_weights,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    strip_prefixes,
)
from cpcl.errors import CheckpointError
from cpcl.models import Network
from cpcl.models.resnet import resnet18


@pytest.fixture(scope="module")
def small() -> Network:
    torch.manual_seed(0)
    return Network(4, "resnet18")


def _equal_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_official_layout(tmp_path, small):
    opt = torch.optim.SGD(small.branch1.parameters(), lr=0.1, momentum=0.9)
    path = save_checkpoint(tmp_path / "epoch-3.pth", small, optimizer_1=opt, epoch=3, iteration=30)
    state = load_checkpoint(path)
    assert {"model", "optimizer_1", "epoch", "iteration"} <= set(state)
    assert state["epoch"] == 3 and state["iteration"] == 30
    assert state["optimizer_1"]["param_groups"][0]["lr"] == 0.1
    fresh = Network(4, "resnet18")
    assert not _equal_state(fresh, small)
    report = load_weights(fresh, path)
    assert _equal_state(fresh, small)
    assert report == {"missing": [], "unexpected": [], "shape_mismatch": []}
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_prefixed_keys_load(tmp_path, small, prefix):
    sd = {prefix + k: v for k, v in small.state_dict().items()}
    torch.save({"state_dict": sd}, tmp_path / "w.pth")
    fresh = Network(4, "resnet18")
    load_weights(fresh, tmp_path / "w.pth")
    assert _equal_state(fresh, small)
    assert list(strip_prefixes(sd)) == list(small.state_dict())


def test_load_into_wrapped_model(small):
    wrapper = nn.Module()
    wrapper._orig_mod = Network(4, "resnet18")  # what torch.compile exposes
    load_weights(wrapper, small.state_dict())
    assert _equal_state(wrapper._orig_mod, small)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        # Unpickling this would create the marker file: proof that code ran.
        return (open, (self.marker, "w"))


def test_refuses_code_carrying_pickle(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _Evil(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "arbitrary unpickling" in str(err.value)
    assert "Nothing in it was run" in str(err.value)
    assert not marker.exists()


def test_mismatch_message_names_file_and_keys(tmp_path, small):
    sd = dict(small.state_dict())
    sd.pop("branch1.head.reduce.0.weight")
    sd["branch2.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save({"model": sd}, path)
    other = Network(7, "resnet18")  # another class count: classifier shapes differ
    with pytest.raises(CheckpointError) as err:
        load_weights(other, path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing in the checkpoint (1): branch1.head.reduce.0.weight" in msg
    assert "unexpected in the checkpoint (1): branch2.extra.weight" in msg
    assert "shape mismatch (checkpoint vs model) (4)" in msg
    assert "branch1.classifier.weight [4, 256, 1, 1] vs [7, 256, 1, 1]" in msg
    assert "the checkpoint has 4 classes and the model 7" in msg


def test_non_strict_loads_what_fits_and_warns(small, caplog):
    other = Network(7, "resnet18")
    before = other.branch1.classifier.weight.clone()
    with caplog.at_level("WARNING"):
        report = load_weights(other, small.state_dict(), strict=False)
    assert len(report["shape_mismatch"]) == 4
    assert "does not fit" in caplog.text
    assert torch.equal(other.branch1.head.reduce[0].weight, small.branch1.head.reduce[0].weight)
    assert torch.equal(other.branch1.classifier.weight, before)


def test_backbone_file_drops_fc_and_is_otherwise_strict(tmp_path, caplog):
    src = resnet18(deep_stem=True, stem_width=64)
    sd = dict(src.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(sd, tmp_path / "r18.pth")
    dst = resnet18(deep_stem=True, stem_width=64)
    with caplog.at_level("INFO", logger="cpcl.checkpoint"):
        load_backbone_weights(dst, tmp_path / "r18.pth")
    assert "dropping the ImageNet classifier" in caplog.text
    assert _equal_state(dst, src)
    sd.pop("layer1.0.conv1.weight")
    torch.save(sd, tmp_path / "r18_bad.pth")
    with pytest.raises(
        CheckpointError, match=r"missing in the checkpoint \(1\): layer1.0.conv1.weight"
    ):
        load_backbone_weights(dst, tmp_path / "r18_bad.pth")


def test_pretrained_argument_loads_backbone(tmp_path):
    src = resnet18(deep_stem=True, stem_width=64)
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    net = Network(3, "resnet18", pretrained=str(tmp_path / "r18.pth"))
    assert _equal_state(net.branch1.backbone, src) and _equal_state(net.branch2.backbone, src)


def test_missing_truncated_and_non_dict_files(tmp_path, small):
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*nope\.pth"):
        load_checkpoint(tmp_path / "nope.pth")
    path = save_checkpoint(tmp_path / "ok.pth", small)
    data = path.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"trunc\.pth is not a checkpoint .*truncated"):
        load_checkpoint(tmp_path / "trunc.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a dict, found list"):
        load_checkpoint(tmp_path / "list.pth")
    torch.save({"epoch": 1}, tmp_path / "noweights.pth")
    with pytest.raises(CheckpointError, match="no weights found"):
        load_weights(small, tmp_path / "noweights.pth")


def test_save_is_atomic_when_interrupted(tmp_path, small, monkeypatch):
    path = save_checkpoint(tmp_path / "epoch-last.pth", small, epoch=1)
    good = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt  # e.g. preemption in the middle of a write

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, small, epoch=2)
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["epoch-last.pth"]
