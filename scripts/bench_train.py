"""Benchmark one full training iteration (`cpcl.engine.train_step`) on synthetic data.

Prints a table and one JSON line, e.g.::

    python scripts/bench_train.py --backbone resnet50 --crop 128 --batch 2 --amp none bf16

Per setting: ms/iteration (median and mean of the timed iterations after warm-up), labelled
images/s (`batch / median`; each iteration also runs 2*batch unlabelled images through both
teachers and the mixed batch through both students) and peak memory (CUDA: max allocated;
CPU: the peak resident set size of the whole process; with several amp modes they are
interleaved iteration by iteration, so that figure covers all of them: run one mode per
process for a per-mode CPU figure).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time

import torch

from cpcl.engine import train_step
from cpcl.losses import ProbOhemCrossEntropy2d
from cpcl.methods import get_method
from cpcl.models import ModelSettings, build_model
from cpcl.optim import build_optimizers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--backbone", default="resnet50", choices=("resnet18", "resnet34", "resnet50", "resnet101")
    )
    p.add_argument("--crop", type=int, default=128, help="square crop size")
    p.add_argument("--batch", type=int, default=2, help="labelled (and unlabelled) batch size")
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--amp", nargs="+", default=["none"], choices=("none", "bf16", "fp16"))
    p.add_argument("--method", default="cpcl", choices=("cpcl", "cps", "sup"))
    p.add_argument("--sup-loss", default="ce", choices=("ce", "ohem"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=5, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--channels-last", action="store_true", help="NHWC model and inputs")
    p.add_argument(
        "--fused-teacher", action="store_true", help="non-faithful: u0+u1 in one forward"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave default)")
    return p.parse_args(argv)


def _batch(args: argparse.Namespace, device: torch.device, fmt: torch.memory_format) -> dict:
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, 3, args.crop, args.crop)
    mask = torch.zeros(args.batch, 1, args.crop, args.crop)
    q = args.crop // 4
    mask[:, :, q : 3 * q, q : 3 * q] = 1
    batch = {
        "img": torch.randn(shape, generator=g),
        "gt": torch.randint(0, args.classes, (args.batch, args.crop, args.crop), generator=g),
        "img_u0": torch.randn(shape, generator=g),
        "img_u1": torch.randn(shape, generator=g),
        "mask": mask,
    }
    out = {}
    for k, v in batch.items():
        v = v.to(device)
        out[k] = v.contiguous(memory_format=fmt) if v.dim() == 4 and v.shape[1] == 3 else v
    return out


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


class _Setting:
    """One model + optimisers + batch for one amp mode, ready to run iterations."""

    def __init__(self, args: argparse.Namespace, amp: str) -> None:
        self.args, self.amp = args, amp
        self.device = torch.device(args.device)
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        torch.manual_seed(0)
        settings = ModelSettings(args.classes, backbone=args.backbone)
        model = build_model("two_branch", settings).to(self.device).train()
        self.model = model.to(memory_format=fmt)
        self.opts = build_optimizers(self.model, 0.005, 0.9, 1e-4)
        self.batch = _batch(args, self.device, fmt)
        if args.sup_loss == "ohem":
            self.crit: torch.nn.Module = ProbOhemCrossEntropy2d(
                thresh=0.7, min_kept=50000 * args.batch
            ).to(self.device)
        else:
            self.crit = torch.nn.CrossEntropyLoss(ignore_index=255)
        self.scaler = torch.amp.GradScaler(self.device.type) if amp == "fp16" else None
        self.times: list[float] = []
        self.loss = float("nan")

    def step(self, timed: bool) -> None:
        """Run one iteration; record its wall time when `timed`."""
        t0 = time.perf_counter()
        out = train_step(
            self.model,
            self.opts,
            self.batch,
            0.005,
            method=get_method(self.args.method)(
                sup_criterion=self.crit, unsup_weight=1.0, fused_teacher=self.args.fused_teacher
            ),
            amp=self.amp,
            scaler=self.scaler,
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if timed:
            self.times.append(time.perf_counter() - t0)
            self.loss = float(out["loss"])

    def result(self, peak_mb: float) -> dict:
        """The measurements of this setting."""
        a, times = self.args, self.times
        median = statistics.median(times)
        return {
            "backbone": a.backbone,
            "crop": a.crop,
            "batch": a.batch,
            "method": a.method,
            "amp": self.amp,
            "device": self.device.type,
            "channels_last": a.channels_last,
            "fused_teacher": a.fused_teacher,
            "iters": len(times),
            "ms_per_iter_median": round(median * 1e3, 1),
            "ms_per_iter_mean": round(statistics.fmean(times) * 1e3, 1),
            "ms_per_iter_min": round(min(times) * 1e3, 1),
            "labelled_img_per_s": round(a.batch / median, 3),
            "peak_mem_mb": round(peak_mb, 1),
            "final_loss": round(self.loss, 4),
        }


def run_settings(args: argparse.Namespace) -> list[dict]:
    """Time every amp mode of `args.amp`.

    CPU: the modes are interleaved iteration by iteration so that load from other processes
    hits all of them alike; the peak memory is then that of the whole process. CUDA: one mode
    after the other, each with its own peak-memory counter.
    """
    device = torch.device(args.device)
    if device.type == "cuda":
        rows = []
        for amp in args.amp:
            s = _Setting(args, amp)
            torch.cuda.reset_peak_memory_stats(device)
            for it in range(args.warmup + args.iters):
                s.step(timed=it >= args.warmup)
            rows.append(s.result(_peak_mb(device)))
            del s
            torch.cuda.empty_cache()
        return rows
    settings = [_Setting(args, amp) for amp in args.amp]
    for it in range(args.warmup + args.iters):
        for s in settings:
            s.step(timed=it >= args.warmup)
    peak = _peak_mb(device)
    return [s.result(peak) for s in settings]


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark for every requested amp mode; print a table and one JSON line."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run_settings(args)
    header = (
        f"{'amp':<5} {'ms/iter (median)':>16} {'mean':>8} {'min':>8} {'img/s':>7} {'peak MB':>9}"
    )
    print(
        f"{args.backbone} crop {args.crop} batch {args.batch} method {args.method} on "
        f"{args.device} ({torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"channels_last={args.channels_last}, fused_teacher={args.fused_teacher})"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['amp']:<5} {r['ms_per_iter_median']:>16.1f} {r['ms_per_iter_mean']:>8.1f} "
            f"{r['ms_per_iter_min']:>8.1f} {r['labelled_img_per_s']:>7.2f} {r['peak_mem_mb']:>9.1f}"
        )
    base = next((r for r in rows if r["amp"] == "none"), None)
    if base is not None:
        for r in rows:
            r["speedup_vs_fp32"] = round(base["ms_per_iter_median"] / r["ms_per_iter_median"], 3)
    print(
        json.dumps(
            {
                "bench": "train_step",
                "host": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "results": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
