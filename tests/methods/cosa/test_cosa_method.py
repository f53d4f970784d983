"""CoSA on the engine (`--method=cosa`): registry, official defaults, named config errors, the
optimiser and schedule, the separate EMA teacher, one engine iteration == the golden-tested
`cosa_train_step`, an end-to-end tiny run with exact mid-epoch resume (student AND teacher),
both evaluation protocols, and two-process gloo DDP."""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY_TRAIN, StopAfter

import cpcl.engine as engine
from cpcl import dist as cdist
from cpcl.checkpoint import load_checkpoint
from cpcl.cli import train as train_cli
from cpcl.config import ConfigError, load_preset
from cpcl.engine.resolve import apply_overrides, config_sources, finalize
from cpcl.errors import CheckpointError
from cpcl.methods import StepInfo, eval_net_from_checkpoint, get_method, method_names
from cpcl.methods.cosa import CoSA
from cpcl.methods.cosa.data import write_toy_cls_labels
from cpcl.methods.cosa.optim import cosa_lrs
from cpcl.methods.cosa.step import COSA_SETTINGS, cosa_train_step

# The tiny run: toy ViT (D 64, 4 blocks), 32x32 crops, 2 epochs x 3 iterations; the loss
# warm-up ends after iteration 1 so every loss term trains.
TINY_COSA = (
    *TINY_TRAIN,  # 32x32 crops, batch 2, 2 epochs x 3 iterations, 4 classes, CPU
    "--method=cosa",
    "--cosa_backbone=vit_toy_patch16",
    "--cosa_warmup_iters=1",
    "--cosa_pseudo_scales=1.0,0.5",
)


def _config(root: Path, run: Path, *extra: str):
    args = [*TINY_COSA, f"--dataset_path={root}", f"--log_dir={run / 'log'}", *extra]
    return apply_overrides(load_preset("voc"), args)


def _method(root: Path, run: Path, *extra: str) -> CoSA:
    return CoSA.from_config(finalize(_config(root, run, *extra), root=str(run)), per_rank_batch=2)


# --- registry, defaults, errors, help ------------------------------------------------------


def test_registered_with_one_stream():
    assert "cosa" in method_names() and get_method("cosa") is CoSA
    assert CoSA.streams == ("labeled",)
    assert set(CoSA.config_help) == set(CoSA.config_keys)
    assert all(k.startswith("cosa_") for k in CoSA.config_keys)


def test_official_voc_settings_unless_overridden(tmp_path):
    C = apply_overrides(load_preset("voc"), ["--method=cosa"])
    voc = COSA_SETTINGS["voc"]  # `args.py` + `run_voc.sh`, checked against the fixtures
    assert C.nepochs * C.niters_per_epoch == voc.max_iters == 32000
    assert (C.lr, C.weight_decay, C.batch_size) == (voc.lr, 1e-2, 4)  # 2 per GPU x 2 GPUs
    assert C.image_height == C.image_width == 448 and C.cosa_aux_layer == -4
    assert (C.cosa_high_thre, C.cosa_low_thre) == (voc.high_thre, voc.low_thre) == (0.7, 0.25)
    assert (C.cosa_high_thre_aux, C.cosa_low_thre_aux) == (voc.high_thre_aux, voc.low_thre_aux)
    assert C.cosa_warmup_iters == voc.warmup_iters and C.cosa_momentum == voc.momentum
    assert tuple(C.cosa_pseudo_scales) == tuple(voc.pseudo_scales)
    assert (C.cosa_seg_weight, C.cosa_cam_weight, C.cosa_reg_weight) == (0.1, 0.05, 0.05)
    assert C.cosa_backbone == "vit_base_patch16_224" and C.seed == 0
    sources = config_sources(C, ["--method=cosa"])
    assert sources["cosa_aux_layer"] == "cosa default" and sources["lr"] == "cosa default"
    # The whole train_aug list, nothing unlabeled; validation on val.txt.
    F = finalize(C, root=str(tmp_path))
    assert F.train_source == os.path.join(F.dataset_path, "train_aug.txt")
    assert F.eval_source == os.path.join(F.dataset_path, "val.txt")
    assert F.num_unsup_imgs == 0 and F.max_samples == F.num_train_imgs
    step = CoSA.from_config(F, per_rank_batch=2).step_settings
    assert step == COSA_SETTINGS["voc"]  # every official step value, max_iters included

    C = apply_overrides(load_preset("voc"), ["--method=cosa", "--lr=1e-4", "--cosa_low_thre=0.3"])
    assert C.lr == 1e-4 and C.cosa_low_thre == 0.3 and C.nepochs == 32


