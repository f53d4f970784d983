"""The method registry, method defaults and their sources, per-method data views, the
generic train_step with a Method object, and evaluation networks from checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cpcl.methods.cps as cps_module
from cpcl.config import ConfigError, load_preset
from cpcl.data.loaders import build_train_loader
from cpcl.engine import train_step
from cpcl.engine.resolve import apply_overrides, config_sources, finalize
from cpcl.errors import CpclError
from cpcl.evaluate import BranchMean
from cpcl.methods import eval_net_from_checkpoint, get_method, method_names
from cpcl.methods.base import StepInfo


def _small_config(method: str = "cpcl", **kw):
    C = load_preset("voc")
    C.method = method
    C.backbone, C.num_classes = "resnet18", 4
    C.pretrained_model = None  # random weights: the shipped default names the ImageNet file
    C.image_height = C.image_width = 16
    C.batch_size, C.num_workers, C.nepochs = 2, 0, 2
    for k, v in kw.items():
        C[k] = v
    return finalize(C, root="/tmp", n_labeled=4, n_unlabeled=8)


def _view(C):
    """The data view of `C.method` (the caller hands it to the loader)."""
    return get_method(C.method).from_config(C, per_rank_batch=C.batch_size).data_view()


def test_registry_names_and_unknown_method_lists_choices():
    assert set(method_names()) >= {"sup", "cps", "cpcl"}
    for name in ("sup", "cps", "cpcl"):
        assert get_method(name).name == name
    with pytest.raises(CpclError, match=r"expected one of .*cpcl.*cps.*sup"):
        get_method("nope")
    with pytest.raises(ConfigError, match=r"C\.method = 'nope'"):
        apply_overrides(load_preset("voc"), ["--method=nope"])


def test_method_defaults_sit_between_preset_and_user_values(monkeypatch):
    preset = load_preset("voc")
    monkeypatch.setattr(
        cps_module.CPS, "defaults", {"voc": {"lr": preset.lr * 3, "nepochs": 7, "momentum": 0.5}}
    )
    monkeypatch.setattr(cps_module.CPS, "config_keys", {"cps_extra": 1.5})
    exp = load_preset("voc")
    exp.nepochs = preset.nepochs + 10  # the experiment config changed this key
    args = ["--method=cps", "--momentum=0.8", "--cps_extra=2.5"]
    C = apply_overrides(exp, args)
    assert C.lr == preset.lr * 3  # method default (exp config left the preset value)
    assert C.nepochs == preset.nepochs + 10  # experiment config wins over the method
    assert C.momentum == 0.8  # command line wins over everything
    assert C.cps_extra == 2.5  # the method's own key, settable on the command line
    src = config_sources(C, args)
    assert src["lr"] == "cps default"
    assert src["nepochs"] == "experiment config"
    assert src["momentum"] == "command line" and src["method"] == "command line"
    assert "weight_decay" not in src  # the preset's value
    # The CPCL preset is CPCL's official setting: no defaults of its own.
    assert apply_overrides(load_preset("voc"), []).lr == preset.lr


class _Images:
    """Decoded images; `reads` counts loads, `fail` makes every load an error."""

    def __init__(self, n: int, labeled: bool, fail: bool = False) -> None:
        self.n, self.labeled, self.fail, self.reads = n, labeled, fail, 0

    def __len__(self) -> int:
        return self.n

    def load(self, i: int):
        if self.fail:
            raise AssertionError("an unlabeled image was read")
        self.reads += 1
        rng = np.random.default_rng(i)
        img = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        return img, (np.full((20, 24), i % 4, np.uint8) if self.labeled else None), str(i)


def test_sup_view_reads_no_unlabeled_image_and_matches_the_cpcl_labeled_part():
    C = _small_config("sup")
    lab = _Images(4, True)
    loader = build_train_loader(
        C, view=_view(C), labeled=lab, unlabeled=_Images(8, False, fail=True)
    )
    loader.set_epoch(0)
    sup_batch = next(iter(loader))
    assert set(sup_batch) == {"img", "gt"} and lab.reads == 2
    C_cpcl = _small_config("cpcl")
    full = build_train_loader(
        C_cpcl, view=_view(C_cpcl), labeled=_Images(4, True), unlabeled=_Images(8, False)
    )
    full.set_epoch(0)
    cpcl_batch = next(iter(full))
    assert list(cpcl_batch) == ["img", "gt", "img_u0", "img_u1", "mask"]
    # Same seeds, same labeled stream: the labeled crops are identical.
    assert torch.equal(sup_batch["img"], cpcl_batch["img"])
    assert torch.equal(sup_batch["gt"], cpcl_batch["gt"])


def test_train_step_with_a_method_object_logs_the_method_terms():
    C = _small_config("cps")
    torch.manual_seed(0)
    method = get_method("cps").from_config(C, per_rank_batch=2)
    model = method.build_model().train()
    opts = method.build_optimizers(model)
    g = torch.Generator().manual_seed(0)
    batch = {
        "img": torch.randn(2, 3, 16, 16, generator=g),
        "gt": torch.randint(0, 4, (2, 16, 16), generator=g),
        "img_u0": torch.randn(2, 3, 16, 16, generator=g),
        "img_u1": torch.randn(2, 3, 16, 16, generator=g),
        "mask": (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float(),
    }
    lr = method.set_lr(opts, StepInfo(0, 0, 3, 6))
    assert lr == C.lr and all(gr["lr"] == lr for o in opts for gr in o.param_groups)
    out = train_step(model, opts, batch, None, method=method)
    assert list(out) == ["loss", "loss_sup_1", "loss_sup_2", "loss_unsup", "loss_cps", "overlap"]
    total = out["loss_sup_1"] + out["loss_sup_2"] + C.unsup_weight * out["loss_cps"]
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    with pytest.raises(CpclError, match="img_u0"):
        train_step(model, opts, {"img": batch["img"], "gt": batch["gt"]}, None, method=method)


@pytest.mark.parametrize("branch", ["1", "2", "avg"])
def test_eval_net_from_an_old_style_checkpoint(branch):
    C = _small_config("cpcl", eval_branch=branch)
    torch.manual_seed(1)
    model = get_method("cpcl").from_config(C, per_rank_batch=2).build_model().eval()
    ckpt = {"model": model.state_dict(), "optimizer_1": None, "epoch": 3}  # no method_state
    net = eval_net_from_checkpoint(C, ckpt)
    assert not net.training
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        got = net(x)
        b1, b2 = model.branch1(x), model.branch2(x)
    want = {"1": b1, "2": b2, "avg": (b1 + b2) / 2}[branch]
    assert got.shape == (1, 4, 16, 16)
    assert torch.equal(got, want)
    assert isinstance(net, BranchMean) == (branch == "avg")
    # The evaluator picks `.branch1` of a two-branch model: the mean must not offer one.
    assert not hasattr(net, "branch1")


def test_run_reads_only_the_split_lists_of_the_declared_streams(tmp_path):
    from cpcl.data.toy import make_toy_voc
    from cpcl.engine import resolve_run_config

    make_toy_voc(tmp_path, n_train=16, n_val=2, height=40, width=48, num_classes=4, seed=0)
    args = [f"--dataset_path={tmp_path}", "--labeled_ratio=4", "--num_classes=4"]
    C, sources = resolve_run_config(
        apply_overrides(load_preset("voc"), ["--method=sup", *args]), root=str(tmp_path)
    )
    # sup sizes its epoch by both lists (official baseline) but its view decodes labeled only.
    assert list(sources) == ["labeled", "unlabeled"]
    assert get_method("sup").from_config(C, per_rank_batch=2).data_view().streams == ("labeled",)
    assert C.max_samples == max(len(sources["labeled"]), len(sources["unlabeled"]))
    assert C.num_train_imgs == len(sources["labeled"])
    (tmp_path / "subset_train_aug" / "train_aug_unlabeled_1-4.txt").unlink()
    with pytest.raises(CpclError, match=r"train_aug_unlabeled_1-4\.txt"):
        resolve_run_config(
            apply_overrides(load_preset("voc"), ["--method=cpcl", *args]), root=str(tmp_path)
        )
