"""Stop signals sent to the whole process group (Ctrl-C, `timeout`, Slurm preemption).

The run is started in a new session, so `os.killpg` reaches the trainer and its DataLoader
workers together, as a terminal or `timeout` does. It must end as a signal to the main
process alone does: interrupted.pth written, exit code 0, no traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cpcl.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]

# A long run (it is stopped long before its end) with one loader worker.
CHILD = """
import sys, pathlib
import cpcl.engine as engine
from cpcl.config import load_preset

marker = pathlib.Path(sys.argv[1])
real = engine.train_step

def step(*args, **kwargs):
    out = real(*args, **kwargs)
    marker.touch()  # training has started: the workers have delivered a batch
    return out

engine.train_step = step
sys.exit(engine.main(load_preset("voc"), sys.argv[2:]))
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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_process_group_writes_interrupted_and_exits_0(toy_voc_small, tmp_path, sig):
    marker = tmp_path / "started"
    args = [
        "--backbone=resnet18",
        "--pretrained_model=None",
        "--batch_size=2",
        "--image_height=32",
        "--image_width=32",
        "--nepochs=2",
        "--niters_per_epoch=5000",
        "--num_workers=2",
        "--num_classes=4",
        "--labeled_ratio=4",
        "--device=cpu",
        f"--dataset_path={toy_voc_small}",
        f"--log_dir={tmp_path / 'log'}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(marker), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a job in a terminal
    )
    try:
        _wait_for(marker, proc)
        os.killpg(proc.pid, sig)  # trainer and workers at once
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "killed by signal" not in err, err
    state = load_checkpoint(tmp_path / "log" / "snapshot" / "interrupted.pth")
    assert state["next_epoch"] == 0 and 1 <= state["next_iter"] < 5000
    assert "resume with: -c" in out
