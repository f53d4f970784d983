"""Benchmark one full training iteration (`cpcl.engine.train_step`) per method on synthetic data.

Prints a table and one JSON line, e.g.::

    python scripts/bench_train.py --method cpcl u2pl unimatch --amp none bf16 --rounds 3
    python scripts/bench_train.py --method unimatch_v2 --backbone preset --crop 126

Every method is built as training builds it: `get_method(name).from_config(C,
per_rank_batch=batch)` on the VOC (or Cityscapes) preset with the method's official settings,
then `build_model` (no ImageNet file), `setup`, `build_optimizers`, and each iteration is
`train_step(model, optimizers, batch, method=method, step=...)` (the method's own lr
schedule is not run: the lr does not change the cost). The step is one of the steady state
(U2PL: past its supervised-only and teacher-copy epochs, so the EMA teacher, the memory bank and
the contrastive loss all run).

Each setting (method x amp x channels-last x compile) runs in its own process, so that the
peak memory is its own (CPU: peak resident set size of that process, model building included;
CUDA: max allocated). Settings of one method are interleaved round by round (see
`bench_rounds.py`): ms/iteration is the median over every timed iteration, the spread is the
min..max of the per-round medians, and ratios (e.g. bf16 vs float32) are the medians of
per-round ratios. Images/s counts labelled images (`batch / median`); each iteration also reads
`batch` unlabelled samples (CPS/CPCL: two images each).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_rounds import (
    format_rows,
    paired_ratio,
    peak_column,
    ratio_column,
    run_interleaved,
    summarize,
)

from cpcl.methods import method_names

# DINOv2 encoders are UniMatch V2's (crop a multiple of 14, e.g. --crop 126).
BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "dinov2_toy",
    "dinov2_small",
    "dinov2_base",
    "dinov2_large",
    "preset",
)
AMPS = ("none", "bf16", "fp16")
ON_OFF = ("off", "on")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (the method choices come from the registry)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--method", nargs="+", default=["cpcl"], choices=method_names())
    p.add_argument(
        "--backbone",
        default="resnet50",
        choices=BACKBONES,
        help="preset: the method's official backbone (U2PL/UniMatch: resnet101, UniMatch V2: "
        "dinov2_small)",
    )
    p.add_argument("--dataset", default="voc", choices=("voc", "cityscapes"))
    p.add_argument("--crop", type=int, default=128, help="square crop size")
    p.add_argument("--batch", type=int, default=2, help="labelled (and unlabelled) batch size")
    p.add_argument("--amp", nargs="+", default=["none"], choices=AMPS)
    p.add_argument("--channels-last", nargs="+", default=["off"], choices=ON_OFF)
    p.add_argument("--compile", nargs="+", default=["off"], choices=ON_OFF)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--iters", type=int, default=2, help="timed iterations per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides as train.py takes them, e.g. --set fused_teacher=true sup_loss=ohem",
    )
    args = p.parse_args(argv)
    bad = [kv for kv in args.set if "=" not in kv or kv.startswith("-")]
    if bad:
        p.error(f"--set {bad}: expected KEY=VALUE items")
    if args.rounds < 1 or args.iters < 1 or args.warmup < 0:
        p.error("--rounds and --iters must be >= 1, --warmup >= 0")
    if args.crop < 32 or args.batch < 1:
        p.error(f"--crop {args.crop} / --batch {args.batch}: expected crop >= 32, batch >= 1")
    return args


@dataclass(frozen=True)
class Spec:
    """One timed setting (picklable: it crosses into the worker process)."""

    method: str
    backbone: str
    dataset: str
    crop: int
    batch: int
    amp: str
    channels_last: bool
    compile: bool
    device: str
    threads: int
    seed: int
    # Folder of the golden `det_weights.py`: name-seeded weights (as the official side of
    # scripts/bench_official gets them); None: the method's own initialisation.
    det_dir: str | None = None
    overrides: tuple[str, ...] = ()  # KEY=VALUE config overrides (--set)

    @property
    def label(self) -> str:
        """Short name for tables: `cpcl bf16 cl` etc."""
        parts = [self.method, "fp32" if self.amp == "none" else self.amp]
        if self.channels_last:
            parts.append("cl")
        if self.compile:
            parts.append("compiled")
        return " ".join(parts)


def specs_from_args(args: argparse.Namespace) -> list[list[Spec]]:
    """The settings to time, grouped by method (each group is interleaved)."""
    groups = []
    for method in args.method:
        group = [
            Spec(
                method,
                args.backbone,
                args.dataset,
                args.crop,
                args.batch,
                amp,
                cl == "on",
                comp == "on",
                args.device,
                args.threads,
                args.seed,
                overrides=tuple(args.set),
            )
            for comp in args.compile
            for cl in args.channels_last
            for amp in args.amp
        ]
        groups.append(group)
    return groups


def build_config(spec: Spec) -> Any:
    """A finalized config of `spec.method` with the method's official settings."""
    from cpcl.config import load_preset
    from cpcl.engine.resolve import apply_overrides, finalize

    argv = [
        f"--method={spec.method}",
        "--pretrained_model=None",
        f"--batch_size={spec.batch}",
        f"--image_height={spec.crop}",
        f"--image_width={spec.crop}",
        "--num_workers=0",
        f"--device={spec.device}",
    ]
    if spec.backbone != "preset":
        argv.append(f"--backbone={spec.backbone}")
    argv += [f"--{kv}" for kv in spec.overrides]
    return finalize(apply_overrides(load_preset(spec.dataset), argv))


