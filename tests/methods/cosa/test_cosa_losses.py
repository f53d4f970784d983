"""CoSA loss terms vs the official code (`cosa_losses.pt`, float32, 1e-5 relative).

`loss_reg` / `grad_logit` (the energy / CRF regulariser) are checked by the energy helper's
`test_cosa_energy.py` (cpcl/methods/cosa/energy.py), not here.
"""

from __future__ import annotations

import pytest
import torch
from conftest import golden_cases, load_golden, max_rel_diff

from cpcl.errors import CpclError
from cpcl.methods.cosa.losses import cam_loss, cls_loss, combined_seg_loss, seg_loss
from cpcl.methods.cosa.pseudo import seg_refine_by_label

TOL = 1e-5


@pytest.fixture(scope="module")
def loss_fx(golden_dir):
    return golden_cases(load_golden(golden_dir, "cosa_losses.pt"))


def _grad(fn, x: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(x, *args), its gradient w.r.t. x)."""
    x = x.clone().requires_grad_(True)
    loss = fn(x, *args)
    loss.backward()
    return loss.detach(), x.grad


def _combined(s, *args):
    return combined_seg_loss(s, *args)[0]


def test_seg_loss_matches_official(loss_fx):
    for name, case in loss_fx.items():
        # The official mask is float32; `seg_loss` casts it with `.long()`.
        mask, mask_aux = case["mask"].float(), case["mask_aux"].float()
        loss, grad = _grad(seg_loss, case["seg_pred"], mask, case["fg_alpha"])
        assert torch.isfinite(loss), name
        assert max_rel_diff(loss, case["loss_seg"]) < TOL, name
        assert max_rel_diff(grad, case["grad_seg_pred"]) < TOL, name
        aux = seg_loss(case["seg_pred"], mask_aux, case["fg_alpha"])
        assert max_rel_diff(aux, case["loss_seg_aux"]) < TOL, name

        args = (mask, mask_aux, case["fg_alpha"], case["aux_cam2seg_alpha"])
        loss, grad = _grad(_combined, case["seg_pred"], *args)
        assert max_rel_diff(loss, case["loss_seg_combined"]) < TOL, name
        assert max_rel_diff(grad, case["grad_seg_pred_combined"]) < TOL, name
        if case["mode"] == "all_ignored":
            assert loss.item() == 0.0


def test_cam_loss_matches_official(loss_fx):
    for name, case in loss_fx.items():
        seg_ps = seg_refine_by_label(case["seg_logits"], case["seg_cls_label"], case["softmaxtemp"])
        assert max_rel_diff(seg_ps, case["seg_ps"]) < TOL, name
        loss, grad = _grad(cam_loss, case["cam"], seg_ps)
        assert max_rel_diff(loss, case["loss_cam"]) < TOL, name
        assert max_rel_diff(grad, case["grad_cam"]) < TOL, name


def test_cls_loss_matches_official(loss_fx):
    for name, case in loss_fx.items():
        loss, grad = _grad(cls_loss, case["cls_logits"], case["cls_label"])
        assert max_rel_diff(loss, case["loss_cls"]) < TOL, name
        assert max_rel_diff(grad, case["grad_cls_logits"]) < TOL, name


def test_empty_terms_are_zero_not_nan():
    pred = torch.randn(1, 3, 4, 4)
    assert seg_loss(pred, torch.full((1, 4, 4), 255.0)).item() == 0.0
    only_bg = seg_loss(pred, torch.zeros(1, 4, 4), fg_alpha=0.5)
    assert torch.isfinite(only_bg)


def test_bad_inputs_raise():
    with pytest.raises(CpclError, match="fg_alpha"):
        seg_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4), fg_alpha=1.5)
    with pytest.raises(CpclError, match="mask"):
        seg_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 5, 4))
    with pytest.raises(CpclError, match="seg_ps"):
        cam_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 4, 4))
