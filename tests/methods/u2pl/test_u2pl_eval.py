"""U2PL's own evaluation protocol (`cpcl.methods.u2pl.eval`) against literal transcriptions of
the official loops (`eval.py:184-223`, `augmentation.py:241-266`, `utils.py:568-580`) on
small inputs, plus exact invariants (window coverage and averaging, label padding)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cpcl.config import ConfigError, load_preset
from cpcl.engine.resolve import apply_overrides, finalize
from cpcl.errors import CpclError
from cpcl.methods import get_method, select_evaluator
from cpcl.methods.u2pl.eval import (
    evaluate_u2pl,
    u2pl_normalize_lut,
    u2pl_sliding_logits,
    u2pl_whole_predict,
)
from cpcl.methods.u2pl.presets import U2PL_CITYSCAPES_744, U2PL_VOC_1464
from cpcl.metrics import confusion_matrix, scores, scores_all_classes


def _official_scale_crop(model, image, classes, crop_h, crop_w, h, w, stride_rate=2 / 3):
    """`scale_crop_process` of U2PL's `eval.py:184-223`, transcribed (no CUDA)."""
    ori_h, ori_w = image.size()[-2:]
    pad_h = max(crop_h - ori_h, 0)
    pad_w = max(crop_w - ori_w, 0)
    pad_h_half = int(pad_h / 2)
    pad_w_half = int(pad_w / 2)
    if pad_h > 0 or pad_w > 0:
        border = (pad_w_half, pad_w - pad_w_half, pad_h_half, pad_h - pad_h_half)
        image = F.pad(image, border, mode="constant", value=0.0)
    new_h, new_w = image.size()[-2:]
    stride_h = int(np.ceil(crop_h * stride_rate))
    stride_w = int(np.ceil(crop_w * stride_rate))
    grid_h = int(np.ceil(float(new_h - crop_h) / stride_h) + 1)
    grid_w = int(np.ceil(float(new_w - crop_w) / stride_w) + 1)
    prediction_crop = torch.zeros((1, classes, new_h, new_w), dtype=image.dtype)
    count_crop = torch.zeros((new_h, new_w), dtype=image.dtype)
    for index_h in range(0, grid_h):
        for index_w in range(0, grid_w):
            s_h = index_h * stride_h
            e_h = min(s_h + crop_h, new_h)
            s_h = e_h - crop_h
            s_w = index_w * stride_w
            e_w = min(s_w + crop_w, new_w)
            s_w = e_w - crop_w
            image_crop = image[:, :, s_h:e_h, s_w:e_w].contiguous()
            count_crop[s_h:e_h, s_w:e_w] += 1
            prediction_crop[:, :, s_h:e_h, s_w:e_w] += model(image_crop)
    prediction_crop /= count_crop
    prediction_crop = prediction_crop[
        :, :, pad_h_half : pad_h_half + ori_h, pad_w_half : pad_w_half + ori_w
    ]
    prediction = F.interpolate(prediction_crop, size=(h, w), mode="bilinear", align_corners=True)
    return prediction[0]


def _official_intersection_and_union(output, target, K, ignore_index=255):
    """`intersectionAndUnion` of U2PL's `u2pl/utils/utils.py:568-580`, transcribed."""
    output = output.reshape(output.size).copy()
    target = target.reshape(target.size)
    output[np.where(target == ignore_index)[0]] = ignore_index
    intersection = output[np.where(output == target)[0]]
    area_intersection, _ = np.histogram(intersection, bins=np.arange(K + 1))
    area_output, _ = np.histogram(output, bins=np.arange(K + 1))
    area_target, _ = np.histogram(target, bins=np.arange(K + 1))
    return area_intersection, area_output + area_target - area_intersection


def _context_net(seed: int = 0, classes: int = 5) -> torch.nn.Module:
    """A float64 net with a 5x5 receptive field: windows change its output near their border."""
    torch.manual_seed(seed)
    return torch.nn.Conv2d(3, classes, 5, padding=2).double().eval()


class _Counting:
    """Wraps a net and records the (y-size, x-size) of every window it is called on."""

    def __init__(self, net) -> None:
        self.net, self.calls = net, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape[-2:]))
        return self.net(x)


