"""UniMatch V2 on the engine (`--method=unimatch_v2`): registry, official defaults and their
sources, named config errors, the data view, comp_drop seeds, and a tiny end-to-end run
(train, snapshot, bit-exact mid-epoch resume with the EMA teacher and AdamW, evaluation with
both protocols)."""

from __future__ import annotations

import dataclasses
import logging
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
from cpcl.data.datasets import build_dataset, class_names, expected_tree, palette_for
from cpcl.data.splits import read_split
from cpcl.data.toy import make_toy_voc
from cpcl.engine.resolve import apply_overrides, config_sources, finalize
from cpcl.errors import CheckpointError
from cpcl.methods import StepInfo, eval_net_from_checkpoint, get_method, method_names
from cpcl.methods.base import TrainEvalContext
from cpcl.methods.unimatch.views import aug_rng, labeled_view, unlabeled_views
from cpcl.methods.unimatch_v2 import UniMatchV2, unimatch_v2_eval_settings
from cpcl.methods.unimatch_v2.evaluate import Multiple14, evaluate_unimatch_v2
from cpcl.methods.unimatch_v2.net import BACKBONES
from cpcl.methods.unimatch_v2.presets import UNIMATCH_V2_PRESETS
from cpcl.methods.unimatch_v2.schedule import lr_for_step
from cpcl.methods.unimatch_v2.views import BATCH_KEYS, UniMatchV2View, UniMatchV2ViewSettings

TINY = [
    "--method=unimatch_v2",
    "--backbone=dinov2_toy",
    "--pretrained_model=None",
    "--batch_size=2",
    "--image_height=28",
    "--image_width=28",
    "--nepochs=1",
    "--niters_per_epoch=2",
    "--num_workers=0",
    "--snapshot_iter=1",
    "--num_classes=4",
    "--labeled_ratio=4",
    "--display_iter=1",
    "--device=cpu",
    "--unimatch_v2_conf_thresh=0",  # every pixel confident: the unlabeled losses are active
]


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy_voc")
    make_toy_voc(root, n_train=16, n_val=2, height=32, width=40, num_classes=4, seed=0)
    return root


def _config(toy_root: Path, run: Path, *extra: str):
    args = [*TINY, f"--dataset_path={toy_root}", f"--log_dir={run / 'log'}", *extra]
    return apply_overrides(load_preset("voc"), args)


# --- registry, defaults, sources, errors -------------------------------------------------


def test_registered():
    assert "unimatch_v2" in method_names()
    assert get_method("unimatch_v2") is UniMatchV2
    assert set(UniMatchV2.backbone_choices) == set(BACKBONES)


@pytest.mark.parametrize(
    ("dataset", "preset"),
    [
        ("voc", "pascal"),
        ("cityscapes", "cityscapes"),
        ("ade20k", "ade20k"),
        ("coco2017", "coco"),
    ],
)
def test_official_settings_unless_overridden(dataset, preset):
    p = UNIMATCH_V2_PRESETS[preset]
    C = apply_overrides(load_preset(dataset), ["--method=unimatch_v2"])
    assert C.lr == p["lr"] and C.unimatch_v2_lr_multi == p["lr_multi"]
    assert C.image_height == C.image_width == p["crop_size"]
    assert C.nepochs == p["epochs"] and C.batch_size == 4 * p["batch_size"]
    assert C.unimatch_v2_conf_thresh == p["conf_thresh"] and C.backbone == p["backbone"]
    assert C.pretrained_model == f"DATA/pytorch-weight/{p['backbone']}.pth"
    assert C.weight_decay == p["weight_decay"] and C.warm_up_epoch == 0
    assert C.unimatch_v2_lock_backbone is p["lock_backbone"]
    assert C.unimatch_v2_eval_mode == p["eval_mode"]
    assert C.eval_protocol == "official" and C.eval_every == 1  # both networks, every epoch
    if p["criterion"]["name"] == "OHEM":
        kw = p["criterion"]["kwargs"]
        assert C.sup_loss == "ohem" and C.ohem_thresh == kw["thresh"]
        crit = UniMatchV2.from_config(finalize(C), per_rank_batch=p["batch_size"]).criterion_l
        assert crit.min_kept == kw["min_kept"] and crit.weight is None
    else:
        assert C.sup_loss == "ce"
    sources = config_sources(C, ["--method=unimatch_v2"])
    assert sources["image_height"] == "unimatch_v2 default"
    argv = ["--method=unimatch_v2", "--lr=0.123", "--unimatch_v2_conf_thresh=0.5"]
    C = apply_overrides(load_preset(dataset), argv)
    assert C.lr == 0.123 and C.unimatch_v2_conf_thresh == 0.5 and C.nepochs == p["epochs"]


