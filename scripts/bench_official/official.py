"""The official training iterations of CPCL, U2PL and UniMatch, run from their own files.

Bench only (never imported by the package). Each runner builds the official network from the
official repository (`spec.root`), loads the name-seeded deterministic weights, then times the
official loop body, read from the official training script by line range and `exec`-uted on
the inputs (as the golden fixtures were made, /work/shared/golden/README.md). Only setup that
the loop body needs is written here (optimisers, schedulers, memory banks as the official
`main()` builds them); everything inside one iteration is the official text.

Single process, as the golden fixtures: `.cuda()` (Tensor and Module) moves to the chosen
device, `torch.distributed` calls inside the body are the identity (all_reduce, barrier,
all_gather of one rank), no DDP wrapper (our side runs without DDP too). Imported but never
called in one iteration: `skimage` (U2PL utils) and `tensorboardX` are stubbed. CPCL calls
sklearn's `confusion_matrix` every iteration: it must be importable (see README.md).
"""

from __future__ import annotations

import os
import sys
import textwrap
import types
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

# Official line ranges (1-based, inclusive) at the commits named in README.md.
CPCL_BODY = [(127, 128), (143, 219), (221, 230)]  # zero_grad; inputs .. optimizer_2.step(); log
U2PL_BODY = [(277, 277), (279, 279), (282, 283), (286, 561)]  # lr sched; inputs .. loss meters
UNIMATCH_BODY = [(127, 203), (205, 208)]  # inputs .. loss meters; lr


@dataclass(frozen=True)
class OfficialSpec:
    """One official side (picklable)."""

    method: str
    root: str  # the official repository checkout
    backbone: str
    crop: int
    batch: int
    device: str
    threads: int
    seed: int
    det_dir: str
    extra_path: str | None = None  # appended to sys.path (e.g. a folder holding sklearn)
    num_classes: int = 21


def body_code(path: str, ranges: list[tuple[int, int]]) -> Any:
    """The official lines `ranges` of `path`, dedented and compiled (file name kept)."""
    with open(path) as f:
        lines = f.read().splitlines()
    if max(b for _, b in ranges) > len(lines):
        raise ValueError(f"{path} has {len(lines)} lines; ranges {ranges} do not fit")
    text = "\n".join(line for a, b in ranges for line in lines[a - 1 : b])
    # Each range starts at loop-body indentation; one dedent of the joined text is exact.
    return compile(textwrap.dedent(text), f"{path}:{ranges}", "exec")


def map_cuda(device: torch.device) -> None:
    """`.cuda()` of tensors and modules moves to `device` (this process only)."""

    def tensor_cuda(self, device_arg=None, non_blocking=False, **_kw):
        return self.to(device, non_blocking=non_blocking)

    def module_cuda(self, device_arg=None):
        return self.to(device)

    torch.Tensor.cuda = tensor_cuda
    nn.Module.cuda = module_cuda


def single_process_dist() -> None:
    """torch.distributed calls of the loop bodies behave as for one rank."""
    import torch.distributed as dist

    dist.all_reduce = lambda t, *a, **k: None
    dist.barrier = lambda *a, **k: None
    dist.get_world_size = lambda *a, **k: 1
    dist.get_rank = lambda *a, **k: 0

    def all_gather_object(out, obj, *a, **k):
        out[0] = obj

    dist.all_gather_object = all_gather_object


def stub_modules(names: list[str]) -> None:
    """Empty modules for packages the official files import but one iteration never calls."""
    for name in names:
        try:
            __import__(name)
        except ImportError:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                sub = ".".join(parts[:i])
                mod = sys.modules.setdefault(sub, types.ModuleType(sub))
                mod.__getattr__ = _missing(sub)


def _missing(module: str):
    def getattr_(attr: str):
        if attr.startswith("__"):  # inspect / importlib probe dunders: plain module behaviour
            raise AttributeError(attr)

        def never(*_a, **_k):
            raise RuntimeError(f"bench stub: {module}.{attr} was called")

        return never

    return getattr_


