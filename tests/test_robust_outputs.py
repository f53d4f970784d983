"""Output files on hostile disks: read-only folders, full disks, killed saves, umask, atomic metadata.

We run as root, which chmod cannot stop, so read-only and full filesystems are simulated by
making the OS calls fail with the errno a real one gives (EROFS, EACCES, ENOSPC).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from cpcl.checkpoint import load_checkpoint, save_checkpoint, state_nbytes
from cpcl.errors import OutputError
from cpcl.fileio import (
    atomic_write_text,
    ensure_writable_dir,
    format_bytes,
    remove_stale_temps,
    write_error,
)
from cpcl.models import Network
from cpcl.runlog import setup_logger, write_run_info

REPO = Path(__file__).resolve().parents[1]
TORCH_WRITE_FAILURE = (
    "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
    "data/0: file write failed"
)


@pytest.fixture(scope="module")
def small() -> Network:
    torch.manual_seed(0)
    return Network(4, "resnet18")


def _temps(folder: Path) -> list[str]:
    return sorted(p for p in os.listdir(folder) if p.endswith(".tmp"))


def _fail_os_open_under(monkeypatch, folder: Path, err: OSError) -> None:
    """Make every os.open of a path under `folder` raise `err` (a read-only / forbidden folder)."""
    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):
        if Path(os.fspath(path)).resolve().is_relative_to(folder.resolve()):
            raise err
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


# ------------------------------------------------------------------ writable-folder check


def test_writable_dir_is_created_and_left_clean(tmp_path):
    out = ensure_writable_dir(tmp_path / "a" / "b", "snapshot folder")
    assert out.is_dir() and os.listdir(out) == []


@pytest.mark.parametrize(
    ("code", "reason"),
    [(errno.EROFS, "Read-only file system"), (errno.EACCES, "Permission denied")],
)
def test_read_only_folder_is_a_named_error(tmp_path, monkeypatch, code, reason):
    folder = tmp_path / "snap"
    folder.mkdir()
    _fail_os_open_under(monkeypatch, folder, OSError(code, os.strerror(code)))
    with pytest.raises(OutputError) as exc:
        ensure_writable_dir(folder, "snapshot folder (C.snapshot_dir)")
    assert (
        str(exc.value) == f"snapshot folder (C.snapshot_dir) is not writable: {folder} ({reason})"
    )


def test_uncreatable_folder_is_a_named_error(tmp_path, monkeypatch):
    def fake_mkdir(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    with pytest.raises(OutputError, match=r"is not writable: .*new/run \(Permission denied\)"):
        ensure_writable_dir(tmp_path / "new" / "run")


def test_a_file_in_place_of_the_folder_is_a_named_error(tmp_path):
    (tmp_path / "pred").write_text("x")
    with pytest.raises(OutputError, match=r"pred \(it exists and is not a folder\)"):
        ensure_writable_dir(tmp_path / "pred", "prediction folder (-p)")


def test_logger_on_a_read_only_log_folder_is_a_named_error(tmp_path, monkeypatch):
    folder = tmp_path / "log"
    _fail_os_open_under(monkeypatch, tmp_path, OSError(errno.EROFS, os.strerror(errno.EROFS)))
    with pytest.raises(OutputError, match=r"log folder is not writable: .*log \(Read-only"):
        setup_logger(str(folder), is_main=True)


def test_saving_into_a_read_only_folder_is_a_named_error(tmp_path, monkeypatch, small):
    _fail_os_open_under(monkeypatch, tmp_path, OSError(errno.EROFS, os.strerror(errno.EROFS)))
    with pytest.raises(
        OutputError, match=r"cannot write .*epoch-last\.pth \(Read-only file system"
    ):
        save_checkpoint(tmp_path / "epoch-last.pth", small)


# ------------------------------------------------------------------ disk full


class _FullDisk:
    """A binary file whose writes fail with ENOSPC once `room` bytes are written."""

    def __init__(self, f, room: int) -> None:
        self._f, self._room = f, room

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        if n > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def _fill_disk_after(monkeypatch, room: int, free: int) -> None:
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _FullDisk(real_fdopen(fd, *a, **k), room))
    monkeypatch.setattr("shutil.disk_usage", lambda p: _Usage(free))


class _Usage:
    def __init__(self, free: int) -> None:
        self.total, self.used, self.free = 10 * free, 9 * free, free


def test_disk_full_during_save_names_path_free_and_needed_space(tmp_path, monkeypatch, small):
    path = save_checkpoint(tmp_path / "epoch-last.pth", small, epoch=0)
    good = path.read_bytes()
    needed = state_nbytes({"model": small.state_dict(), "epoch": 1})
    assert needed == sum(t.numel() * t.element_size() for t in small.state_dict().values())
    _fill_disk_after(monkeypatch, room=4096, free=123_456)
    with pytest.raises(OutputError) as exc:
        save_checkpoint(path, small, epoch=1)
    message = str(exc.value)
    assert f"cannot write {path}: no space left on the device" in message
    assert f"{format_bytes(123_456)} free" in message and format_bytes(123_456) == "123.5 kB"
    assert f"about {format_bytes(needed)} needed" in message
    assert path.read_bytes() == good and _temps(tmp_path) == []


@pytest.mark.parametrize("free_factor", [0.5, 2.0])
def test_torch_write_failure_is_reported_with_the_free_space(
    tmp_path, monkeypatch, small, free_factor
):
    # torch's own file writer reports a failed write as RuntimeError(inline_container ...).
    needed = state_nbytes({"model": small.state_dict()})
    free = int(needed * free_factor)

    def failing_save(obj, f):
        f.write(b"partial")
        raise RuntimeError(TORCH_WRITE_FAILURE)

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr("shutil.disk_usage", lambda p: _Usage(free))
    with pytest.raises(OutputError) as exc:
        save_checkpoint(tmp_path / "epoch-3.pth", small)
    message = str(exc.value)
    assert str(tmp_path / "epoch-3.pth") in message
    assert f"{format_bytes(free)} free, about {format_bytes(needed)} needed" in message
    assert ("no space left" in message) == (free < needed)
    assert ("file write failed" in message) == (free >= needed)
    assert os.listdir(tmp_path) == []


def test_unrelated_errors_while_saving_are_not_disguised(tmp_path, monkeypatch, small):
    def failing_save(obj, f):
        raise RuntimeError("some tensor problem")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="some tensor problem"):
        save_checkpoint(tmp_path / "x.pth", small)
    assert os.listdir(tmp_path) == []


def test_only_write_failures_become_output_errors(tmp_path):
    try:
        try:
            raise FileNotFoundError(errno.ENOENT, "a file torch looked for")
        except OSError:
            raise RuntimeError("some tensor problem") from None
    except RuntimeError as err:
        assert write_error(tmp_path / "x.pth", err, 10) is None
    torch_err = RuntimeError(TORCH_WRITE_FAILURE)
    torch_err.__context__ = OSError(errno.EIO, os.strerror(errno.EIO))
    message = str(write_error(tmp_path / "x.pth", torch_err, 10))
    assert message.startswith(f"cannot write {tmp_path / 'x.pth'} (Input/output error)")


def test_disk_full_at_fsync_and_for_text_files(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    target.write_text("old")

    def full_fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_fsync)
    with pytest.raises(
        OutputError, match=r"cannot write .*config\.json: no space left .*about 3 B"
    ):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and _temps(tmp_path) == []


# ------------------------------------------------------------------ stale temp files


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temp_file_of_a_killed_save_is_removed_by_the_next_save(tmp_path, small):
    # A real `kill -9` in the middle of a save, in a child process.
    child = textwrap.dedent(
        f"""
        import os, signal, torch
        from cpcl.checkpoint import save_checkpoint
        from cpcl.models import Network

        def killed_mid_write(obj, f):
            f.write(b"x" * 100000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = killed_mid_write
        save_checkpoint({str(tmp_path / "epoch-last.pth")!r}, Network(4, "resnet18"))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()
    left = _temps(tmp_path)
    assert len(left) == 1 and left[0].startswith(".epoch-last.pth.")
    save_checkpoint(tmp_path / "epoch-last.pth", small, epoch=5)
    assert os.listdir(tmp_path) == ["epoch-last.pth"]
    assert load_checkpoint(tmp_path / "epoch-last.pth")["epoch"] == 5


def test_remove_stale_temps_removes_only_abandoned_temp_files(tmp_path):
    from cpcl.fileio import _host

    host, old = _host(), time.time() - 3600
    names = {
        "dead_here": f".epoch-last.pth.cpcl-{host}-{_dead_pid()}-0123abcd.tmp",
        "own_pid": f".epoch-last.pth.cpcl-{host}-{os.getpid()}-0123abcd.tmp",
        "live_pid": f".epoch-1.pth.cpcl-{host}-{os.getppid()}-0123abcd.tmp",
        "other_host_old": ".epoch-2.pth.cpcl-othernode-12-0123abcd.tmp",
        "other_host_fresh": ".epoch-3.pth.cpcl-othernode-12-0123abcd.tmp",
        "legacy_old": ".epoch-last.pth.k2j_x9ab.tmp",  # tempfile.mkstemp name of cpcl <= 0.x
        "legacy_fresh": ".config.json.q8w7e6r5.tmp",
        "user_file": "notes.tmp",
        "snapshot": "epoch-last.pth",
    }
    for key, name in names.items():
        (tmp_path / name).write_bytes(b"x" * 10)
        if key.endswith("_old") or key in ("dead_here", "own_pid", "live_pid", "user_file"):
            os.utime(tmp_path / name, (old, old))
    (tmp_path / f".dir.pth.cpcl-{host}-{_dead_pid()}-0123abcd.tmp").mkdir()  # not a file
    removed = remove_stale_temps(tmp_path)
    expected = {names["dead_here"], names["other_host_old"], names["legacy_old"]}
    assert {p.name for p in removed} == expected
    assert not any((tmp_path / n).exists() for n in expected)
    assert all((tmp_path / n).exists() for k, n in names.items() if n not in expected)
    assert remove_stale_temps(tmp_path / "missing") == []


# ------------------------------------------------------------------ modes and atomic metadata


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_files_get_the_users_umask(tmp_path, small, umask):
    previous = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "epoch-last.pth", small)
        save_checkpoint(tmp_path / "epoch-last.pth", small)  # replacing keeps the rule
        atomic_write_text(tmp_path / "config.json", "{}")
    finally:
        os.umask(previous)
    for name in ("epoch-last.pth", "config.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_run_info_files_are_written_atomically(tmp_path):
    write_run_info(str(tmp_path), {"lr": 0.01, "nepochs": 2}, ["train.py", "--lr=0.01"])
    config = (tmp_path / "config.json").read_text()
    info = (tmp_path / "run_info.txt").read_text()
    assert json.loads(config) == {"lr": 0.01, "nepochs": 2} and "--lr=0.01" in info
    # A value JSON cannot store fails the write half way through: the old file must survive.
    with pytest.raises(TypeError):
        write_run_info(str(tmp_path), {"lr": 0.02, "zz_bad": object()}, ["train.py"])
    assert (tmp_path / "config.json").read_text() == config
    assert (tmp_path / "run_info.txt").read_text() == info
    assert sorted(os.listdir(tmp_path)) == ["config.json", "run_info.txt"]


def test_run_info_on_a_full_disk_is_a_named_error(tmp_path, monkeypatch):
    _fill_disk_after(monkeypatch, room=10, free=0)
    with pytest.raises(OutputError, match=r"cannot write .*config\.json: no space left"):
        write_run_info(str(tmp_path), {"lr": 0.01, "nepochs": 2}, ["train.py"])
    assert _temps(tmp_path) == []
