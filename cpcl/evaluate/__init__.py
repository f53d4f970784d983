"""Evaluation with the official CPCL sliding-window protocol.

* `predict`: the sliding-window prediction of one image (`SlidingPredictor`, `sliding_predict`)
  for any segmenter ``x -> logits (B, C, H, W)``;
* `branch`: `select_branch`, the segmenter of a two-branch CPCL/CPS model that is evaluated;
* `settings`: `EvalSettings`, the protocol as one frozen object (`EvalSettings.from_config`);
* `fold`: `fold_batchnorm`, an inference-only copy with BatchNorm folded into the convolutions;
* `dataset`: `evaluate_dataset` (confusion matrix over a dataset and ranks) and the exports;
* `checkpoints`: the ``-e`` checkpoint specs, ``-d`` devices, a snapshot's stored config.

The `exp_*/eval.py` command line and `evaluate_snapshot` build the method's network, so they
live in the entry layer above `cpcl.methods` (`cpcl.cli.evaluate`, `cpcl.cli.snapshot`).
"""

from .branch import BRANCHES, BranchMean, select_branch
from .dataset import Exports, evaluate_dataset, save_prediction
from .fold import FoldedNet, fold_batchnorm
from .predict import (
    SlidingPredictor,
    auto_window_batch,
    normalisation_lut,
    sliding_predict,
    window_grid,
    window_starts,
)
from .settings import EvalSettings, eval_settings

__all__ = [
    "BRANCHES",
    "BranchMean",
    "EvalSettings",
    "Exports",
    "FoldedNet",
    "SlidingPredictor",
    "auto_window_batch",
    "eval_settings",
    "evaluate_dataset",
    "fold_batchnorm",
    "normalisation_lut",
    "save_prediction",
    "select_branch",
    "sliding_predict",
    "window_grid",
    "window_starts",
]
