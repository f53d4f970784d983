"""Output files: atomic writes, writable-folder checks, clear disk-full errors, stale temp cleanup.

Every file cpcl writes for later use (snapshots, config.json, run_info.txt) goes through
`atomic_write`: the bytes go to a temporary file in the target folder, are flushed to disk and
renamed over the target, so an interruption never leaves a truncated file under the real name.

Temporary names are `.<target>.cpcl-<host>-<pid>-<token>.tmp`: the writer's host and pid are
in the name, so `remove_stale_temps` can tell a temp file left by a killed save (its writer is
gone) from one being written right now. Files are created with mode 0o666 minus the umask,
like any file the user creates (not 0o600 as `tempfile.mkstemp` would).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import OutputError

log = logging.getLogger(__name__)

_TEMP_RE = re.compile(
    r"^\.(?P<target>.+)\.cpcl-(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})\.tmp$"
)
# Temp files of cpcl <= 0.x (`tempfile.mkstemp(prefix=".<target>.", suffix=".tmp")`): no pid.
_LEGACY_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<token>[a-z0-9_]{8})\.tmp$")
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # EDQUOT: quota (POSIX)
# torch.save wraps a failed write of its zip writer into a RuntimeError naming this file.
_TORCH_WRITE_FAILURE = ("inline_container", "PytorchStreamWriter")
STALE_AFTER_S = 600.0


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname() or "host")[:40] or "host"


def _temp_path(target: Path) -> Path:
    token = secrets.token_hex(4)
    return target.parent / f".{target.name}.cpcl-{_host()}-{os.getpid()}-{token}.tmp"


def _create_temp(target: Path) -> tuple[Path, int]:
    # os.open with 0o666 lets the kernel apply the umask (and default ACLs) as for any new file.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    while True:
        tmp = _temp_path(target)
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def format_bytes(n: float) -> str:
    """`n` bytes as a short human-readable size ("268.1 MB")."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _cause_oserror(err: BaseException) -> OSError | None:
    # The OSError that torch's RuntimeError was raised while handling (its Python write failed).
    for _ in range(10):
        err = err.__cause__ or err.__context__
        if err is None or isinstance(err, OSError):
            return err
    return None


def write_error(
    path: str | os.PathLike, err: BaseException, size: int | None
) -> OutputError | None:
    """The OutputError describing a failed write of `path`, or None if `err` is no write failure.

    Write failures are OSErrors and torch's RuntimeError "[enforce fail at inline_container.cc
    ...] PytorchStreamWriter failed writing ...". Disk full (ENOSPC/EDQUOT, or that torch
    failure while the disk has less free space than `size`) names the path, the free space
    and about how much is needed.
    """
    path = Path(path)
    if isinstance(err, OSError):
        os_err = err
    elif isinstance(err, RuntimeError) and any(s in str(err) for s in _TORCH_WRITE_FAILURE):
        os_err = _cause_oserror(err)
    else:
        return None
    free = _free_bytes(path.parent)
    need = f"about {format_bytes(size)} needed" if size is not None else "size unknown"
    space = f"{format_bytes(free)} free, {need}" if free is not None else need
    full = os_err is not None and os_err.errno in _DISK_FULL
    if os_err is None and free is not None and size is not None and free < size:
        full = True
    if full:
        return OutputError(
            f"cannot write {path}: no space left on the device ({space} in {path.parent}); "
            f"free some space or write to another folder (a previous {path.name}, if any, "
            "is unchanged)"
        )
    unchanged = f"a previous {path.name}, if any, is unchanged"
    if os_err is not None:  # read-only, permission, I/O error: the space is not the problem
        return OutputError(f"cannot write {path} ({os_err.strerror or os_err}); {unchanged}")
    reason = str(err).strip().splitlines()[0]
    return OutputError(f"cannot write {path} ({reason}; {space}); {unchanged}")


def _fsync_dir(folder: Path) -> None:
    # Makes the rename durable; some filesystems (and Windows) cannot open folders: best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike, write: Callable[[BinaryIO], None], *, size: int | None = None
) -> Path:
    """Write `path` atomically: `write(f)` fills a temp file in the same folder, then rename.

    The temp file is flushed and fsynced before it replaces `path`, so readers see either the
    old or the complete new file, never a truncated one. On any failure the temp file is
    removed; OS write failures (read-only folder, permissions, disk full) are raised as
    OutputError naming `path` (`size`, the expected byte count, sizes the disk-full message).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, fd = _create_temp(path)
    except OSError as err:
        raise write_error(path, err, size) from err
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        _unlink_quietly(tmp)
        wrapped = write_error(path, err, size) if isinstance(err, Exception) else None
        if wrapped is not None:
            raise wrapped from err
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), size=len(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see `atomic_write`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def ensure_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create folder `path` if needed and check that a file can be written in it.

    Call it at start-up for every output folder, so a read-only or forbidden location fails
    before any work is done. Raises OutputError `<what> is not writable: <path> (<reason>)`.
    """
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise OutputError(f"{what} is not writable: {path} (it exists and is not a folder)")
        path.mkdir(parents=True, exist_ok=True)
        tmp, fd = _create_temp(path / ".write-test")
        try:
            os.write(fd, b"cpcl")
        finally:
            os.close(fd)
            _unlink_quietly(tmp)
    except OSError as err:
        reason = err.strerror or str(err)
        raise OutputError(f"{what} is not writable: {path} ({reason})") from err
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return True  # cannot tell: keep the file
    return True


def _is_stale(name: str, mtime: float, now: float, stale_after_s: float) -> bool:
    match = _TEMP_RE.match(name)
    if match is not None and match["host"] == _host():
        pid = int(match["pid"])
        return pid != os.getpid() and not _pid_alive(pid)
    if match is not None or _LEGACY_TEMP_RE.match(name):
        # Another host's writer (shared filesystem) or an old-style name without a pid: a live
        # writer keeps the mtime fresh, so only a file untouched for a while is abandoned.
        return now - mtime > stale_after_s
    return False


def remove_stale_temps(
    folder: str | os.PathLike, *, stale_after_s: float = STALE_AFTER_S
) -> list[Path]:
    """Delete temp files left in `folder` by interrupted atomic writes; return what was removed.

    Only regular files with the atomic writer's temp name are considered. One written on
    this host is stale when its writer pid is no longer running; one from another host (or an
    old-style name without pid) when it has not been modified for `stale_after_s` seconds.
    A missing folder is not an error. Each removal is logged.
    """
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    now = time.time()
    removed = []
    for entry in entries:
        if not entry.name.endswith(".tmp"):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or not _is_stale(
            entry.name, st.st_mtime, now, stale_after_s
        ):
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as err:
            log.warning("cannot remove stale temporary file %s: %s", entry.path, err)
            continue
        log.info(
            "removed %s (%s), left by an interrupted save",
            entry.path,
            format_bytes(st.st_size),
        )
        removed.append(Path(entry.path))
    return removed