def synthetic_batch(keys: tuple[str, ...], spec: Spec, num_classes: int) -> dict:
    """Synthetic tensors for the batch keys of a method (images N(0,1), labels with 10%
    ignore pixels, a centred CutMix box; CoSA: weak/strong views, image-level labels with
    one to three classes, the whole crop as the valid box), on the CPU."""
    g = torch.Generator().manual_seed(spec.seed)
    b, s = spec.batch, spec.crop
    q = s // 4
    box = torch.zeros(b, s, s)
    box[:, q : 3 * q, q : 3 * q] = 1
    out = {}
    for key in keys:
        if key == "img_box":  # (y0, y1, x0, x1) of the valid (unpadded) area
            out[key] = torch.tensor([[0, s, 0, s]] * b)
        elif key.startswith("img") or key in ("wimg", "simg"):
            out[key] = torch.randn(b, 3, s, s, generator=g)
        elif key == "cls_label":  # foreground classes present in each image
            labels = torch.zeros(b, num_classes - 1)
            for i in range(b):
                labels[i, torch.randperm(num_classes - 1, generator=g)[: 1 + i % 3]] = 1
            out[key] = labels
        elif key == "img_box":  # (y0, y1, x0, x1) of the valid (unpadded) area
            out[key] = torch.tensor([[0, s, 0, s]] * b)
        elif key == "gt":
            gt = torch.randint(0, num_classes, (b, s, s), generator=g)
            gt[torch.rand(b, s, s, generator=g) < 0.1] = 255
            out[key] = gt
        elif key.startswith("ignore_mask"):
            out[key] = torch.zeros(b, s, s, dtype=torch.int64)
        elif key.startswith("cutmix_box"):
            out[key] = box.clone()
        elif key == "mask":
            out[key] = box.unsqueeze(1).clone()
        else:
            raise ValueError(f"bench_train: no synthetic recipe for batch key {key!r}")
    return out


def load_det_weights(model: torch.nn.Module, det_dir: str) -> int:
    """Overwrite every tensor of `model`'s state dict with the name-seeded deterministic
    weights of `det_dir/det_weights.py` (same key -> same tensor on every side); returns the
    number of keys."""
    if det_dir not in sys.path:
        sys.path.insert(0, det_dir)
    from det_weights import det_state_dict

    sd = model.state_dict()
    keys = [[k, list(v.shape), str(v.dtype)] for k, v in sd.items()]
    model.load_state_dict(det_state_dict(keys))
    return len(keys)


def steady_step(C: Any) -> Any:
    """A StepInfo in the middle of training, past any supervised-only / copy epochs."""
    from cpcl.methods import StepInfo

    ipe, nep = max(1, int(C.niters_per_epoch)), max(1, int(C.nepochs))
    epoch = min(nep - 1, max(2, int(C.get("u2pl_sup_only_epoch", 0)) + 1))
    return StepInfo(epoch, epoch * ipe + 1, ipe, nep * ipe)


