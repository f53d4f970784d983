"""Run folder bookkeeping: text log, resolved config, command line, git commit, TensorBoard."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import time
from typing import Any

from .config import to_plain
from .fileio import atomic_write_text, ensure_writable_dir

LOGGER_NAME = "cpcl"


def git_commit(path: str) -> str:
    """The commit of the repository containing `path` (with '+dirty' if modified), or 'unknown'."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def setup_logger(log_dir: str | None, *, is_main: bool, prefix: str = "train") -> logging.Logger:
    """The `cpcl` logger: INFO to stderr (main rank only) and to `<log_dir>/<prefix>_<time>.log`."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if is_main and log_dir:
        ensure_writable_dir(log_dir, "log folder")  # OutputError naming it, not a raw OSError
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S")
        file_handler = logging.FileHandler(os.path.join(log_dir, f"{prefix}_{stamp}.log"))
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    logger.propagate = False
    return logger


def write_run_info(log_dir: str, C: Any, argv: list[str] | None) -> None:
    """Write the resolved config, the command line and the code version next to the logs.

    Both files are written atomically: an interruption or a serialisation error leaves the
    previous version (or nothing), never half a file.
    """
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = json.dumps(to_plain(C), indent=2, sort_keys=True)
    atomic_write_text(os.path.join(log_dir, "config.json"), config)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *(argv or sys.argv)])
    atomic_write_text(
        os.path.join(log_dir, "run_info.txt"),
        f"command: {command}\ncwd: {os.getcwd()}\ngit: {git_commit(repo)}\n",
    )


class Scalars:
    """TensorBoard writer that is a no-op on non-main ranks or when tensorboard is missing."""

    def __init__(self, log_dir: str | None) -> None:
        self._writer = None
        if log_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional at import time
            except ImportError:  # pragma: no cover - tensorboard is a declared dependency
                logging.getLogger(LOGGER_NAME).warning("tensorboard missing: no scalars written")
                return
            self._writer = SummaryWriter(os.path.join(log_dir, "tb"))

    def add(self, values: dict[str, float], step: int) -> None:
        """Write each `tag: value` at `step`."""
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
