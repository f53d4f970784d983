"""One training run per `log_dir`: a lock file naming its holder (pid, host).

Two runs on one `log_dir` would overwrite each other's snapshots, `config.json` and
`run_info.txt`. The main process of a run creates `<log_dir>/run.lock` (exclusively) at
start-up and removes it at the end. A second run finds it and stops, naming the holder. A lock
whose holder is gone (same host, pid no longer running: a killed run) is stale and is taken
over, with a log line. A lock written on another host (a shared filesystem) cannot be checked
from here, so it is refused like a live one; the message says how to remove it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError
from .fileio import _host, _pid_alive

LOCK_NAME = "run.lock"


def _holder(path: Path) -> dict[str, str]:
    """The `key=value` lines of a lock file ({} when it cannot be read)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _create(path: Path) -> bool:
    """Create the lock file naming this process; False when it already exists."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except FileExistsError:
        return False
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    with os.fdopen(fd, "w") as f:
        f.write(f"pid={os.getpid()}\nhost={_host()}\nstarted={started}\n")
    return True


def acquire_run_lock(log_dir: str | os.PathLike) -> tuple[Path, str | None]:
    """Take the lock of `log_dir` (created if needed) for this process.

    Returns `(lock path, note)`: note is a line to log when a stale lock was taken over, else
    None. Raises OutputError naming the live holder (pid, host, start time) otherwise.
    """
    path = Path(log_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    note = None
    for _ in range(3):  # a race with another starting run: re-read its lock
        if _create(path):
            return path, note
        holder = _holder(path)
        pid, host = holder.get("pid", "?"), holder.get("host", "?")
        who = f"pid {pid} on host {host}, started {holder.get('started', '?')}"
        if host == _host() and pid.isdigit() and int(pid) == os.getpid():
            return path, note  # this process holds it already (a second fit() in one process)
        if host == _host() and pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            note = f"took over the stale run lock {path} of {who} (that process is gone)"
            continue
        where = "" if host == _host() else " (another host: its process cannot be checked here)"
        raise OutputError(
            f"log_dir {path.parent} is in use by another training run: {who}{where}. Two runs "
            "on one log_dir overwrite each other's snapshots; wait for it to end, set another "
            f"--log_dir, or delete {path} if that run is gone"
        )
    raise OutputError(f"cannot take the run lock {path}: other runs keep creating it")


def release_run_lock(path: Path) -> None:
    """Remove the lock file if this process still holds it."""
    holder = _holder(path)
    if holder.get("pid") == str(os.getpid()) and holder.get("host") == _host():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def run_lock(log_dir: str | os.PathLike, enabled: bool = True) -> Iterator[str | None]:
    """Hold the lock of `log_dir` for the block (no-op when not `enabled`, e.g. on the ranks
    other than the main one); yields the stale-lock note (or None)."""
    if not enabled:
        yield None
        return
    path, note = acquire_run_lock(log_dir)
    try:
        yield note
    finally:
        release_run_lock(path)