class TrainRunner:
    """One method's model, optimisers and batch in one process; `step()` is one iteration."""

    def __init__(self, spec: Spec) -> None:
        from cpcl.methods import get_method

        if spec.threads:
            torch.set_num_threads(spec.threads)
        torch.manual_seed(spec.seed)
        import numpy as np

        np.random.seed(spec.seed)
        self.spec, self.device = spec, torch.device(spec.device)
        C = build_config(spec)
        method = get_method(spec.method).from_config(C, per_rank_batch=spec.batch)
        model = method.build_model(pretrained=False)
        if spec.det_dir:
            load_det_weights(model, spec.det_dir)
        model = model.to(self.device).train()
        fmt = torch.channels_last if spec.channels_last else torch.contiguous_format
        if spec.channels_last:  # as the engine does: the model first, then setup
            model.to(memory_format=fmt)
        method.setup(model)
        self.optimizers = method.build_optimizers(model)
        self.model = torch.compile(model) if spec.compile else model
        self.method, self.step_info = method, steady_step(C)
        batch = synthetic_batch(method.batch_keys, spec, int(C.num_classes))
        self.batch = {
            k: (
                v.to(self.device).contiguous(memory_format=fmt)
                if v.dim() == 4 and v.shape[1] == 3
                else v.to(self.device)
            )
            for k, v in batch.items()
        }
        self.scaler = torch.amp.GradScaler(self.device.type) if spec.amp == "fp16" else None
        self.out: dict = {}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def step(self) -> None:
        """One `train_step`, synchronised with the device."""
        from cpcl.engine import train_step

        self.out = train_step(
            self.model,
            self.optimizers,
            self.batch,
            method=self.method,
            amp=self.spec.amp,
            scaler=self.scaler,
            step=self.step_info,
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def info(self) -> dict[str, Any]:
        """The last loss (and CUDA peak memory when on CUDA)."""
        out = {"final_loss": round(float(self.out["loss"]), 4) if self.out else None}
        if self.device.type == "cuda":
            out["peak_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return out


def make_runner(spec: Spec) -> TrainRunner:
    """Worker factory (module level so that it pickles into a spawned process)."""
    return TrainRunner(spec)


def result_rows(group: list[Spec], results: list) -> list[dict]:
    """Summary rows of one interleaved group: times, img/s, memory, and the time ratio
    against the group's first setting (`speedup_vs_first` = first / this, paired by round)."""
    rows = []
    for spec, res in zip(group, results, strict=True):
        row = {**asdict(spec), **summarize(res)}
        if "ms_median" in row:
            row["labelled_img_per_s"] = round(1e3 * spec.batch / row["ms_median"], 3)
            ratio = paired_ratio(results[0], res)
            if ratio is not None:
                row["speedup_vs_first"] = ratio
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of the summary rows."""
    img_s = ("img/s", 7, lambda r: f"{r['labelled_img_per_s']:.2f}")
    vs_first = ratio_column("vs first", "speedup_vs_first", 16)
    return format_rows(rows, "label", 26, [img_s, peak_column(), vs_first])


def machine_info(threads: int) -> dict[str, Any]:
    """Host, threads, torch version and the 1-minute load average when the run started."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "host": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "load_1min": round(load, 2) if load is not None else None,
    }


def main(argv: list[str] | None = None) -> dict:
    """Run every group; print a table per method and one JSON line; return the JSON dict."""
    args = parse_args(argv)
    info = machine_info(args.threads)
    t0 = time.time()
    rows = []
    for group in specs_from_args(args):
        sides = [(s.label, make_runner, s) for s in group]
        results = run_interleaved(sides, rounds=args.rounds, iters=args.iters, warmup=args.warmup)
        group_rows = result_rows(group, results)
        print(
            f"\n{group[0].method}: {args.backbone} crop {args.crop} batch {args.batch}+"
            f"{args.batch} on {args.device} ({info['threads']} threads, torch {info['torch']})"
        )
        print(format_table(group_rows))
        rows.extend(group_rows)
    out = {"bench": "train_step", **info, "wall_s": round(time.time() - t0, 1), "results": rows}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
