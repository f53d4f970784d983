"""UniMatch on the engine (`--method=unimatch`): registry, official defaults and their sources,
named config errors, the data view, exact mid-epoch resume, and two-process gloo DDP."""

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
from cpcl.errors import CpclError
from cpcl.methods import eval_net_from_checkpoint, get_method, method_names
from cpcl.methods.unimatch import UniMatch, unimatch_eval_settings
from cpcl.methods.unimatch.presets import UNIMATCH_PRESETS
from cpcl.methods.unimatch.step import BATCH_KEYS
from cpcl.methods.unimatch.views import (
    UniMatchView,
    UniMatchViewSettings,
    aug_rng,
    labeled_view,
    unimatch_normalize_lut,
    unlabeled_views,
)

TINY = [
    "--method=unimatch",
    "--backbone=resnet18",
    "--pretrained_model=None",
    "--batch_size=2",
    "--image_height=25",
    "--image_width=25",
    "--nepochs=1",
    "--niters_per_epoch=2",
    "--num_workers=0",
    "--snapshot_iter=1",
    "--num_classes=4",
    "--labeled_ratio=4",
    "--display_iter=1",
    "--device=cpu",
    "--unimatch_conf_thresh=0",  # every pixel confident: the unlabeled losses are active
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
    assert "unimatch" in method_names()
    assert get_method("unimatch") is UniMatch


@pytest.mark.parametrize(("dataset", "preset"), [("voc", "pascal"), ("cityscapes", "cityscapes")])
def test_official_settings_unless_overridden(dataset, preset):
    p = UNIMATCH_PRESETS[preset]
    C = apply_overrides(load_preset(dataset), ["--method=unimatch"])
    assert C.lr == p["lr"] and C.unimatch_lr_multi == p["lr_multi"]
    assert C.image_height == C.image_width == p["crop_size"]
    assert C.nepochs == p["epochs"] and C.batch_size == 4 * p["batch_size"]
    assert C.unimatch_conf_thresh == p["conf_thresh"] and C.backbone == p["backbone"]
    assert (C.momentum, C.weight_decay) == (p["momentum"], p["weight_decay"])
    assert tuple(C.unimatch_scale_range) == tuple(p["scale_range"])
    assert C.unimatch_mix_partner == "same" and C.unimatch_eval_mode == p["eval_mode"]
    if p["criterion"]["name"] == "OHEM":
        kw = p["criterion"]["kwargs"]
        assert C.sup_loss == "ohem" and C.ohem_thresh == kw["thresh"]
        assert C.ohem_min_kept_per_image * p["batch_size"] == kw["min_kept"]
        crit = UniMatch.from_config(finalize(C), per_rank_batch=p["batch_size"]).criterion_l
        assert crit.min_kept == kw["min_kept"] and crit.thresh == kw["thresh"]
        assert crit.weight is None
    else:
        assert C.sup_loss == "ce"
    sources = config_sources(C, ["--method=unimatch"])
    assert sources["image_height"] == "unimatch default" and sources["method"] == "command line"

    argv = ["--method=unimatch", "--lr=0.123", "--unimatch_conf_thresh=0.5"]
    C = apply_overrides(load_preset(dataset), argv)
    assert C.lr == 0.123 and C.unimatch_conf_thresh == 0.5 and C.nepochs == p["epochs"]
    assert config_sources(C, argv)["lr"] == "command line"


@pytest.mark.parametrize("dataset", ["voc", "cityscapes"])
def test_channels_last_is_the_speed_default_unless_overridden(dataset):
    """UniMatch trains channels-last by default (it pays there); CPCL keeps NCHW; the
    command line wins."""
    assert apply_overrides(load_preset(dataset), ["--method=unimatch"]).channels_last is True
    assert apply_overrides(load_preset(dataset), ["--method=cpcl"]).channels_last is False
    argv = ["--method=unimatch", "--channels_last=false"]
    assert apply_overrides(load_preset(dataset), argv).channels_last is False


@pytest.mark.parametrize(
    ("arg", "key"),
    [
        ("--unimatch_conf_thresh=1.5", "unimatch_conf_thresh"),
        ("--unimatch_conf_thresh=-0.1", "unimatch_conf_thresh"),
        ("--unimatch_lr_multi=0", "unimatch_lr_multi"),
        ("--unimatch_mix_partner=other", "unimatch_mix_partner"),
        ("--unimatch_eval_mode=tiles", "unimatch_eval_mode"),
        ("--unimatch_scale_range=2,1", "unimatch_scale_range"),
        ("--image_width=40", "image_width"),
        ("--warm_up_epoch=1", "warm_up_epoch"),
    ],
)
def test_bad_settings_are_named(arg, key):
    with pytest.raises(ConfigError, match=key):
        apply_overrides(load_preset("voc"), ["--method=unimatch", arg])


def test_eval_settings_select_the_protocol():
    C = apply_overrides(load_preset("voc"), ["--method=unimatch"])
    assert unimatch_eval_settings(C)["mode"] == UNIMATCH_PRESETS["pascal"]["eval_mode"]
    C = apply_overrides(load_preset("cityscapes"), ["--method=unimatch"])
    s = unimatch_eval_settings(C)
    assert s["mode"] == UNIMATCH_PRESETS["cityscapes"]["eval_mode"]
    assert s["crop_size"] == C.image_height
    # The value that meant the project's evaluator before --eval_protocol points there.
    with pytest.raises(ConfigError, match="eval_protocol=cpcl"):
        apply_overrides(C, ["--unimatch_eval_mode=evaluator"])


# --- data view --------------------------------------------------------------------------


def _loaded(seed: int, h: int = 30, w: int = 36):
    r = np.random.default_rng(seed)
    img = r.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return img, r.integers(0, 4, (h, w), dtype=np.uint8), f"im{seed}"


def _rng_for(seed: int):
    return lambda k: np.random.default_rng([seed, k])


@pytest.mark.parametrize("partner", ["same", "different"])
def test_view_is_the_official_blocks_in_order(partner):
    view = UniMatchView(UniMatchViewSettings(crop_size=17, partner=partner))
    assert view.streams == (("labeled", "unlabeled") if partner == "same" else
                            ("labeled", "unlabeled", "unlabeled"))  # fmt: skip
    loaded = [_loaded(0), (_loaded(1)[0], None, "u1"), (_loaded(2)[0], None, "u2")]
    out = view.sample(loaded[: len(view.streams)], _rng_for(7))
    assert set(out) == set(view.keys)
    assert {("img_x" if k == "img" else "mask_x" if k == "gt" else k) for k in out} == set(
        BATCH_KEYS
    )
    x, mx = labeled_view(loaded[0][0], loaded[0][1], 17, aug_rng(_rng_for(7)(0)))
    u = unlabeled_views(loaded[1][0], None, 17, aug_rng(_rng_for(7)(1)))
    m = unlabeled_views(loaded[1 if partner == "same" else 2][0], None, 17, aug_rng(_rng_for(7)(2)))
    lut3 = unimatch_normalize_lut()

    def chw(a):
        return lut3[a.astype(np.int64), np.arange(3)].transpose(2, 0, 1)

    assert np.array_equal(out["img"], chw(x)) and out["img"].dtype == np.float32
    assert np.array_equal(out["gt"], mx.astype(np.int64)) and out["gt"].dtype == np.int64
    for suffix, views in (("", u), ("_mix", m)):
        assert np.array_equal(out[f"img_u_w{suffix}"], chw(views["img_w"]))
        assert np.array_equal(out[f"img_u_s1{suffix}"], chw(views["img_s1"]))
        assert np.array_equal(out[f"img_u_s2{suffix}"], chw(views["img_s2"]))
        assert np.array_equal(out[f"ignore_mask{suffix}"], views["ignore_mask"].astype(np.int64))
    assert np.array_equal(out["cutmix_box1"], u["cutmix_box1"])
    assert np.array_equal(out["cutmix_box2"], u["cutmix_box2"])
    # The partner is augmented independently of the sample itself.
    assert not np.array_equal(out["img_u_w"], out["img_u_w_mix"])


def test_view_rejects_bad_partner():
    with pytest.raises(CpclError, match="partner"):
        UniMatchViewSettings(crop_size=17, partner="other")


# --- end to end: snapshots, exact resume, evaluation -------------------------------------


@pytest.mark.slow
def test_train_snapshot_and_exact_mid_epoch_resume(toy_root, tmp_path, monkeypatch):
    full = engine.fit(_config(toy_root, tmp_path / "full"), root=str(tmp_path))
    assert not full["interrupted"] and len(full["epochs"]) == 1
    logs = full["epochs"][0]
    assert set(logs) == {"loss", "loss_x", "loss_u_s1", "loss_u_s2", "loss_u_w_fp", "mask_ratio"}
    assert logs["mask_ratio"] == 1.0 and logs["loss_u_s1"] > 0 and logs["loss_u_w_fp"] > 0
    reference = load_checkpoint(Path(full["snapshot_dir"]) / "epoch-last.pth")
    assert set(reference) >= {"model", "optimizer_1"} and "optimizer_2" not in reference
    assert len(reference["optimizer_1"]["param_groups"]) == 2

    # Stop after 1 of 2 iterations (mid-epoch), then resume from interrupted.pth.
    monkeypatch.setattr(engine.loop, "train_step", StopAfter(1))
    part = engine.fit(_config(toy_root, tmp_path / "split"), root=str(tmp_path))
    assert part["interrupted"]
    snap = Path(part["snapshot_dir"])
    state = load_checkpoint(snap / "interrupted.pth")
    assert (state["next_epoch"], state["next_iter"]) == (0, 1)
    monkeypatch.undo()
    resumed = engine.fit(
        _config(toy_root, tmp_path / "split"),
        root=str(tmp_path),
        resume=str(snap / "interrupted.pth"),
    )
    assert not resumed["interrupted"]
    final = load_checkpoint(snap / "epoch-last.pth")
    for part_name in ("model", "optimizer_1"):
        assert final[part_name].keys() == reference[part_name].keys()
    for key, value in reference["model"].items():
        assert torch.equal(final["model"][key], value), key  # bit-exact on CPU
    lrs = [g["lr"] for g in final["optimizer_1"]["param_groups"]]
    assert lrs == [g["lr"] for g in reference["optimizer_1"]["param_groups"]]

    # The evaluated network is the UniMatch network itself: logits at the input size.
    C = finalize(_config(toy_root, tmp_path / "full"), root=str(tmp_path))
    net = eval_net_from_checkpoint(C, reference)
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 30, 36)).shape == (1, 4, 30, 36)