def det_load(model: nn.Module, det_dir: str) -> None:
    """Name-seeded weights for every key of `model` (same helper as our side)."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from bench_train import load_det_weights

    load_det_weights(model, det_dir)


def batch_for(spec: OfficialSpec, keys: tuple[str, ...], device: torch.device) -> dict:
    """The same synthetic batch as our side (bench_train.synthetic_batch), on `device`."""
    from bench_train import Spec, synthetic_batch

    ours = Spec(
        spec.method, spec.backbone, "voc", spec.crop, spec.batch, "none", False, False,
        spec.device, spec.threads, spec.seed,
    )  # fmt: skip
    return {k: v.to(device) for k, v in synthetic_batch(keys, ours, spec.num_classes).items()}


class _Base:
    """Common process setup; subclasses fill `self.ns` (exec namespace) and `self.code`."""

    def __init__(self, spec: OfficialSpec) -> None:
        if spec.threads:
            torch.set_num_threads(spec.threads)
        if spec.extra_path:
            sys.path.append(spec.extra_path)
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.spec, self.device = spec, torch.device(spec.device)
        map_cuda(self.device)
        single_process_dist()
        torch.manual_seed(spec.seed)
        np.random.seed(spec.seed)
        self.ns: dict[str, Any] = {}
        self.code: Any = None
        self.loss_name = "loss"

    def fresh_inputs(self) -> None:
        """Per-iteration inputs (default: reuse; UniMatch pastes into its inputs in place)."""

    def step(self) -> None:
        """One official iteration."""
        self.fresh_inputs()
        exec(self.code, self.ns)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def info(self) -> dict[str, Any]:
        """The last loss."""
        loss = self.ns.get(self.loss_name)
        out = {"final_loss": round(float(loss.detach()), 4) if loss is not None else None}
        if self.device.type == "cuda":
            out["peak_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return out


class CPCLOfficial(_Base):
    """exp_voc/train.py: two-branch network, group_weight SGD, WarmUpPolyLR, loop body."""

    def __init__(self, spec: OfficialSpec) -> None:
        super().__init__(spec)
        exp = os.path.join(spec.root, "exp_voc")
        sys.path[:0] = [exp, os.path.join(spec.root, "furnace")]
        # config.py derives its root from the working directory (it must contain "CPCL"),
        # as when train.py runs from exp_voc/.
        os.chdir(exp)
        import network as official_network
        from config import config
        from engine.lr_policy import WarmUpPolyLR
        from sklearn.metrics import confusion_matrix  # called every iteration
        from utils.init_func import group_weight

        if spec.backbone != "resnet50":
            from base_model import resnet as furnace_resnet

            official_network.resnet50 = getattr(furnace_resnet, spec.backbone)
        criterion = nn.CrossEntropyLoss(reduction="mean", ignore_index=255)
        model = official_network.Network(
            spec.num_classes, criterion=criterion, pretrained_model=None, norm_layer=nn.BatchNorm2d
        )
        det_load(model, spec.det_dir)
        model.to(self.device).train()
        opts = []
        for branch in (model.branch1, model.branch2):  # train.py:78-89
            params: list = group_weight([], branch.backbone, nn.BatchNorm2d, config.lr)
            for module in branch.business_layer:
                params = group_weight(params, module, nn.BatchNorm2d, config.lr)
            opts.append(
                torch.optim.SGD(
                    params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
                )
            )
        total = config.nepochs * config.niters_per_epoch
        b = batch_for(spec, ("img", "gt", "img_u0", "img_u1", "mask"), self.device)
        import torch.nn.functional as F

        self.ns = {
            "torch": torch, "F": F, "np": np, "config": config, "model": model,
            "optimizer_1": opts[0], "optimizer_2": opts[1], "criterion": criterion,
            "criterion_unsup": nn.CrossEntropyLoss(reduction="none", ignore_index=255),
            "confusion_matrix": confusion_matrix, "label": list(range(21)),
            "lr_policy": WarmUpPolyLR(
                config.lr, config.lr_power, total, config.niters_per_epoch * config.warm_up_epoch
            ),
            "epoch": 2, "idx": 1,
            "imgs": b["img"], "gts": b["gt"], "unsup_imgs_0": b["img_u0"],
            "unsup_imgs_1": b["img_u1"], "mask_params": b["mask"],
        }  # fmt: skip
        self.code = body_code(os.path.join(exp, "train.py"), CPCL_BODY)


class _Loader:
    """Stands in for a DataLoader where the loop body only asks for its length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class U2PLOfficial(_Base):
    """train_semi.py `train()`: ModelBuilder student + teacher, memory banks, loop body."""

    def __init__(self, spec: OfficialSpec) -> None:
        super().__init__(spec)
        stub_modules(["skimage.measure", "tensorboardX"])
        sys.path.insert(0, spec.root)
        import yaml
        from u2pl.dataset.augmentation import generate_unsup_data
        from u2pl.models.model_helper import ModelBuilder
        from u2pl.utils.loss_helper import (
            compute_contra_memobank_loss,
            compute_unsupervised_loss,
            get_criterion,
        )
        from u2pl.utils.lr_helper import get_optimizer, get_scheduler
        from u2pl.utils.utils import AverageMeter, label_onehot

        path = os.path.join(spec.root, "experiments", "pascal", "1464", "ours", "config.yaml")
        with open(path) as f:
            cfg = yaml.load(f, Loader=yaml.Loader)
        enc = cfg["net"]["encoder"]
        enc["type"] = f"u2pl.models.resnet.{spec.backbone}"
        enc["kwargs"]["pretrained"] = False  # no ImageNet file: det weights below
        cfg["net"]["num_classes"] = spec.num_classes

        def build() -> nn.Module:
            import copy

            net = ModelBuilder(copy.deepcopy(cfg["net"]))
            return torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)

        model, teacher = build(), build()
        det_load(model, spec.det_dir)
        det_load(teacher, spec.det_dir)
        model.to(self.device).train()
        teacher.to(self.device)
        for p in teacher.parameters():
            p.requires_grad = False
        lr = cfg["trainer"]["optimizer"]["kwargs"]["lr"]
        params = [dict(params=model.encoder.parameters(), lr=lr)]
        params.append(dict(params=model.decoder.parameters(), lr=lr * 10))  # pascal: times 10
        optimizer = get_optimizer(params, cfg["trainer"]["optimizer"])
        n_iter = 100
        epoch = 2  # past sup_only_epoch (1) and the teacher copy: EMA phase
        scheduler = get_scheduler(cfg["trainer"], n_iter, optimizer, start_epoch=epoch)
        nc = spec.num_classes
        memobank = [[torch.zeros(0, 256)] for _ in range(nc)]  # train_semi.py:162-169
        queue_size = [30000] * nc
        queue_size[0] = 50000
        queue_ptrlis = [torch.zeros(1, dtype=torch.long) for _ in range(nc)]
        b = batch_for(spec, ("img", "gt", "img_u"), self.device)
        import torch.distributed as dist
        import torch.nn.functional as F

        self.ns = {
            "torch": torch, "F": F, "np": np, "dist": dist, "cfg": cfg, "model": model,
            "model_teacher": teacher, "optimizer": optimizer, "lr_scheduler": scheduler,
            "sup_loss_fn": get_criterion(cfg), "epoch": epoch, "step": 1,
            "i_iter": epoch * n_iter + 1, "loader_l": _Loader(n_iter),
            "memobank": memobank, "queue_ptrlis": queue_ptrlis, "queue_size": queue_size,
            "prototype": None, "world_size": 1, "ema_decay_origin": cfg["net"]["ema_decay"],
            "generate_unsup_data": generate_unsup_data, "label_onehot": label_onehot,
            "compute_unsupervised_loss": compute_unsupervised_loss,
            "compute_contra_memobank_loss": compute_contra_memobank_loss,
            "learning_rates": AverageMeter(10), "sup_losses": AverageMeter(10),
            "uns_losses": AverageMeter(10), "con_losses": AverageMeter(10),
            "image_l": b["img"], "label_l": b["gt"], "image_u": b["img_u"],
        }  # fmt: skip
        self.code = body_code(os.path.join(spec.root, "train_semi.py"), U2PL_BODY)


