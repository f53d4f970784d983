"""Dataset evaluation (confusion matrix over ranks) and prediction export."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from ..metrics import all_reduce_hist, confusion_matrix, scores, scores_all_classes
from .branch import select_branch
from .predict import SlidingPredictor
from .settings import FIELDS, EvalSettings


def _save_png_index(path: str, index: np.ndarray, palette: np.ndarray | None) -> None:
    from PIL import Image  # only needed when exporting

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img = Image.fromarray(index, mode="P" if palette is not None else "L")
    if palette is not None:
        img.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    img.save(path)


def save_prediction(
    pred: np.ndarray,
    name: str,
    save_dir: str,
    *,
    palette: np.ndarray | None = None,
    labelids_map: np.ndarray | None = None,
    image: np.ndarray | None = None,
    label: np.ndarray | None = None,
) -> None:
    """Write the exports of one prediction (HxW uint8 class indices) named `name`.

    ``<save_dir>/<name>.png``: raw class indices (official ``cv2.imwrite`` of the prediction);
    ``<save_dir>_color/<name>.png``: palette PNG (with `palette`, (256,3) uint8);
    ``<save_dir>_labelids/<name>.png``: ids mapped through `labelids_map` (e.g. Cityscapes
    trainId -> labelId for the official benchmark scripts);
    ``<save_dir>_show/<name>.png``: image | prediction | ground truth side by side, in colour
    (with `image` and `palette`; label pixels 255 are drawn white).
    """
    base = save_dir.rstrip("/\\")
    fn = name + ".png"
    os.makedirs(os.path.dirname(os.path.join(base, fn)), exist_ok=True)
    cv2.imwrite(os.path.join(base, fn), pred)
    if palette is not None:
        _save_png_index(os.path.join(base + "_color", fn), pred, palette)
    if labelids_map is not None:
        ids = np.asarray(labelids_map, dtype=np.uint8)[pred]
        _save_png_index(os.path.join(base + "_labelids", fn), ids, None)
    if image is not None and palette is not None:
        pal = np.asarray(palette, dtype=np.uint8)
        parts = [image, pal[pred]]
        if label is not None:
            gt = pal[label]
            gt[label == 255] = 255
            parts.append(gt)
        bar = np.zeros((image.shape[0], 15, 3), dtype=np.uint8)
        row = [parts[0]]
        for part in parts[1:]:
            row += [bar, part]
        out = os.path.join(base + "_show", fn)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cv2.imwrite(out, cv2.cvtColor(np.concatenate(row, axis=1), cv2.COLOR_RGB2BGR))


@dataclass(frozen=True)
class Exports:
    """Where and how predictions are written (see `save_prediction`); show: side-by-side images."""

    save_dir: str
    palette: np.ndarray | None = None
    labelids_map: np.ndarray | None = None
    show: bool = False

    def write(
        self, pred: np.ndarray, name: str, image: np.ndarray, label: np.ndarray | None
    ) -> None:
        """Export one prediction (HxW uint8) of `image` / `label` under `name`."""
        save_prediction(
            pred,
            name,
            self.save_dir,
            palette=self.palette,
            labelids_map=self.labelids_map,
            image=image if self.show else None,
            label=label if self.show else None,
        )


_EXPORT_KEYS = ("save_dir", "palette", "labelids_map", "show")


def _legacy_exports(exports: Exports | None, loose: dict[str, Any]) -> Exports | None:
    """`exports`, or one built from the older loose keywords (save_dir, palette, ...)."""
    if exports is not None and loose:
        raise TypeError("pass either exports=Exports(...) or save_dir/palette/..., not both")
    if exports is None and loose.get("save_dir") is not None:
        return Exports(**loose)
    return exports


def _progress(indices: Iterable[int], show: bool) -> Iterable[int]:
    """`indices`, with a progress bar on stderr when `show`."""
    if not show:
        return indices
    from tqdm import tqdm

    return tqdm(indices, desc="eval", dynamic_ncols=True, file=sys.stderr)


def lut_normalise(img: np.ndarray, lut: torch.Tensor) -> torch.Tensor:
    """The uint8 RGB image `img` (H,W,3) through the per-value table `lut` (256, 3): a
    (1,3,H,W) tensor on `lut`'s device (the official normalisations as exact tables)."""
    pixels = torch.from_numpy(img if img.flags.writeable else img.copy()).to(lut.device)
    return lut[pixels.long(), torch.arange(3, device=lut.device)].permute(2, 0, 1)[None]


