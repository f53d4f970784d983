"""Benchmark the sliding-window evaluator: batched (cpcl.evaluate) vs naive one-window-at-a-time.

The naive evaluator below follows the official algorithm step by step on the host (numpy
normalisation and padding, one network input per forward, the mirrored input as a second
forward, cv2 resize of every scale's map); it exists only here, as the baseline. Every timed
image is also checked: both evaluators must give the same score sum (relative max difference
<= 1e-5) and the same labels wherever the top-2 margin is above the noise.

Settings (image size, crop, scales, flip):
  voc-ss   VOC-like 500x375, crop 512, single scale (one whole-image window)
  voc-ms   VOC-like 500x375, crop 512, scales 0.75/1/1.25 + flip
  city-ss  Cityscapes-like 1024x2048, crop 800, single scale (8 windows)
  city-ms  Cityscapes-like 1024x2048, crop 800, scales 0.75/1/1.25 + flip
  ref-ms   official reference point: 240x320, crop 256, scales 0.75/1/1.25 + flip, ResNet-50
  ref-ss   official reference point: 256x512, crop 128, single scale, ResNet-50
(the official evaluator takes about 1.45 s and 0.65 s for the two reference points).

Prints a table and one JSON line. Defaults fit in about two minutes on a 2-core CPU; use
--settings, --backbone resnet50, --images and --device cuda for the full picture.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import cv2
import numpy as np
import torch

from cpcl.evaluate import sliding_predict, window_grid
from cpcl.models import ModelSettings, build_model

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MS = (0.75, 1.0, 1.25)

SETTINGS = {
    # name: (height, width, crop, scales, flip, backbone override)
    "voc-ss": (375, 500, 512, (1.0,), False, None),
    "voc-ms": (375, 500, 512, MS, True, None),
    "city-ss": (1024, 2048, 800, (1.0,), False, None),
    "city-ms": (1024, 2048, 800, MS, True, None),
    "ref-ms": (240, 320, 256, MS, True, "resnet50"),
    "ref-ss": (256, 512, 128, (1.0,), False, "resnet50"),
}
DEFAULT_SETTINGS = "voc-ss,voc-ms,city-ss,ref-ms,ref-ss"


@torch.no_grad()
def naive_predict(net, img, *, num_classes, crop, stride_rate, scales, flip, device):
    """Official algorithm, one input per forward, host-side bookkeeping (the baseline)."""
    H, W = img.shape[:2]
    total = np.zeros((H, W, num_classes), dtype=np.float64)
    mean, std = np.array(MEAN), np.array(STD)

    def norm(x):
        return (x.astype(np.float32) / 255.0 - mean) / std

    def pad(x):
        ph, pw = max(crop - x.shape[0], 0), max(crop - x.shape[1], 0)
        m = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
        return cv2.copyMakeBorder(x, *m, cv2.BORDER_CONSTANT, value=0), m

    def forward(x):
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))
        t = t[None].to(device)
        s = net(t)[0]
        if flip:
            s = s + net(t.flip(-1))[0].flip(-1)
        return s

    for s in scales:
        im = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
        h, w = im.shape[:2]
        if max(h, w) <= crop:
            x, m = pad(norm(im))
            score = forward(x)[:, m[0] : crop - m[1], m[2] : crop - m[3]]
        else:
            stride = math.ceil(crop * stride_rate)
            xp, m = pad(im)
            P, Q = xp.shape[:2]
            acc = torch.zeros(num_classes, P, Q, device=device)
            for gy in range(math.ceil((P - crop) / stride) + 1):
                for gx in range(math.ceil((Q - crop) / stride) + 1):
                    ey, ex = min(gy * stride + crop, P), min(gx * stride + crop, Q)
                    win = norm(xp[ey - crop : ey, ex - crop : ex])
                    acc[:, ey - crop : ey, ex - crop : ex] += forward(win)
            score = acc[:, m[0] : P - m[1], m[2] : Q - m[3]]
        total += cv2.resize(
            score.permute(1, 2, 0).cpu().numpy(), (W, H), interpolation=cv2.INTER_LINEAR
        )
    return torch.from_numpy(total).permute(2, 0, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


def _make_model(backbone: str, num_classes: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("two_branch", ModelSettings(num_classes, backbone=backbone))
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval().to(device)


def run_setting(name, args, device, models):
    h, w, crop, scales, flip, backbone = SETTINGS[name]
    backbone = backbone or args.backbone
    if backbone not in models:
        models[backbone] = _make_model(backbone, args.num_classes, device)
    model = models[backbone]
    rng = np.random.RandomState(0)
    # Smooth-ish synthetic images (random noise upsampled), closer to photos than pure noise.
    images = [
        cv2.resize(
            rng.randint(0, 256, (h // 8, w // 8, 3)).astype(np.uint8),
            (w, h),
            interpolation=cv2.INTER_CUBIC,
        )
        for _ in range(args.images)
    ]
    windows = sum(
        len(window_grid(round(h * s), round(w * s), crop, 2 / 3)) * (2 if flip else 1)
        for s in scales
    )
    kw = dict(num_classes=args.num_classes, stride_rate=2 / 3, scales=scales, flip=flip)

    def batched(img):
        return sliding_predict(
            model, img, crop_size=crop, mean=MEAN, std=STD, device=device,
            window_batch=args.window_batch, amp=args.amp, **kw,
        )  # fmt: skip

    def naive(img):
        return naive_predict(model.branch1, img, crop=crop, device=device, **kw)

    batched(images[0])  # warm-up (allocator, cudnn plans)
    t_b, t_n, worst_rel, agree = [], [], 0.0, []
    for img in images:
        out_b, dt_b = _timed(lambda img=img: batched(img), device)
        t_b.append(dt_b)
        if args.no_naive:
            continue
        out_n, dt_n = _timed(lambda img=img: naive(img), device)
        t_n.append(dt_n)
        out_b = out_b.cpu()
        mag = out_n.abs().max().item()
        rel = (out_b - out_n).abs().max().item() / mag
        worst_rel = max(worst_rel, rel)
        top2 = out_n.topk(2, dim=0).values
        sure = (top2[0] - top2[1]) > 1e-4 * mag
        agree.append((out_b.argmax(0) == out_n.argmax(0))[sure].float().mean().item())
        tol = 1e-5 if args.amp == "none" else 5e-2
        assert rel <= tol, f"{name}: batched and naive differ by {rel:.2e} (relative)"
        assert args.amp != "none" or agree[-1] == 1.0, f"{name}: labels differ"
    b = statistics.median(t_b)
    n = statistics.median(t_n) if t_n else None
    return {
        "setting": name,
        "backbone": backbone,
        "image_hw": [h, w],
        "crop": crop,
        "scales": list(scales),
        "flip": flip,
        "forwards_per_image": windows,
        "batched_s": round(b, 4),
        "naive_s": round(n, 4) if n is not None else None,
        "speedup": round(n / b, 3) if n else None,
        "batched_img_per_s": round(1 / b, 3),
        "max_rel_diff": worst_rel if t_n else None,
        "label_agreement": min(agree) if agree else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--settings", default=DEFAULT_SETTINGS, help=f"of {', '.join(SETTINGS)}")
    p.add_argument("--backbone", default="resnet18", help="for voc-*/city-* (ref-* use resnet50)")
    p.add_argument("--images", type=int, default=1, help="timed images per setting (median)")
    p.add_argument("--window-batch", type=int, default=8)
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--no-naive", action="store_true", help="time the batched evaluator only")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    models: dict[str, torch.nn.Module] = {}
    rows = [run_setting(s.strip(), args, device, models) for s in args.settings.split(",")]

    header = (
        f"{'setting':<8} {'backbone':<9} {'image':>9} {'crop':>4} {'fwd':>4} "
        f"{'batched s':>9} {'naive s':>8} {'speedup':>7} {'img/s':>7} {'rel diff':>8}"
    )
    print(f"device {device}, window_batch {args.window_batch}, amp {args.amp}")
    print(header)
    print("-" * len(header))
    for r in rows:
        naive_s = f"{r['naive_s']:.3f}" if r["naive_s"] is not None else "-"
        speed = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        diff = f"{r['max_rel_diff']:.1e}" if r["max_rel_diff"] is not None else "-"
        hw = f"{r['image_hw'][0]}x{r['image_hw'][1]}"
        print(
            f"{r['setting']:<8} {r['backbone']:<9} {hw:>9} {r['crop']:>4} "
            f"{r['forwards_per_image']:>4} {r['batched_s']:>9.3f} {naive_s:>8} {speed:>7} "
            f"{r['batched_img_per_s']:>7.2f} {diff:>8}"
        )
    print(
        json.dumps(
            {
                "bench": "eval",
                "device": str(device),
                "threads": torch.get_num_threads(),
                "window_batch": args.window_batch,
                "amp": args.amp,
                "results": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
