"""U2PL pseudo-labels and CutMix / ClassMix against u2pl_pseudo_mix.pt."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_golden

from cpcl.config import ConfigError
from cpcl.methods.u2pl.mix import (
    check_apply_aug,
    cutmix_box_mask,
    strong_mix,
    teacher_pseudo_labels,
)


class _RecordingRNG:
    """A numpy RandomState that records `[fn, args..., result]` like the fixture's rng_calls."""

    def __init__(self, seed: int) -> None:
        self.rs = np.random.RandomState(seed)
        self.calls: list[list] = []

    def uniform(self, low, high):
        out = self.rs.uniform(low, high)
        self.calls.append(["np.random.uniform", float(low), float(high), float(out)])
        return out

    def randint(self, low, high):
        out = self.rs.randint(low, high)
        self.calls.append(["np.random.randint", float(low), float(high), float(out)])
        return out


def _np_calls(calls: list[list]) -> list[list]:
    # The official passes W/2 + 1 (a float) to randint, which truncates it.
    return [
        [c[0], int(c[1]), float(c[2]), c[3]] if c[0] == "np.random.randint" else list(c)
        for c in calls
        if c[0].startswith("np.")
    ]


def _check_case(name: str, c: dict, out, calls=None) -> None:
    image_aug, label_aug, conf_aug, applied, masks = out
    assert applied == c["applied"], name
    if applied:
        assert masks.dtype == c["mix_masks"].dtype, name
        assert torch.equal(masks, c["mix_masks"]), name
    assert torch.equal(image_aug, c["image_u_aug"]), name
    assert label_aug.dtype == torch.int64 and torch.equal(label_aug, c["label_u_aug"]), name
    torch.testing.assert_close(conf_aug, c["logits_u_aug"], rtol=1e-6, atol=1e-7)
    if calls is not None:
        assert _np_calls(calls) == _np_calls(c["rng_calls"]), name


def test_pseudo_labels_and_mixing_golden(golden_dir):
    fx = load_golden(golden_dir, "u2pl_pseudo_mix.pt")
    assert fx["cases"]
    for name, c in fx["cases"].items():
        size = tuple(c["image_u"].shape[2:])
        conf, label, prob = teacher_pseudo_labels(c["teacher_logits_small"], size)
        torch.testing.assert_close(prob, c["pred_u_teacher_prob"], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(conf, c["conf_before"], rtol=1e-6, atol=1e-7)
        assert torch.equal(label, c["label_before"]), name
        # (a) the official global generators, seeded as the fixture did.
        np.random.seed(int(c["np_seed"]))
        torch.manual_seed(int(c["torch_seed"]))
        out = strong_mix(c["image_u"], c["label_before"], c["conf_before"], c["apply_aug"])
        _check_case(name, c, out)
        # (b) explicit generators give the same draws; the numpy calls match the record.
        rng = _RecordingRNG(int(c["np_seed"]))
        gen = torch.Generator().manual_seed(int(c["torch_seed"]))
        out = strong_mix(
            c["image_u"],
            c["label_before"],
            c["conf_before"],
            c["apply_aug"],
            rng=rng,
            generator=gen,
        )
        _check_case(name, c, out, rng.calls)
        perms = [x for x in c["rng_calls"] if x[0] == "torch.randperm"]
        if c["apply_aug"] == "classmix" and c["applied"]:
            assert [int(p[1]) for p in perms] == [
                len(torch.unique(lab)) for lab in c["label_before"]
            ], name


def test_cutmix_box_covers_about_half_and_cutout_sets_255():
    rng = np.random.RandomState(0)
    for h, w in ((65, 65), (57, 81), (8, 9)):
        m = cutmix_box_mask(h, w, rng)
        box = int((m == 0).sum())
        assert m.dtype == torch.int64 and abs(box - h * w / 2) <= w + h, (h, w, box)
    img = torch.ones(2, 3, 8, 8)
    lab = torch.zeros(2, 8, 8, dtype=torch.long)
    conf = torch.ones(2, 8, 8)
    rng = np.random.RandomState(1)  # first coin < 0.5
    assert rng.uniform(0, 1) < 0.5
    img2, lab2, conf2, applied, masks = strong_mix(
        img, lab, conf, "cutout", rng=np.random.RandomState(1)
    )
    assert applied
    assert torch.equal(lab2 == 255, masks == 0) and torch.equal(img2[:, 0], conf2)
    assert torch.equal(lab, torch.zeros_like(lab))  # the caller's labels are untouched


def test_coin_is_drawn_without_apply_aug_and_bad_mode_errors():
    rng = np.random.RandomState(5)
    x = torch.zeros(1, 3, 4, 4)
    y = torch.zeros(1, 4, 4, dtype=torch.long)
    out = strong_mix(x, y, y.float(), None, rng=rng)
    assert out[3] is False and out[0] is x
    ref = np.random.RandomState(5)
    ref.uniform(0, 1)
    assert rng.uniform(0, 1) == ref.uniform(0, 1)  # exactly one draw was consumed
    with pytest.raises(ConfigError, match="apply_aug = 'mixup'"):
        check_apply_aug("mixup")
    with pytest.raises(ConfigError, match="apply_aug"):
        strong_mix(x, y, y.float(), "mixup", rng=rng)
