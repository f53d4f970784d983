"""Benchmark the sliding-window evaluator against the official algorithm, in one process.

The reference (`official_predict`) is the official `Evaluator.sliding_eval` step by step: host
numpy normalisation and padding, one window per forward, the mirror as a second forward, the
window sum on the device, cv2 resize of every scale's map, float64 sum on the host. Ours is
`cpcl.evaluate.SlidingPredictor` (one predictor per setting, reused over images as in a dataset
evaluation) on branch 1 with BatchNorm folded (`fold_batchnorm`, as `eval.py` does; `--fold off`
runs the unfolded branch). Rounds are interleaved (ours/official alternate which goes first) and the medians
are reported. Every timed image is also checked: the labels must be equal wherever the top-2
margin is above the noise, and the score sums close (relative max difference printed).

Settings (image size, crop, scales, flip; ResNet-50 unless --backbone):
  a / ref-ss256  240x320, crop 256, single scale (2 windows)
  b / ref-ms     240x320, crop 256, scales 0.75/1/1.25 + flip (14 forwards)
  c / ref-ss     256x512, crop 128, single scale (18 windows)
  voc-ss, voc-ms 500x375, crop 512, single scale / 3 scales + flip
  city-ss        1024x2048, crop 800, single scale (8 windows)

Peak memory: the process's peak resident set while one image is evaluated (VmHWM after a
reset through /proc/self/clear_refs; Linux), total and above the resident set before the call;
on CUDA the peak of torch.cuda.max_memory_allocated. Both evaluators share this process, so
the table's "eval MB" is each one's own peak as a lone evaluation would see it: the weights it
holds (official: the whole two-branch model, as the official evaluator loads it; ours: the
evaluated branch, BatchNorm folded, as the eval CLI keeps it, and the predictor's reused
buffers) plus its peak above the resident set during the call. Minor page faults and system time per image
show the allocator churn; CPU time (process) is printed next to the wall time because it is
less sensitive to other load on a shared machine. Prints a table and one JSON line (ratios =
our time / official time; `ratio_range`: min and max of the per-image ratios of one round).

Default: the three reference settings, float32, 3 rounds (a few minutes on a 2-core CPU); use
--rounds 15 for the published figures and --amp none bf16 for bf16 (refused on CPUs without
native bf16).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import time

import cv2
import numpy as np
import torch

from cpcl.amp import AmpError, check_amp
from cpcl.evaluate import (
    EvalSettings,
    SlidingPredictor,
    fold_batchnorm,
    select_branch,
    window_grid,
)
from cpcl.models import ModelSettings, build_model

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MS = (0.75, 1.0, 1.25)

SETTINGS = {
    # name: (height, width, crop, scales, flip)
    "ref-ss256": (240, 320, 256, (1.0,), False),
    "ref-ms": (240, 320, 256, MS, True),
    "ref-ss": (256, 512, 128, (1.0,), False),
    "voc-ss": (375, 500, 512, (1.0,), False),
    "voc-ms": (375, 500, 512, MS, True),
    "city-ss": (1024, 2048, 800, (1.0,), False),
}
ALIASES = {"a": "ref-ss256", "b": "ref-ms", "c": "ref-ss"}
DEFAULT_SETTINGS = "a,b,c"


@torch.no_grad()
def official_predict(net, img, *, num_classes, crop, stride_rate, scales, flip, device):
    """The official sliding_eval (furnace/engine/evaluator.py), step by step: the reference."""
    H, W = img.shape[:2]
    total = np.zeros((H, W, num_classes))
    mean, std = np.array(MEAN), np.array(STD)

    def process_image(x):  # normalise (float64 arithmetic), pad to the crop, HWC -> CHW
        x = (x.astype(np.float32) / 255.0 - mean) / std
        x, margin = pad(x)
        return x.transpose(2, 0, 1), margin

    def pad(x):
        ph, pw = max(crop - x.shape[0], 0), max(crop - x.shape[1], 0)
        m = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
        return cv2.copyMakeBorder(x, *m, cv2.BORDER_CONSTANT, value=0), m

    def val_func_process(x):
        t = torch.FloatTensor(np.ascontiguousarray(x[None], dtype=np.float32)).to(device)
        score = net(t)[0]
        if flip:
            score += net(t.flip(-1))[0].flip(-1)
        return score

    for s in scales:
        im = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
        h, w = im.shape[:2]
        if max(h, w) <= crop:
            x, m = process_image(im)
            score = val_func_process(x)[:, m[0] : crop - m[1], m[2] : crop - m[3]]
        else:
            stride = math.ceil(crop * stride_rate)
            xp, m = pad(im)
            P, Q = xp.shape[:2]
            data_scale = torch.zeros(num_classes, P, Q, device=device)
            for gy in range(math.ceil((P - crop) / stride) + 1):
                for gx in range(math.ceil((Q - crop) / stride) + 1):
                    ey, ex = min(gy * stride + crop, P), min(gx * stride + crop, Q)
                    x, _ = process_image(xp[ey - crop : ey, ex - crop : ex])
                    data_scale[:, ey - crop : ey, ex - crop : ex] += val_func_process(x)
            score = data_scale[:, m[0] : P - m[1], m[2] : Q - m[3]]
        total += cv2.resize(
            score.permute(1, 2, 0).cpu().numpy(), (W, H), interpolation=cv2.INTER_LINEAR
        )
    return torch.from_numpy(total).permute(2, 0, 1)


class _Probe:
    """Wall time, minor page faults, system time and peak memory of one call."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @staticmethod
    def _rss_kb(field: str) -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def _reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            pass

    def __call__(self, fn):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._reset_peak()
        base = (
            torch.cuda.memory_allocated(self.device)
            if self.device.type == "cuda"
            else self._rss_kb("VmRSS:")
        )
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        c = time.process_time()
        t = time.perf_counter()
        out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t
        cpu = time.process_time() - c
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            base_mb = base / 2**20
        else:
            hwm = self._rss_kb("VmHWM:")
            peak = hwm / 1024 if hwm is not None else float("nan")
            base_mb = base / 1024 if base is not None else float("nan")
        return out, {
            "s": dt,
            "cpu_s": cpu,
            "minflt": r1.ru_minflt - r0.ru_minflt,
            "stime": r1.ru_stime - r0.ru_stime,
            "peak_mb": peak,
            "extra_mb": peak - base_mb,
        }


