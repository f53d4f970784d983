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
The official repository ships no COCO ``cls_labels_onehot.npy``: derive the vectors from the
masks (`ImageLabels.from_masks`) or give a file.

`CosaView` is the `DataView` of training: one stream of images with image-level labels (no
unlabeled set), keys ``wimg``, ``simg``, ``cls_label``, ``img_box`` (`main.py:114-121`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...data.datasets import SegDataset, missing_data_help
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
    "load_image_labels",
    "write_toy_cls_labels",
]

DATASETS = ("voc", "coco")

# `coco.py:14` (its '_background_' is called 'background' here, as in VOC_CLASSES).
COCO_CLASSES: tuple[str, ...] = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

COCO_TREE = """\
<coco root>/                               (CoSA's COCO-2014 layout)
├── train2014/<id>.jpg                     82,783 images
├── val2014/<id>.jpg                       40,504 images
└── SegmentationClass/{train2014,val2014}/<id>.png   class-index PNGs (0-80)
lists: train.txt, val.txt, val_part.txt    one id (COCO_train2014_000000000009) per line"""


def _coco_folder(list_path: str) -> str:
    """`coco.py:34-36`: a list named val* reads val2014, any other <name>2014."""
    stem = Path(list_path).stem
    return "val2014" if stem[:3] == "val" else f"{stem}2014"


class CocoDataset(SegDataset):
    """Images (and labels) of one COCO-2014 list in CoSA's layout (module docstring).

    A `SegDataset` (same ``len()``, ``load(i) -> (uint8 RGB, label or None, id)``, `.names`,
    errors) whose entries follow the COCO folders; the files are checked on construction.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        list_path: str | os.PathLike,
        *,
        num_classes: int = len(COCO_CLASSES),
        with_labels: bool = True,
        label_policy: str = "error",
    ) -> None:
        # SegDataset.__init__ would read the ids as VOC ids; only its loading is reused.
        self.root, self.list_path = os.fspath(root), os.fspath(list_path)
        self.num_classes, self.with_labels = num_classes, with_labels
        self.label_policy, self.id_map = label_policy, None
        if not os.path.isdir(self.root):
            raise DataError(f"COCO root not found: {self.root}\nexpected:\n{COCO_TREE}")
        split = parse_split(self.list_path, layout="u2pl")  # bare ids: only the stems are used
        if split.format != "u2pl-voc":
            raise DataError(
                f"{self.list_path}: entries in format {split.format}; expected one COCO image "
                "id (COCO_train2014_000000000009) per line"
            )
        self.format, self.lines = "coco", split.lines
        self.names = [Path(img).stem for img, _ in split.entries]
        folder = _coco_folder(self.list_path)
        labels = os.path.join(self.root, "SegmentationClass", folder)
        self.entries = [
            (
                os.path.join(self.root, folder, f"{n}.jpg"),
                os.path.join(labels, f"{n}.png") if with_labels else None,
            )
            for n in self.names
        ]
        for col, kind in ((0, "image"), (1, "label")):
            missing = [
                i for i, e in enumerate(self.entries) if e[col] and not os.path.isfile(e[col])
            ]
            if missing:
                i = missing[0]
                raise DataError(
                    f"{kind} not found: {self.entries[i][col]} ({self._where(i)}; "
                    f"{len(missing)} of {len(self)} {kind}s missing)\nexpected:\n{COCO_TREE}"
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
