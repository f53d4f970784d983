"""Config presets, derived values and --key=value overrides."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cpcl.config import ConfigError, load_preset, to_plain
from cpcl.engine.resolve import apply_overrides, finalize


def test_official_defaults():
    voc, city = load_preset("voc"), load_preset("cityscapes")
    assert (voc.num_classes, voc.image_height, voc.lr, voc.batch_size, voc.nepochs) == (
        21,
        512,
        0.005,
        8,
        34,
    )
    assert voc.unsup_weight == 1 and city.unsup_weight == 5
    assert (city.num_classes, city.image_height, city.lr, city.batch_size, city.nepochs) == (
        19,
        800,
        0.01,
        16,
        137,
    )
    for C in (voc, city):
        assert (C.momentum, C.weight_decay, C.lr_power, C.bn_eps, C.bn_momentum, C.seed) == (
            0.9,
            1e-4,
            0.9,
            1e-5,
            0.1,
            12345,
        )
        assert tuple(C.train_scale_array) == (0.5, 0.75, 1, 1.5, 1.75, 2.0)
        assert C.eval_stride_rate == 2 / 3 and C.backbone == "resnet50"
        assert finalize(C).eval_crop_size == C.image_height
    # Presets are fresh copies: editing one does not leak into the next.
    voc.lr = 1.0
    assert load_preset("voc").lr == 0.005


def test_derived_values_follow_labeled_ratio(tmp_path):
    C = load_preset("voc")
    C.labeled_ratio = 16
    F = finalize(C, root=str(tmp_path))
    assert F.train_source.endswith(os.path.join("subset_train_aug", "train_aug_labeled_1-16.txt"))
    assert F.unsup_source.endswith("train_aug_unlabeled_1-16.txt")
    assert F.num_train_imgs == 10582 // 16 and F.num_unsup_imgs == 10582 - 10582 // 16
    assert F.max_samples == F.num_unsup_imgs and F.niters_per_epoch == F.max_samples // 8
    assert F.snapshot_dir == os.path.join(str(tmp_path), "log", "snapshot")
    # The real list sizes win over the official formula when they are known.
    G = finalize(C, root=str(tmp_path), n_labeled=10, n_unlabeled=70)
    assert (G.max_samples, G.niters_per_epoch) == (70, 70 // 8)
    # A value set by the user is never recomputed.
    C.niters_per_epoch = 3
    assert finalize(C).niters_per_epoch == 3
    city = finalize(load_preset("cityscapes"), root=str(tmp_path))
    assert city.train_source.endswith(
        os.path.join("config_new", "subset_train", "train_aug_labeled_1-8.txt")
    )
    assert city.eval_source.endswith(os.path.join("config_new", "val.txt"))


def test_overrides_are_typed():
    C = apply_overrides(
        load_preset("voc"),
        [
            "--lr=0.01",
            "--batch_size=2",
            "--pretrained_model=None",
            "--channels_last=true",
            "--eval_scale_array=0.75,1,1.25",
            "--train_scale_array=[1.0]",
            "--niters_per_epoch=3",
            "--dataset_path=/data/voc",
            "--eval_stride_rate=2/3",
            "--class_names=background,disc,square",
        ],
    )
    assert C.lr == 0.01 and isinstance(C.batch_size, int) and C.batch_size == 2
    assert C.pretrained_model is None and C.channels_last is True
    assert C.eval_scale_array == (0.75, 1, 1.25) and C.train_scale_array == (1.0,)
    assert C.niters_per_epoch == 3 and C.dataset_path == "/data/voc"
    assert C.eval_stride_rate == pytest.approx(2 / 3)
    assert C.class_names == ("background", "disc", "square")


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("--lr_powr=1", "unknown config key --lr_powr; did you mean --lr_power?"),
        ("--batch_size=two", "--batch_size=two: expected an integer"),
        ("--lr=fast", "--lr=fast: expected a number"),
        ("--channels_last=maybe", "--channels_last=maybe: expected a boolean"),
        (
            "--backbone=vgg16",
            "--backbone=vgg16: expected one of resnet18, resnet34, resnet50, resnet101",
        ),
        ("--amp=fp8", "--amp=fp8: expected one of none, bf16, fp16"),
        ("--batch_size=0", "C.batch_size = 0: expected a positive integer"),
        ("lr=1", "cannot read argument 'lr=1': expected --key=value"),
        ("--eval_scale_array=a,b", "--eval_scale_array=a,b: expected a list of numbers"),
    ],
)
def test_bad_overrides_name_key_and_expectation(arg, message):
    with pytest.raises(ConfigError) as err:
        apply_overrides(load_preset("voc"), [arg])
    assert message in str(err.value)


def test_plain_conversion_and_no_import_side_effects(tmp_path):
    plain = to_plain(finalize(load_preset("cityscapes")))
    assert type(plain) is dict and isinstance(plain["train_scale_array"], list)
    # Importing the package and the experiment configs creates nothing and prints nothing.
    code = (
        "import sys, os; sys.path.insert(0, {exp!r}); import cpcl, cpcl.config, cpcl.models, config; "
        "print(sorted(os.listdir('.')))"
    ).format(exp=str(__import__("pathlib").Path(__file__).parents[1] / "exp_voc"))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]" and out.stderr == ""
