"""CoSA teacher pseudo labels vs the official `seg_helper.py` (`cosa_cam.pt`, float64)."""

from __future__ import annotations

import pytest
import torch
from conftest import golden_cases, load_golden, max_rel_diff
from test_cosa_net import det_cosa

from cpcl.errors import CpclError
from cpcl.methods.cosa.pseudo import (
    cam2mask,
    cam_validation,
    multi_scale_camseg,
    seg_refine_by_label,
)


@pytest.fixture(scope="module")
def cam_fx(golden_dir):
    return golden_cases(load_golden(golden_dir, "cosa_cam.pt"))


def _assert_mask(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    # The official mask is float32 (stored as int64): same dtype and exactly the same labels.
    assert got.dtype == torch.float32, what
    assert torch.equal(got.long(), ref), (what, (got.long() != ref).sum().item())


def test_teacher_pseudo_labels_match_official(cam_fx, golden_dir, det_weights):
    case = cam_fx["teacher"]
    assert case["mask_dtype"] == "torch.float32"
    model = det_cosa(
        det_weights, golden_dir, case["keys_file"], case["backbone"], case["aux_layer"]
    )
    assert model.num_classes == case["num_classes"]
    model.double().train()  # the official teacher is never switched to eval
    wimg, label, box = case["wimg"], case["cls_label"], case["img_box"]
    cam, cam_aux, seg = multi_scale_camseg(model, wimg, case["scales"].tolist())
    for key, got in (("cam", cam), ("cam_aux", cam_aux), ("seg", seg)):
        diff = max_rel_diff(got, case[key])
        assert diff < 1e-9, (key, diff)
    mask = cam2mask(
        wimg, box, cam_validation(cam, label), label,
        case["threshold_high"], case["threshold_low"], downscale=case["downscale"],
    )  # fmt: skip
    _assert_mask(mask, case["mask"], "mask")
    mask_aux = cam2mask(
        wimg, box, cam_validation(cam_aux, label), label,
        case["threshold_high_aux"], case["threshold_low_aux"], downscale=case["downscale"],
    )  # fmt: skip
    _assert_mask(mask_aux, case["mask_aux"], "mask_aux")
    refined = seg_refine_by_label(seg, label, case["softmaxtemp"], after_softmax=False)
    assert max_rel_diff(refined, case["seg_refined"]) < 1e-9

    # The opt-in fix (aux CAM summed over every scale) differs from the official quirk.
    _, cam_aux_all, _ = multi_scale_camseg(
        model, wimg, case["scales"].tolist(), aux_all_scales=True
    )
    assert max_rel_diff(cam_aux_all, case["cam_aux"]) > 1e-6


def test_cam2mask_only_matches_official(cam_fx):
    case = cam_fx["cam2mask_only"]
    mask = cam2mask(
        case["images"], case["img_box"], case["cams"], case["cls_label"],
        case["threshold_high"], case["threshold_low"], downscale=case["downscale"],
    )  # fmt: skip
    _assert_mask(mask, case["mask"], "cam2mask_only")
    # Outside the valid box everything is ignored.
    for i, (y0, y1, x0, x1) in enumerate(case["img_box"].tolist()):
        outside = torch.ones_like(mask[i], dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        assert (mask[i][outside] == 255).all()


def test_merge_rule_on_constant_cams():
    # One present class with CAM 0.5 everywhere: high (0.7) says bg -> 255 ... unless low
    # (0.25) also says bg; low says class -> ignored. CAM 0.9: both say class.
    label = torch.tensor([[0.0, 1.0]])
    box = torch.tensor([[0, 4, 0, 4]])
    img = torch.zeros(1, 3, 4, 4)
    for value, expected in ((0.5, 255.0), (0.9, 2.0), (0.1, 0.0)):
        cams = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
        cams[:, 1] = value
        mask = cam2mask(img, box, cams, label, 0.7, 0.25)
        assert (mask == expected).all(), (value, mask.unique())


def test_bad_inputs_raise():
    with pytest.raises(CpclError, match=r"1\.0"):
        multi_scale_camseg(lambda x: x, torch.zeros(1, 3, 8, 8), [0.5, 1.5])
    with pytest.raises(CpclError, match="img_box"):
        cam2mask(torch.zeros(2, 3, 4, 4), torch.zeros(1, 4, dtype=torch.long),
                 torch.zeros(2, 2, 4, 4), torch.ones(2, 2), 0.7, 0.25)  # fmt: skip
    with pytest.raises(CpclError, match="labels"):
        cam_validation(torch.zeros(2, 3, 4, 4), torch.ones(2, 4))
