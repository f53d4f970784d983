"""`train.py --dry_run`: check a configured run without training it.

Resolves the config and prints `key | value | official value | where it came from` for the
method's official keys; checks every split list, decodes a sample of images and labels, the
weights file, the output folders and the device; then builds the model, loads the weights and
runs ONE training iteration at the configured crop size on the configured device, and prints
its time, the peak memory and the projected wall time of the whole schedule. Every problem is
collected (not only the first); the exit code is 0 when there is none, else 1. Under torchrun
every rank does the same (its lines are prefixed with the rank).
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from ..amp import check_amp
from ..data.datasets import build_dataset
from ..dist import DistInfo, check_device, cleanup, init_distributed
from ..errors import CpclError
from ..fileio import ensure_writable_dir, format_bytes
from ..methods import StepInfo, get_method
from ..weights import weights_problem
from .resolve import config_sources, finalize, official_values
from .setup import build_pretrained_model, build_run, resolve_run_config
from .step import train_step

# Keys every method's table shows, besides its own defaults and config keys.
CORE_KEYS = (
    "method",
    "dataset_name",
    "backbone",
    "pretrained_model",
    "labeled_ratio",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "nepochs",
    "niters_per_epoch",
    "image_height",
    "image_width",
    "device",
    "amp",
)
# Images (and labels) decoded per split list: spread over the list, first and last included.
SAMPLES_PER_LIST = 4


def settings_table(C: Any, argv: list[str] | None = None, finalized: Any = None) -> str:
    """`key | value | official value | where it came from` for the method's official keys of
    `C` (resolved, not finalized; "official" = the dataset preset plus the method's defaults).
    A derived key still None in `C` shows its value in `finalized` (if given)."""
    cls = get_method(C.method)
    keys = [*CORE_KEYS]
    for key in (*cls.defaults.get(C.get("dataset_name"), {}), *cls.config_keys):
        if key not in keys:
            keys.append(key)
    official = {**official_values(C), "method": C.method}
    sources = config_sources(C, argv)
    rows = [("key", "value", "official value", "where it came from")]
    for key in keys:
        if key not in C:
            continue
        where = sources.get(key, "dataset preset")
        value = C[key]
        if value is None and finalized is not None and finalized.get(key) is not None:
            value, where = finalized[key], "derived"
        rows.append((key, repr(value), repr(official.get(key, "-")), where))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{width[0]}} | {r[1]:<{width[1]}} | {r[2]:<{width[2]}} | {r[3]}" for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _sample_indices(n: int, k: int = SAMPLES_PER_LIST) -> list[int]:
    """`k` indices spread over `range(n)`, first and last included."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def check_data(C: Any, streams: tuple[str, ...], problems: list[str]) -> dict[str, Any]:
    """Build the dataset of every split the run reads (the method's streams and val), decode
    a sample of each; the problems go to `problems`. Returns the datasets that could be built."""
    built = {}
    for split in (*streams, "val"):
        try:
            dataset = build_dataset(C, split)
        except CpclError as err:
            problems.append(f"{split} split: {err}")
            continue
        built[split] = dataset
        for i in _sample_indices(len(dataset)):
            try:
                dataset.load(i)
            except CpclError as err:
                problems.append(f"{split} split: {err}")
    return built


def check_outputs(C: Any, problems: list[str]) -> None:
    """The log and snapshot folders must be writable (created if needed)."""
    for key, what in (("log_dir", "log folder"), ("snapshot_dir", "snapshot folder")):
        try:
            ensure_writable_dir(C[key], f"{what} (C.{key})")
        except CpclError as err:
            problems.append(str(err))


def _peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA peak {format_bytes(torch.cuda.max_memory_allocated(device))}"
    # ru_maxrss is in KiB on Linux.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return f"CPU peak RSS {format_bytes(rss)} (the whole process)"


def one_iteration(C: Any, info: DistInfo, sources: dict[str, Any], say: Callable) -> None:
    """Build the run as training does (model with its weights, loader, optimisers), run one
    iteration, and report its time, the peak memory and the projected schedule."""
    log = logging.getLogger("cpcl.dry_run")
    start = time.perf_counter()
    model, loader, state = build_run(C, info, log, sources)
    say(f"model built and weights loaded in {time.perf_counter() - start:.1f} s")
    niters = len(loader)
    step = StepInfo(0, 0, niters, C.nepochs * niters)
    loader.set_epoch(0, 0)
    batch = next(iter(loader))
    memory = torch.channels_last if C.channels_last else torch.contiguous_format
    batch = {
        k: v.to(info.device, memory_format=memory)
        if v.dim() == 4 and v.shape[1] == 3
        else v.to(info.device)
        for k, v in batch.items()
    }
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
        torch.cuda.synchronize(info.device)
    model.train()
    start = time.perf_counter()
    state.method.set_lr(state.optimizers, step)
    out = train_step(
        model,
        state.optimizers,
        batch,
        None,
        method=state.method,
        amp=C.amp,
        scaler=state.scaler,
        grad_sync=state.grad_sync,
        step=step,
    )
    loss = float(out["loss"])
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)
    seconds = time.perf_counter() - start
    total = C.nepochs * niters
    crop = f"{C.image_height}x{C.image_width}"
    say(
        f"one iteration (batch {C.batch_size // info.world_size} per process, crop {crop}, "
        f"{info.device}): {seconds:.2f} s, loss {loss:.4g}, {_peak_memory(info.device)}"
    )
    say(
        f"projected training time: {total} iterations ({C.nepochs} epochs x {niters}) x "
        f"{seconds:.2f} s = {seconds * total / 3600:.1f} h (from this first iteration, which "
        "includes one-time start-up costs; data loading and evaluation not included)"
    )


