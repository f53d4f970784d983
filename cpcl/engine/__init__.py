"""The generic training engine, one concern per module:

* `step`: `train_step`, one iteration of any method (autocast, forward_loss, backward,
  gradient sync, optimiser steps, after_step);
* `loop`: `train_one_epoch` and `run_epochs`, the loop read top to bottom;
* `meter`: logs kept on the device, the non-finite loss stop;
* `signals`: SIGINT/SIGTERM end the loop at an iteration boundary;
* `snapshot`: the snapshots the loop writes; `validate`: evaluation during training;
* `setup`: the run's config, split lists of the method's streams, model, loader and state;
* `resolve`: the method-aware configuration (`apply_overrides`, `finalize`,
  `describe_sources`, ...; the method-free half is `cpcl.config`);
* `run`: `fit`, the whole run (one process or one torchrun rank): start-up checks (device,
  weights file, the checkpoint's method, output folders, the `log_dir` lock), then training;
* `dry_run`: `train.py --dry_run`, the checks and one iteration without training.

The command lines (`exp_*/train.py`, `exp_*/eval.py`) are the entry layer `cpcl.cli`, above.

Tests that wrap the iteration patch `cpcl.engine.loop.train_step` (the name the loop calls).
"""

from ..errors import CpclError
from ..models import Network
from . import loop
from .loop import LoopSettings, TrainState, epoch_label, run_epochs, train_one_epoch
from .meter import NonFiniteLossError
from .resolve import apply_overrides, describe_sources, finalize
from .run import fit
from .setup import resolve_run_config
from .snapshot import RESUME_NAMES
from .step import AMP_MODES, train_step

__all__ = [
    "AMP_MODES",
    "RESUME_NAMES",
    "CpclError",
    "LoopSettings",
    "Network",
    "NonFiniteLossError",
    "TrainState",
    "apply_overrides",
    "describe_sources",
    "epoch_label",
    "finalize",
    "fit",
    "loop",
    "resolve_run_config",
    "run_epochs",
    "train_one_epoch",
    "train_step",
]
