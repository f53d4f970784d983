"""Image-level class labels of CoSA: which foreground classes an image shows.

The official loaders (`dataloaders/voc.py:38-40`, `coco.py:20-22`) read a pickled dict
``{image id: float32 (C-1,) 0/1 vector}`` from ``<name_list_dir>/cls_labels_onehot.npy``
(column k = class k+1; the background is not a column). The VOC file of the official repository
holds the 10,582 train_aug and 1,449 val ids.

Two sources, one object (`ImageLabels`):

* `ImageLabels.from_npy(path, num_classes)`: the official file. It is a pickle, so it is read
  with a restricted unpickler that only rebuilds numpy arrays (`read_cls_labels_npy`): a crafted
  file cannot run code, and anything that is not a dict of ids to 1-D 0/1 vectors of length
  C-1 is a DataError naming the file and the first bad id.
* `ImageLabels.from_masks(num_classes)`: derived from each image's segmentation label, lazily,
  per sample, from the mask the loader decodes anyway (classes present, 0 = background and 255
  = ignore excluded; `class_vector`); the official `_to_onehot` (`voc.py:195-207`) rule. The cost
  is one `np.bincount` per sample (under 1 ms for a 500x375 VOC mask), so nothing is cached;
  `write_cls_labels_npy` writes the official-format file once for a whole list when wanted.

`ImageLabels.description` is one line for the run log saying which source is used.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import DataError
from ...fileio import atomic_write_bytes

__all__ = [
    "ImageLabels",
    "class_vector",
    "compare_with_masks",
    "derive_table",
    "read_cls_labels_npy",
    "write_cls_labels_npy",
]

IGNORE_INDEX = 255


def class_vector(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 (num_classes - 1,) 0/1 vector of the foreground classes present in `mask`.

    Classes 1..num_classes-1 count; 0 (background) and 255 (ignore) are left out. Any other
    value (>= num_classes) is a DataError: the mask does not fit the class count.
    """
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise DataError(
            f"segmentation label of shape {getattr(mask, 'shape', None)}: expected an HxW array"
        )
    if mask.size and (int(mask.min()) < 0 or int(mask.max()) > IGNORE_INDEX):
        raise DataError(
            f"segmentation label holds values in {int(mask.min())}..{int(mask.max())}; "
            "expected 0..255"
        )
    counts = np.bincount(np.asarray(mask, dtype=np.int64).ravel(), minlength=256)
    bad = [int(v) for v in np.flatnonzero(counts[num_classes:IGNORE_INDEX]) + num_classes]
    if bad:
        raise DataError(
            f"segmentation label holds values {bad[:10]} outside 0..{num_classes - 1} and "
            f"not {IGNORE_INDEX}"
        )
    return (counts[1:num_classes] > 0).astype(np.float32)


