"""Sliding-window evaluation: official golden scores, batched == naive, dataset evaluation."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from conftest import det_network, golden_cases, load_golden
from PIL import Image

from cpcl.evaluate import (
    evaluate_dataset,
    normalisation_lut,
    sliding_predict,
    window_grid,
    window_starts,
)
from cpcl.metrics import confusion_matrix
from cpcl.models import Network

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------ golden (official evaluator)


# Golden README "Tolerances": a faithful implementation matches the forward logits to about
# 1e-5 absolute (CPU float32). A score sum adds one network output per forward that covers the
# pixel (windows x 2 with flip, over the scales; the bilinear resize back is a convex
# combination and does not grow the error), so `forwards * 1e-5` bounds the network noise.
# `score_sum` is stored rounded to float32: add half an ulp of the largest score (2**-24 relative).
# Measured (bound in brackets): max |diff| 1.9e-6 (6.0e-5) a, 6.7e-6 (4.8e-4) b, 9.5e-7 (1.0e-5) c,
# 1.4e-6 (2.0e-5) d with AVX-512; 2.1e-6 (c) and 2.9e-6 (d) reported without it. A wrong padding
# rule changes case d by 0.36 (README). Labels are compared on >= 99.9% of the pixels.
EVAL_ATOL_PER_FORWARD = 1e-5
FLOAT32_HALF_ULP = 2.0**-24


@pytest.fixture(scope="module")
def golden_eval(golden_dir):
    return load_golden(golden_dir, "eval_sliding.pt")


@pytest.fixture(scope="module")
def golden_cases_eval(golden_eval) -> dict[str, dict]:
    cases = golden_cases(golden_eval)
    assert cases
    return cases


@pytest.fixture(scope="module")
def det_model(golden_dir, det_weights):
    return det_network(det_weights, golden_dir, "keys_voc_r50.json").eval()


def _golden_run(model, g, d, resize="auto"):
    img = g["image_" + d["image"]].numpy()
    out = sliding_predict(
        model,
        img,
        num_classes=d["score_sum"].shape[-1],
        crop_size=g["crop_size"],
        stride_rate=g["stride_rate"],
        scales=d["scales"],
        flip=d["flip"],
        mean=g["image_mean"].tolist(),
        std=g["image_std"].tolist(),
        window_batch=8,
        resize=resize,
    )
    return out, d["score_sum"].double().permute(2, 0, 1)


def _score_tolerance(d: dict, ref: torch.Tensor) -> float:
    """README-derived bound on |ours - stored score_sum| for one case (see the top comment)."""
    forwards = sum(d["windows_per_scale"]) * (2 if d["flip"] else 1)
    return EVAL_ATOL_PER_FORWARD * forwards + FLOAT32_HALF_ULP * ref.abs().max().item()


def _check_against_golden(out, ref, d) -> None:
    assert out.dtype == torch.float64
    assert out.shape == ref.shape
    tol = _score_tolerance(d, ref)
    max_abs = (out - ref).abs().max().item()
    assert max_abs <= tol, (max_abs, tol)
    # Labels: if every score is within tol of the stored one, the argmax must equal the official
    # prediction wherever the stored top-1/top-2 margin exceeds 2*tol (per pixel, float64).
    top2 = ref.topk(2, dim=0).values
    sure = (top2[0] - top2[1]) > 2 * tol
    assert sure.float().mean() > 0.9  # the label check covers most of the image
    assert torch.equal(ref.argmax(0)[sure], d["pred"][sure])  # the fixture is consistent
    assert torch.equal(out.argmax(0)[sure], d["pred"][sure])


def test_golden_sliding_eval(det_model, golden_eval, golden_cases_eval):
    for name, d in golden_cases_eval.items():
        out, ref = _golden_run(det_model, golden_eval, d)
        try:
            _check_against_golden(out, ref, d)
        except AssertionError as err:
            raise AssertionError(f"case {name!r}: {err}") from err


def test_golden_multiscale_torch_resize(det_model, golden_eval, golden_cases_eval):
    # The GPU path resizes with F.interpolate; on CPU it must match the official cv2 sum too,
    # within the same bound (measured max |diff| 4.1e-5 at |score| 30 on case b: float32
    # source-coordinate rounding, a tenth of the bound).
    multi = {n: d for n, d in golden_cases_eval.items() if any(s != 1.0 for s in d["scales"])}
    assert multi, "no multi-scale case in eval_sliding.pt"
    for name, d in multi.items():
        out, ref = _golden_run(det_model, golden_eval, d, resize="torch")
        try:
            _check_against_golden(out, ref, d)
        except AssertionError as err:
            raise AssertionError(f"case {name!r}: {err}") from err


def test_golden_window_counts_and_scaled_sizes(golden_eval, golden_cases_eval):
    g = golden_eval
    for d in golden_cases_eval.values():
        img = g["image_" + d["image"]].numpy()
        for s, size, n in zip(d["scales"], d["scaled_sizes"], d["windows_per_scale"], strict=True):
            scaled = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
            assert list(scaled.shape[:2]) == list(size)
            assert len(window_grid(*size, g["crop_size"], g["stride_rate"])) == n


def test_window_starts_official_grid():
    # stride ceil(96*2/3) = 64: 150 rows -> 2 windows, the last moved back to end at 150.
    assert window_starts(150, 96, 64) == [0, 54]
    assert window_starts(220, 96, 64) == [0, 64, 124]
    assert window_starts(96, 96, 64) == [0]
    assert window_starts(97, 96, 64) == [0, 1]
    # 60x150 image at crop 96: rows padded to 96 -> one row of windows.
    assert window_grid(60, 150, 96, 2 / 3) == [(0, 0), (0, 54)]
    assert window_grid(80, 90, 96, 2 / 3) == [(0, 0)]


def test_normalisation_lut_matches_official_arithmetic():
    lut = normalisation_lut(MEAN, STD)
    img = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    # Official: float32 / 255.0, then float64 mean/std arrays, then float32 tensor.
    ref = (img.astype(np.float32) / 255.0 - np.array(MEAN)) / np.array(STD)
    ref = ref.astype(np.float32).reshape(256, 3).T
    assert torch.equal(lut, torch.from_numpy(np.ascontiguousarray(ref)))


# ------------------------------------------------------------------ batched vs naive (small net)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = Network(5, backbone="resnet18")
    # Non-trivial BN statistics, so the eval-mode BN really has to use the running stats.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _naive_reference(model, img, crop, stride_rate, scales, flip, branch_net):
    """The official algorithm step by step on the host, one network input per forward."""
    H, W = img.shape[:2]
    total = np.zeros((H, W, 5), dtype=np.float64)
    mean, std = np.array(MEAN), np.array(STD)

    def norm(x):
        return (x.astype(np.float32) / 255.0 - mean) / std

    def pad(x, value):
        ph, pw = max(crop - x.shape[0], 0), max(crop - x.shape[1], 0)
        m = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
        return cv2.copyMakeBorder(x, *m, cv2.BORDER_CONSTANT, value=value), m

    def net(x):
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))
        with torch.no_grad():
            s = branch_net(t[None])[0]
            if flip:
                s = s + branch_net(t[None].flip(-1))[0].flip(-1)
        return s

    for s in scales:
        im = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
        h, w = im.shape[:2]
        if max(h, w) <= crop:
            x, m = pad(norm(im), 0)
            score = net(x)[:, m[0] : crop - m[1], m[2] : crop - m[3]]
        else:
            stride = math.ceil(crop * stride_rate)
            xp, m = pad(im, 0)
            P, Q = xp.shape[:2]
            acc = torch.zeros(5, P, Q)
            for gy in range(math.ceil((P - crop) / stride) + 1):
                for gx in range(math.ceil((Q - crop) / stride) + 1):
                    ey, ex = min(gy * stride + crop, P), min(gx * stride + crop, Q)
                    acc[:, ey - crop : ey, ex - crop : ex] += net(
                        norm(xp[ey - crop : ey, ex - crop : ex])
                    )
            score = acc[:, m[0] : P - m[1], m[2] : Q - m[3]]
        total += cv2.resize(score.permute(1, 2, 0).numpy(), (W, H), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(total).permute(2, 0, 1)


@pytest.mark.parametrize(
    "shape,scales,flip",
    [((70, 100), (0.75, 1.0, 1.3), True), ((40, 44), (1.0,), False), ((30, 90), (1.0,), True)],
)
def test_batched_equals_naive(small_model, shape, scales, flip):
    img = np.random.RandomState(sum(shape)).randint(0, 256, (*shape, 3)).astype(np.uint8)
    kw = dict(
        num_classes=5,
        crop_size=48,
        stride_rate=2 / 3,
        scales=scales,
        flip=flip,
        mean=MEAN,
        std=STD,
    )
    batched = sliding_predict(small_model, img, window_batch=8, **kw)
    single = sliding_predict(small_model, img, window_batch=1, **kw)
    naive = _naive_reference(small_model, img, 48, 2 / 3, scales, flip, small_model.branch1)
    mag = naive.abs().max().item()
    # Batching changes only the convolution's float rounding (measured ~2e-7 relative).
    assert (batched - naive).abs().max().item() <= 2e-6 * mag
    assert (single - naive).abs().max().item() <= 2e-6 * mag
    top2 = naive.topk(2, dim=0).values
    sure = (top2[0] - top2[1]) > 1e-3 * mag
    assert torch.equal(batched.argmax(0)[sure], naive.argmax(0)[sure])


def test_branch_selection_and_mode_restored(small_model):
    img = np.random.RandomState(1).randint(0, 256, (40, 60, 3)).astype(np.uint8)
    kw = dict(num_classes=5, crop_size=48, stride_rate=2 / 3, scales=(1.0,), flip=False)
    kw.update(mean=MEAN, std=STD)
    small_model.train()
    s1 = sliding_predict(small_model, img, branch="1", **kw)
    assert small_model.training  # the caller's mode is restored
    small_model.eval()
    s2 = sliding_predict(small_model, img, branch="2", **kw)
    avg = sliding_predict(small_model, img, branch="avg", **kw)
    assert not torch.allclose(s1, s2)
    torch.testing.assert_close(avg, (s1 + s2) / 2, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="branch"):
        sliding_predict(small_model, img, branch="3", **kw)
    with pytest.raises(ValueError, match="uint8"):
        sliding_predict(small_model, img.astype(np.float32), **kw)


# ------------------------------------------------------------------ dataset evaluation


class _FakeDataset:
    def __init__(self, n=5):
        rng = np.random.RandomState(7)
        self.items = []
        for i in range(n):
            h, w = 30 + 7 * i, 50 - 3 * i
            img = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
            lab = rng.randint(0, 5, (h, w)).astype(np.uint8)
            lab[:3] = 255
            self.items.append((img, lab, f"img{i}"))

    def __len__(self):
        return len(self.items)

    def load(self, i):
        return self.items[i]


def test_evaluate_dataset_shards_and_exports(small_model, tmp_path):
    ds = _FakeDataset()
    kw = dict(
        num_classes=5,
        crop_size=48,
        stride_rate=2 / 3,
        scales=(1.0,),
        flip=False,
        mean=MEAN,
        std=STD,
        device="cpu",
        progress=False,
    )
    full = evaluate_dataset(small_model, ds, **kw)
    # Reference: per-image predictions, hist summed over the dataset.
    ref = torch.zeros(5, 5, dtype=torch.int64)
    for img, lab, _ in ds.items:
        pred = sliding_predict(small_model, img, **{k: kw[k] for k in kw if k != "progress"})
        ref += confusion_matrix(pred.argmax(0), lab, 5)
    assert torch.equal(full["hist"], ref)
    assert full["labeled"] == sum(int((lab != 255).sum()) for _, lab, _ in ds.items)
    # Strided shards, no duplicates: 3 + 2 images, hists add up to the full one.
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[:5] = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]]
    out = str(tmp_path / "pred")
    ids = np.arange(256, dtype=np.uint8) + 10
    r0 = evaluate_dataset(
        small_model, ds, rank=0, world_size=2, save_dir=out, palette=pal, labelids_map=ids, **kw
    )
    r1 = evaluate_dataset(small_model, ds, rank=1, world_size=2, **kw)
    assert (r0["num_images"], r1["num_images"]) == (3, 2)
    assert torch.equal(r0["hist"] + r1["hist"], full["hist"])
    # Rank 0 exported images 0, 2, 4: raw ids, palette PNG, label-id PNG.
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [
        "img0.png",
        "img2.png",
        "img4.png",
    ]
    raw = cv2.imread(str(tmp_path / "pred" / "img2.png"), cv2.IMREAD_UNCHANGED)
    pred2 = sliding_predict(
        small_model, ds.items[2][0], **{k: kw[k] for k in kw if k != "progress"}
    )
    assert np.array_equal(raw, pred2.argmax(0).numpy().astype(np.uint8))
    color = Image.open(tmp_path / "pred_color" / "img2.png")
    assert color.mode == "P" and np.array_equal(np.array(color), raw)
    assert color.getpalette()[3:6] == [255, 0, 0]
    lid = np.array(Image.open(tmp_path / "pred_labelids" / "img2.png"))
    assert np.array_equal(lid, raw + 10)
