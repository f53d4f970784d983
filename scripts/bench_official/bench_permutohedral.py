"""Our permutohedral filter (`cpcl.ops.permutohedral`) against the official compiled CoSA one.

Bench only: the official extension is NOT part of the package. Compares, for a 224x224 input with
21 classes (a noise image, the worst case for the lattice size, and a smooth blob image closer to
a photo) and for the inputs of the golden `cosa_losses.pt` cases:

* the filter values (`bilateralfilter_batch`, sigma_rgb 15, sigma_xy 50): max relative diff;
* the CoSA energy loss (`cpcl.methods.cosa.energy.energy_loss`, weight 1e-7, sigmas 15/100,
  scale 0.5) with our filter vs the official filter plugged into the same code: loss and
  d loss / d logit max relative diff;
* time per call, median of interleaved rounds (ours CPU float32 vs official, same threads);
* with `--pydensecrf DIR` (a folder where pydensecrf is installed, e.g. `pip install --target DIR
  pydensecrf2`), CoSA's evaluation CRF (`cpcl.ops.dense_crf`) against pydensecrf's `DenseCRF2D`.

Prints a table and one JSON line. Reproduce (needs swig and a C++ compiler, bench only):

    git clone https://github.com/youshyee/CoSA /tmp/CoSA && cp -r /tmp/CoSA/utils/bilateralfilter \
      /tmp/bf && cd /tmp/bf && swig -python -c++ bilateralfilter.i && \
      LDFLAGS=-fopenmp python setup.py build_ext --inplace && cd - && \
      PYTHONPATH=$PWD python scripts/bench_official/bench_permutohedral.py --official /tmp/bf

(`LDFLAGS=-fopenmp`: the official setup.py compiles with OpenMP but does not link libgomp.)
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cpcl.methods.cosa import energy as energy_mod
from cpcl.ops.permutohedral import bilateral_filter


def load_official(path: str):
    """Import the built official `bilateralfilter` swig module from its folder."""
    sys.path.insert(0, str(Path(path).resolve()))
    try:
        return importlib.import_module("bilateralfilter")
    except ImportError as exc:
        raise SystemExit(f"cannot import the official bilateralfilter from {path}: {exc}") from exc


def official_filter(module) -> Callable:
    """`bilateral_filter`-compatible wrapper around the official `bilateralfilter_batch`."""

    def run(image, values, sigma_rgb, sigma_xy, **_):
        n, k, h, w = values.shape
        out = np.zeros(n * k * h * w, dtype=np.float32)
        module.bilateralfilter_batch(
            image.detach().float().cpu().numpy().ravel(),
            values.detach().float().cpu().numpy().ravel(),
            out,
            n,
            k,
            h,
            w,
            float(sigma_rgb),
            float(sigma_xy),
        )
        return torch.from_numpy(out).reshape(n, k, h, w)

    return run


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in float64."""
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale > 0 else (a - b).abs().max().item()


def make_image(kind: str, size: int, gen: torch.Generator) -> torch.Tensor:
    """A (1, 3, size, size) 0..255 image: uniform noise or smooth blobs with mild noise."""
    if kind == "noise":
        return torch.rand(1, 3, size, size, generator=gen) * 255
    coarse = torch.rand(1, 3, 6, 6, generator=gen) * 255
    img = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic")
    return (img + 8 * torch.randn(1, 3, size, size, generator=gen)).clamp(0, 255)


