"""CUDA checks that a CPU-only CI cannot run: CoSA's ViT against timm, the permutohedral filter,
the energy loss and the dense CRF on the GPU against the CPU, with timings.

    python scripts/check_cuda.py [--out DIR]

Prints one line per check and a JSON line (also written to DIR/check_cuda.json). Each check
compares the CUDA result with the CPU result of the same inputs (max |diff| / max |ref|) and
times both (median of 5 calls after 2 warm-ups, CUDA synchronised). The ViT check needs timm
(not a dependency of cpcl); it is skipped with a reason where timm cannot be imported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cpcl.methods.cosa.energy import energy_loss
from cpcl.methods.cosa.evaluate import OFFICIAL_CRF_PARAMS as CRF
from cpcl.methods.cosa.vit import build_vit
from cpcl.ops.dense_crf import dense_crf
from cpcl.ops.permutohedral import bilateral_filter


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale or 1.0)


def _ms(fn: Callable[[], object], device: torch.device, reps: int = 5) -> float:
    """Median wall time of `fn` in ms (2 warm-ups, CUDA synchronised)."""
    times = []
    for i in range(reps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def check_filter(dev: torch.device) -> dict:
    """bilateral_filter at 224x224, 21 classes, batch 2: CUDA vs CPU values and time."""
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 224, 224, generator=g) * 255
    val = torch.rand(2, 21, 224, 224, generator=g)
    ref = bilateral_filter(img, val, 15.0, 50.0)
    out = bilateral_filter(img.to(dev), val.to(dev), 15.0, 50.0)
    return {
        "rel_diff": _rel(out, ref),
        "ms_cpu": _ms(lambda: bilateral_filter(img, val, 15.0, 50.0), torch.device("cpu"), 3),
        "ms_cuda": _ms(lambda: bilateral_filter(img.to(dev), val.to(dev), 15.0, 50.0), dev),
    }


def check_energy(dev: torch.device) -> dict:
    """energy_loss value and logit gradient, CUDA vs CPU (batch 2, 21 classes, 224x224)."""
    g = torch.Generator().manual_seed(1)
    img = torch.randn(2, 3, 224, 224, generator=g)
    logit = torch.randn(2, 21, 224, 224, generator=g)
    label = torch.randint(0, 21, (2, 224, 224), generator=g).float()
    label[:, :20] = 255
    box = torch.tensor([[0, 224, 0, 224], [10, 200, 20, 224]])

    def run(d: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x = logit.detach().to(d, copy=True).requires_grad_(True)  # a leaf on every device
        loss = energy_loss(img.to(d), x, label.to(d), box.to(d))
        loss.sum().backward()
        return loss.detach(), x.grad

    (l_cpu, g_cpu), (l_gpu, g_gpu) = run(torch.device("cpu")), run(dev)
    return {
        "loss_rel_diff": _rel(l_gpu, l_cpu),
        "grad_rel_diff": _rel(g_gpu, g_cpu),
        "ms_cpu": _ms(lambda: run(torch.device("cpu")), torch.device("cpu"), 3),
        "ms_cuda": _ms(lambda: run(dev), dev),
    }


def check_crf(dev: torch.device) -> dict:
    """dense_crf with the official CoSA parameters, CUDA vs CPU (one 224x224 image)."""
    g = torch.Generator().manual_seed(2)
    img = (torch.rand(1, 3, 224, 224, generator=g) * 255).to(torch.uint8)
    probs = torch.softmax(3 * torch.randn(1, 21, 224, 224, generator=g), 1)
    ref = dense_crf(img, probs, CRF)
    out = dense_crf(img.to(dev), probs.to(dev), CRF)
    return {
        "rel_diff": _rel(out, ref),
        "label_agreement": (out.cpu().argmax(1) == ref.argmax(1)).double().mean().item(),
        "ms_cuda": _ms(lambda: dense_crf(img.to(dev), probs.to(dev), CRF), dev),
    }


def check_vit_timm(dev: torch.device) -> dict:
    """Our ViT-B/16 encoder against timm's with the same weights (float32, 2x3x224x224)."""
    try:
        import timm
    except Exception as err:  # timm needs torchvision; absent on CPU-only installs
        return {"skipped": f"timm not importable: {type(err).__name__}: {err}"}
    ours = build_vit("vit_base_patch16_224", aux_layer=-4).to(dev).eval()
    ref = timm.create_model("vit_base_patch16_224", pretrained=False).to(dev).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3)).to(dev)
    with torch.no_grad():
        _, tokens, _ = ours.forward_features(x)
        want = ref.forward_features(x)[:, 1:]
    return {"timm": timm.__version__, "rel_diff": _rel(tokens, want)}


CHECKS = {
    "vit_vs_timm": check_vit_timm,
    "permutohedral_filter": check_filter,
    "energy_loss": check_energy,
    "dense_crf": check_crf,
}


def main() -> int:
    """Run every check on CUDA; print one line each and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for check_cuda.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("CUDA is not available: nothing to check", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    result = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(dev)}
    for name, fn in CHECKS.items():
        try:
            result[name] = fn(dev)
        except Exception as err:  # report every check, even after one fails
            result[name] = {"error": f"{type(err).__name__}: {err}"}
        print(f"{name}: {result[name]}", flush=True)
    line = json.dumps(result)
    print(line)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "check_cuda.json").write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
