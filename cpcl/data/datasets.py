"""Datasets: class names and colours, image/label reading with clear errors, `SegDataset`.

Images are returned as HxWx3 uint8 RGB (the official loaders read BGR with OpenCV and flip
to RGB; COCO, CoSA's layout, and COCO 2017, UniMatch V2's, are decoded as their loaders do
it: PIL ``.convert('RGB')``, no EXIF rotation). Labels are HxW uint8 class indices with
255 = ignore. Labels are read with PIL so that palette ("P" mode) PNGs give their raw
indices; the official `cv2.IMREAD_GRAYSCALE` read would turn a palette PNG into luminance
values, i.e. wrong classes.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError, DataError
from ..presets.toy import exp_voc_toy_commands
from .ade20k import ADE20K_CLASSES, ADE20K_TREE
from .coco2017 import COCO2017_TREE
from .splits import parse_split

IGNORE_INDEX = 255
LABEL_POLICIES = ("error", "ignore")
SPLITS = ("labeled", "unlabeled", "val")

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tv/monitor",
)  # fmt: skip

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

CITYSCAPES_COLORS: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

# CoSA's COCO-2014 classes (`dataloaders/coco.py:14`; '_background_' called 'background').
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

# UniMatch V2's COCO 2017 classes (`util/classes.py` `CLASSES['coco'][:81]`): CoSA's names but
# "void" for index 0 (see cpcl.data.coco2017).
COCO2017_CLASSES: tuple[str, ...] = ("void", *COCO_CLASSES[1:])

# Cityscapes labelIds of the 19 evaluated classes, in trainId order (cityscapesScripts labels.py).
CITYSCAPES_EVAL_IDS: tuple[int, ...] = (
    7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33,
)  # fmt: skip

VOC_TREE = """\
DATA/pascal_voc/                 (C.dataset_path; CPS pascal_voc.zip layout)
├── train_aug/image/<id>.jpg     10,582 training images
├── train_aug/label/<id>.png     class-index PNGs (0-20, 255 = ignore)
├── val/image/<id>.jpg           1,449 validation images
├── val/label/<id>.png
├── val.txt                      one id per line
└── subset_train_aug/train_aug_{labeled,unlabeled}_1-{2,4,8,16}.txt
(a U2PL-style root with JPEGImages/ and SegmentationClassAug/ is also accepted)"""

CITYSCAPES_TREE = """\
DATA/city/                       (C.dataset_path; CPS city.zip layout)
├── images/{train,val}/<name>.png
├── segmentation/{train,val}/<name>_gtFine.png   trainId PNGs (0-18, 255 = ignore)
└── config_new/
    ├── train.txt, val.txt        '/images/...png<TAB>/segmentation/..._gtFine.png'
    └── subset_train/train_aug_{labeled,unlabeled}_1-{2,4,8,16}.txt
