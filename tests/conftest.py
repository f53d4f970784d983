"""Shared fixtures: paths to ../shared (golden fixtures and split lists), skipped when absent."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GOLDEN = SHARED / "golden"
SPLITS = SHARED / "splits"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The official-code fixtures; tests using it skip when ../shared/golden is absent."""
    if not (GOLDEN / "README.md").exists():
        pytest.skip(f"golden fixtures not found at {GOLDEN} (../shared is absent in a plain clone)")
    return GOLDEN


@pytest.fixture(scope="session")
def splits_dir() -> Path:
    """The public split lists; tests using it skip when ../shared/splits is absent."""
    if not (SPLITS / "README.md").exists():
        pytest.skip(f"split lists not found at {SPLITS} (../shared is absent in a plain clone)")
    return SPLITS


@pytest.fixture(scope="session")
def det_weights(golden_dir: Path):
    """The `det_weights` module of the golden fixtures (rebuilds weights from key names)."""
    spec = importlib.util.spec_from_file_location("det_weights", golden_dir / "det_weights.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["det_weights"] = module
    spec.loader.exec_module(module)
    return module


def load_golden(golden_dir: Path, name: str) -> dict:
    """Load one golden .pt fixture as plain data."""
    return torch.load(golden_dir / name, weights_only=True)