def _make_model(backbone: str, num_classes: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("two_branch", ModelSettings(num_classes, backbone=backbone))
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval().to(device)


def _weights_mb(module: torch.nn.Module) -> float:
    """MB of the distinct tensor storages (parameters and buffers) that `module` holds."""
    storages = {}
    for t in [*module.parameters(), *module.buffers()]:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values()) / 2**20


def _images(h: int, w: int, n: int) -> list[np.ndarray]:
    rng = np.random.RandomState(0)
    # Smooth-ish synthetic images (random noise upsampled), closer to photos than pure noise.
    return [
        cv2.resize(
            rng.randint(0, 256, (h // 8, w // 8, 3)).astype(np.uint8),
            (w, h),
            interpolation=cv2.INTER_CUBIC,
        )
        for _ in range(n)
    ]


def _compare(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, int]:
    """Relative max difference and the number of labels that differ above the noise."""
    mag = ref.abs().max().item()
    rel = (ours - ref).abs().max().item() / mag
    top2 = ref.topk(2, dim=0).values
    sure = (top2[0] - top2[1]) > 1e-5 * mag
    return rel, int((ours.argmax(0) != ref.argmax(0))[sure].sum())


class _Case:
    """One (setting, amp) pair: its predictor, images and collected measurements."""

    def __init__(self, name, amp, args, device, model, net):
        h, w, crop, scales, flip = SETTINGS[name]
        self.name, self.amp, self.model = name, amp, model
        self.shape, self.crop, self.scales, self.flip = (h, w), crop, scales, flip
        self.settings = EvalSettings(
            num_classes=args.num_classes,
            crop_size=crop,
            stride_rate=2 / 3,
            scales=scales,
            flip=flip,
            mean=MEAN,
            std=STD,
            window_batch=args.window_batch,
            amp=amp,
            channels_last={"auto": None, "on": True, "off": False}[args.channels_last],
        )
        self.predictor = SlidingPredictor(self.settings, device)
        self.net = net
        self.images = _images(h, w, args.images)
        self.device = device
        self.forwards = sum(
            len(window_grid(round(h * s), round(w * s), crop, 2 / 3)) * (2 if flip else 1)
            for s in scales
        )
        self.ours_weights_mb, self.official_weights_mb = _weights_mb(net), _weights_mb(model)
        self.ours: list[dict] = []
        self.official: list[dict] = []
        self.worst_rel, self.label_diff = 0.0, 0

    def ours_fn(self, img):
        return lambda: self.predictor.predict(self.net, img).cpu().clone()

    def official_fn(self, img):
        kw = dict(num_classes=self.settings.num_classes, crop=self.crop, stride_rate=2 / 3)
        return lambda: official_predict(
            self.model, img, scales=self.scales, flip=self.flip, device=self.device, **kw
        )

    def round(self, probe: _Probe, ours_first: bool) -> None:
        for img in self.images:
            runs = [("ours", self.ours_fn(img)), ("official", self.official_fn(img))]
            outs = {}
            for label, fn in runs if ours_first else runs[::-1]:
                if label == "ours":
                    # Prepared once per snapshot in a dataset evaluation: not part of the time.
                    with self.predictor.prepared(self.net):
                        outs[label], m = probe(fn)
                else:
                    outs[label], m = probe(fn)
                (self.ours if label == "ours" else self.official).append(m)
            rel, diff = _compare(outs["ours"], outs["official"])
            self.worst_rel = max(self.worst_rel, rel)
            if self.amp == "none":
                self.label_diff += diff

    def row(self) -> dict:
        def med(rows, key):
            return statistics.median(r[key] for r in rows)

        ours, off = med(self.ours, "s"), med(self.official, "s")
        pairs = [a["s"] / b["s"] for a, b in zip(self.ours, self.official, strict=True)]
        # Ours also keeps its working buffers between images (part of the resident set).
        buffers = sum(b.untyped_storage().nbytes() for b in self.predictor._buffers.values())
        ours_eval = self.ours_weights_mb + buffers / 2**20 + max(r["extra_mb"] for r in self.ours)
        off_eval = self.official_weights_mb + max(r["extra_mb"] for r in self.official)
        return {
            "setting": self.name,
            "amp": self.amp,
            "image_hw": list(self.shape),
            "crop": self.crop,
            "scales": list(self.scales),
            "flip": self.flip,
            "forwards_per_image": self.forwards,
            "ours_s": round(ours, 4),
            "official_s": round(off, 4),
            "ratio": round(ours / off, 3),
            "speedup": round(off / ours, 3),
            "ratio_range": [round(min(pairs), 3), round(max(pairs), 3)],
            "ours_s_range": [
                round(min(r["s"] for r in self.ours), 4),
                round(max(r["s"] for r in self.ours), 4),
            ],
            "official_s_range": [
                round(min(r["s"] for r in self.official), 4),
                round(max(r["s"] for r in self.official), 4),
            ],
            "ours_cpu_s": round(med(self.ours, "cpu_s"), 4),
            "official_cpu_s": round(med(self.official, "cpu_s"), 4),
            "cpu_ratio": round(med(self.ours, "cpu_s") / med(self.official, "cpu_s"), 3),
            "ours_peak_mb": round(max(r["peak_mb"] for r in self.ours), 1),
            "official_peak_mb": round(max(r["peak_mb"] for r in self.official), 1),
            "ours_extra_mb": round(max(r["extra_mb"] for r in self.ours), 1),
            "official_extra_mb": round(max(r["extra_mb"] for r in self.official), 1),
            "ours_eval_mb": round(ours_eval, 1),
            "official_eval_mb": round(off_eval, 1),
            "eval_mb_ratio": round(ours_eval / off_eval, 3),
            "ours_minflt": int(med(self.ours, "minflt")),
            "official_minflt": int(med(self.official, "minflt")),
            "ours_stime_s": round(med(self.ours, "stime"), 3),
            "official_stime_s": round(med(self.official, "stime"), 3),
            "max_rel_diff": self.worst_rel,
            "labels_differing": self.label_diff if self.amp == "none" else None,
            "samples": len(self.ours),
        }


def _print_table(rows: list[dict], device: torch.device, args) -> None:
    header = (
        f"{'setting':<10} {'amp':<5} {'fwd':>3} {'ours s':>7} {'offic. s':>8} {'ratio':>6} "
        f"{'speedup':>7} {'cpu ratio':>9} {'eval MB ours/off':>17} {'extra MB ours/off':>17} "
        f"{'minflt ours/off':>16} {'rel diff':>8} {'lbl':>4}"
    )
    print(
        f"device {device}, threads {torch.get_num_threads()}, window_batch "
        f"{args.window_batch or 'auto'}, {args.rounds} rounds x {args.images} image(s), medians"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        lbl = "-" if r["labels_differing"] is None else str(r["labels_differing"])
        print(
            f"{r['setting']:<10} {r['amp']:<5} {r['forwards_per_image']:>3} "
            f"{r['ours_s']:>7.3f} {r['official_s']:>8.3f} {r['ratio']:>6.3f} "
            f"{r['speedup']:>6.2f}x {r['cpu_ratio']:>9.3f} {r['ours_eval_mb']:>8.0f}/{r['official_eval_mb']:<8.0f} "
            f"{r['ours_extra_mb']:>8.0f}/{r['official_extra_mb']:<8.0f} "
            f"{r['ours_minflt']:>7}/{r['official_minflt']:<8} {r['max_rel_diff']:>8.1e} {lbl:>4}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--settings", default=DEFAULT_SETTINGS, help=f"of {', '.join(SETTINGS)}, a, b, c"
    )
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    p.add_argument("--images", type=int, default=1, help="images per setting and round")
    p.add_argument("--window-batch", type=int, default=0, help="0: sized to the device")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--amp", nargs="+", default=["none"], choices=("none", "bf16", "fp16"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument(
        "--fold", default="on", choices=("on", "off"), help="ours: BatchNorm folded (as the CLI)"
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amps = []
    for amp in args.amp:
        try:
            check_amp(amp, device)
            amps.append(amp)
        except AmpError as err:
            print(f"skipped: {err}")
    model = _make_model(args.backbone, args.num_classes, device)
    names = [ALIASES.get(s.strip(), s.strip()) for s in args.settings.split(",")]
    # Ours as the eval CLI: the evaluated branch, BatchNorm folded into an inference-only copy.
    net = select_branch(model, "1")
    net = fold_batchnorm(net) if args.fold == "on" else net
    cases = [_Case(n, amp, args, device, model, net) for n in names for amp in amps]
    probe = _Probe(device)
    for case in cases:  # warm-up (allocator, oneDNN primitive caches, cudnn plans)
        with case.predictor.prepared(case.net):
            case.ours_fn(case.images[0])()
        case.official_fn(case.images[0])()
    for r in range(args.rounds):
        for case in cases:
            case.round(probe, ours_first=r % 2 == 0)
    rows = [c.row() for c in cases]
    _print_table(rows, device, args)
    print(
        json.dumps(
            {
                "bench": "eval",
                "device": str(device),
                "threads": torch.get_num_threads(),
                "window_batch": args.window_batch,
                "rounds": args.rounds,
                "ratios": {f"{r['setting']}/{r['amp']}": r["ratio"] for r in rows},
                "results": rows,
                "cpu_count": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
