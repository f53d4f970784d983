"""Which checkpoints an evaluation reads and on which devices: the official ``-e`` specs
(`resolve_checkpoints`), ``-d`` devices (`parse_devices`) and what a cpcl run stored in its
snapshots (`stored_config`, `stored_epoch`). No method is named here (the method-aware
evaluation is `cpcl.cli.snapshot`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import CpclError

_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pth$")
_RANGE = re.compile(r"^(\d+)-(\d*)$")


def resolve_checkpoints(
    spec: str, snapshot_dir: str | os.PathLike
) -> list[tuple[Path, int | None]]:
    """The checkpoints an official ``-e`` spec names, as (path, epoch or None), sorted by epoch.

    ``X.pth``: that file (a bare name not found here: ``<snapshot_dir>/X.pth``, e.g.
    ``best_seg.pth``). ``N`` or ``last``: ``<snapshot_dir>/epoch-N.pth``. ``A-B``: every
    ``epoch-K.pth`` with A <= K <= B; ``A-``: every one with K >= A (``epoch-last.pth`` is never
    part of a range, as in the official code). Raises CpclError naming what was looked for
    when the folder or file is missing or nothing matches (the official code would silently
    evaluate an untrained network).
    """
    spec = spec.strip()
    snap = Path(snapshot_dir)
    if spec.endswith(".pth"):
        path = Path(spec)
        if not path.is_file() and path.name == spec and (snap / spec).is_file():
            path = snap / spec
        if not path.is_file():
            raise CpclError(f"-e {spec}: checkpoint file not found: {path.resolve()}")
        m = _EPOCH_FILE.match(path.name)
        return [(path, int(m.group(1)) if m else None)]
    rng = _RANGE.match(spec)
    if not (rng or spec.isdigit() or spec == "last"):
        raise CpclError(
            f"-e {spec}: expected X.pth (a file), N (epoch N), A-B (epochs A..B), A- (epochs "
            f">= A) or last"
        )
    if not snap.is_dir():
        raise CpclError(
            f"-e {spec}: snapshot folder not found: {snap} (set --snapshot_dir=... or train first)"
        )
    if not rng:
        path = snap / f"epoch-{spec}.pth"
        if not path.is_file():
            have = sorted(p.name for p in snap.glob("epoch-*.pth"))
            raise CpclError(
                f"-e {spec}: {path} not found (snapshot folder holds: "
                f"{', '.join(have) if have else 'no epoch-*.pth files'})"
            )
        return [(path, int(spec) if spec.isdigit() else None)]
    start = int(rng.group(1))
    end = int(rng.group(2)) if rng.group(2) else None
    if end is not None and end < start:
        raise CpclError(f"-e {spec}: the range end {end} is below its start {start}")
    found = []
    for p in snap.iterdir():
        m = _EPOCH_FILE.match(p.name)
        if m and p.is_file():
            k = int(m.group(1))
            if k >= start and (end is None or k <= end):
                found.append((k, p))
    if not found:
        wanted = f"{start} <= K <= {end}" if end is not None else f"K >= {start}"
        raise CpclError(f"-e {spec}: no epoch-K.pth with {wanted} in {snap}")
    return [(p, k) for k, p in sorted(found)]


def parse_devices(text: str | None) -> list[torch.device]:
    """``-d`` value -> devices: ``cpu``, ``0``, ``0,1``, ``cuda:1``; None: GPU 0 if any, else CPU."""
    if text is None:
        return [torch.device("cuda:0" if torch.cuda.is_available() else "cpu")]
    items = [t.strip() for t in text.split(",") if t.strip()]
    if items == ["cpu"]:
        return [torch.device("cpu")]
    devices = []
    for item in items:
        idx = item.removeprefix("cuda:")
        if not idx.isdigit():
            raise CpclError(f"-d {text}: expected cpu, or GPU indices such as 0 or 0,1")
        devices.append(torch.device(f"cuda:{int(idx)}"))
    if not devices:
        raise CpclError(f"-d {text!r}: no device given")
    if not torch.cuda.is_available():
        raise CpclError(f"-d {text}: CUDA is not available on this machine; use -d cpu")
    n = torch.cuda.device_count()
    bad = [d.index for d in devices if d.index >= n]
    if bad:
        raise CpclError(f"-d {text}: GPU {bad[0]} requested but only {n} visible")
    if len(set(devices)) != len(devices):
        raise CpclError(f"-d {text}: a device is listed twice")
    return devices


def stored_config(path: Path) -> dict[str, Any]:
    """The `config` that a cpcl training run stored in checkpoint `path`; {} for other files
    (official snapshots, weight files) and for files that do not load (their real load later
    reports why)."""
    try:
        # mmap: only the pickle is read here, not the tensors.
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return {}
    config = ckpt.get("config") if isinstance(ckpt, dict) else None
    return dict(config) if isinstance(config, dict) else {}


def stored_epoch(ckpt: dict[str, Any]) -> int | None:
    """The 0-based epoch a cpcl checkpoint stores, or None."""
    stored = ckpt.get("epoch")
    return int(stored) if isinstance(stored, (int, float)) else None
