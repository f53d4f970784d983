"""scripts/quickstart.py after an interrupt: no evaluation of a missing snapshot, a resume hint."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def quickstart(monkeypatch, tmp_path):
    """The quickstart module with the dataset writer and the training replaced by fakes."""
    spec = importlib.util.spec_from_file_location(
        "quickstart_under_test", REPO / "scripts" / "quickstart.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls: dict = {}

    def fake_fit(C, **kwargs):
        calls["fit"] = kwargs
        return {
            "interrupted": calls.get("interrupt", True),
            "epochs": [],
            "snapshot_dir": str(tmp_path / "out" / "snapshot"),
            "log_dir": str(tmp_path / "out" / "log"),
        }

    def no_evaluation(*args, **kwargs):
        calls["evaluated"] = True
        raise KeyboardInterrupt  # as if Ctrl-C came during the evaluation

    monkeypatch.setattr(module, "is_complete", lambda *a, **k: True)
    monkeypatch.setattr(module, "fit", fake_fit)
    monkeypatch.setattr(module, "evaluate_snapshot", no_evaluation)
    monkeypatch.setattr(sys, "argv", ["scripts/quickstart.py"])
    return module, calls


def test_interrupted_training_stops_before_evaluation(quickstart, tmp_path, capsys):
    module, calls = quickstart
    argv = ["--out", str(tmp_path / "out"), "--device=cpu", "-c", "old.pth", "--nepochs=3"]
    assert module.main(argv) == module.EXIT_INTERRUPTED == 130
    assert "evaluated" not in calls and calls["fit"]["resume"] == "old.pth"
    out = capsys.readouterr().out
    snapshot = str(tmp_path / "out" / "snapshot" / "interrupted.pth")
    assert "training interrupted" in out and "evaluation skipped" in out
    resume = shlex.split(out.strip().splitlines()[-1])
    assert resume == [
        sys.executable,
        "scripts/quickstart.py",
        "--out",
        str(tmp_path / "out"),
        "--device=cpu",
        "--nepochs=3",
        "-c",
        snapshot,
    ]


def test_interrupt_outside_training_exits_130_without_traceback(quickstart, tmp_path, capsys):
    module, calls = quickstart
    calls["interrupt"] = False  # training finished; Ctrl-C arrives during the evaluation
    assert module.main(["--out", str(tmp_path / "out")]) == 130
    assert calls["evaluated"] and calls["fit"]["resume"] is None
    assert "quickstart interrupted" in capsys.readouterr().err