(build it from the official Cityscapes download with scripts/prepare_cityscapes.py)"""


COCO_TREE = """\
DATA/coco/                       (C.dataset_path; CoSA's COCO-2014 layout)
├── train2014/<id>.jpg           82,783 images (RGB; grey JPEGs are expanded)
├── val2014/<id>.jpg             40,504 images
├── SegmentationClass/{train2014,val2014}/<id>.png   class-index PNGs (0-80, 255 = ignore)
└── train.txt, val.txt, val_part.txt   CoSA's lists (dataloaders/coco/): one id
                                 (COCO_train2014_000000000009) per line"""


def cityscapes_id_lut() -> np.ndarray:
    """The 256-entry uint8 labelId -> trainId table (unlisted ids, e.g. 0-6, map to 255)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for train_id, label_id in enumerate(CITYSCAPES_EVAL_IDS):
        lut[label_id] = train_id
    return lut


def voc_palette() -> np.ndarray:
    """The standard PASCAL VOC colour map as a (256, 3) uint8 array (index 255 = (224,224,192))."""
    idx = np.arange(256)
    pal = np.zeros((256, 3), dtype=np.int64)
    ids = idx.copy()
    # Bits 0/1/2 of the index feed the top bits of R/G/B, the next three bits the next ones...
    for shift in range(7, -1, -1):
        for channel in range(3):
            pal[:, channel] |= ((ids >> channel) & 1) << shift
        ids = ids >> 3
    return pal.astype(np.uint8)


def _norm_name(dataset_name: str) -> str:
    key = dataset_name.lower()
    if key in ("voc", "pascal_voc", "pascal"):
        return "voc"
    if key in ("cityscapes", "city"):
        return "cityscapes"
    if key in ("coco", "ade20k", "coco2017"):
        return key
    raise DataError(
        f"dataset_name={dataset_name!r}: expected 'voc', 'cityscapes', 'coco', 'ade20k' or "
        "'coco2017'"
    )


def palette_for(dataset_name: str) -> np.ndarray:
    """(256, 3) uint8 colours for `dataset_name`; Cityscapes entries past class 18 are black;
    COCO and ADE20K use the PASCAL colour map too (CoSA and UniMatch V2 define none)."""
    if _norm_name(dataset_name) in ("voc", "coco", "ade20k", "coco2017"):
        return voc_palette()
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[: len(CITYSCAPES_COLORS)] = np.array(CITYSCAPES_COLORS, dtype=np.uint8)
    return pal


def class_names(dataset_name: str) -> tuple[str, ...]:
    """The class names of `dataset_name` in class-index order (official furnace names;
    COCO: CoSA's; ADE20K and COCO 2017: UniMatch V2's)."""
    names = {
        "voc": VOC_CLASSES,
        "cityscapes": CITYSCAPES_CLASSES,
        "coco": COCO_CLASSES,
        "ade20k": ADE20K_CLASSES,
        "coco2017": COCO2017_CLASSES,
    }
    return names[_norm_name(dataset_name)]


def resolve_class_names(
    dataset_name: str, num_classes: int, names: Sequence[str] | None = None
) -> tuple[str, ...]:
    """`num_classes` names: the given `names` (C.class_names), else the dataset's official ones.

    A model with fewer classes than the dataset (e.g. the toy data) uses the first names;
    one with more gets `class_<k>` for the extra indices.
    """
    if names:
        if len(names) != num_classes:
            raise ConfigError(
                f"C.class_names has {len(names)} names but C.num_classes = {num_classes}: "
                "expected one name per class"
            )
        return tuple(str(n) for n in names)
    official = class_names(dataset_name)[:num_classes]
    return official + tuple(f"class_{k}" for k in range(len(official), num_classes))


def missing_data_help(dataset_name: str | None) -> str:
    """The expected folder tree and the two ways forward, for a dataset that is not there."""

    make, train = exp_voc_toy_commands()
    return (
        f"expected this folder tree:\n{expected_tree(dataset_name)}\n"
        "two ways forward:\n"
        "  1. get the dataset as README.md (section Datasets) describes and put it there, or "
        "point --dataset_path at it;\n"
        "  2. or try everything on the built-in toy data first: `python scripts/quickstart.py` "
        "from the repository root (about 3 min on a CPU), or in exp_voc/:\n"
        f"       {make}\n       {train}"
    )


def expected_tree(dataset_name: str | None) -> str:
    """Human-readable folder tree expected under the dataset root (for error messages)."""
    if dataset_name is None:
        return VOC_TREE + "\n\nor\n\n" + CITYSCAPES_TREE
    trees = {
        "voc": VOC_TREE,
        "cityscapes": CITYSCAPES_TREE,
        "coco": COCO_TREE,
        "ade20k": ADE20K_TREE,
        "coco2017": COCO2017_TREE,
    }
    return trees[_norm_name(dataset_name)]


_JPEG_SOI, _JPEG_SOS, _JPEG_EOI = b"\xff\xd8\xff", b"\xff\xda", b"\xff\xd9"
_PNG_SIGNATURE, _PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def truncation(data: bytes) -> str | None:
    """Why the encoded JPEG/PNG `data` is incomplete, or None (other formats are not checked).

    Decoders fill a cut-off image with grey and only warn, so the end is checked first: a
    JPEG needs its end-of-image marker after the last start-of-scan (byte stuffing keeps
    FF D9 out of scan data; data appended after the marker is allowed), a PNG its IEND chunk.
    A complete file usually ends with the marker, which is found at once.
    """
    if data.startswith(_JPEG_SOI):
        if data.endswith(_JPEG_EOI):
            return None
        sos = data.rfind(_JPEG_SOS)
        if sos != -1 and data.find(_JPEG_EOI, sos) != -1:
            return None
        return "truncated JPEG: its end-of-image marker (FF D9) is missing"
    if data.startswith(_PNG_SIGNATURE):
        if data.rfind(_PNG_IEND) != -1:  # found at once when the chunk ends the file
            return None
        return "truncated PNG: its IEND chunk is missing"
    return None


def read_image(path: str | os.PathLike, decoder: str = "cv2") -> np.ndarray:
    """Read an image as an HxWx3 uint8 RGB array.

    decoder: "cv2" (`cv2.imdecode`, as the official VOC / Cityscapes loaders; applies the EXIF
    orientation) or "pil" (`PIL.Image.open(...).convert('RGB')`, as CoSA's COCO loader: no EXIF
    rotation, grey and CMYK JPEGs converted by PIL). A missing, unreadable, empty, truncated
    (`truncation`) or undecodable file is a DataError naming it; `SegDataset.load` adds the
    split-list line.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"image not found: {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise DataError(f"cannot read image {path}: {err.strerror or err}") from err
    problem = "the file is empty" if not data else truncation(data)
    if problem is not None:
        raise DataError(
            f"cannot use image {path} ({len(data)} bytes): {problem}; an interrupted copy or "
            "download? Copy or re-extract the file"
        )
    if decoder == "pil":
        try:
            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise DataError(f"cannot decode image {path}: {err}") from err
    # Same decoder (and EXIF orientation handling) as cv2.imread, on the bytes already read.
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"cannot decode image {path}: expected a JPEG/PNG image file")
    # cv2 gives BGR; the official datasets flip to RGB before normalisation.
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _valid_lut(num_classes: int) -> np.ndarray:
    valid = np.zeros(256, dtype=bool)
    valid[:num_classes] = True
    valid[IGNORE_INDEX] = True
    return valid


def read_label(
    path: str | os.PathLike,
    *,
    num_classes: int,
    policy: str = "error",
    id_map: np.ndarray | None = None,
) -> np.ndarray:
    """Read a label PNG as an HxW uint8 array of class indices (255 = ignore).

    Grayscale ("L", 16-bit "I") PNGs give their values and palette ("P") PNGs their raw
    indices. `id_map` (a 256-entry table, e.g. `cityscapes_id_lut()`) is applied first.
    Values outside [0, num_classes) and != 255: policy "error" raises DataError naming them,
    policy "ignore" sets them to 255.
    """
    path = os.fspath(path)
    if policy not in LABEL_POLICIES:
        raise DataError(f"label policy {policy!r}: expected one of {', '.join(LABEL_POLICIES)}")
    if not 1 <= num_classes <= IGNORE_INDEX:
        raise DataError(f"num_classes={num_classes}: expected 1..255 for uint8 labels")
    if not os.path.isfile(path):
        raise DataError(f"label not found: {path}")
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise DataError(
                    f"label {path} has PIL mode {mode!r}; expected a single-channel class-index "
                    "PNG (grayscale 'L' or palette 'P'), not a colour-coded image"
                )
            arr = np.asarray(im)  # "P": the raw palette indices, not colours
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot decode label {path}: {err}") from err
    if arr.ndim != 2:
        raise DataError(f"label {path} has shape {arr.shape}; expected HxW")
    if arr.dtype != np.uint8:
        too_big = np.unique(arr[(arr < 0) | (arr > 255)])
        if too_big.size:
            if id_map is not None or policy == "error":
                raise DataError(
                    f"label {path} holds values {too_big[:10].tolist()} outside 0..255; "
                    f"expected class indices 0..{num_classes - 1} or 255"
                )
            arr = np.where((arr < 0) | (arr > 255), IGNORE_INDEX, arr)
        arr = arr.astype(np.uint8)
    if id_map is not None:
        lut = np.asarray(id_map)
        if lut.shape != (256,):
            raise DataError(f"id_map for {path} has shape {lut.shape}; expected (256,)")
        arr = lut.astype(np.uint8)[arr]
    valid = _valid_lut(num_classes)
    ok = valid[arr]
    if not ok.all():
        if policy == "error":
            bad = np.unique(arr[~ok])
            raise DataError(
                f"label {path} holds values {bad[:20].tolist()} outside 0..{num_classes - 1} "
                "and not 255 (ignore); fix the label or set C.label_policy='ignore' to "
                "treat them as ignore"
            )
        arr = np.where(ok, arr, np.uint8(IGNORE_INDEX)).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _is_label_ids(label_path: str) -> bool:
    # Cityscapes "*_labelIds.png" hold the 34 raw ids; "*_labelTrainIds.png" and CPS
    # "*_gtFine.png" already hold train ids.
    return label_path.endswith("_labelIds.png")


class SegDataset:
    """Images (and labels) of one split list under a dataset root.

    root: dataset root; list_path: split list (any `read_split` format); entries are checked
    to exist on construction, so a broken list fails before training starts.
    `.entries` holds absolute (image, label or None) paths, `.names` the image stems.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        list_path: str | os.PathLike,
        *,
        num_classes: int,
        with_labels: bool = True,
        label_policy: str = "error",
        layout: str = "auto",
        id_map: np.ndarray | None = None,
        dataset_name: str | None = None,
    ) -> None:
        self.root = os.fspath(root)
        self.list_path = os.fspath(list_path)
        self.num_classes = num_classes
        self.with_labels = with_labels
        self.label_policy = label_policy
        self.id_map = id_map
        # CoSA's COCO loader and UniMatch V2's (`semi.py:33`) decode with PIL: no EXIF rotation.
        self.decoder = "pil" if layout == "coco" or dataset_name == "coco2017" else "cv2"
        if label_policy not in LABEL_POLICIES:
            raise DataError(
                f"label_policy={label_policy!r}: expected one of {', '.join(LABEL_POLICIES)}"
            )
        if not os.path.isdir(self.root):
            raise DataError(
                f"dataset root not found: {self.root}\n{missing_data_help(dataset_name)}"
            )
        if not os.path.isfile(self.list_path):
            raise DataError(
                f"split list not found: {self.list_path} (dataset root {self.root})\n"
                f"{missing_data_help(dataset_name)}"
            )
        split = parse_split(self.list_path, layout=layout, root=self.root)
        self.format = split.format
        self.lines: list[int] = split.lines
        self.entries: list[tuple[str, str | None]] = [
            (
                os.path.join(self.root, img),
                os.path.join(self.root, lab) if (lab is not None and with_labels) else None,
            )
            for img, lab in split.entries
        ]
        if with_labels:
            missing_label = [i for i, (_, lab) in enumerate(self.entries) if lab is None]
            if missing_label:
                i = missing_label[0]
                raise DataError(
                    f"{self.list_path}, line {self.lines[i]}: no label path for "
                    f"{self.entries[i][0]}, but this split needs labels "
                    f"({len(missing_label)} such lines)"
                )
        self.names: list[str] = [Path(img).stem for img, _ in self.entries]
        self._check_files(dataset_name)

    def _where(self, i: int) -> str:
        return f"listed in {self.list_path}, line {self.lines[i]}"

    def _check_files(self, dataset_name: str | None) -> None:
        for kind, col in (("image", 0), ("label", 1)):
            missing = [
                i
                for i, e in enumerate(self.entries)
                if e[col] is not None and not os.path.isfile(e[col])
            ]
            if missing:
                i = missing[0]
                more = (
                    f" ({len(missing)} of {len(self)} {kind}s missing)" if len(missing) > 1 else ""
                )
                if len(missing) == len(self):  # none there at all: the data was never copied
                    more += f"\n{missing_data_help(dataset_name)}"
                raise DataError(
                    f"{kind} not found: {self.entries[i][col]} ({self._where(i)}){more}"
                )

    def __len__(self) -> int:
        return len(self.entries)

    def _id_map_for(self, label_path: str) -> np.ndarray | None:
        if self.id_map is not None:
            return self.id_map
        return cityscapes_id_lut() if _is_label_ids(label_path) else None

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None, str]:
        """Return (image HxWx3 uint8 RGB, label HxW uint8 or None, name) of entry `i`."""
        img_path, lab_path = self.entries[i]
        try:
            img = read_image(img_path, self.decoder)
            label = None
            if lab_path is not None:
                label = read_label(
                    lab_path,
                    num_classes=self.num_classes,
                    policy=self.label_policy,
                    id_map=self._id_map_for(lab_path),
                )
        except DataError as err:
            raise DataError(f"{err} ({self._where(i)})") from err
        if label is not None and label.shape != img.shape[:2]:
            raise DataError(
                f"image {img_path} is {img.shape[0]}x{img.shape[1]} but label {lab_path} is "
                f"{label.shape[0]}x{label.shape[1]} ({self._where(i)}); expected the same size"
            )
        return img, label, self.names[i]


def build_dataset(C, split: str) -> SegDataset:
    """The `SegDataset` of a finalized config for split "labeled", "unlabeled" or "val".

    Reads C.dataset_path, C.train_source / C.unsup_source / C.eval_source, C.num_classes,
    C.label_policy and C.dataset_name. The unlabeled split is built without labels.
    """
    sources = {"labeled": "train_source", "unlabeled": "unsup_source", "val": "eval_source"}
    if split not in sources:
        raise DataError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    key = sources[split]
    for k in ("dataset_path", key):
        if C.get(k) is None:
            raise DataError(f"C.{k} is not set; call cpcl.engine.resolve.finalize(C) first")
    return SegDataset(
        C.dataset_path,
        C[key],
        num_classes=C.num_classes,
        with_labels=split != "unlabeled",
        label_policy=C.get("label_policy", "error"),
        layout="coco" if C.get("dataset_name") == "coco" else "auto",
        dataset_name=C.get("dataset_name"),
    )