# ---------------------------------------------------------------------------- reading the npy


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only callables the official file's pickle may name: numpy array reconstruction."""
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct
    scalar = np.float32(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = reconstruct
        allowed[(mod, "scalar")] = scalar
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dicts, lists, strings and numbers; refuses every other global."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def _load_object_npy(path: str) -> Any:
    """The object stored in the 0-d object array of the .npy file `path` (restricted pickle)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            if dtype != np.dtype(object):
                raise DataError(
                    f"image-level labels {path}: a numeric {dtype} array of shape {shape}; "
                    "expected the official pickled dict {image id: (C-1,) 0/1 vector} "
                    "(np.save of a dict)"
                )
            obj = _ArrayUnpickler(f).load()
    except FileNotFoundError as err:
        raise DataError(f"image-level labels file not found: {path}") from err
    except DataError:
        raise
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, TypeError) as err:
        raise DataError(
            f"cannot read image-level labels {path}: {err}; expected the official "
            "cls_labels_onehot.npy (a pickled dict {image id: (C-1,) 0/1 vector})"
        ) from err
    if isinstance(obj, np.ndarray) and obj.shape == () and obj.dtype == object:
        obj = obj.item()
    return obj


def _check_vector(path: str, key: str, value: Any, num_classes: int) -> np.ndarray:
    """`value` as a float32 (C-1,) 0/1 vector, or a DataError naming `path` and `key`."""
    want = num_classes - 1
    where = f"image-level labels {path}, id {key!r}"
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        raise DataError(
            f"{where}: a {type(value).__name__} of dtype {getattr(value, 'dtype', None)}; "
            f"expected a numeric 1-D array of {want} values (one per foreground class)"
        )
    if value.ndim != 1 or value.shape[0] != want:
        raise DataError(
            f"{where}: shape {value.shape}; expected ({want},) for {num_classes} classes "
            "(the background has no column)"
        )
    vec = value.astype(np.float32)
    if not np.all((vec == 0) | (vec == 1)):
        raise DataError(f"{where}: values {np.unique(vec)[:10].tolist()}; expected only 0 and 1")
    return vec


def read_cls_labels_npy(path: str | os.PathLike, num_classes: int) -> dict[str, np.ndarray]:
    """The official ``cls_labels_onehot.npy`` at `path` as {id: float32 (num_classes-1,)}.

    Read without running pickled code (only numpy array reconstruction is allowed). Raises
    DataError naming the file for a missing / unreadable file, a content that is not a dict,
    a non-string id, or a vector that is not 1-D, numeric, of length num_classes-1 and 0/1.
    """
    path = os.fspath(path)
    if num_classes < 2:
        raise DataError(f"num_classes={num_classes}: expected >= 2 (background + a class)")
    obj = _load_object_npy(path)
    if not isinstance(obj, dict):
        raise DataError(
            f"image-level labels {path} hold a {type(obj).__name__}; expected a dict "
            "{image id: (C-1,) 0/1 vector}"
        )
    if not obj:
        raise DataError(
            f"image-level labels {path} hold an empty dict; expected one entry per image"
        )
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise DataError(
                f"image-level labels {path}: id {key!r} is a {type(key).__name__}; expected "
                "string image ids such as '2007_000032'"
            )
        out[str(key)] = _check_vector(path, str(key), value, num_classes)
    return out


def write_cls_labels_npy(path: str | os.PathLike, labels: Mapping[str, np.ndarray]) -> None:
    """Write `labels` ({id: (C-1,) vector}) in the official format (np.save of a dict), atomically."""
    buf = io.BytesIO()
    np.save(buf, {str(k): np.asarray(v, dtype=np.float32) for k, v in labels.items()})
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------- the label source


@dataclass(frozen=True)
class ImageLabels:
    """Where a sample's class vector comes from: the official npy (`table`) or its mask.

    Picklable (it travels to the loader workers). `vector(name, mask)` returns the float32
    (num_classes-1,) vector of one image; `check_ids(names)` fails early (DataError) when the
    table misses ids of a training list.
    """

    num_classes: int
    table: Mapping[str, np.ndarray] | None = None
    source: str = "masks"

    @classmethod
    def from_npy(cls, path: str | os.PathLike, num_classes: int) -> ImageLabels:
        """The official file at `path` (`read_cls_labels_npy`)."""
        table = read_cls_labels_npy(path, num_classes)
        return cls(num_classes, table, os.fspath(path))

    @classmethod
    def from_masks(cls, num_classes: int) -> ImageLabels:
        """Vectors derived from each image's segmentation label (`class_vector`)."""
        if num_classes < 2:
            raise DataError(f"num_classes={num_classes}: expected >= 2 (background + a class)")
        return cls(num_classes)

    @property
    def needs_masks(self) -> bool:
        """True when the training images must be loaded with their segmentation labels."""
        return self.table is None

    @property
    def description(self) -> str:
        """One line for the run log: which source the image-level labels come from."""
        if self.table is None:
            return (
                f"image-level labels: derived from the segmentation labels (classes present, "
                f"0 and {IGNORE_INDEX} excluded), per sample, {self.num_classes - 1} columns"
            )
        return (
            f"image-level labels: {self.source} ({len(self.table)} ids, "
            f"{self.num_classes - 1} columns)"
        )

    def check_ids(self, names: Iterable[str], list_path: str = "the training list") -> None:
        """DataError naming the ids of `names` the table lacks (the first 5, their count, the
        file and the list); nothing to check for labels derived from masks."""
        if self.table is None:
            return
        missing = [n for n in names if n not in self.table]
        if missing:
            shown = ", ".join(repr(n) for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DataError(
                f"image-level labels {self.source} have no entry for {len(missing)} ids of "
                f"{list_path}: {shown}; expected one vector per listed image (give the file "
                "that covers the list, or --cosa_cls_labels=masks to derive them from the masks)"
            )

    def vector(self, name: str, mask: np.ndarray | None = None) -> np.ndarray:
        """float32 (num_classes-1,) class vector of image `name` (from its `mask` if derived)."""
        if self.table is not None:
            try:
                return self.table[name].copy()
            except KeyError:
                raise DataError(
                    f"image-level labels {self.source} have no entry for image {name!r}"
                ) from None
        if mask is None:
            raise DataError(
                f"image {name!r} came without a segmentation label, but the image-level labels "
                "are derived from the labels; give the official cls_labels_onehot.npy instead"
            )
        try:
            return class_vector(mask, self.num_classes)
        except DataError as err:
            raise DataError(f"image {name!r}: {err}") from err


def compare_with_masks(
    labels: ImageLabels, samples: Iterable[tuple[str, np.ndarray]]
) -> dict[str, Any]:
    """Check the npy table of `labels` against the vectors derived from masks, for the
    (name, mask) `samples` it covers: {"compared", "disagree" (ids), "not_in_table" (count),
    "all_ignore" (ids of masks without a valid pixel: their derived vector is empty, as the
    official `_to_onehot` gives)}."""
    if labels.table is None:
        raise DataError("compare_with_masks: the labels are derived from masks; give an npy")
    out: dict[str, Any] = {"compared": 0, "disagree": [], "not_in_table": 0, "all_ignore": []}
    for name, mask in samples:
        if not np.any(mask != IGNORE_INDEX):
            out["all_ignore"].append(name)
        if name not in labels.table:
            out["not_in_table"] += 1
            continue
        out["compared"] += 1
        if not np.array_equal(labels.table[name], class_vector(mask, labels.num_classes)):
            out["disagree"].append(name)
    return out


def derive_table(
    masks: Iterable[tuple[str, np.ndarray]], num_classes: int
) -> dict[str, np.ndarray]:
    """{name: class_vector(mask)} of (name, mask) pairs, e.g. to write with `write_cls_labels_npy`."""
    return {name: class_vector(mask, num_classes) for name, mask in masks}
