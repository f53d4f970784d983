"""Stop signals sent to the whole process group (Ctrl-C, `timeout`, Slurm preemption).

The run is started in a new session, so `os.killpg` reaches the trainer and its DataLoader
workers together, as a terminal or `timeout` does. It must end as a signal to the main
process alone does: interrupted.pth written, exit code 130, no traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_TRAIN

from cpcl.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]

# A long run (it is stopped long before its end) with loader workers.
CHILD = """
import os, sys, pathlib
import cpcl.engine as engine
from cpcl.cli import train as train_cli
from cpcl.config import load_preset

marker = pathlib.Path(sys.argv[1] + os.environ.get("RANK", "0"))
real = engine.train_step

def step(*args, **kwargs):
    out = real(*args, **kwargs)
    marker.touch()  # training has started: the workers have delivered a batch
    return out

engine.loop.train_step = step  # the name the loop calls
sys.exit(train_cli.main(load_preset("voc"), sys.argv[2:]))
"""


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            _out, err = proc.communicate()
            pytest.fail(f"the run ended before training started (rc {proc.returncode}):\n{err}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("training did not start in time")
        time.sleep(0.05)


def _args(toy: Path, run: Path) -> list[str]:
    # The tiny run, made long (it is stopped long before its end) and with loader workers;
    # later --key=value arguments win.
    return [
        *TINY_TRAIN,
        "--niters_per_epoch=5000",
        "--num_workers=2",
        f"--dataset_path={toy}",
        f"--log_dir={run / 'log'}",
    ]


def _start(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a job in a terminal
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_process_group_writes_interrupted_and_exits_130(toy_voc_small, tmp_path, sig):
    marker = tmp_path / "started"
    proc = _start([sys.executable, "-c", CHILD, str(marker), *_args(toy_voc_small, tmp_path)])
    marker = tmp_path / "started0"
    try:
        _wait_for(marker, proc)
        os.killpg(proc.pid, sig)  # trainer and workers at once
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err  # interrupted, not finished (cpcl.cli.train)
    assert "Traceback" not in err and "killed by signal" not in err, err
    state = load_checkpoint(tmp_path / "log" / "snapshot" / "interrupted.pth")
    assert state["next_epoch"] == 0 and 1 <= state["next_iter"] < 5000
    assert "resume with: -c" in out


@pytest.mark.slow
def test_signal_to_a_torchrun_job_writes_interrupted_on_every_rank(toy_voc_small, tmp_path):
    script = tmp_path / "train_marked.py"
    script.write_text(CHILD)
    marker = tmp_path / "started"
    args = [a for a in _args(toy_voc_small, tmp_path) if not a.startswith("--batch_size")]
    proc = _start(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(script), str(marker), *args, "--batch_size=4",
        ]
    )  # fmt: skip
    try:
        _wait_for(tmp_path / "started0", proc)
        _wait_for(tmp_path / "started1", proc)
        os.killpg(proc.pid, signal.SIGTERM)  # torchrun, both ranks and their workers
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    state = load_checkpoint(tmp_path / "log" / "snapshot" / "interrupted.pth")
    assert state["next_epoch"] == 0 and 1 <= state["next_iter"] < 5000
    assert len(state["rng"]) == 2  # both ranks took part in the save
    assert "killed by signal" not in err and "DataLoader worker" not in err, err
    assert "resume with: -c" in out
