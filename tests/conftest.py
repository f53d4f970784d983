"""Shared fixtures: paths to the golden fixtures and split lists, skipped when absent.

The golden folder is `$CPCL_GOLDEN_DIR` (a relative path is taken from the repository root),
`../shared/golden` by default, so the same tests can run on held-out fixture files.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SPLITS = SHARED / "splits"
GOLDEN_ENV = "CPCL_GOLDEN_DIR"
GOLDEN_DEFAULT = "../shared/golden"

torch.set_num_threads(2)


def golden_path() -> Path:
    """The golden fixture folder: `$CPCL_GOLDEN_DIR`, relative paths resolved against the repo."""
    path = Path(os.environ.get(GOLDEN_ENV) or GOLDEN_DEFAULT).expanduser()
    return path if path.is_absolute() else (REPO / path).resolve()


@pytest.fixture(autouse=True)
def _cpcl_logger_reset():
    """Undo `cpcl.runlog.setup_logger` after each test: every training run makes the `cpcl`
    logger stop propagating, which would hide later tests' warnings from `caplog` depending
    on the test order (tests/methods/ runs before tests/test_checkpoint.py)."""
    yield
    logger = logging.getLogger("cpcl")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The official-code fixtures; tests using it skip when the folder is absent."""
    path = golden_path()
    if not path.is_dir():
        pytest.skip(
            f"golden fixtures not found at {path} (set {GOLDEN_ENV}; default {GOLDEN_DEFAULT} "
            "relative to the repository root, absent in a plain clone)"
        )
    return path


@pytest.fixture(scope="session")
def splits_dir() -> Path:
    """The public split lists; tests using it skip when ../shared/splits is absent."""
    if not (SPLITS / "README.md").exists():
        pytest.skip(f"split lists not found at {SPLITS} (../shared is absent in a plain clone)")
    return SPLITS


@pytest.fixture(scope="session")
def det_weights(golden_dir: Path):
    """The `det_weights` module of the golden fixtures (rebuilds weights from key names)."""
    path = golden_dir / "det_weights.py"
    if not path.is_file():
        pytest.skip(f"golden helper {path} not found")
    spec = importlib.util.spec_from_file_location("det_weights", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["det_weights"] = module
    spec.loader.exec_module(module)
    return module


def load_golden(golden_dir: Path, name: str) -> dict:
    """Load one golden .pt fixture as plain data; skip the test when the file is absent."""
    path = golden_dir / name
    if not path.is_file():
        pytest.skip(f"golden fixture {path} not found")
    return torch.load(path, weights_only=True)


def golden_cases(fx: dict) -> dict[str, dict]:
    """The named cases of a fixture: `fx["cases"]` where the file has it, else its dict values."""
    if "cases" in fx:
        return dict(fx["cases"])
    return {name: value for name, value in fx.items() if isinstance(value, dict)}


def max_rel_diff(got: torch.Tensor | float, ref: torch.Tensor | float) -> float:
    """max |got - ref| / max |ref| in float64 (0 when both are exactly 0)."""
    got = torch.as_tensor(got).detach().to(torch.float64)
    ref = torch.as_tensor(ref).detach().to(torch.float64)
    assert got.shape == ref.shape, (tuple(got.shape), tuple(ref.shape))
    diff = (got - ref).abs().max().item()
    scale = ref.abs().max().item()
    return diff / scale if scale > 0 else diff


# layer3 depth -> backbone name of the golden key files (Bottleneck ResNets).
_LAYER3_DEPTH = {6: "resnet50", 23: "resnet101"}


def det_network(det_weights, golden_dir: Path, keys_file: str):
    """A `cpcl.models.Network` loaded strictly with the det weights of `keys_file`.

    The class count and the backbone are read from the key file (classifier shape, layer3
    depth), so a held-out key file of another size works the same way.
    """
    from cpcl.models import Network

    keys = det_weights.load_keys(golden_dir / keys_file)
    shapes = {k: s for k, s, _ in keys}
    depth = 1 + max(
        int(k.split(".")[3]) for k in shapes if k.startswith("branch1.backbone.layer3.")
    )
    if depth not in _LAYER3_DEPTH:
        raise ValueError(f"{keys_file}: layer3 has {depth} blocks; expected one of {_LAYER3_DEPTH}")
    model = Network(shapes["branch1.classifier.weight"][0], _LAYER3_DEPTH[depth])
    model.load_state_dict(det_weights.det_state_dict(keys), strict=True)
    return model


class StopAfter:
    """Wraps `cpcl.engine.train_step` and sends SIGTERM to this process after `n` calls
    (preemption); install with `monkeypatch.setattr(engine.loop, "train_step", StopAfter(n))`."""

    def __init__(self, n: int) -> None:
        import cpcl.engine as engine

        self.n, self.calls, self.real = n, 0, engine.train_step

    def __call__(self, *args, **kwargs):
        import signal

        out = self.real(*args, **kwargs)
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), signal.SIGTERM)
        return out


# A tiny CPU training run on `toy_voc_small` (ResNet-18, 32x32 crops, 2 epochs x 3 iterations).
TINY_TRAIN = (
    "--backbone=resnet18",
    "--pretrained_model=None",
    "--batch_size=2",
    "--image_height=32",
    "--image_width=32",
    "--nepochs=2",
    "--niters_per_epoch=3",
    "--num_workers=0",
    "--snapshot_iter=1",
    "--num_classes=4",
    "--labeled_ratio=4",
    "--display_iter=2",
    "--device=cpu",
)


@pytest.fixture(scope="session")
def toy_voc_small(tmp_path_factory) -> Path:
    """A 16-image toy VOC dataset with 4 classes (for `TINY_TRAIN` runs)."""
    from cpcl.data.toy import make_toy_voc

    root = tmp_path_factory.mktemp("toy_voc")
    make_toy_voc(root, n_train=16, n_val=4, height=40, width=48, num_classes=4, seed=0)
    return root