def test_official_coco_settings():
    coco, step = CoSA.defaults["coco"], COSA_SETTINGS["coco"]  # `args_coco.py`, `run_coco.sh`
    assert coco["nepochs"] * coco["niters_per_epoch"] == step.max_iters == 60000
    assert coco["batch_size"] == 8 and coco["num_classes"] == 81  # 4 per GPU x 2 GPUs
    assert coco["cosa_warmup_iters"] == step.warmup_iters == 10000
    assert coco["cosa_high_thre"] == step.high_thre == 0.65 and coco["cosa_aux_layer"] == -3


@pytest.mark.parametrize(
    ("arg", "key"),
    [
        ("--cosa_backbone=resnet50", "cosa_backbone"),
        ("--cosa_aux_layer=12", "cosa_aux_layer"),
        ("--cosa_high_thre=1.5", "cosa_high_thre"),
        ("--cosa_low_thre=0.8", "cosa_low_thre"),
        ("--cosa_low_thre_aux=-0.1", "cosa_low_thre_aux"),
        ("--cosa_pseudo_scales=0.5,1.5", "cosa_pseudo_scales"),
        ("--cosa_eval_scales=0.5", "cosa_eval_scales"),
        ("--cosa_scales=2,1", "cosa_scales"),
        ("--cosa_momentum=1.5", "cosa_momentum"),
        ("--cosa_warmup_iters=-1", "cosa_warmup_iters"),
        ("--cosa_seg_weight=-1", "cosa_seg_weight"),
        ("--cosa_lrscale=0", "cosa_lrscale"),
        ("--cosa_eval_net=ema", "cosa_eval_net"),
        ("--image_width=320", "image_width"),
        ("--warm_up_epoch=1", "warm_up_epoch"),
    ],
)
def test_bad_settings_are_named(arg, key):
    with pytest.raises(ConfigError, match=key):
        apply_overrides(load_preset("voc"), ["--method=cosa", arg])


def test_eval_crf_is_the_official_dense_crf():
    """`cosa_eval_crf=true` hands the evaluator the official CRF: numpy (H,W,3) uint8 and
    (C,H,W) probabilities in, `cpcl.ops.dense_crf` marginals out, with the parameters of the
    official `crf_inference_infv2` (the evaluator's table and the op's defaults agree)."""
    import numpy as np

    from cpcl.methods.cosa.evaluate import OFFICIAL_CRF_PARAMS
    from cpcl.methods.cosa.method import _dense_crf
    from cpcl.ops.dense_crf import DenseCRFParams, dense_crf

    C = apply_overrides(load_preset("voc"), ["--method=cosa", "--cosa_eval_crf=true"])
    assert C.cosa_eval_crf is True
    # crf_inference_infv2 (`utils/seg_helper.py:989-996`): 1 iteration, Gaussian sxy 1
    # compat 1, bilateral sxy 121 srgb 5 compat 4.
    assert DenseCRFParams(1, 1.0, 1.0, 4.0, 121.0, 5.0) == OFFICIAL_CRF_PARAMS
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(9, 11, 3, generator=g) * 255).to(torch.uint8)
    probs = torch.softmax(torch.randn(4, 9, 11, generator=g), 0)
    got = _dense_crf(image.numpy(), probs.numpy())
    want = dense_crf(image.permute(2, 0, 1)[None], probs[None], OFFICIAL_CRF_PARAMS)[0]
    assert isinstance(got, np.ndarray) and got.shape == (4, 9, 11)
    assert torch.equal(torch.from_numpy(got), want)