def check_weights_fit(C: Any, info: DistInfo, problems: list[str]) -> None:
    """Build the model alone, loading `C.pretrained_model` strictly (when the data problems
    rule out the iteration, which would have done it)."""
    try:
        method = get_method(C.method).from_config(C, per_rank_batch=C.batch_size // info.world_size)
        build_pretrained_model(method, C)
    except CpclError as err:
        problems.append(str(err))


def _any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when any rank has `flag` (so all ranks skip the iteration together)."""
    if not info.distributed:
        return flag
    t = torch.tensor([int(flag)], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def dry_run(C: Any, *, root: str | None, argv: list[str] | None = None) -> int:
    """Check the run `C` (config after `apply_overrides`) as described in the module
    docstring; print the report; return the exit code (0: ready, 1: problems listed)."""
    problems: list[str] = []
    try:
        check_device(C.device)
    except CpclError as err:
        problems.append(str(err))
        C = type(C)({**C, "device": "cpu"})  # check the rest on the CPU
    info = init_distributed(None if C.device == "auto" else C.device)
    prefix = f"[rank {info.rank}] " if info.distributed else ""

    def say(line: str) -> None:
        print(prefix + line.replace("\n", "\n" + prefix), flush=True)

    try:
        say(f"dry run of {C.method} on {C.dataset_name} (nothing is trained)")
        try:
            F = finalize(C, root=root)
        except CpclError as err:
            say(settings_table(C, argv))
            problems.append(str(err))
            return _report(problems, say)
        say(settings_table(C, argv, F))
        streams = get_method(F.method).streams
        check_data(F, streams, problems)
        problem = weights_problem(F.pretrained_model)
        if problem:
            problems.append(problem)
        if info.is_main:
            check_outputs(F, problems)
        try:
            check_amp(F.amp, info.device)
        except CpclError as err:
            problems.append(str(err))
        if not _any_rank(bool(problems), info):
            try:
                F, sources = resolve_run_config(C, root=root)
                one_iteration(F, info, sources, say)
            except CpclError as err:
                problems.append(str(err))
        else:
            if not problems:  # only another rank found some
                problems.append("another rank found problems (see its lines)")
            elif F.pretrained_model is not None and not problem:
                check_weights_fit(F, info, problems)
            say("the training iteration is skipped: fix the problems below first")
        return _report(problems, say)
    finally:
        cleanup()


def _report(problems: list[str], say: Callable) -> int:
    if not problems:
        say("dry run: no problem found")
        return 0
    say(f"dry run: {len(problems)} problem(s):")
    for i, problem in enumerate(problems, 1):
        say(f"  {i}. {problem}")
    sys.stdout.flush()
    return 1