def test_cosa_coco_is_refused_naming_coco2017():
    # The coco preset is CoSA's COCO-2014 layout; UniMatch V2 trains on COCO 2017 (coco2017).
    assert "coco" not in UniMatchV2.defaults and "coco2017" in UniMatchV2.defaults
    with pytest.raises(
        ConfigError, match=r"expected one of voc, cityscapes, ade20k, coco2017 \(.*COCO 2014"
    ):
        apply_overrides(load_preset("coco"), ["--method=unimatch_v2"])


def test_ade20k_preset_names_layout_and_splits(tmp_path):
    C = finalize(apply_overrides(load_preset("ade20k"), []), root=tmp_path)
    assert C.num_classes == len(class_names("ade20k")) == 150
    assert class_names("ade20k")[:3] == ("wall", "building", "sky") and "bed" in class_names(
        "ade20k"
    )
    assert palette_for("ade20k").shape == (256, 3)
    assert C.train_source.endswith(os.path.join("splits", "1_8", "labeled.txt"))
    assert C.eval_source.endswith(os.path.join("splits", "val.txt"))
    assert "annotations/{training,validation}" in expected_tree("ade20k")


def test_official_v2_split_lists_parse(splits_dir):
    root = splits_dir / "LiheYoung-UniMatch-V2" / "splits"
    train = read_split(root / "cityscapes" / "all" / "train.txt")
    extra = read_split(root / "cityscapes" / "all" / "unlabeled.txt")
    voc = read_split(root / "pascal" / "all" / "labeled.txt")
    assert (len(train), len(extra), len(voc)) == (2975, 19998, 10582)
    assert all(label is None for _, label in extra) and all(label for _, label in voc)
    assert not {img for img, _ in train} & {img for img, _ in extra}


@pytest.mark.parametrize(
    ("arg", "key"),
    [
        ("--unimatch_v2_conf_thresh=1.5", "unimatch_v2_conf_thresh"),
        ("--unimatch_v2_lr_multi=0", "unimatch_v2_lr_multi"),
        ("--unimatch_v2_eval_mode=tiles", "unimatch_v2_eval_mode"),
        ("--unimatch_v2_eval_net=both", "unimatch_v2_eval_net"),
        ("--backbone=resnet50", "backbone"),
        ("--image_width=504", "image_width"),
        ("--image_height=500", "image_height"),
        ("--warm_up_epoch=1", "warm_up_epoch"),
    ],
)
def test_bad_settings_are_named(arg, key):
    with pytest.raises(ConfigError, match=key):
        apply_overrides(load_preset("voc"), ["--method=unimatch_v2", arg])


def test_dinov2_backbones_are_refused_by_resnet_methods():
    with pytest.raises(ConfigError, match="method 'cpcl' expects one of resnet18"):
        apply_overrides(load_preset("voc"), ["--method=cpcl", "--backbone=dinov2_small"])
    C = apply_overrides(
        load_preset("voc"),
        ["--method=unimatch_v2", "--backbone=dinov2_base", "--pretrained_model=w/dinov2_base.pth"],
    )
    assert C.backbone == "dinov2_base"
    # The default encoder file is dinov2_small's: named before anything is read.
    C = finalize(
        apply_overrides(load_preset("voc"), ["--method=unimatch_v2", "--backbone=dinov2_toy"])
    )
    with pytest.raises(ConfigError, match="pretrained_model"):
        UniMatchV2.from_config(C, per_rank_batch=2).build_model()
    # A missing official file says where to get it.
    C = finalize(
        apply_overrides(
            load_preset("voc"),
            [
                "--method=unimatch_v2",
                "--backbone=dinov2_base",
                "--pretrained_model=nowhere/dinov2_base.pth",
            ],
        )
    )
    with pytest.raises(CheckpointError, match=r"dinov2_vitb14_pretrain\.pth"):
        UniMatchV2.from_config(C, per_rank_batch=2).build_model()