class UniMatchOfficial(_Base):
    """unimatch.py `main()`: DeepLabV3Plus, two-group SGD, loop body."""

    KEYS = (
        "img", "gt", "img_u_w", "img_u_s1", "img_u_s2", "ignore_mask", "cutmix_box1",
        "cutmix_box2", "img_u_w_mix", "img_u_s1_mix", "img_u_s2_mix", "ignore_mask_mix",
    )  # fmt: skip

    def __init__(self, spec: OfficialSpec) -> None:
        super().__init__(spec)
        sys.path.insert(0, spec.root)
        import yaml
        from model.semseg.deeplabv3plus import DeepLabV3Plus
        from util.utils import AverageMeter

        with open(os.path.join(spec.root, "configs", "pascal.yaml")) as f:
            cfg = yaml.load(f, Loader=yaml.Loader)
        cfg["backbone"], cfg["nclass"] = spec.backbone, spec.num_classes
        load = torch.load
        torch.load = lambda *a, **k: {}  # pretrained=True is hard-coded: no ImageNet file
        try:
            model = DeepLabV3Plus(cfg)
        finally:
            torch.load = load
        det_load(model, spec.det_dir)
        model.to(self.device).train()
        optimizer = torch.optim.SGD(  # unimatch.py:54-56
            [
                {"params": model.backbone.parameters(), "lr": cfg["lr"]},
                {
                    "params": [p for n, p in model.named_parameters() if "backbone" not in n],
                    "lr": cfg["lr"] * cfg["lr_multi"],
                },
            ],
            lr=cfg["lr"],
            momentum=0.9,
            weight_decay=1e-4,
        )
        self.inputs = batch_for(spec, self.KEYS, self.device)
        self.ns = {
            "torch": torch, "cfg": cfg, "model": model, "optimizer": optimizer,
            "criterion_l": nn.CrossEntropyLoss(**cfg["criterion"]["kwargs"]),
            "criterion_u": nn.CrossEntropyLoss(reduction="none"),
            "epoch": 2, "i": 1, "trainloader_u": _Loader(100), "total_iters": 100 * cfg["epochs"],
            "total_loss": AverageMeter(), "total_loss_x": AverageMeter(),
            "total_loss_s": AverageMeter(), "total_loss_w_fp": AverageMeter(),
            "total_mask_ratio": AverageMeter(),
        }  # fmt: skip
        self.code = body_code(os.path.join(spec.root, "unimatch.py"), UNIMATCH_BODY)

    def fresh_inputs(self) -> None:
        """The loop body pastes the mix partner into img_u_s1/s2 in place: fresh copies."""
        ns = self.ns
        for k, v in self.inputs.items():
            name = {"img": "img_x", "gt": "mask_x"}.get(k, k)
            ns[name] = v.clone() if k.startswith("img_u_s") else v


RUNNERS = {"cpcl": CPCLOfficial, "u2pl": U2PLOfficial, "unimatch": UniMatchOfficial}


def make_official(spec: OfficialSpec) -> _Base:
    """Worker factory (module level so that it pickles into a spawned process)."""
    return RUNNERS[spec.method](spec)