def test_help_lists_every_cosa_key(capsys):
    with pytest.raises(SystemExit) as done:
        train_cli.main(load_preset("voc"), ["--method=cosa", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for key, line in CoSA.config_help.items():
        assert f"--{key}" in out and line.split(" (")[0][:30] in out, key


# --- optimiser, schedule, teacher -------------------------------------------------------


def test_optimizer_groups_and_schedule_before_increment(toy_voc_small, tmp_path):
    method = _method(toy_voc_small, tmp_path, "--nepochs=4", "--niters_per_epoch=500")
    model = method.build_model()
    (opt,) = method.build_optimizers(model)
    groups = model.param_groups()
    assert [len(g["params"]) for g in opt.param_groups] == [len(g) for g in groups]
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-2] * 4
    for it in (0, 1, 1499, 1500, 1999):
        lr = method.set_lr([opt], StepInfo(it // 500, it, 500, 2000))
        want = cosa_lrs(it, 6e-5, 2000)  # max_iters = nepochs x niters_per_epoch
        assert [g["lr"] for g in opt.param_groups] == want and lr == want[0]


def _pretrained_file(tmp_path: Path) -> Path:
    from cpcl.methods.cosa.vit import build_vit

    torch.manual_seed(123)
    path = tmp_path / "vit_toy.pth"
    torch.save(build_vit("vit_toy_patch16").state_dict(), path)
    return path


def test_teacher_is_a_separate_seeded_network(toy_voc_small, tmp_path):
    path = _pretrained_file(tmp_path)
    method = _method(toy_voc_small, tmp_path, f"--pretrained_model={path}")
    torch.manual_seed(0)
    model = method.build_model()
    method.setup(model)
    teacher = method.teacher
    assert teacher is not model and all(
        t is not s for t, s in zip(teacher.parameters(), model.parameters(), strict=True)
    )
    assert teacher.training and not any(p.requires_grad for p in teacher.parameters())
    st, tt = model.state_dict(), teacher.state_dict()
    assert list(st) == list(tt)
    # The encoder is the ImageNet file for both; the heads are the teacher's own draws.
    assert all(torch.equal(st[k], tt[k]) for k in st if k.startswith("encoder."))
    assert not torch.equal(st["classifier.weight"], tt["classifier.weight"])
    # Deterministic from the seed, whatever the global generator holds.
    again = _method(toy_voc_small, tmp_path, f"--pretrained_model={path}")
    again.build_model()  # (setup follows build_model: the teacher loads the same file)
    torch.manual_seed(999)
    again.setup(model)
    assert all(torch.equal(v, again.teacher.state_dict()[k]) for k, v in tt.items())
    other = _method(toy_voc_small, tmp_path, f"--pretrained_model={path}", "--seed=5")
    other.setup(model)
    assert not torch.equal(other.teacher.classifier.weight, teacher.classifier.weight)
    # The teacher is the method state; a checkpoint without it is refused.
    assert set(method.state_dict()) == {"teacher", "best"}
    with pytest.raises(CheckpointError, match="teacher"):
        method.load_state_dict({})


def test_engine_iteration_equals_the_golden_tested_step(toy_voc_small, tmp_path):
    """`train_step` with the method (set_lr, forward_loss, backward, AdamW, after_step) gives
    bit-identical student, teacher and optimiser to `cosa_train_step` (tested on the fixtures)."""
    method = _method(toy_voc_small, tmp_path, "--cosa_warmup_iters=0")
    torch.manual_seed(0)
    model = method.build_model()
    (opt,) = method.build_optimizers(model)
    method.setup(model)
    ref_model, ref_teacher = copy.deepcopy(model), copy.deepcopy(method.teacher)
    (ref_opt,) = method.build_optimizers(ref_model)
    g = torch.Generator().manual_seed(1)
    for it in range(2):
        batch = {
            "wimg": torch.randn(2, 3, 32, 32, generator=g),
            "simg": torch.randn(2, 3, 32, 32, generator=g),
            "cls_label": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),
            "img_box": torch.tensor([[0, 32, 0, 32], [2, 30, 4, 28]]),
        }
        step = StepInfo(0, it, 3, 6)
        method.set_lr([opt], step)
        out = engine.train_step(model, [opt], batch, method=method, step=step)
        assert method.step_settings.max_iters == 6  # nepochs x niters_per_epoch
        ref = cosa_train_step(
            ref_model, ref_teacher, ref_opt, *batch.values(), it, it, method.step_settings
        )
        assert torch.equal(out["loss"], ref["loss"].reshape(()))
        assert torch.equal(out["loss_reg"], ref["reg_loss"].reshape(()))
    for a, b in ((model, ref_model), (method.teacher, ref_teacher)):
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(v, w), k
    assert ref["lr_used"] == [g["lr"] for g in opt.param_groups]


# --- end to end: train, snapshot, exact resume, evaluation -------------------------------


def _equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key  # bit-exact on the CPU


@pytest.mark.slow
def test_train_resume_exactly_and_evaluate(toy_voc_small, tmp_path, monkeypatch, capsys):
    full = engine.fit(_config(toy_voc_small, tmp_path / "full"), root=str(tmp_path))
    assert not full["interrupted"] and len(full["epochs"]) == 2
    logs = full["epochs"][1]
    assert set(logs) == {"loss", "loss_cls", "loss_cls_aux", "loss_seg", "loss_cam", "loss_reg"}
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    log_text = (tmp_path / "full" / "log").glob("*.log")
    assert any("image-level labels: derived from the segmentation labels" in p.read_text()
               for p in log_text)  # fmt: skip
    reference = load_checkpoint(Path(full["snapshot_dir"]) / "epoch-last.pth")
    assert set(reference["method_state"]) == {"teacher", "best"}
    assert len(reference["optimizer_1"]["param_groups"]) == 4

    # Stop after 4 of 6 iterations (inside the second epoch), then resume.
    monkeypatch.setattr(engine.loop, "train_step", StopAfter(4))
    part = engine.fit(_config(toy_voc_small, tmp_path / "split"), root=str(tmp_path))
    assert part["interrupted"]
    snap = Path(part["snapshot_dir"])
    assert (load_checkpoint(snap / "interrupted.pth")["next_iter"]) == 1
    monkeypatch.undo()
    resumed = engine.fit(
        _config(toy_voc_small, tmp_path / "split"),
        root=str(tmp_path),
        resume=str(snap / "interrupted.pth"),
    )
    assert not resumed["interrupted"]
    final = load_checkpoint(snap / "epoch-last.pth")
    _equal_states(final["model"], reference["model"])
    _equal_states(final["method_state"]["teacher"], reference["method_state"]["teacher"])
    for k, v in reference["optimizer_1"]["state"].items():
        _equal_states(final["optimizer_1"]["state"][k], v)

    # The evaluated network: seg logits at the input size (student, or teacher on request).
    C = finalize(_config(toy_voc_small, tmp_path / "full"), root=str(tmp_path))
    net = eval_net_from_checkpoint(C, reference)
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 40, 48)).shape == (1, 4, 40, 48)
    Ct = finalize(_config(toy_voc_small, tmp_path / "full", "--cosa_eval_net=teacher"))
    teacher = eval_net_from_checkpoint(Ct, reference).model
    _equal_states(teacher.state_dict(), reference["method_state"]["teacher"])

    # eval.py with both protocols.
    from cpcl.cli.evaluate import main as eval_main

    base = _config(toy_voc_small, tmp_path / "full")
    for protocol, label in (("cpcl", "cpcl: sliding windows"), ("official", "cosa official")):
        capsys.readouterr()
        rc = eval_main(base, ["-e", "last", "-d", "cpu", f"--eval_protocol={protocol}"],
                       root=str(tmp_path))  # fmt: skip
        assert rc == 0
        assert f"protocol: {label}" in capsys.readouterr().out