def test_eval_settings_select_the_protocol():
    s = unimatch_v2_eval_settings(apply_overrides(load_preset("voc"), ["--method=unimatch_v2"]))
    assert (s["mode"], s["multiplier"]) == ("original", 14)
    C = apply_overrides(load_preset("cityscapes"), ["--method=unimatch_v2"])
    s = unimatch_v2_eval_settings(C)
    assert s["mode"] == "sliding_window" and s["crop_size"] == C.image_height == 798
    assert "sliding_window" in UniMatchV2.official_evaluator(C).label


# --- data view, comp_drop seeds -----------------------------------------------------------


def _loaded(seed: int, h: int = 30, w: int = 36):
    r = np.random.default_rng(seed)
    img = r.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return img, r.integers(0, 4, (h, w), dtype=np.uint8), f"im{seed}"


def test_view_is_v1_blocks_without_a_mixing_partner():
    view = UniMatchV2View(UniMatchV2ViewSettings(crop_size=17))
    assert view.streams == ("labeled", "unlabeled") and view.keys == BATCH_KEYS
    rng = lambda k: np.random.default_rng([7, k])  # noqa: E731
    loaded = [_loaded(0), (_loaded(1)[0], None, "u1")]
    out = view.sample(loaded, rng)
    assert set(out) == set(BATCH_KEYS)
    x, mx = labeled_view(loaded[0][0], loaded[0][1], 17, aug_rng(rng(0)))
    u = unlabeled_views(loaded[1][0], None, 17, aug_rng(rng(1)))
    lut3 = view.lut.reshape(256, 3)

    def chw(a):
        return lut3[a.astype(np.int64), np.arange(3)].transpose(2, 0, 1)

    assert np.array_equal(out["img"], chw(x)) and np.array_equal(out["gt"], mx.astype(np.int64))
    for key, src in (("img_u_w", "img_w"), ("img_u_s1", "img_s1"), ("img_u_s2", "img_s2")):
        assert np.array_equal(out[key], chw(u[src])) and out[key].dtype == np.float32
    assert np.array_equal(out["ignore_mask"], u["ignore_mask"].astype(np.int64))
    assert np.array_equal(out["cutmix_box1"], u["cutmix_box1"])
    assert np.array_equal(out["cutmix_box2"], u["cutmix_box2"])


def test_comp_drop_seeds_differ_per_iteration_and_rank_and_repeat(toy_root, tmp_path):
    C = finalize(_config(toy_root, tmp_path))
    a = UniMatchV2.from_config(C, per_rank_batch=2)
    b = UniMatchV2.from_config(C, per_rank_batch=2)
    b.rank = 1

    def draw(m, it):
        return torch.rand(4, generator=m.comp_drop_generator(StepInfo(0, it, 2, 2)))

    assert torch.equal(draw(a, 1), draw(a, 1))  # a resume draws what the run drew
    assert not torch.equal(draw(a, 0), draw(a, 1))
    assert not torch.equal(draw(a, 1), draw(b, 1))


