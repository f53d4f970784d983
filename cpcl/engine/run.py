"""The whole run (`fit`): distributed setup, run log, build, resume, the loop, clean-up."""

from __future__ import annotations

from typing import Any

from ..dist import DistInfo, cleanup, init_distributed
from ..fileio import ensure_writable_dir, remove_stale_temps
from ..runlog import setup_logger, write_run_info
from ..snapshots import load_training_state
from .loop import run_epochs
from .resolve import describe_sources
from .setup import build_run, resolve_run_config
from .signals import stop_on_signals


def fit(
    C: Any, *, root: str | None = None, resume: str | None = None, argv: list[str] | None = None
) -> dict[str, Any]:
    """Train the method `C.method` as configured by `C` (official key names); return a summary.

    Runs as one process (GPU 0 or CPU) or as one rank of a torchrun job. Snapshots go to
    `C.snapshot_dir` on the official schedule plus `epoch-last.pth` every epoch; SIGINT and
    SIGTERM write `interrupted.pth` and return normally.
    """
    info = init_distributed(None if C.device == "auto" else C.device)
    try:
        return _fit(C, info, root=root, resume=resume, argv=argv)
    finally:
        cleanup()


def _fit(
    C: Any, info: DistInfo, *, root: str | None, resume: str | None, argv: list[str] | None
) -> dict[str, Any]:
    C, sources = resolve_run_config(C, root=root)
    if info.is_main:
        # Before any work: a read-only or forbidden output folder is a named error now, not
        # a raw OSError after the first epoch (setup_logger checks the log folder).
        ensure_writable_dir(C.snapshot_dir, "snapshot folder (C.snapshot_dir)")
    log = setup_logger(C.log_dir, is_main=info.is_main)
    if info.is_main:
        remove_stale_temps(C.snapshot_dir)  # left by a save that was killed (logged)
        write_run_info(C.log_dir, C, argv)
        log.info("config values not from the dataset preset: %s", describe_sources(C, argv))
    model, loader, state = build_run(C, info, log, sources)
    start_epoch, start_iter = (0, 0)
    if resume:
        start_epoch, start_iter, method_state = load_training_state(
            resume, model, state.optimizers, rank=info.rank, scaler=state.scaler, config=C, log=log
        )
        state.method.load_state_dict(method_state)
    # The run log names only the streams the method trains on (a labeled-only method: no unlabeled count).
    counts = " / ".join(f"{len(src)} {name}" for name, src in sources.items())
    log.info(
        "training %s %s on %s x%d: %s images, batch %d, %d epochs x %d iterations",
        C.method,
        C.backbone,
        info.device,
        info.world_size,
        counts,
        C.batch_size,
        C.nepochs,
        C.niters_per_epoch,
    )
    try:
        with stop_on_signals(state.stop):
            summary = run_epochs(C, info, log, model, loader, state, start_epoch, start_iter)
    finally:
        state.scalars.close()
    summary["snapshot_dir"] = C.snapshot_dir
    summary["log_dir"] = C.log_dir
    return summary