def energy_inputs(size: int, classes: int, gen: torch.Generator, kind: str) -> dict:
    """Inputs of `energy_loss` for a batch of 2 normalised images of `size`."""
    img = torch.cat([make_image(kind, size, gen) for _ in range(2)])
    mean = torch.tensor(energy_mod.IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(energy_mod.IMAGENET_STD).reshape(1, 3, 1, 1)
    label = torch.randint(0, classes, (2, size, size), generator=gen)
    label[:, : size // 8] = 255
    return {
        "img": (img - mean) / std,
        "logit": 3 * torch.randn(2, classes, size, size, generator=gen),
        "label": label,
        "img_box": torch.tensor([[0, size, 0, size], [size // 8, size, 0, size - size // 4]]),
    }


def energy_with(filt: Callable, inputs: dict, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Energy loss and d loss / d logit with `filt` as the bilateral filter."""
    saved = energy_mod.bilateral_filter
    energy_mod.bilateral_filter = filt
    try:
        logit = inputs["logit"].clone().requires_grad_(True)
        loss = energy_mod.energy_loss(
            inputs["img"], logit, inputs["label"], inputs["img_box"], **kw
        )
        loss.backward()
        return loss.detach(), logit.grad
    finally:
        energy_mod.bilateral_filter = saved


def timed(fns: dict[str, Callable], rounds: int) -> dict[str, float]:
    """Median ms per call of each function, calls interleaved round by round (after a warm-up)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def crf_rows(path: str, size: int, classes: int, rounds: int, gen: torch.Generator) -> list:
    """CoSA's evaluation CRF (`crf_inference_infv2`): ours vs pydensecrf on the same inputs."""
    sys.path.insert(0, str(Path(path).resolve()))
    dcrf = importlib.import_module("pydensecrf.densecrf")
    unary = importlib.import_module("pydensecrf.utils").unary_from_softmax
    from cpcl.methods.cosa.evaluate import OFFICIAL_CRF_PARAMS as P
    from cpcl.ops.dense_crf import dense_crf

    def reference(img_hwc: np.ndarray, probs: np.ndarray) -> np.ndarray:
        crf = dcrf.DenseCRF2D(img_hwc.shape[1], img_hwc.shape[0], probs.shape[0])
        crf.setUnaryEnergy(np.ascontiguousarray(unary(probs)))
        crf.addPairwiseGaussian(sxy=P.pos_xy_std, compat=P.pos_w)
        crf.addPairwiseBilateral(sxy=P.bi_xy_std, srgb=P.bi_rgb_std, rgbim=img_hwc, compat=P.bi_w)
        return np.array(crf.inference(P.iterations)).reshape(probs.shape)

    rows = []
    for kind in ("noise", "smooth"):
        img = make_image(kind, size, gen).round().to(torch.uint8)
        probs = torch.softmax(3 * torch.randn(1, classes, size, size, generator=gen), 1)
        img_hwc = np.ascontiguousarray(img[0].permute(1, 2, 0).numpy())
        probs_np = probs[0].numpy()
        ours = dense_crf(img, probs)[0]
        ref = torch.from_numpy(reference(img_hwc, probs_np))
        ms = timed(
            {
                "crf_ours": lambda i=img, p=probs: dense_crf(i, p),
                "crf_pydensecrf": lambda i=img_hwc, p=probs_np: reference(i, p),
            },
            rounds,
        )
        rows.append(
            {
                "input": f"CRF {kind} {size}x{size} C={classes}",
                "crf_q_maxabs": (ours - ref).abs().max().item(),
                "crf_argmax_agree": (ours.argmax(0) == ref.argmax(0)).double().mean().item(),
                **{f"{k}_ms": round(v, 1) for k, v in ms.items()},
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, help="folder of the built bilateralfilter")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for ours")
    parser.add_argument("--golden", default="../shared/golden/cosa_losses.pt")
    parser.add_argument(
        "--pydensecrf", default=None, help="folder holding an installed pydensecrf (optional)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    official = official_filter(load_official(args.official))
    gen = torch.Generator().manual_seed(0)
    rows = []
    for kind in ("noise", "smooth"):
        img = make_image(kind, args.size, gen)
        vals = torch.softmax(
            3 * torch.randn(1, args.classes, args.size, args.size, generator=gen), 1
        )
        ours_v = bilateral_filter(img, vals, 15.0, 50.0)
        ref_v = official(img, vals, 15.0, 50.0)
        inputs = energy_inputs(args.size, args.classes, gen, kind)
        loss_o, grad_o = energy_with(bilateral_filter, inputs)
        loss_r, grad_r = energy_with(official, inputs)
        ms = timed(
            {
                "filter_ours": lambda img=img, v=vals: bilateral_filter(img, v, 15.0, 50.0),
                "filter_official": lambda img=img, v=vals: official(img, v, 15.0, 50.0),
                "energy_ours": lambda x=inputs: energy_with(bilateral_filter, x),
                "energy_official": lambda x=inputs: energy_with(official, x),
            },
            args.rounds,
        )
        rows.append(
            {
                "input": f"{kind} {args.size}x{args.size} C={args.classes}",
                "filter_rel": rel(ours_v, ref_v),
                "filter_bitexact": float((ours_v == ref_v).double().mean()),
                "loss_rel": rel(loss_o, loss_r),
                "grad_rel": rel(grad_o, grad_r),
                **{f"{k}_ms": round(v, 1) for k, v in ms.items()},
            }
        )
    golden = Path(args.golden)
    if golden.is_file():
        for name, case in torch.load(golden, weights_only=True)["cases"].items():
            inputs = {k: case[k] for k in ("logit", "img_box")}
            inputs["img"], inputs["label"] = case["simg"], case["mask"]
            kw = {
                "weight": case["energy_weight"],
                "sigma_rgb": case["sigma_rgb"],
                "sigma_xy": case["sigma_xy"],
                "scale_factor": case["energy_scale"],
            }
            loss_o, grad_o = energy_with(bilateral_filter, inputs, **kw)
            loss_r, grad_r = energy_with(official, inputs, **kw)
            rows.append(
                {
                    "input": f"golden {name} {tuple(case['logit'].shape)}",
                    "loss_rel": rel(loss_o, loss_r),
                    "grad_rel": rel(grad_o, grad_r),
                    "loss_vs_fixture": rel(loss_o.reshape(()), case["loss_reg"]),
                    "grad_vs_fixture": rel(grad_o, case["grad_logit"]),
                }
            )
    if args.pydensecrf:
        rows += crf_rows(args.pydensecrf, args.size, args.classes, args.rounds, gen)
    cols = ["input", "filter_rel", "filter_bitexact", "loss_rel", "grad_rel"]
    cols += ["filter_ours_ms", "filter_official_ms", "energy_ours_ms", "energy_official_ms"]
    cols += ["crf_q_maxabs", "crf_argmax_agree", "crf_ours_ms", "crf_pydensecrf_ms"]
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(str(row.get(c, "-")) for c in cols))
    print(json.dumps({"threads": args.threads, "rounds": args.rounds, "rows": rows}))


if __name__ == "__main__":
    main()