@pytest.mark.parametrize(
    ("h", "w", "crop", "scales", "base"),
    [
        (50, 70, (24, 24), (1.0,), None),  # 3 x 4 windows, the last ones moved back
        (30, 20, (24, 32), (1.0,), None),  # padded to the crop, one window per axis
        (41, 57, (20, 20), (0.75, 1.25), 64),  # two scales, rescaled to a base size
    ],
)
def test_sliding_equals_the_official_loop(h, w, crop, scales, base):
    net = _Counting(_context_net())
    img = torch.randn(1, 3, h, w, dtype=torch.float64)
    got = u2pl_sliding_logits(net, img, crop, scales=scales, base_size=base)
    n_windows = len(net.calls)
    ref = None
    long_side = base or max(h, w)
    for scale in scales:  # `validate_city`, eval.py:269-282
        long_size = round(scale * long_side)
        new_h = new_w = long_size
        if h > w:
            new_w = round(long_size / float(h) * w)
        else:
            new_h = round(long_size / float(w) * h)
        scaled = F.interpolate(img, size=(new_h, new_w), mode="bilinear", align_corners=True)
        part = _official_scale_crop(net, scaled, 5, crop[0], crop[1], h, w)
        ref = part if ref is None else ref + part
    assert torch.equal(got, ref)
    assert set(net.calls[:n_windows]) == {crop}  # every window has the crop size
    if scales == (1.0,) and base is None:
        grid = [
            math.ceil((max(s, c) - c) / math.ceil(c * 2 / 3)) + 1
            for s, c in zip((h, w), crop, strict=True)
        ]
        assert n_windows == grid[0] * grid[1]


def test_sliding_averages_overlapping_windows():
    # The identity "net" on integer inputs: the mean of k identical copies is exact, so the
    # averaged map is the image itself wherever windows overlap (a sum would multiply it).
    img = torch.randint(-5, 6, (1, 3, 37, 53)).double()
    out = u2pl_sliding_logits(lambda x: x.clone(), img, (16, 16))
    assert torch.equal(out, img[0])
    # Padded image (smaller than the crop): the unpadding offsets are the official halves.
    small = torch.randint(-5, 6, (1, 3, 9, 12)).double()
    assert torch.equal(u2pl_sliding_logits(lambda x: x.clone(), small, (16, 15)), small[0])


def test_whole_pads_the_label_with_background_and_takes_the_centre_crop():
    img = torch.arange(3 * 20 * 30, dtype=torch.float64).reshape(1, 3, 20, 30)
    label = torch.full((20, 30), 2, dtype=torch.long)
    label[0, 0] = 255
    seen = []

    def net(x):
        seen.append(x.clone())
        return torch.zeros(1, 4, *x.shape[-2:], dtype=x.dtype)

    pred, scored = u2pl_whole_predict(net, img, label, (24, 24))
    # Height 20 -> padded 2 + 2 (label 0, image 0); width 30 -> centre crop from column 3.
    assert pred.shape == scored.shape == (24, 24) and seen[0].shape == (1, 3, 24, 24)
    assert torch.equal(seen[0][:, :, 2:22], img[:, :, :, 3:27])
    assert (seen[0][:, :, :2] == 0).all() and (seen[0][:, :, 22:] == 0).all()
    assert (scored[:2] == 0).all() and (scored[22:] == 0).all()  # official quirk: not 255
    assert torch.equal(scored[2:22], label[:, 3:27])
    assert scored[2, 0] == 2  # the 255 pixel at column 0 is outside the crop


def test_all_class_miou_is_the_official_reduction():
    rng = np.random.default_rng(3)
    K = 6
    pred = rng.integers(0, K - 1, (40, 50))  # class 4 only predicted, class 5 nowhere
    gt = rng.integers(0, K - 2, (40, 50))
    gt[rng.random((40, 50)) < 0.2] = 255
    inter, union = _official_intersection_and_union(pred, gt, K)
    official = inter / (union + 1e-10)
    got = scores_all_classes(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), K))
    assert np.array_equal(got["iou"], official)
    assert got["miou"] == np.mean(official)
    assert got["iou"][4] == got["iou"][5] == 0
    assert np.isnan(scores(confusion_matrix(pred, gt, K))["iou"][5])  # CPCL: left out


@pytest.mark.parametrize("float64", [False, True])
def test_normalisation_is_the_official_arithmetic(float64):
    C = finalize(apply_overrides(load_preset("voc"), ["--method=u2pl"]))
    lut = u2pl_normalize_lut(C.image_mean, C.image_std, float64=float64).numpy()
    x = np.arange(256, dtype=np.float32)[:, None].repeat(3, 1)
    mean, std = U2PL_VOC_1464.image_mean, U2PL_VOC_1464.image_std  # the yaml values
    if float64:  # eval.py:264: float32 image minus Python lists -> float64 -> float32
        ref = ((x - mean) / std).astype(np.float32)
    else:  # augmentation.py:101-110: float32 tensors
        ref = (x - np.float32(mean)) / np.float32(std)
    assert np.array_equal(lut, ref)


