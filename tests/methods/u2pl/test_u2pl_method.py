"""U2PL on the engine (`--method=u2pl`): registry and defaults, named config errors, a tiny
toy run through both phases that resumes bit-exactly mid-epoch (student, teacher, memory
banks), and two gloo ranks that keep parameters, teacher and banks identical."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import StopAfter

import cpcl.engine as engine
from cpcl import dist as cdist
from cpcl.checkpoint import load_checkpoint
from cpcl.config import ConfigError, load_preset
from cpcl.data.toy import make_toy_voc
from cpcl.engine.resolve import apply_overrides, config_sources, finalize
from cpcl.methods import StepInfo, eval_net_from_checkpoint, get_method
from cpcl.methods.u2pl import U2PL, U2PLEvalNet
from cpcl.methods.u2pl.presets import U2PL_CITYSCAPES_744, U2PL_VOC_1464

# Tiny contrastive settings so that the banks fill and the contrastive loss is non-zero
# within a few iterations of 32x32 crops of 4 classes (negatives: classes ranked 1.., high
# entropy: the upper half).
SMALL_CONTRA = [
    "--u2pl_low_rank=1",
    "--u2pl_low_entropy_threshold=50",
    "--u2pl_num_queries=8",
    "--u2pl_num_negatives=4",
    "--u2pl_queue_size=64",
    "--u2pl_queue_size_class0=96",
]
TINY = [
    "--method=u2pl",
    "--backbone=resnet18",
    "--pretrained_model=None",
    "--batch_size=2",
    "--image_height=32",
    "--image_width=32",
    "--train_scale_array=1",
    "--nepochs=3",
    "--niters_per_epoch=2",
    "--num_workers=0",
    "--snapshot_iter=10",
    "--num_classes=4",
    "--labeled_ratio=4",
    "--display_iter=2",
    "--device=cpu",
    "--lr=0.01",
    "--u2pl_sup_only_epoch=1",  # epoch 0 supervised only, 1 teacher copy, 2 EMA
    *SMALL_CONTRA,
]


def test_registry_defaults_and_sources():
    assert get_method("u2pl") is U2PL
    argv = ["--method=u2pl"]
    C = apply_overrides(load_preset("voc"), argv)
    p = U2PL_VOC_1464
    assert (C.lr, C.weight_decay, C.nepochs, C.backbone) == (
        p.lr,
        p.weight_decay,
        p.epochs,
        p.backbone,
    )
    assert C.batch_size == p.batch_size_per_gpu * p.official_gpus
    assert (C.image_height, C.image_width) == p.crop_size
    assert (C.u2pl_sup_only_epoch, C.u2pl_lr_head_times, C.sup_loss) == (1, 10, "ce")
    sources = config_sources(C, argv)
    assert sources["lr"] == "u2pl default" and sources["method"] == "command line"
    argv = ["--method=u2pl", "--lr=0.02"]
    C = apply_overrides(load_preset("cityscapes"), argv)
    q = U2PL_CITYSCAPES_744
    assert C.lr == 0.02 and config_sources(C, argv)["lr"] == "command line"
    assert (C.weight_decay, C.nepochs, C.sup_loss) == (q.weight_decay, q.epochs, "ohem")
    assert (C.u2pl_sup_only_epoch, C.u2pl_aux_loss_weight, C.u2pl_lr_head_times) == (0, 0.4, 1)
    assert C.eval_crop_size == q.eval_crop_size[0]


@pytest.mark.parametrize(
    ("arg", "match"),
    [
        ("--u2pl_apply_aug=mixup", "u2pl_apply_aug"),
        ("--u2pl_drop_percent=120", "u2pl_drop_percent"),
        ("--u2pl_queue_size=0", "u2pl_queue_size"),
        ("--u2pl_queue_size_class0=-5", "u2pl_queue_size_class0"),
        ("--u2pl_onehot=perimage", "onehot"),
        ("--u2pl_low_rank=30", "low_rank"),
        ("--u2pl_sup_only_epoch=-1", "u2pl_sup_only_epoch"),
        ("--u2pl_ema_decay=1.5", "u2pl_ema_decay"),
        ("--u2pl_eval_net=best", "u2pl_eval_net"),
        ("--u2pl_temperature=0", "temperature"),
    ],
)
def test_bad_settings_raise_named_errors(arg, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(load_preset("voc"), ["--method=u2pl", arg])


def test_one_image_per_process_is_refused_at_start_up():
    # batch 1: refused with the config (the teacher's plain BatchNorm would raise mid-run).
    with pytest.raises(ConfigError, match=r"batch_size = 1.*at least 2"):
        apply_overrides(load_preset("voc"), ["--method=u2pl", "--batch_size=1"])
    # batch 2 on 2 processes: refused at start-up, naming the key and the process count.
    C = apply_overrides(load_preset("voc"), ["--method=u2pl", "--batch_size=2"])
    U2PL.check_per_rank_batch(C, 1)
    with pytest.raises(ConfigError, match=r"batch_size = 2 over 2 process.*at least 2"):
        U2PL.check_per_rank_batch(C, 2)
    get_method("cps").check_per_rank_batch(C, 2)  # one image per process is fine elsewhere


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy_voc")
    make_toy_voc(root, n_train=16, n_val=2, height=40, width=48, num_classes=4, seed=0)
    return root


def _config(toy_root: Path, run: Path, *extra: str):
    args = [*TINY, f"--dataset_path={toy_root}", f"--log_dir={run / 'log'}", *extra]
    return apply_overrides(load_preset("voc"), args)


def _state(path: Path) -> dict:
    ckpt = load_checkpoint(path)
    ms = ckpt["method_state"]
    return {"model": ckpt["model"], "teacher": ms["teacher"], "bank": ms["bank"], "ckpt": ckpt}


@pytest.fixture(scope="module")
def reference_run(toy_root, tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("full")
    summary = engine.fit(_config(toy_root, run), root=str(run))
    assert not summary["interrupted"] and len(summary["epochs"]) == 3
    return {"summary": summary, **_state(Path(summary["snapshot_dir"]) / "epoch-last.pth")}


def _assert_same(a: dict, b: dict) -> None:
    for part in ("model", "teacher"):
        assert list(a[part]) == list(b[part])
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert torch.equal(a["bank"]["queue_ptr"], b["bank"]["queue_ptr"])
    for qa, qb in zip(a["bank"]["queues"], b["bank"]["queues"], strict=True):
        assert torch.equal(qa, qb)


def test_both_phases_run_and_state_is_complete(reference_run):
    epochs = reference_run["summary"]["epochs"]
    assert epochs[0]["loss_unsup"] == 0 and epochs[0]["loss_contra"] == 0  # supervised only
    assert epochs[1]["loss_unsup"] > 0 and epochs[2]["loss_unsup"] > 0
    assert epochs[1]["loss_contra"] > 0 and epochs[2]["loss_contra"] > 0
    assert epochs[2]["drop_percent"] > epochs[1]["drop_percent"] > epochs[0]["drop_percent"]
    assert sum(q.shape[0] for q in reference_run["bank"]["queues"]) > 0
    student, teacher = reference_run["model"], reference_run["teacher"]
    assert list(student) == list(teacher)
    # After EMA epochs the teacher is an average, not the student; buffers are its own.
    key = "decoder.classifier.8.weight"
    assert not torch.equal(student[key], teacher[key])
    assert reference_run["ckpt"]["method_state"]["last_epoch"] == 2


def test_interrupt_mid_epoch_then_resume_is_exact(toy_root, tmp_path, monkeypatch, reference_run):
    monkeypatch.setattr(engine.loop, "train_step", StopAfter(5))  # inside the EMA epoch
    part = engine.fit(_config(toy_root, tmp_path / "split"), root=str(tmp_path))
    assert part["interrupted"]
    snap = Path(part["snapshot_dir"])
    mid = _state(snap / "interrupted.pth")
    assert (mid["ckpt"]["next_epoch"], mid["ckpt"]["next_iter"]) == (2, 1)
    assert sum(q.shape[0] for q in mid["bank"]["queues"]) > 0  # resumes with non-empty banks
    monkeypatch.undo()
    resumed = engine.fit(
        _config(toy_root, tmp_path / "split"),
        root=str(tmp_path),
        resume=str(snap / "interrupted.pth"),
    )
    assert not resumed["interrupted"]
    _assert_same(_state(snap / "epoch-last.pth"), reference_run)  # bit-exact on CPU


def test_resume_with_a_channels_last_student_is_exact(toy_root, tmp_path, monkeypatch):
    # The teacher-copy epoch hands the teacher the student's (channels-last) storage; a teacher
    # rebuilt on resume must have that layout too, or its convolutions sum in another order
    # (measured before the fix: teacher 4.8e-7, student 1.5e-8 from the uninterrupted run).
    full = engine.fit(
        _config(toy_root, tmp_path / "full", "--channels_last=true"), root=str(tmp_path)
    )
    reference = _state(Path(full["snapshot_dir"]) / "epoch-last.pth")
    monkeypatch.setattr(engine.loop, "train_step", StopAfter(5))  # inside the EMA epoch
    split = _config(toy_root, tmp_path / "split", "--channels_last=true")
    part = engine.fit(split, root=str(tmp_path))
    assert part["interrupted"]
    monkeypatch.undo()
    snap = Path(part["snapshot_dir"])
    engine.fit(split, root=str(tmp_path), resume=str(snap / "interrupted.pth"))
    _assert_same(_state(snap / "epoch-last.pth"), reference)


def test_eval_net_from_checkpoint_is_the_teacher(toy_root, tmp_path, reference_run):
    C = finalize(_config(toy_root, tmp_path), root=str(tmp_path))
    net = eval_net_from_checkpoint(C, reference_run["ckpt"])
    assert isinstance(net, U2PLEvalNet) and not net.training
    teacher = reference_run["teacher"]
    assert torch.equal(
        net.net.state_dict()["encoder.bn1.running_mean"], teacher["encoder.bn1.running_mean"]
    )
    with torch.no_grad():
        out = net(torch.randn(1, 3, 30, 34))
    assert out.shape == (1, 4, 30, 34)


def _tiny_semi_run(extra: list[str], iters: int = 3) -> dict:
    """`iters` semi-supervised train_steps on seeded random batches; student, teacher, bank."""
    C = finalize(apply_overrides(load_preset("voc"), [*TINY, "--u2pl_sup_only_epoch=0", *extra]))
    method = U2PL.from_config(C, per_rank_batch=2)
    torch.manual_seed(0)
    np.random.seed(0)
    model = method.build_model()
    opts = method.build_optimizers(model)
    method.setup(model)
    g = torch.Generator().manual_seed(1000)
    for it in range(iters):  # iteration 0..1: teacher copy, then EMA
        step = StepInfo(it // 2, it, 2, 6)
        batch = {
            "img": torch.randn(2, 3, 32, 32, generator=g),
            "gt": torch.randint(0, 4, (2, 32, 32), generator=g),
            "img_u": torch.randn(2, 3, 32, 32, generator=g),
        }
        method.set_lr(opts, step)
        engine.train_step(model, opts, batch, method=method, step=step)
    state = method.state_dict()
    return {"model": model.state_dict(), "teacher": state["teacher"], "bank": state["bank"]}


def test_two_runs_with_one_seed_are_identical_on_two_threads():
    # 256 anchors per class (the official count): the contrastive gather is large enough for
    # torch's parallel backward, whose atomic adds made runs differ by ~1e-6 before.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = [_tiny_semi_run(["--u2pl_num_queries=256"], iters=1) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    assert sum(q.shape[0] for q in runs[0]["bank"]["queues"]) > 0
    _assert_same(*runs)


# --- two gloo ranks ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    cdist.init_distributed("cpu", timeout_s=120)
    args = [*TINY, "--u2pl_sup_only_epoch=0", "--nepochs=2", "--batch_size=4"]
    C = finalize(apply_overrides(load_preset("voc"), args))
    method = U2PL.from_config(C, per_rank_batch=2)
    torch.manual_seed(100 + rank)  # different local init: the broadcast must make them equal
    model = method.build_model()
    cdist.broadcast_module(model)
    opts = method.build_optimizers(model)
    method.setup(model)
    torch.manual_seed(0)  # the engine seeds every rank alike
    np.random.seed(0)
    g = torch.Generator().manual_seed(1000 + rank)  # each rank its own shard
    for it in range(3):  # epoch 0 (teacher copy), then epoch 1 (EMA)
        step = StepInfo(it // 2, it, 2, 4)
        batch = {
            "img": torch.randn(2, 3, 32, 32, generator=g),
            "gt": torch.randint(0, 4, (2, 32, 32), generator=g),
            "img_u": torch.randn(2, 3, 32, 32, generator=g),
        }
        method.set_lr(opts, step)
        engine.train_step(
            model,
            opts,
            batch,
            method=method,
            step=step,
            grad_sync=lambda: cdist.allreduce_grads(model),
        )
    state = method.state_dict()
    torch.save(
        {
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "teacher": state["teacher"],
            "bank": state["bank"],
        },
        f"{out}/rank{rank}.pt",
    )
    cdist.cleanup()


def test_two_ranks_keep_parameters_teacher_and_banks_identical(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    params = [k for k in r0["model"] if "running" not in k and "num_batches" not in k]
    for key in params:
        assert torch.equal(r0["model"][key], r1["model"][key]), key
        assert torch.equal(r0["teacher"][key], r1["teacher"][key]), key
    # The banks hold the keys of both ranks in rank order, the same on both.
    assert sum(q.shape[0] for q in r0["bank"]["queues"]) > 0
    assert torch.equal(r0["bank"]["queue_ptr"], r1["bank"]["queue_ptr"])
    for q0, q1 in zip(r0["bank"]["queues"], r1["bank"]["queues"], strict=True):
        assert torch.equal(q0, q1)