def test_set_lr_is_the_official_after_step_poly(toy_root, tmp_path):
    C = finalize(_config(toy_root, tmp_path, "--niters_per_epoch=5", "--nepochs=2"))
    method = UniMatchV2.from_config(C, per_rank_batch=2)
    model = method.build_model(pretrained=False)
    (opt,) = method.build_optimizers(model)
    for it in range(10):
        lr = method.set_lr([opt], StepInfo(it // 5, it, 5, 10))
        assert lr == lr_for_step(it, C.lr, 10, 0.9) == opt.param_groups[0]["lr"]
        assert opt.param_groups[1]["lr"] == lr * C.unimatch_v2_lr_multi
    locked = UniMatchV2.from_config(
        finalize(_config(toy_root, tmp_path, "--unimatch_v2_lock_backbone=true")), per_rank_batch=2
    )
    model = locked.build_model(pretrained=False)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert locked.build_optimizers(model)[0].param_groups[0]["params"] == []


def test_method_state_needs_setup_and_its_own_keys(toy_root, tmp_path):
    method = UniMatchV2.from_config(finalize(_config(toy_root, tmp_path)), per_rank_batch=2)
    with pytest.raises(CheckpointError, match="setup"):
        method.state_dict()
    method.setup(method.build_model(pretrained=False))
    with pytest.raises(CheckpointError, match="teacher"):
        method.load_state_dict({"model_ema": {}})


def test_train_evaluation_scores_both_networks_and_keeps_the_best(toy_root, tmp_path):
    """The official end of an epoch: model and EMA model, best epochs in `method_state`,
    best.pth written when the student's mIoU is the best so far (`>=`)."""
    C = finalize(_config(toy_root, tmp_path), root=str(tmp_path))
    assert C.eval_protocol == "official" and C.eval_every == 1  # the method's defaults
    method = UniMatchV2.from_config(C, per_rank_batch=2)
    torch.manual_seed(0)
    model = method.build_model(pretrained=False).train()
    method.setup(model)
    with torch.no_grad():  # a teacher that predicts class 1 everywhere
        dict(method.teacher.named_parameters())["head.scratch.output_conv.2.bias"][1] = 1e3
    ctx = TrainEvalContext(
        C=C,
        epoch=4,
        iteration=10,
        device=torch.device("cpu"),
        log=logging.getLogger("test"),
        snapshot_dir=str(tmp_path),
    )
    out = method.train_evaluation(model, ctx)
    assert model.training and not method.teacher.training
    data = build_dataset(C, "val")
    want = evaluate_unimatch_v2(Multiple14(model.eval()), data, **unimatch_v2_eval_settings(C))
    want_ema = evaluate_unimatch_v2(
        Multiple14(method.teacher), data, **unimatch_v2_eval_settings(C)
    )
    assert out["miou"] == want["miou"] and out["miou_ema"] == want_ema["miou"]
    assert want_ema["hist"][:, 1].sum() == want_ema["hist"].sum() != want["hist"][:, 1].sum()
    assert out["is_best"] and method.state_dict()["best"]["best_epoch"] == 4
    best = load_checkpoint(tmp_path / "best.pth")
    assert best["epoch"] == 4 and best["previous_best"] == out["miou"]
    assert best["best_epoch_ema"] == 4 and best["previous_best_ema"] == out["miou_ema"]
    _equal_states(best["model"], model.state_dict())
    _equal_states(best["model_ema"], method.teacher.state_dict())
    # A worse student epoch keeps best.pth; an equal one replaces it (the official `>=`).
    (tmp_path / "best.pth").unlink()
    method.best.previous_best = out["miou"] + 1e-9
    assert not method.train_evaluation(model, dataclasses.replace(ctx, epoch=5))["is_best"]
    assert not (tmp_path / "best.pth").exists()
    method.best.previous_best = out["miou"]
    assert method.train_evaluation(model, dataclasses.replace(ctx, epoch=6))["is_best"]
    assert load_checkpoint(tmp_path / "best.pth")["epoch"] == 6
    # The project's evaluator asked for: the engine's evaluation runs (None).
    C.eval_protocol = "cpcl"
    assert method.train_evaluation(model, dataclasses.replace(ctx, C=C)) is None


# --- end to end: snapshots, exact resume, evaluation -------------------------------------


def _equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, dict):
            _equal_states(value, b[key])
        else:
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b[key])), key