# --- two processes (gloo): identical parameters ------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, toy_root: str, out: str) -> None:
    from cpcl.data.datasets import build_dataset
    from cpcl.data.loaders import build_train_loader
    from cpcl.methods import StepInfo

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    cdist.init_distributed("cpu", timeout_s=60)
    C = finalize(_config(Path(toy_root), Path(out), "--batch_size=4"), root=out)
    method = UniMatch.from_config(C, per_rank_batch=2)
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
    loader.set_epoch(0)
    for it, batch in enumerate(loader):
        step = StepInfo(0, it, len(loader), len(loader))
        method.set_lr(opts, step)
        engine.train_step(
            model, opts, batch, method=method, step=step,
            grad_sync=lambda: cdist.allreduce_grads(model),
        )  # fmt: skip
        torch.save(batch["img"], f"{out}/batch{rank}_{it}.pt")
    torch.save({k: v.detach().clone() for k, v in model.named_parameters()}, f"{out}/rank{rank}.pt")
    cdist.cleanup()


@pytest.mark.slow
def test_ddp_two_processes_keep_parameters_identical(toy_root, tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(toy_root), str(tmp_path)), nprocs=2, join=True)
    p0, p1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert list(p0) == list(p1)
    for key in p0:
        assert torch.equal(p0[key], p1[key]), key
    # Each rank trained on its own shard, and the weights moved from the broadcast init.
    assert not torch.equal(
        torch.load(tmp_path / "batch0_0.pt"), torch.load(tmp_path / "batch1_0.pt")
    )
    torch.manual_seed(100)
    init = dict(UniMatch.from_config(
        finalize(_config(toy_root, tmp_path)), per_rank_batch=2).build_model().named_parameters())  # fmt: skip
    assert sum(not torch.equal(p0[k], init[k]) for k in p0) > 0.9 * len(p0)


