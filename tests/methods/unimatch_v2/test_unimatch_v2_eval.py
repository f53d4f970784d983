"""UniMatch V2's evaluation protocol against the official `evaluate` (unimatch_v2_eval.pt):
'original' with multiplier 14, 'sliding_window' (clamped windows, softmax sums), an image
smaller than the crop; the scores; best tracking of model and EMA model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_golden
from torch import nn

from cpcl.errors import CpclError
from cpcl.methods.unimatch.views import unimatch_normalize_lut
from cpcl.methods.unimatch_v2.evaluate import (
    BestTracker,
    evaluate_student_and_teacher,
    evaluate_unimatch_v2,
    sliding_windows,
    unimatch_v2_logits,
)
from cpcl.metrics import confusion_matrix, scores_all_classes

REL = 1e-6  # pred_before_argmax, float32 (golden README)


class _Recorder(nn.Module):
    """The fixture's stand-in model (one 3x3 conv), recording every input."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.conv = nn.Conv2d(weight.shape[1], weight.shape[0], 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            self.conv.bias.copy_(bias)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return self.conv(x)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def test_eval_golden(golden_dir):
    for name, case in load_golden(golden_dir, "unimatch_v2_eval.pt")["cases"].items():
        model = _Recorder(case["conv_weight"], case["conv_bias"]).eval()
        nclass = case["nclass"]
        hist = torch.zeros(nclass, nclass, dtype=torch.int64)
        for i, (img, mask) in enumerate(zip(case["images"], case["masks"], strict=True)):
            if case["mode"] == "sliding_window":
                got = [list(w) for w in sliding_windows(*img.shape[-2:], case["crop_size"])]
                assert got == [list(w) for w in case["windows"][i]], (name, i)
            logits = unimatch_v2_logits(
                model,
                img,
                case["mode"],
                crop_size=case["crop_size"],
                multiplier=case["multiplier"],
            )
            assert logits.shape == case["pred_before_argmax"][i].shape, (name, i)
            assert _rel(logits, case["pred_before_argmax"][i]) < REL, (name, i)
            pred = logits.argmax(1)[0]
            assert torch.equal(pred, case["pred"][i]), (name, i)
            h = confusion_matrix(pred, mask[0], nclass)
            inter = h.diag()
            assert torch.equal(inter, torch.as_tensor(case["intersection"][i])), (name, i)
            union = h.sum(0) + h.sum(1) - inter
            assert torch.equal(union, torch.as_tensor(case["union"][i])), (name, i)
            assert torch.equal(h.sum(1), torch.as_tensor(case["target_area"][i])), (name, i)
            hist += h
        assert len(model.inputs) == case["n_model_calls"], name
        for k, (got, want) in enumerate(zip(model.inputs, case["model_inputs"], strict=True)):
            assert got.shape == want.shape and _rel(got, want) < REL, (name, k)
        scores = scores_all_classes(hist)
        iou = torch.as_tensor(case["iou_class"], dtype=torch.float64)
        np.testing.assert_allclose(scores["iou"] * 100.0, iou.numpy(), rtol=1e-12, atol=1e-12)
        assert abs(scores["miou"] * 100.0 - case["miou"]) <= 1e-12 * max(1.0, case["miou"])


class _Data:
    """uint8 images and labels (`load(i) -> (img, label, name)`)."""

    def __init__(self, seed: int, n: int = 2, h: int = 20, w: int = 31, classes: int = 4):
        r = np.random.default_rng(seed)
        self.items = [
            (
                r.integers(0, 256, (h, w, 3), dtype=np.uint8),
                r.integers(0, classes, (h, w), dtype=np.uint8),
                f"v{k}",
            )
            for k in range(n)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int):
        return self.items[i]


@pytest.mark.parametrize("mode", ["original", "sliding_window"])
def test_evaluate_on_a_dataset_is_the_per_image_protocol(mode):
    torch.manual_seed(0)
    net = nn.Conv2d(3, 4, 3, padding=1).eval()
    data = _Data(1)
    out = evaluate_unimatch_v2(net, data, num_classes=4, mode=mode, crop_size=14)
    lut = unimatch_normalize_lut()
    hist = torch.zeros(4, 4, dtype=torch.int64)
    for img, gt, _ in data.items:
        x = torch.from_numpy(lut[img.astype(np.int64), np.arange(3)].transpose(2, 0, 1))[None]
        pred = unimatch_v2_logits(net, x, mode, crop_size=14).argmax(1)[0]
        hist += confusion_matrix(pred, torch.from_numpy(gt).long(), 4)
    assert torch.equal(out["hist"], hist) and out["miou"] == scores_all_classes(hist)["miou"]


def test_best_tracking_is_the_official_rule():
    t = BestTracker()
    assert t.update(0, 0.5, 0.4) and (t.best_epoch, t.best_epoch_ema) == (0, 0)
    assert not t.update(1, 0.3, 0.6) and (t.best_epoch, t.best_epoch_ema) == (0, 1)
    assert t.update(2, 0.5, 0.6)  # >=: a tie is best, and moves both best epochs
    assert t.state_dict() == {
        "previous_best": 0.5,
        "previous_best_ema": 0.6,
        "best_epoch": 2,
        "best_epoch_ema": 2,
    }
    u = BestTracker()
    u.load_state_dict(t.state_dict())
    assert u == t
    with pytest.raises(CpclError, match="best_epoch"):
        u.load_state_dict({"previous_best": 1.0})


def test_student_and_teacher_are_both_evaluated():
    torch.manual_seed(0)
    student, teacher = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
    student.train()
    tracker = BestTracker()
    out = evaluate_student_and_teacher(
        student, teacher, _Data(2), tracker, 3, num_classes=4, mode="original"
    )
    assert student.training and not teacher.training
    assert out["miou"] == out["model"]["miou"] and out["miou_ema"] == out["ema"]["miou"]
    assert out["miou"] != out["miou_ema"]
    assert out["best"]["best_epoch"] == 3 and out["is_best"]


def test_bad_settings_are_named():
    net = nn.Conv2d(3, 2, 1)
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(CpclError, match="mode"):
        unimatch_v2_logits(net, x, "center_crop")
    with pytest.raises(CpclError, match="crop_size"):
        unimatch_v2_logits(net, x, "sliding_window")
    with pytest.raises(CpclError, match="grid"):
        unimatch_v2_logits(net, x, "sliding_window", crop_size=1)