@pytest.mark.slow
def test_train_snapshot_exact_resume_and_both_protocols(toy_root, tmp_path, monkeypatch, capsys):
    full = engine.fit(_config(toy_root, tmp_path / "full"), root=str(tmp_path))
    assert not full["interrupted"] and len(full["epochs"]) == 1
    logs = full["epochs"][0]
    assert set(logs) == {"loss", "loss_x", "loss_u_s1", "loss_u_s2", "loss_u_s", "mask_ratio"}
    assert logs["mask_ratio"] == 1.0 and logs["loss_u_s1"] > 0
    reference = load_checkpoint(Path(full["snapshot_dir"]) / "epoch-last.pth")
    assert set(reference["method_state"]) == {"teacher", "best"}
    assert len(reference["optimizer_1"]["param_groups"]) == 2
    # The teacher moved away from its initial copy but is not the student (ratio 0.5 at it 1).
    assert any(
        not torch.equal(v, reference["model"][k])
        for k, v in reference["method_state"]["teacher"].items()
    )

    # Stop after 1 of 2 iterations (mid-epoch), then resume from interrupted.pth.
    monkeypatch.setattr(engine.loop, "train_step", StopAfter(1))
    part = engine.fit(_config(toy_root, tmp_path / "split"), root=str(tmp_path))
    assert part["interrupted"]
    snap = Path(part["snapshot_dir"])
    assert (load_checkpoint(snap / "interrupted.pth")["next_iter"]) == 1
    monkeypatch.undo()
    resumed = engine.fit(
        _config(toy_root, tmp_path / "split"),
        root=str(tmp_path),
        resume=str(snap / "interrupted.pth"),
    )
    assert not resumed["interrupted"]
    final = load_checkpoint(snap / "epoch-last.pth")
    _equal_states(final["model"], reference["model"])  # bit-exact on the CPU
    _equal_states(final["method_state"]["teacher"], reference["method_state"]["teacher"])
    _equal_states(final["optimizer_1"]["state"], reference["optimizer_1"]["state"])

    # The evaluated network: logits at any input size; the student, or the EMA teacher.
    C = finalize(_config(toy_root, tmp_path / "full"), root=str(tmp_path))
    net = eval_net_from_checkpoint(C, reference)
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 30, 36)).shape == (1, 4, 30, 36)
    Ce = finalize(_config(toy_root, tmp_path / "full", "--unimatch_v2_eval_net=ema"))
    teacher = eval_net_from_checkpoint(Ce, reference).net
    _equal_states(teacher.state_dict(), reference["method_state"]["teacher"])

    # eval.py with both protocols, the official one in both of its modes.
    from cpcl.cli.evaluate import main as eval_main

    base = _config(toy_root, tmp_path / "full")
    runs = (
        ("--eval_protocol=cpcl", "cpcl: sliding windows"),
        ("--eval_protocol=official", "unimatch_v2 official: original"),
        ("--unimatch_v2_eval_mode=sliding_window", "unimatch_v2 official: sliding_window"),
    )
    for arg, label in runs:
        capsys.readouterr()
        extra = [arg] if "protocol" in arg else ["--eval_protocol=official", arg]
        rc = eval_main(base, ["-e", "last", "-d", "cpu", *extra], root=str(tmp_path))
        assert rc == 0
        assert f"protocol: {label}" in capsys.readouterr().out


# --- two processes (gloo): identical parameters, per-rank comp_drop ----------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, toy_root: str, out: str) -> None:
    from cpcl.data.loaders import build_train_loader

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    cdist.init_distributed("cpu", timeout_s=60)
    C = finalize(_config(Path(toy_root), Path(out), "--batch_size=4"), root=out)
    method = UniMatchV2.from_config(C, per_rank_batch=2)
    loader = build_train_loader(
        C,
        rank=rank,
        world_size=world,
        labeled=build_dataset(C, "labeled"),
        unlabeled=build_dataset(C, "unlabeled"),
        view=method.data_view(),
    )
    torch.manual_seed(100 + rank)  # different local init: the broadcast must make them equal
    model = method.build_model().train()
    cdist.broadcast_module(model)
    opts = method.build_optimizers(model)
    method.setup(model)
    loader.set_epoch(0)
    for it, batch in enumerate(loader):
        step = StepInfo(0, it, len(loader), len(loader))
        method.set_lr(opts, step)
        engine.train_step(
            model, opts, batch, method=method, step=step,
            grad_sync=lambda: cdist.allreduce_grads(model),
        )  # fmt: skip
    draws = torch.rand(8, generator=method.comp_drop_generator(StepInfo(0, 0, 2, 2)))
    torch.save(
        {
            "model": {k: v.detach().clone() for k, v in model.named_parameters()},
            "teacher": method.teacher.state_dict(),
            "draws": draws,
        },
        f"{out}/rank{rank}.pt",
    )
    cdist.cleanup()


@pytest.mark.slow
def test_ddp_two_processes_keep_student_and_teacher_identical(toy_root, tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(toy_root), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    _equal_states(r0["model"], r1["model"])  # the unused parameters' missing grads included
    _equal_states(r0["teacher"], r1["teacher"])
    assert not torch.equal(r0["draws"], r1["draws"])  # each rank its own comp_drop draws