def test_set_lr_is_the_official_after_step_poly():
    from cpcl.methods import StepInfo
    from cpcl.methods.unimatch.optim import lr_for_step

    args = ["--method=unimatch", "--backbone=resnet18", "--niters_per_epoch=5", "--nepochs=2"]
    C = finalize(apply_overrides(load_preset("voc"), args))
    method = UniMatch.from_config(C, per_rank_batch=2)
    model = method.build_model(pretrained=False)
    (opt,) = method.build_optimizers(model)
    backbone = {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in opt.param_groups[0]["params"]} == backbone
    assert all(id(p) not in backbone for p in opt.param_groups[1]["params"])
    for it in range(10):
        lr = method.set_lr([opt], StepInfo(it // 5, it, 5, 10))
        assert lr == lr_for_step(it, C.lr, 10, C.lr_power)
        assert opt.param_groups[0]["lr"] == lr
        assert opt.param_groups[1]["lr"] == lr * C.unimatch_lr_multi


def test_evaluate_unimatch_protocols_on_a_pointwise_net():
    from cpcl.methods.unimatch.eval import evaluate_unimatch
    from cpcl.metrics import confusion_matrix, scores_all_classes

    class _Data:
        def __init__(self) -> None:
            self.items = [(*_loaded(s, 20, 26)[:2], f"v{s}") for s in range(2)]

        def __len__(self) -> int:
            return len(self.items)

        def load(self, i: int):
            return self.items[i]

    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 4, 1).eval()  # per pixel: windows cannot change the argmax
    data = _Data()
    whole = evaluate_unimatch(net, data, num_classes=4, mode="original")
    windows = evaluate_unimatch(net, data, num_classes=4, mode="sliding_window", crop_size=9)
    assert np.array_equal(whole["iou"], windows["iou"], equal_nan=True)
    lut = unimatch_normalize_lut()
    hist = sum(
        confusion_matrix(
            net(
                torch.from_numpy(lut[img.astype(np.int64), np.arange(3)].transpose(2, 0, 1))[None]
            ).argmax(1)[0],
            torch.from_numpy(gt).long(),
            4,
        )
        for img, gt, _ in data.items
    )
    assert whole["miou"] == scores_all_classes(hist)["miou"]
    assert torch.equal(whole["hist"], hist)
