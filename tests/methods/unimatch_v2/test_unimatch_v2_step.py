"""One full official UniMatch V2 iteration in float64 (unimatch_v2_step.pt) through the engine's
`train_step`: the teacher and student forwards, CutMix with the flipped batch, comp_drop, the
losses, AdamW on the two groups at the lr of the step, and the EMA update of the same
iteration (ratio 0 at the first iteration, capped later)."""

from __future__ import annotations

import pytest
import torch
from conftest import load_golden

import cpcl.engine as engine
from cpcl.checkpoint import load_weights
from cpcl.methods import StepInfo
from cpcl.methods.unimatch_v2 import UniMatchV2
from cpcl.methods.unimatch_v2.losses import build_criterion_l
from cpcl.methods.unimatch_v2.method import UniMatchV2Settings
from cpcl.methods.unimatch_v2.net import build_unimatch_v2_net, draw_comp_drop
from cpcl.methods.unimatch_v2.schedule import ema_ratio

REL = 1e-9  # float64 (golden README)
REL_POS_EMBED = 1e-6  # the pos_embed interpolation runs in float32 even in a float64 model
POS_EMBED = "backbone.pos_embed"


def _rel(got, want) -> float:
    got, want = torch.as_tensor(got).detach().double(), torch.as_tensor(want).double()
    assert got.shape == want.shape, (tuple(got.shape), tuple(want.shape))
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-300))


def _criterion(case):
    kw = case["criterion_kwargs"]
    if case["criterion_name"] == "OHEM":
        return build_criterion_l("OHEM", kw)
    return build_criterion_l("CELoss", {"ignore_index": kw["ignore_index"]})


def _method(case) -> UniMatchV2:
    settings = UniMatchV2Settings(
        conf_thresh=case["conf_thresh"],
        lr=case["lr"],
        lr_multi=case["lr_multi"],
        lr_power=0.9,
        weight_decay=0.01,
        total_iters=case["total_iters"],
    )
    method = UniMatchV2(criterion_l=_criterion(case), settings=settings)
    # The official draws come from the global RNG seeded right before the iteration; the
    # teacher and the labeled forward draw nothing, so a generator with that seed is the same.
    method.comp_drop_generator = lambda step: torch.Generator().manual_seed(case["seed"])
    return method


_NETS: dict = {}  # (size, nclass) -> network: built once, weights reloaded per case


def _setup(case, det_weights, golden_dir):
    keys = det_weights.load_keys(golden_dir / case["keys_file"])
    arch = (f"dinov2_{case['encoder_size']}", case["nclass"])
    if arch not in _NETS:
        _NETS[arch] = build_unimatch_v2_net(*arch)
    model = _NETS[arch].float()
    load_weights(model, det_weights.det_state_dict(keys), strict=True)
    model.double().train()
    method = _method(case)
    (opt,) = method.build_optimizers(model)
    method.setup(model)
    teacher = method.teacher
    if "ema." in case["ema_init"]:  # a teacher that drifted from the student
        shapes = dict((k, s) for k, s, _ in keys)
        with torch.no_grad():
            for name, p in teacher.named_parameters():
                p.copy_(det_weights.det_tensor("ema." + name, shapes[name]).double())
    return model, method, opt


def _batch(case) -> dict:
    return {
        "img": case["img_x"].double(),
        "gt": case["mask_x"],
        "img_u_w": case["img_u_w"].double(),
        "img_u_s1": case["img_u_s1"].double(),
        "img_u_s2": case["img_u_s2"].double(),
        "ignore_mask": case["ignore_mask"],
        "cutmix_box1": case["cutmix_box1"],
        "cutmix_box2": case["cutmix_box2"],
    }


def _record_head(net, out: list):
    return net.head.register_forward_hook(lambda mod, args, res: out.append(res.detach().clone()))


def _norms(tensors) -> torch.Tensor:
    return torch.tensor([float(t.double().norm()) for t in tensors], dtype=torch.float64)