@pytest.mark.slow
def test_labels_from_the_official_npy_are_logged(toy_voc_small, tmp_path):
    npy = write_toy_cls_labels(toy_voc_small, 4, path=tmp_path / "cls_labels_onehot.npy")
    args = (f"--cosa_cls_labels={npy}", "--nepochs=1", "--niters_per_epoch=1")
    out = engine.fit(_config(toy_voc_small, tmp_path / "npy", *args), root=str(tmp_path))
    assert not out["interrupted"]
    text = "".join(p.read_text() for p in (tmp_path / "npy" / "log").glob("*.log"))
    assert f"image-level labels: {npy}" in text


# --- two processes (gloo): identical student and teacher ----------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    from cpcl.data.datasets import build_dataset
    from cpcl.data.loaders import build_train_loader

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    cdist.init_distributed("cpu", timeout_s=120)
    C = finalize(
        _config(Path(root), Path(out), "--batch_size=4", "--cosa_warmup_iters=0"), root=out
    )
    method = CoSA.from_config(C, per_rank_batch=2)
    loader = build_train_loader(
        C, rank=rank, world_size=world, labeled=build_dataset(C, "labeled"), view=method.data_view()
    )
    torch.manual_seed(100 + rank)  # different local init: the broadcast must make them equal
    model = method.build_model().train()
    cdist.broadcast_module(model)
    (opt,) = method.build_optimizers(model)
    method.setup(model)
    loader.set_epoch(0)
    for it, batch in enumerate(loader):
        if it == 2:
            break
        step = StepInfo(0, it, 3, 6)
        method.set_lr([opt], step)
        engine.train_step(
            model, [opt], batch, method=method, step=step,
            grad_sync=lambda: cdist.allreduce_grads(model),
        )  # fmt: skip
        torch.save(batch["wimg"], f"{out}/batch{rank}_{it}.pt")
    torch.save(
        {"model": model.state_dict(), "teacher": method.teacher.state_dict()},
        f"{out}/rank{rank}.pt",
    )
    cdist.cleanup()


@pytest.mark.slow
def test_ddp_two_processes_keep_student_and_teacher_identical(toy_voc_small, tmp_path):
    mp.spawn(
        _ddp_worker, args=(2, _free_port(), str(toy_voc_small), str(tmp_path)), nprocs=2, join=True
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    _equal_states(r0["model"], r1["model"])
    _equal_states(r0["teacher"], r1["teacher"])
    # Each rank trained on its own shard.
    assert not torch.equal(
        torch.load(tmp_path / "batch0_0.pt"), torch.load(tmp_path / "batch1_0.pt")
    )