class _Data:
    def __init__(self, items) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int):
        return self.items[i]


def _dataset(n: int = 2, h: int = 22, w: int = 27, classes: int = 4) -> _Data:
    rng = np.random.default_rng(7)
    items = []
    for i in range(n):
        label = rng.integers(0, classes, (h, w)).astype(np.uint8)
        label[rng.random((h, w)) < 0.1] = 255
        items.append((rng.integers(0, 256, (h, w, 3), dtype=np.uint8), label, f"im{i}"))
    return _Data(items)


def test_evaluate_u2pl_on_a_pointwise_net():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 4, 1).eval()  # per pixel: windows and averaging keep the argmax
    data = _dataset()
    kw = {"num_classes": 4, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    res = evaluate_u2pl(net, data, mode="sliding", crop_size=(10, 10), **kw)
    lut = u2pl_normalize_lut(kw["mean"], kw["std"], float64=True)
    hist = torch.zeros(4, 4, dtype=torch.int64)
    for img, gt, _ in data.items:
        x = lut[torch.from_numpy(img).long(), torch.arange(3)].permute(2, 0, 1)[None]
        with torch.no_grad():
            hist += confusion_matrix(net(x).argmax(1)[0], torch.from_numpy(gt).long(), 4)
    assert torch.equal(res["hist"], hist) and res["num_images"] == 2
    assert res["miou"] == scores_all_classes(hist)["miou"]
    # whole: the centre crop of the padded image, scored against the padded label.
    whole = evaluate_u2pl(net, data, mode="whole", crop_size=(24, 24), **kw)
    assert int(whole["hist"].sum()) == sum(
        int((np.pad(gt, ((1, 1), (0, 0))) != 255)[:, 1:25].sum()) for _, gt, _ in data.items
    )
    with pytest.raises(CpclError, match="no prediction PNGs"):
        evaluate_u2pl(net, data, mode="whole", crop_size=(24, 24), exports=object(), **kw)
    with pytest.raises(CpclError, match="whole, sliding"):
        evaluate_u2pl(net, data, mode="tiles", crop_size=(24, 24), **kw)


@pytest.mark.parametrize(
    ("dataset", "preset"), [("voc", U2PL_VOC_1464), ("cityscapes", U2PL_CITYSCAPES_744)]
)
def test_official_evaluator_follows_the_official_configs(dataset, preset):
    C = finalize(
        apply_overrides(load_preset(dataset), ["--method=u2pl", "--eval_protocol=official"])
    )
    assert (C.u2pl_eval_mode, C.u2pl_eval_base_size) == (preset.eval_mode, preset.eval_base_size)
    evaluator = select_evaluator(C)
    kw = evaluator.evaluate.keywords
    assert kw["mode"] == preset.eval_mode and kw["base_size"] == preset.eval_base_size
    assert kw["crop_size"] == tuple(preset.eval_crop_size or preset.crop_size)
    assert kw["stride_rate"] == preset.eval_stride_rate and kw["scales"] == preset.eval_scales
    assert evaluator.label.startswith("u2pl official")
    with pytest.raises(ConfigError, match="eval_flip"):
        get_method("u2pl").official_evaluator(apply_overrides(C, ["--eval_flip=true"]))


def test_protocol_choice_errors():
    with pytest.raises(ConfigError, match=r"eval_protocol.*cpcl, official"):
        apply_overrides(load_preset("voc"), ["--eval_protocol=u2pl"])
    for method in ("cpcl", "cps", "sup"):
        C = finalize(
            apply_overrides(load_preset("voc"), [f"--method={method}", "--eval_protocol=official"])
        )
        with pytest.raises(CpclError, match=r"eval_protocol=cpcl.*u2pl, unimatch"):
            select_evaluator(C)
    C = finalize(apply_overrides(load_preset("voc"), ["--method=u2pl"]))
    assert select_evaluator(C) is None  # default: the project's evaluator
    with pytest.raises(ConfigError, match="u2pl_eval_mode"):
        apply_overrides(C, ["--u2pl_eval_mode=tiles"])
    with pytest.raises(ConfigError, match="u2pl_eval_base_size"):
        apply_overrides(C, ["--u2pl_eval_base_size=0"])
