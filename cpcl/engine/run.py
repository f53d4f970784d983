"""The whole run (`fit`): distributed setup, run log, build, resume, the loop, clean-up."""

from __future__ import annotations

from typing import Any

from ..dist import DistInfo, check_device, cleanup, init_distributed
from ..errors import CheckpointError
from ..evaluate.checkpoints import stored_config
from ..fileio import ensure_writable_dir, remove_stale_temps
from ..runlock import run_lock
from ..runlog import setup_logger, write_run_info
from ..snapshots import load_training_state
from ..weights import sha256_of, weights_problem
from .loop import run_epochs
from .resolve import describe_sources, finalize
from .setup import build_run, resolve_run_config
from .signals import stop_on_signals


def fit(
    C: Any, *, root: str | None = None, resume: str | None = None, argv: list[str] | None = None
) -> dict[str, Any]:
    """Train the method `C.method` as configured by `C` (official key names); return a summary.

    Runs as one process (GPU 0 or CPU) or as one rank of a torchrun job. Snapshots go to
    `C.snapshot_dir` on the official schedule plus `epoch-last.pth` every epoch; SIGINT and
    SIGTERM write `interrupted.pth` and return normally (`summary["interrupted"]`).
    """
    check_device(C.device)  # --device=cuda without CUDA: a named error, not torch's
    info = init_distributed(None if C.device == "auto" else C.device)
    try:
        return _fit(C, info, root=root, resume=resume, argv=argv)
    finally:
        cleanup()


def _fit(
    C: Any, info: DistInfo, *, root: str | None, resume: str | None, argv: list[str] | None
) -> dict[str, Any]:
    """Resolve and check the run, then train it holding the `log_dir` lock."""
    # In seconds, before any list or image is read: the weights file, the checkpoint's method.
    problem = weights_problem(finalize(C, root=root).pretrained_model)
    if problem:
        raise CheckpointError(problem)
    if resume:
        check_resume_method(resume, C.method)
    C, sources = resolve_run_config(C, root=root)
    if info.is_main:
        # Before any work: a read-only or forbidden output folder is a named error now, not
        # a raw OSError after the first epoch (setup_logger checks the log folder).
        ensure_writable_dir(C.log_dir, "log folder (C.log_dir)")
        ensure_writable_dir(C.snapshot_dir, "snapshot folder (C.snapshot_dir)")
    with run_lock(C.log_dir, enabled=info.is_main) as took_over:
        return _fit_locked(C, info, sources, took_over, resume=resume, argv=argv)


def check_resume_method(path: str, method: str) -> None:
    """Refuse to resume a checkpoint trained with another method (before its weights load,
    whose error would only name a mismatching key)."""
    stored = stored_config(path).get("method")
    if stored is not None and stored != method:
        raise CheckpointError(
            f"-c {path}: the checkpoint was trained with method {stored!r}, this run is "
            f"method {method!r}; resume it with --method={stored}, or start a new run "
            "without -c"
        )


def _log_weights(C: Any, log: Any) -> None:
    """The run log names the ImageNet file and its SHA-256, or warns about random weights."""
    if C.pretrained_model is None:
        log.warning(
            "C.pretrained_model is None: the network starts from RANDOM weights (no ImageNet "
            "file); the official runs start from the method's pretrained file"
        )
    else:
        log.info(
            "pretrained weights: %s (sha256 %s)", C.pretrained_model, sha256_of(C.pretrained_model)
        )


def _fit_locked(
    C: Any,
    info: DistInfo,
    sources: dict[str, Any],
    took_over: str | None,
    *,
    resume: str | None,
    argv: list[str] | None,
) -> dict[str, Any]:
    log = setup_logger(C.log_dir, is_main=info.is_main)
    if info.is_main:
        if took_over:
            log.info("%s", took_over)
        remove_stale_temps(C.snapshot_dir)  # left by a save that was killed (logged)
        write_run_info(C.log_dir, C, argv)
        log.info("config values not from the dataset preset: %s", describe_sources(C, argv))
        _log_weights(C, log)
    model, loader, state = build_run(C, info, log, sources)
    start_epoch, start_iter = (0, 0)
    if resume:
        start_epoch, start_iter, method_state = load_training_state(
            resume, model, state.optimizers, rank=info.rank, scaler=state.scaler, config=C, log=log
        )
        state.method.load_state_dict(method_state)
        if start_epoch >= C.nepochs:
            log.info(
                "%s is at the end of the schedule (%d epochs): nothing is left to train "
                "(raise --nepochs to train longer)",
                resume,
                C.nepochs,
            )
    # The run log names only the streams the method trains on (a labeled-only method: no unlabeled count).
    counts = " / ".join(f"{len(src)} {name}" for name, src in sources.items())
    log.info(
        "training %s %s on %s x%d: %s images, batch %d, %d epochs x %d iterations",
        C.method,
        state.method.backbone_name(C),
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
