"""CoSA's start-up checks: the official npy found by default and checked against every listed
id before training, the npy-vs-masks agreement check (scripts/check_cosa_labels.py), a web
page saved as the ViT weights file, and the run-log header naming the ViT."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY_TRAIN
from PIL import Image

from cpcl.config import load_preset
from cpcl.engine.resolve import apply_overrides, finalize
from cpcl.errors import CheckpointError, DataError
from cpcl.methods.cosa import CoSA
from cpcl.methods.cosa.data import write_toy_cls_labels
from cpcl.methods.cosa.image_labels import read_cls_labels_npy, write_cls_labels_npy
from cpcl.methods.cosa.network import CoSANet
from cpcl.methods.cosa.vit import load_vit_pretrained

TINY_COSA = (*TINY_TRAIN, "--method=cosa", "--cosa_backbone=vit_toy_patch16")


def _method(root: Path, *extra: str) -> CoSA:
    args = [*TINY_COSA, f"--dataset_path={root}", *extra]
    C = finalize(apply_overrides(load_preset("voc"), args), root=str(root))
    return CoSA.from_config(C, per_rank_batch=2)


@pytest.fixture
def toy_copy(toy_voc_small: Path, tmp_path: Path) -> Path:
    """A private copy of the toy dataset (the tests write into it)."""
    return Path(shutil.copytree(toy_voc_small, tmp_path / "voc"))


def test_official_npy_found_by_default_and_checked_at_start_up(toy_copy: Path):
    assert _method(toy_copy).labels.table is None  # no npy there: derived from the masks
    npy = write_toy_cls_labels(toy_copy, 4)  # <root>/cls_labels_onehot.npy
    method = _method(toy_copy)
    assert method.labels.source == str(npy) and method.data_view() is not None
    assert _method(toy_copy, "--cosa_cls_labels=masks").labels.table is None

    table = read_cls_labels_npy(npy, 4)
    train_ids = (toy_copy / "train_aug.txt").read_text().split()
    for name in train_ids[:7]:
        del table[name]
    write_cls_labels_npy(npy, table)
    with pytest.raises(DataError) as err:
        _method(toy_copy).data_view()  # before any training
    text = str(err.value)
    assert f"{npy} have no entry for 7 ids of {toy_copy / 'train_aug.txt'}" in text
    assert ", ".join(repr(n) for n in train_ids[:5]) + " ..." in text


def _check_script():
    spec = importlib.util.spec_from_file_location(
        "check_cosa_labels", REPO / "scripts/check_cosa_labels.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_labels_agreement_check(toy_copy: Path, capsys):
    script = _check_script()
    npy = write_toy_cls_labels(toy_copy, 4)
    argv = ["--dataset_path", str(toy_copy), "--num_classes", "4"]
    assert script.main(argv) == 0
    assert (
        "16 images compared, 0 disagree, 0 not in the npy, 0 masks all 255"
        in capsys.readouterr().out
    )

    names = (toy_copy / "train_aug.txt").read_text().split()
    table = read_cls_labels_npy(npy, 4)
    table[names[3]] = 1 - table[names[3]]  # one vector that no longer fits its mask
    del table[names[5]]
    write_cls_labels_npy(npy, table)
    mask = toy_copy / "train_aug" / "label" / f"{names[8]}.png"
    with Image.open(mask) as im:
        shape = np.asarray(im).shape
    Image.fromarray(np.full(shape, 255, np.uint8)).save(mask)  # all ignore: an empty vector
    assert script.main(argv) == 1
    out = capsys.readouterr().out
    assert f"15 images compared, 2 disagree ({names[3]}, {names[8]})" in out
    assert "1 not in the npy, 1 masks all 255" in out


def test_web_page_as_vit_weights_is_named(tmp_path: Path):
    page = tmp_path / "vit_base_patch16_224.pth"
    page.write_text("<!DOCTYPE html><html><head><title>Sign in</title></head></html>")
    with pytest.raises(CheckpointError) as err:
        load_vit_pretrained(CoSANet("vit_toy_patch16", 4).encoder, page)
    text = str(err.value)
    assert "ViT pretrained weights" in text and "not a checkpoint" in text
    assert "web page" in text and "weights_only" not in text
