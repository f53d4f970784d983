"""The prediction core: EvalSettings, select_branch, SlidingPredictor (reuse, layouts, dtypes)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import pytest
import test_evaluate
import torch
from conftest import load_golden
from easydict import EasyDict

from cpcl.evaluate import (
    BranchMean,
    EvalSettings,
    Exports,
    SlidingPredictor,
    auto_window_batch,
    eval_settings,
    evaluate_dataset,
    select_branch,
    sliding_predict,
)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# The module's fixtures: a small two-branch ResNet-18 and the det-weight ResNet-50.
small_model = test_evaluate.small_model
det_model = test_evaluate.det_model


def _settings(**kw) -> EvalSettings:
    base = dict(num_classes=5, crop_size=48, stride_rate=2 / 3, scales=(1.0,), flip=False)
    return EvalSettings(**{**base, "mean": MEAN, "std": STD, **kw})


def _image(h, w, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


# ------------------------------------------------------------------ settings


def test_settings_normalise_and_validate():
    st = _settings(crop_size=[48, 64], scales=[1, 1.25], flip=1)
    assert st.crop_size == (48, 64) and st.scales == (1.0, 1.25) and st.flip is True
    assert st == _settings(crop_size=(48, 64), scales=(1.0, 1.25), flip=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.flip = False
    for bad, match in [
        (dict(stride_rate=0), "stride_rate"),
        (dict(scales=()), "scales"),
        (dict(window_batch=-1), "window_batch"),
        (dict(amp="fp8"), "amp"),
        (dict(resize="nearest"), "resize"),
        (dict(mean=(0, 0)), "mean"),
        (dict(crop_size=0), "crop_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            _settings(**bad)


def test_settings_from_config_and_keyword_form():
    C = EasyDict(
        num_classes=21,
        eval_crop_size=512,
        eval_stride_rate=2 / 3,
        eval_scale_array=[0.75, 1, 1.25],
        eval_flip=True,
        image_mean=list(MEAN),
        image_std=list(STD),
        eval_window_batch=4,
        amp="none",
        eval_branch="avg",
    )
    st = EvalSettings.from_config(C)
    assert (st.crop_size, st.scales, st.flip, st.window_batch) == (
        (512, 512),
        (0.75, 1, 1.25),
        True,
        4,
    )
    kw = eval_settings(C)  # the older keyword form keeps the branch
    assert kw["branch"] == "avg"
    assert EvalSettings(**{k: v for k, v in kw.items() if k != "branch"}) == st
    with pytest.raises(TypeError, match="either an EvalSettings or its fields"):
        EvalSettings.coerce(st, {"flip": False})


def test_auto_window_batch_is_a_pixel_budget():
    cpu = torch.device("cpu")
    assert [auto_window_batch(cpu, (c, c)) for c in (128, 256, 512, 800)] == [8, 2, 1, 1]
    assert auto_window_batch(torch.device("cuda"), (512, 512)) == 8


# ------------------------------------------------------------------ branch adapter


def test_select_branch(small_model):
    plain = torch.nn.Conv2d(3, 5, 1)
    assert select_branch(plain, "1") is plain
    assert select_branch(small_model, "1") is small_model.branch1
    assert select_branch(small_model, "2") is small_model.branch2
    avg = select_branch(small_model, "avg")
    assert isinstance(avg, BranchMean)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = (small_model.branch1(x) + small_model.branch2(x)) / 2
        torch.testing.assert_close(avg(x), ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="two-branch"):
        select_branch(plain, "2")
    with pytest.raises(ValueError, match="branch='3'"):
        select_branch(small_model, "3")


# ------------------------------------------------------------------ predictor


class _Recorder(torch.nn.Module):
    """A plain segmenter (1x1 conv) that records the inputs it receives."""

    def __init__(self, classes=5):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, classes, 1)
        self.seen: list[tuple] = []

    def forward(self, x):
        self.seen.append((tuple(x.shape), x.dtype, x.is_contiguous()))
        return self.conv(x)


def test_plain_segmenter_and_buffer_reuse():
    net = _Recorder()
    st = _settings(scales=(0.75, 1.0, 1.3), flip=True, window_batch=4)
    pred = SlidingPredictor(st)
    with pred.prepared(net):
        first = pred.predict(net, _image(70, 100)).clone()
        storages = {k: v.data_ptr() for k, v in pred._buffers.items()}
        again = pred.predict(net, _image(70, 100)).clone()
        smaller = pred.predict(net, _image(40, 60, seed=3)).clone()
        # Same and smaller images reuse every working buffer (no reallocation).
        assert {k: v.data_ptr() for k, v in pred._buffers.items()} == storages
    assert torch.equal(first, again)
    # A fresh predictor (and the keyword form) gives the same scores.
    assert torch.equal(smaller, sliding_predict(net, _image(40, 60, seed=3), st))
    fields = dataclasses.asdict(st)
    assert torch.equal(first, sliding_predict(net, _image(70, 100), **fields))
    # A window and its mirror share a forward: batches of 2 windows x 2 views.
    assert {shape[0] for shape, _, _ in net.seen} <= {2, 4}


def test_predict_outside_prepared_is_refused():
    net = _Recorder()
    pred = SlidingPredictor(_settings())
    with pytest.raises(RuntimeError, match="prepared"):
        pred.predict(net, _image(30, 30))


def test_float64_network_is_fed_float64():
    net = _Recorder().double()
    out = sliding_predict(net, _image(50, 70), _settings(channels_last=False))
    assert out.dtype == torch.float64
    assert {dtype for _, dtype, _ in net.seen} == {torch.float64}


def test_channels_last_is_restored_and_matches(small_model):
    img = _image(70, 100, seed=5)
    st = _settings(scales=(0.75, 1.0), flip=True)
    small_model.train()
    fast = sliding_predict(
        small_model, img, dataclasses.replace(st, channels_last=True), branch="1"
    )
    assert small_model.training
    plain = sliding_predict(
        small_model, img, dataclasses.replace(st, channels_last=False), branch="1"
    )
    for p in small_model.parameters():
        assert p.is_contiguous()
    mag = plain.abs().max().item()
    assert (fast - plain).abs().max().item() <= 1e-5 * mag
    assert torch.equal(fast.argmax(0), plain.argmax(0))


def test_evaluate_dataset_settings_object_equals_keyword_form(small_model, tmp_path):
    class DS:
        items: ClassVar = [
            (_image(40 + 9 * i, 60, seed=i), np.full((40 + 9 * i, 60), i, np.uint8), f"n{i}")
            for i in range(3)
        ]

        def __len__(self):
            return len(self.items)

        def load(self, i):
            return self.items[i]

    st = _settings()
    new = evaluate_dataset(
        small_model, DS(), st, device="cpu", progress=False, branch="2",
        exports=Exports(str(tmp_path / "p")),
    )  # fmt: skip
    old = evaluate_dataset(
        small_model, DS(), device="cpu", progress=False, branch="2",
        save_dir=str(tmp_path / "q"), **dataclasses.asdict(st),
    )  # fmt: skip
    assert torch.equal(new["hist"], old["hist"]) and new["num_images"] == 3
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["n0.png", "n1.png", "n2.png"]
    with pytest.raises(TypeError, match="unexpected keyword"):
        evaluate_dataset(small_model, DS(), st, device="cpu", progress=False, windowbatch=2)


# ------------------------------------------------------------------ golden: the fast layout


def test_golden_channels_last(det_model, golden_dir):
    """The channels-last (CPU default) path against the official sums, README tolerance."""
    g = load_golden(golden_dir, "eval_sliding.pt")
    cases = [k for k, v in g.items() if isinstance(v, dict) and "score_sum" in v]
    assert cases
    for case in cases:
        d = g[case]
        st = EvalSettings(
            num_classes=d["score_sum"].shape[-1],
            crop_size=g["crop_size"],
            stride_rate=g["stride_rate"],
            scales=d["scales"],
            flip=d["flip"],
            mean=g["image_mean"].tolist(),
            std=g["image_std"].tolist(),
            channels_last=True,
        )
        out = sliding_predict(det_model, g["image_" + d["image"]].numpy(), st)
        ref = d["score_sum"].double().permute(2, 0, 1)
        # README "Tolerances": float32 logits agree to about 1e-5 absolute; sums over windows,
        # flips and scales of larger logits scale with them (measured here: at most 1.8e-6
        # relative, 1.0e-5 absolute at |score| 30).
        tol = max(1e-5, 5e-6 * ref.abs().max().item())
        assert (out - ref).abs().max().item() <= tol
        top2 = ref.topk(2, dim=0).values
        confident = (top2[0] - top2[1]) > 1e-3
        assert torch.equal(out.argmax(0)[confident], d["pred"][confident])
