"""One CoSA training iteration vs the official `main.py:114-252` (`cosa_step.pt`, float64).

Tolerances (golden README): 1e-9 relative on losses, grads and parameters; the energy term
(`reg_loss`) 1e-3 relative and 1e-6 relative on what its gradient reaches (every encoder and
decoder parameter; only the two classifiers are free of it). Masks exact.
"""

from __future__ import annotations

import pytest
import torch
from conftest import golden_cases, load_golden, max_rel_diff
from test_cosa_net import det_cosa

from cpcl.errors import CpclError
from cpcl.methods.cosa.network import CoSANet
from cpcl.methods.cosa.optim import build_cosa_optimizer
from cpcl.methods.cosa.step import cosa_settings, cosa_train_step

TOL, TOL_REG_REACHED, TOL_REG = 1e-9, 1e-6, 1e-3
OUTPUTS = (
    "student_cls", "student_cls_aux", "student_seg", "student_cam", "student_cam_aux",
    "teacher_cam", "teacher_cam_aux", "teacher_seg",
)  # fmt: skip
LOSSES = ("cls_loss", "cls_loss_aux", "seg_loss_aux", "seg_loss", "cam_loss", "loss")


def _tol(name: str) -> float:
    """The energy's gradient reaches every encoder / decoder parameter."""
    return TOL_REG_REACHED if name.startswith(("encoder.", "decoder.")) else TOL


def _rel(got: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Elementwise |got - ref| / |ref| (|ref| 0 -> absolute)."""
    ref = ref.to(torch.float64)
    return (got.to(torch.float64) - ref).abs() / torch.where(ref == 0, 1.0, ref.abs())


@pytest.fixture(scope="module")
def step_fx(golden_dir):
    return golden_cases(load_golden(golden_dir, "cosa_step.pt"))


def test_train_step_matches_official(step_fx, golden_dir, det_weights):
    for name, case in step_fx.items():
        args = (det_weights, golden_dir, case["keys_file"], case["backbone"], case["aux_layer"])
        student = det_cosa(*args).double().train()
        teacher = det_cosa(*args, prefix="teacher.").double().train()
        assert student.num_classes == case["num_classes"]
        settings = cosa_settings(
            case["dataset_settings"],
            high_thre=case["threshold_high"], low_thre=case["threshold_low"],
            high_thre_aux=case["threshold_high_aux"], low_thre_aux=case["threshold_low_aux"],
        )  # fmt: skip
        opt = build_cosa_optimizer(student.param_groups(), settings.lr, lrscale=settings.lrscale)
        out = cosa_train_step(
            student, teacher, opt, case["wimg"], case["simg"], case["cls_label"],
            case["img_box"], case["n_iter"], case["optimizer_global_step_before"], settings,
        )  # fmt: skip

        for key in OUTPUTS + LOSSES:
            got = out[key].reshape(case[key].shape)
            assert max_rel_diff(got, case[key]) < TOL, (name, key)
        assert out["loss"].shape == (1,)
        assert max_rel_diff(out["reg_loss"].reshape(()), case["reg_loss"]) < TOL_REG, name
        for key in ("mask", "mask_aux"):
            assert out[key].dtype == torch.float32
            assert torch.equal(out[key].long(), case[key]), (name, key)
        lrs = torch.tensor(out["lr_used"], dtype=torch.float64)
        assert max_rel_diff(lrs, torch.tensor(case["lr_used"], dtype=torch.float64)) < 1e-12, name

        names = [n for n, _ in student.named_parameters()]
        assert names == case["param_names"]
        params, t_params = dict(student.named_parameters()), dict(teacher.named_parameters())
        assert [n for n in names if params[n].grad is None] == case["params_without_grad"]
        tols = torch.tensor([_tol(n) for n in names], dtype=torch.float64)
        grad_norms = torch.tensor(
            [params[n].grad.norm().item() if params[n].grad is not None else -1.0 for n in names],
            dtype=torch.float64,
        )
        for what, got, ref in (
            ("grad_norms", grad_norms, case["grad_norms"]),
            ("student_after_norms", [params[n].norm().item() for n in names], None),
            ("teacher_after_norms", [t_params[n].norm().item() for n in names], None),
        ):
            ref = case[what] if ref is None else ref
            bad = _rel(torch.as_tensor(got, dtype=torch.float64), ref) >= tols
            assert not bad.any(), (name, what, [n for n, b in zip(names, bad, strict=True) if b])
        for key, ref in case["grads_small"].items():
            assert max_rel_diff(params[key].grad, ref) < _tol(key), (name, "grad", key)
            assert max_rel_diff(params[key], case["student_after_small"][key]) < _tol(key)
            assert max_rel_diff(t_params[key], case["teacher_after_small"][key]) < _tol(key)
        patch = "encoder.patch_embed.proj.weight"
        ref = case["student_after_patch_embed_slice"]
        assert max_rel_diff(params[patch][: ref.shape[0]], ref) < _tol(patch), name
        ref = case["teacher_after_patch_embed_slice"]
        assert max_rel_diff(t_params[patch][: ref.shape[0]], ref) < _tol(patch), name


def _tiny_step(n_iter: int, energy_fn=None):
    torch.manual_seed(0)
    student, teacher = CoSANet("deit_tiny_patch16_224", 3), CoSANet("deit_tiny_patch16_224", 3)
    settings = cosa_settings("voc", pseudo_scales=(1.0,), warmup_iters=10)
    opt = build_cosa_optimizer(student.param_groups(), settings.lr)
    img = torch.randn(1, 3, 32, 32)
    label = torch.tensor([[1.0, 0.0]])
    box = torch.tensor([[0, 32, 0, 32]])
    out = cosa_train_step(
        student, teacher, opt, img, img, label, box, n_iter, n_iter, settings,
        energy_fn=energy_fn,
    )  # fmt: skip
    return student, out


def test_loss_warmup_trains_classification_only():
    student, out = _tiny_step(10)  # n_iter <= warmup_iters: seg/cam/reg weighted 0.0
    assert student.decoder.conv8.weight.grad.abs().max().item() == 0.0
    assert torch.allclose(out["loss"], out["cls_loss"] + out["cls_loss_aux"])
    student, out = _tiny_step(11)
    assert student.decoder.conv8.weight.grad.abs().max().item() > 0.0


def test_zero_weighted_nan_still_propagates():
    # The official loss multiplies the warm-up terms by 0.0 instead of skipping them.
    def nan_energy(img, logit, label, box):
        return torch.full((1,), float("nan"), dtype=logit.dtype) + 0 * logit.sum()

    _, out = _tiny_step(0, energy_fn=nan_energy)
    assert torch.isnan(out["loss"]).all()


def test_bad_inputs_raise():
    with pytest.raises(CpclError, match="expected one of"):
        cosa_settings("city")
    with pytest.raises(CpclError, match="override"):
        cosa_settings("voc", no_such_field=1)
    student = CoSANet("deit_tiny_patch16_224", 3)
    opt = build_cosa_optimizer(student.param_groups(), 6e-5)
    with pytest.raises(CpclError, match="differ"):
        cosa_train_step(student, student, opt, torch.zeros(1, 3, 32, 32),
                        torch.zeros(1, 3, 16, 16), torch.ones(1, 2),
                        torch.tensor([[0, 32, 0, 32]]), 0, 0)  # fmt: skip