# One image under a method's own protocol: (uint8 RGB HxWx3, label HxW or None) -> (predicted
# class ids as a tensor, the label map they are scored against: the label itself, or e.g. the
# padded and cropped label of U2PL's validation; None: not scored).
ImagePredictor = Callable[[np.ndarray, Any], tuple[torch.Tensor, Any]]


@torch.no_grad()
def evaluate_images(
    dataset: Any,
    predict: ImagePredictor,
    num_classes: int,
    *,
    exports: Exports | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score the per-image protocol `predict` on every image of `dataset`, one at a time.

    The loop of the official U2PL and UniMatch evaluators (one image per forward, one process):
    the confusion matrix of each prediction against the label map `predict` returns (pixels
    labelled outside ``[0, num_classes)``, 255 included, not counted), summed over the dataset
    and reduced once their way (`metrics.scores_all_classes`: mean over all classes of
    I / (U + 1e-10)). Returns those scores plus ``hist`` (CPU int64) and ``num_images``. With `exports`, each prediction is written by
    `save_prediction` (it must have the image's size).
    """
    hist = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for i in _progress(range(len(dataset)), progress):
        img, label, name = dataset.load(i)
        pred, scored = predict(img, label)
        pred = pred.cpu()
        if scored is not None:
            hist += confusion_matrix(pred, scored, num_classes)
        if exports is not None:
            exports.write(pred.to(torch.uint8).numpy(), name, img, label)
    out = scores_all_classes(hist)
    out["hist"] = hist
    out["num_images"] = len(dataset)
    return out


def evaluate_dataset(
    model: nn.Module,
    dataset: Any,
    settings: EvalSettings | None = None,
    *,
    device: torch.device | str,
    rank: int = 0,
    world_size: int = 1,
    exports: Exports | None = None,
    progress: bool = True,
    branch: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Evaluate `model` on `dataset` (``len()``, ``load(i) -> (img RGB, label, name)``).

    model: a segmenter ``x -> logits``, or a two-branch model with `branch` (`select_branch`).
    settings: an `EvalSettings`; the older form passes its fields (and save_dir, palette,
    labelids_map, show for the exports) as keywords instead.

    Rank r evaluates images r, r+world_size, ... (no padded duplicates); the confusion matrix
    is summed over ranks with `all_reduce_hist` when torch.distributed is initialised (without
    it, the result is this shard's). Returns `metrics.scores(hist)` plus ``hist`` (CPU int64)
    and ``num_images`` (this rank's count). With `exports` the predictions are written by
    `save_prediction`. The model's train/eval mode is restored afterwards, so the training loop
    can call this between epochs.
    """
    unknown = set(fields) - FIELDS - set(_EXPORT_KEYS)
    if unknown:
        raise TypeError(f"evaluate_dataset: unexpected keyword(s) {', '.join(sorted(unknown))}")
    exports = _legacy_exports(exports, {k: fields.pop(k) for k in _EXPORT_KEYS if k in fields})
    settings = EvalSettings.coerce(settings, fields)
    device = torch.device(device)
    net = select_branch(model, branch) if branch is not None else model
    predictor = SlidingPredictor(settings, device)
    n = settings.num_classes
    hist = torch.zeros(n, n, dtype=torch.int64, device=device)
    iterator = _progress(range(rank, len(dataset), world_size), progress and rank == 0)
    was_training = model.training
    model.eval()
    count = 0
    try:
        with predictor.prepared(net):
            for i in iterator:
                img, label, name = dataset.load(i)
                pred = predictor.predict(net, img).argmax(0)
                if label is not None:
                    hist += confusion_matrix(pred, label, n)
                if exports is not None:
                    exports.write(pred.to(torch.uint8).cpu().numpy(), name, img, label)
                count += 1
    finally:
        model.train(was_training)
    hist = all_reduce_hist(hist)
    out = scores(hist)
    out["hist"] = hist.cpu()
    out["num_images"] = count
    return out