@pytest.mark.slow
def test_one_official_iteration_golden(golden_dir, det_weights):
    for name, case in load_golden(golden_dir, "unimatch_v2_step.pt")["cases"].items():
        model, method, opt = _setup(case, det_weights, golden_dir)
        teacher = method.teacher
        names = [n for n, _ in model.named_parameters()]
        assert names == case["param_names"], name
        assert sum(1 for _ in model.buffers()) == case["n_buffers"], name
        by_id = {id(p): n for n, p in model.named_parameters()}
        assert [len(g["params"]) for g in opt.param_groups] == case["optimizer_group_sizes"]
        assert [by_id[id(p)] for p in opt.param_groups[1]["params"]] == case[
            "optimizer_group1_names"
        ], name
        before = [p.detach().clone() for p in model.parameters()]
        ema_before = [p.detach().clone() for p in teacher.parameters()]
        assert _rel(_norms(ema_before), case["ema_before_norms"]) < REL, name
        assert _rel(_norms(before), case["param_before_norms"]) < REL, name

        # The draws of this iteration are the official ones.
        bs, dim = 2 * case["img_u_s1"].shape[0], case["comp_drop_mask"].shape[1]
        draws = draw_comp_drop(bs, dim, torch.Generator().manual_seed(case["seed"]))
        assert torch.equal(draws.dropout_mask, case["comp_drop_mask"]), name

        step = StepInfo(case["epoch"], case["iters"], case["iters_per_epoch"], case["total_iters"])
        assert step.iter_in_epoch == case["i"]
        assert ema_ratio(case["iters"]) == case["ema_ratio"], name
        lr = method.set_lr([opt], step)
        used = [g["lr"] for g in opt.param_groups]
        assert lr == used[0] and _rel(torch.tensor(used), case["lr_used"]) < 1e-12, name
        heads_student, heads_teacher = [], []
        hooks = (_record_head(model, heads_student), _record_head(teacher, heads_teacher))
        aux: dict = {}
        engine.train_step(model, [opt], _batch(case), method=method, step=step, aux=aux)
        for hook in hooks:
            hook.remove()
        res = aux["result"]

        # Forwards: teacher on the weak view, student on img_x, then the comp_drop pair batch.
        assert _rel(heads_teacher[0], case["head_out_u_w"]) < REL, name
        assert _rel(heads_student[0], case["head_out_x"]) < REL, name
        assert _rel(heads_student[1], case["head_out_u_s"]) < REL, name
        for key in ("mask_u_w", "mask_u_w_cutmixed1", "mask_u_w_cutmixed2"):
            assert torch.equal(getattr(res, key), case[key]), (name, key)
        for key in ("ignore_mask_cutmixed1", "ignore_mask_cutmixed2"):
            assert torch.equal(getattr(res, key), case[key]), (name, key)
        for key in ("conf_u_w", "conf_u_w_cutmixed1", "conf_u_w_cutmixed2"):
            assert _rel(getattr(res, key), case[key]) < REL, (name, key)
        for key in ("loss_x", "loss_u_s1", "loss_u_s2", "loss_u_s", "loss"):
            assert _rel(getattr(res, key).detach(), case[key]) < REL, (name, key)
        assert _rel(res.mask_ratio, case["mask_ratio"]) < 1e-6, name

        # Gradients (none for the unused parameters) and the AdamW step.
        params = dict(model.named_parameters())
        no_grad = [n for n, p in params.items() if p.grad is None]
        assert no_grad == case["params_without_grad"], name
        grad_norms = torch.tensor(
            [-1.0 if p.grad is None else float(p.grad.norm()) for p in params.values()],
            dtype=torch.float64,
        )
        pos = names.index(POS_EMBED)
        keep = torch.ones(len(names), dtype=torch.bool)
        keep[pos] = False
        assert _rel(grad_norms[keep], case["grad_norms"][keep]) < REL, name
        assert _rel(grad_norms[pos], case["grad_norms"][pos]) < REL_POS_EMBED, name
        token_norms = params[POS_EMBED].grad[0].norm(dim=-1)
        assert _rel(token_norms, case["pos_embed_grad_token_norms"]) < REL_POS_EMBED, name
        for key, want in case["grads_selected"].items():
            assert _rel(params[key].grad, want) < REL, (name, key)
        after = [p.detach() for p in model.parameters()]
        assert _rel(_norms(after), case["param_after_norms"]) < REL, name
        deltas = _norms(a - b for a, b in zip(after, before, strict=True))
        assert _rel(deltas, case["param_delta_norms"]) < REL, name
        for key, want in case["params_after_selected"].items():
            assert _rel(params[key], want) < REL, (name, key)

        # The EMA update of the same iteration, over every parameter (unused ones included).
        ema = dict(teacher.named_parameters())
        ema_after = list(ema.values())
        assert _rel(_norms(ema_after), case["ema_after_norms"]) < REL, name
        ema_deltas = _norms(a - b for a, b in zip(ema_after, ema_before, strict=True))
        assert _rel(ema_deltas, case["ema_delta_norms"]) < REL, name
        for key, want in case["ema_after_selected"].items():
            assert _rel(ema[key], want) < REL, (name, key)

        # The lr the official loop writes after this step is what the next one runs with.
        nxt = StepInfo(
            case["epoch"], case["iters"] + 1, case["iters_per_epoch"], case["total_iters"]
        )
        method.set_lr([opt], nxt)
        written = torch.tensor([g["lr"] for g in opt.param_groups])
        assert _rel(written, case["lr_written"]) < 1e-12, name
