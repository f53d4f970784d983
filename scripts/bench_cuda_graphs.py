"""`--cuda_graphs` on a GPU: identity checks and eager-vs-captured timings (issue #31).

    python scripts/bench_cuda_graphs.py identity --method sup cps cpcl unimatch
    python scripts/bench_cuda_graphs.py speed --batch 2 8 --amp none bf16 --rounds 4 --iters 20

`identity`, per method: (1) the CUDA kernel names of one eager forward + backward and of one
replay of the captured graph, compared in order (the static-input copies excluded); (2) the
loss and the gradients of the capture iteration against an eager iteration from the same
state, bitwise; (3) losses and weights after `--iters` iterations: captured vs eager, next to
the spread of two eager runs. `speed`: ms per full iteration (`train_step`, eager tail
included) eager and captured, interleaved rounds, median and min-max of the round medians.
Synthetic batches and settings of `scripts/bench_train.py` (VOC, official method settings).
Prints text and one JSON line per result; `scripts/check_gpu.sh` keeps the raw output.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train

from cpcl.engine import train_step
from cpcl.engine.graphs import GraphedIteration
from cpcl.methods import StepInfo, get_method, method_names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    capturable = [n for n in method_names() if get_method(n).capturable]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("check", choices=("identity", "speed"))
    p.add_argument("--method", nargs="+", choices=capturable, default=capturable)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--crop", type=int, default=321)
    p.add_argument("--batch", type=int, nargs="+", default=[2, 8])
    p.add_argument("--amp", nargs="+", choices=("none", "bf16"), default=["none", "bf16"])
    p.add_argument("--iters", type=int, default=20, help="timed (speed) or compared iterations")
    p.add_argument("--warmup", type=int, default=3, help="eager iterations before the capture")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.iters < 1 or args.rounds < 1 or args.warmup < 1:
        p.error("--iters, --rounds and --warmup must be >= 1")
    return args


def _spec(args: argparse.Namespace, method: str, batch: int, amp: str) -> bench_train.Spec:
    return bench_train.Spec(
        method=method,
        backbone=args.backbone,
        dataset="voc",
        crop=args.crop,
        batch=batch,
        amp=amp,
        channels_last=False,
        compile=False,
        device="cuda",
        threads=1,
        seed=args.seed,
    )


def _setup(spec: bench_train.Spec, graphed: bool, warmup: int):
    """Model, optimisers, method, batches (on the GPU) and the graph (or None)."""
    C = bench_train.build_config(spec)
    method = get_method(spec.method).from_config(C, per_rank_batch=spec.batch)
    torch.manual_seed(spec.seed)
    model = method.build_model(pretrained=False).cuda().train()
    method.setup(model)
    opts = method.build_optimizers(model)
    keys, n = method.batch_keys, int(C.num_classes)
    batches = [
        {
            k: v.cuda()
            for k, v in bench_train.synthetic_batch(
                keys, bench_train.Spec(**{**spec.__dict__, "seed": spec.seed + i}), n
            ).items()
        }
        for i in range(4)
    ]
    graph = GraphedIteration(model, method, amp=spec.amp, warmup=warmup) if graphed else None
    return model, opts, method, batches, graph


def _step(model, opts, method, batch, it, total, amp, graph):
    step = StepInfo(0, it, total, total)
    method.set_lr(opts, step)
    return train_step(model, opts, batch, method=method, step=step, amp=amp, graph=graph)


def _kernels(fn) -> list[str]:
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type.name == "CUDA"]
    return [n for n in names if "Memcpy" not in n and "Memset" not in n]


def identity(args: argparse.Namespace, method: str, amp: str) -> dict:
    """Kernel sequence, capture-iteration bitwise check and the 5-iteration comparison."""
    spec = _spec(args, method, args.batch[0], amp)
    out: dict = {"check": "identity", "method": method, "amp": amp, "batch": spec.batch}
    # (1) kernel sequence: one eager forward+backward and one replay on the same graph object.
    model, opts, m, batches, graph = _setup(spec, True, args.warmup)
    total = args.warmup + 2
    for it in range(args.warmup + 1):  # warm-up, then the capture
        _step(model, opts, m, batches[it % 4], it, total, amp, graph)
    step = StepInfo(0, total - 1, total, total)
    replay = _kernels(lambda: graph._replay(step))

    def eager_forward_backward() -> None:
        # As eager train_step: gradients None, then forwards, losses and backward.
        for p in model.parameters():
            p.grad = None
        graph._forward_backward(graph.static_batch, step)

    eager = _kernels(eager_forward_backward)
    first = next((i for i, (a, b) in enumerate(zip(eager, replay, strict=False)) if a != b), None)
    out["kernels_eager"], out["kernels_replay"] = len(eager), len(replay)
    out["kernel_sequence_equal"] = eager == replay
    out["first_kernel_mismatch"] = first
    # (2)+(3): captured vs eager (and eager vs eager) after `iters` iterations.
    runs = {}
    for name, graphed in (("eager_a", False), ("eager_b", False), ("graphed", True)):
        model, opts, m, batches, graph = _setup(spec, graphed, args.warmup)
        torch.manual_seed(args.seed + 1)
        losses, grads_at_capture = [], None
        for it in range(args.iters):
            res = _step(model, opts, m, batches[it % 4], it, args.iters, amp, graph)
            losses.append(res["loss"].double().cpu())
            if it == args.warmup:
                grads_at_capture = [
                    None if p.grad is None else p.grad.detach().clone() for p in model.parameters()
                ]
        weights = {k: v.detach().double().cpu() for k, v in model.state_dict().items()}
        runs[name] = (torch.stack(losses), weights, grads_at_capture)

    def diff(a: str, b: str) -> tuple[float, float]:
        la, wa, _ = runs[a]
        lb, wb, _ = runs[b]
        wd = max(((wa[k] - wb[k]).abs().max().item() for k in wa if wa[k].numel()), default=0.0)
        return (la - lb).abs().max().item(), wd

    out["eager_vs_eager_loss_weights"] = diff("eager_a", "eager_b")
    out["graphed_vs_eager_loss_weights"] = diff("graphed", "eager_a")
    ga, gg = runs["eager_a"][2], runs["graphed"][2]
    out["capture_iteration_grads_bitwise"] = all(
        (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
        for a, b in zip(ga, gg, strict=True)
    )
    return out


def speed(args: argparse.Namespace, method: str, amp: str, batch: int) -> dict:
    """ms per iteration, eager and captured, interleaved rounds."""
    spec = _spec(args, method, batch, amp)
    sides = {
        name: _setup(spec, graphed, args.warmup)
        for name, graphed in (("eager", False), ("graphed", True))
    }
    done = dict.fromkeys(sides, 0)
    total = (args.warmup + 1) + args.rounds * args.iters + 1
    for name, (model, opts, m, batches, graph) in sides.items():  # warm-up (+ the capture)
        for _ in range(args.warmup + 1):
            _step(model, opts, m, batches[done[name] % 4], done[name], total, amp, graph)
            done[name] += 1
    medians: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            model, opts, m, batches, graph = sides[name]
            times = []
            for _ in range(args.iters):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                _step(model, opts, m, batches[done[name] % 4], done[name], total, amp, graph)
                torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) * 1000)
                done[name] += 1
            medians[name].append(statistics.median(times))
    res = {"check": "speed", "method": method, "amp": amp, "batch": batch}
    for name, ms in medians.items():
        res[f"{name}_ms"] = [statistics.median(ms), min(ms), max(ms)]
    res["speedup"] = res["eager_ms"][0] / res["graphed_ms"][0]
    return res


def main(argv: list[str] | None = None) -> int:
    """Run the chosen check for every method / amp (/ batch) and print the results."""
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_cuda_graphs: CUDA is not available", file=sys.stderr)
        return 2
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
    for method in args.method:
        for amp in args.amp:
            if args.check == "identity":
                results = [identity(args, method, amp)]
            else:
                results = [speed(args, method, amp, b) for b in args.batch]
            for res in results:
                print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
