"""CoSA's data: VOC and COCO-2014 image lists, image-level labels and the training view.

VOC (`dataloaders/voc.py`): the project's `SegDataset` reads both VOC layouts, the CPS one
(``train_aug/{image,label}``, ``val/...``) and the official CoSA / U2PL one (``JPEGImages/``,
``SegmentationClassAug/``); the official lists are ``train_aug.txt`` (10,582 ids) for training
and ``val.txt`` (1,449) for validation (`dataloaders/voc/`), 21 classes.

COCO-2014 (`dataloaders/coco.py:24-66`), 81 classes (background + the 80 COCO categories):

    <root>/train2014/<id>.jpg                      images (RGB; grey JPEGs are expanded)
    <root>/val2014/<id>.jpg
    <root>/SegmentationClass/train2014/<id>.png    class-index PNGs (0 = background, 1..80)
    <root>/SegmentationClass/val2014/<id>.png

with the official lists ``train.txt`` (82,081 ids), ``val.txt`` (40,137) and ``val_part.txt``
(4,999, the validation during training; ``--valfull`` uses ``val.txt``), one id such as
``COCO_train2014_000000000009`` per line; a list whose name starts with ``val`` reads the
``val2014`` folders, any other the folders named after the list (``train`` -> ``train2014``).
The official repository lists a COCO ``cls_labels_onehot.npy`` (`dataloaders/coco/`; it is
not in the snapshot read here): give it with ``--cosa_cls_labels``, else the vectors are
derived from the masks (`ImageLabels.from_masks`).

`CosaView` is the `DataView` of training: one stream of images with image-level labels (no
unlabeled set), keys ``wimg``, ``simg``, ``cls_label``, ``img_box`` (`main.py:114-121`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...data.datasets import COCO_CLASSES, COCO_TREE, SegDataset, missing_data_help
from ...data.splits import parse_split
from ...data.views import DataView, Loaded, RngFor
from ...errors import DataError
from .image_labels import ImageLabels, derive_table, write_cls_labels_npy
from .transforms import CosaTrainTransform, CosaTransformSettings

__all__ = [
    "COCO_CLASSES",
    "COCO_TREE",
    "DATASETS",
    "CocoDataset",
    "CosaView",
    "build_cosa_dataset",
    "list_ids",
    "load_image_labels",
    "write_toy_cls_labels",
]

DATASETS = ("voc", "coco")


class CocoDataset(SegDataset):
    """Images (and labels) of one COCO-2014 list in CoSA's layout (module docstring): a
    `SegDataset` with ``layout="coco"`` (the folders follow the list name, images decoded with
    PIL as `coco.py:46` does); the files are checked on construction."""

    def __init__(
        self,
        root: str | os.PathLike,
        list_path: str | os.PathLike,
        *,
        num_classes: int = len(COCO_CLASSES),
        with_labels: bool = True,
        label_policy: str = "error",
    ) -> None:
        if not os.path.isdir(root):
            raise DataError(f"COCO root not found: {os.fspath(root)}\nexpected:\n{COCO_TREE}")
        super().__init__(
            root,
            list_path,
            num_classes=num_classes,
            with_labels=with_labels,
            label_policy=label_policy,
            layout="coco",
            dataset_name="coco",
        )


def build_cosa_dataset(
    dataset: str,
    root: str | os.PathLike,
    list_path: str | os.PathLike,
    *,
    num_classes: int,
    with_labels: bool = True,
    label_policy: str = "error",
) -> Any:
    """The image list `list_path` under `root` for `dataset` ("voc": `SegDataset`, either VOC
    layout; "coco": `CocoDataset`). Training with an npy of image-level labels needs no masks
    (``with_labels=False``); deriving them or validating does."""
    if dataset == "voc":
        if not os.path.isdir(root):
            raise DataError(f"VOC root not found: {root}\n{missing_data_help('voc')}")
        return SegDataset(
            root,
            list_path,
            num_classes=num_classes,
            with_labels=with_labels,
            label_policy=label_policy,
            dataset_name="voc",
        )
    if dataset == "coco":
        return CocoDataset(
            root,
            list_path,
            num_classes=num_classes,
            with_labels=with_labels,
            label_policy=label_policy,
        )
    raise DataError(f"CoSA dataset {dataset!r}: expected one of {', '.join(DATASETS)}")


def list_ids(list_path: str | os.PathLike) -> list[str]:
    """The image ids (stems) of a CoSA list file (bare ids, one per line; DataError if bad)."""
    return [Path(img).stem for img, _ in parse_split(list_path, layout="coco").entries]


def load_image_labels(
    npy_path: str | os.PathLike | None,
    num_classes: int,
    names: Sequence[str] = (),
    list_path: str = "the training list",
) -> ImageLabels:
    """The image-level label source of a run: the official npy when `npy_path` is given (every
    id of `names` checked to be in it), else derived from the masks. Log `.description`."""
    if npy_path is None:
        return ImageLabels.from_masks(num_classes)
    labels = ImageLabels.from_npy(npy_path, num_classes)
    labels.check_ids(names, list_path)
    return labels


class CosaView(DataView):
    """One CoSA training slot: one image of the training list with its image-level labels.

    Keys: ``wimg``, ``simg`` (3,S,S) float32 (weak / strong views), ``cls_label`` (C-1,)
    float32, ``img_box`` (4,) int64 (y0, y1, x0, x1); with ``keep_mask=True`` also ``mask``
    (S,S) int64 and the crop retry of the mask variant (`VOC12SegDatasetNew`; diagnostics only,
    the official training never passes the mask). The transform draws from `rng(0)`.
    """

    streams = ("labeled",)
    keys = ("wimg", "simg", "cls_label", "img_box")
    # The official loader is endless (`main.py:106-112`): DistributedSampler passes, each a
    # permutation of the list run to its end (drop_last), across the 1000-iteration epochs.
    continuous_passes = True

    def __init__(
        self,
        labels: ImageLabels,
        settings: CosaTransformSettings | None = None,
        *,
        keep_mask: bool = False,
    ) -> None:
        self.labels = labels
        self.transform = CosaTrainTransform(settings)
        self.keep_mask = keep_mask
        if keep_mask:
            self.keys = (*CosaView.keys, "mask")

    @property
    def description(self) -> str:
        """The run log's line: where the image-level labels come from (`ImageLabels`)."""
        return self.labels.description

    def sample(self, loaded: Sequence[Loaded], rng: RngFor) -> dict[str, np.ndarray]:
        """The arrays of one slot from its decoded (image, label or None, name)."""
        img, mask, name = loaded[0]
        if self.keep_mask and mask is None:
            raise DataError(f"image {name!r} came without a label, but keep_mask=True needs it")
        out = self.transform(img, mask if self.keep_mask else None, rng=rng(0))
        out["cls_label"] = self.labels.vector(name, mask)
        return out


def write_toy_cls_labels(
    root: str | os.PathLike,
    num_classes: int,
    lists: Sequence[str] = ("train_aug.txt", "val.txt"),
    path: str | os.PathLike | None = None,
) -> Path:
    """Write ``cls_labels_onehot.npy`` (official format) for the images of `lists` under a VOC
    root (e.g. `cpcl.data.toy.make_toy_voc`'s), derived from their masks; returns its path
    (default ``<root>/cls_labels_onehot.npy``)."""
    root = Path(root)
    table: dict[str, np.ndarray] = {}
    for list_name in lists:
        ds = SegDataset(root, root / list_name, num_classes=num_classes, dataset_name="voc")
        loaded = (ds.load(i) for i in range(len(ds)))
        table.update(derive_table(((name, mask) for _, mask, name in loaded), num_classes))
    out = Path(path) if path is not None else root / "cls_labels_onehot.npy"
    write_cls_labels_npy(out, table)
    return out
