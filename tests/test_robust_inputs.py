"""Damaged inputs: truncated JPEG/PNG images and files that are no checkpoint at all."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cpcl.checkpoint import load_checkpoint
from cpcl.data.datasets import SegDataset, read_image, truncation
from cpcl.errors import CheckpointError, DataError

NOT_A_CHECKPOINT = "is not a checkpoint (corrupt or wrong file)"


# ------------------------------------------------------------------ images


def _photo(h: int = 375, w: int = 500) -> np.ndarray:
    """A smooth random RGB image (compresses like a photo, unlike pure noise)."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (9, 9), 3)


def _encoded(ext: str, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def _dataset(tmp_path: Path, image_bytes: dict[str, bytes], ext: str) -> SegDataset:
    """A label-free CPS-VOC dataset whose list names the images in the given order."""
    root = tmp_path / "voc"
    (root / "train_aug" / "image").mkdir(parents=True)
    for name, data in image_bytes.items():
        (root / "train_aug" / "image" / f"{name}{ext}").write_bytes(data)
    lst = root / "list.txt"
    lst.write_text("".join(f"train_aug/image/{n}{ext} None\n" for n in image_bytes))
    return SegDataset(root, lst, num_classes=21, with_labels=False)


@pytest.mark.parametrize(("ext", "kind"), [(".jpg", "JPEG"), (".png", "PNG")])
def test_truncated_image_is_a_data_error_naming_file_and_line(tmp_path, ext, kind):
    data = _encoded(ext, _photo())
    ds = _dataset(tmp_path, {"good": data, "cut": data[: len(data) // 3]}, ext)
    assert ds.load(0)[0].shape == (375, 500, 3)
    with pytest.raises(DataError) as exc:
        ds.load(1)
    message = str(exc.value)
    assert str(Path(ds.entries[1][0])) in message
    assert f"truncated {kind}" in message
    assert f"listed in {ds.list_path}, line 2" in message


def test_jpeg_cut_anywhere_is_detected():
    data = _encoded(".jpg", _photo(60, 80))
    for cut in range(3, len(data), 37):  # from the first marker on
        assert truncation(data[:cut]) is not None, cut
    assert truncation(data) is None


def test_progressive_jpeg_and_trailing_bytes_are_accepted(tmp_path):
    img = _photo(120, 160)
    _, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    progressive = buf.tobytes()
    assert progressive.count(b"\xff\xda") > 1  # several scans
    assert truncation(progressive) is None
    assert truncation(progressive[: 2 * len(progressive) // 3]) is not None
    # Some cameras and editors append data after the end-of-image marker.
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(_encoded(".jpg", img) + b"\x00" * 64 + b"TRAILER")
    np.testing.assert_array_equal(
        read_image(padded), cv2.cvtColor(cv2.imread(str(padded)), cv2.COLOR_BGR2RGB)
    )


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp"])
def test_complete_images_decode_exactly_as_cv2_imread(tmp_path, ext):
    path = tmp_path / f"x{ext}"
    path.write_bytes(_encoded(ext, _photo(75, 100)))
    expected = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(read_image(path), expected)


def test_empty_image_file_is_a_data_error(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.jpg \(0 bytes\): the file is empty"):
        read_image(tmp_path / "empty.jpg")


# ------------------------------------------------------------------ checkpoints


def _torch_file(path: Path, obj=None) -> bytes:
    torch.save({"model": {"w": torch.arange(1000.0)}} if obj is None else obj, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("random", r"it starts with the bytes [0-9a-f ]+, not a torch.save file"),
        ("empty", r"it is empty \(0 bytes\)"),
        ("html", r"it is text starting with '<!DOCTYPE html>"),
        ("pickle", r"it is a plain Python pickle, not written by torch.save"),
        ("truncated", r"it is a truncated or damaged zip archive \(\d+ bytes\)"),
        ("zip", r"it is a zip archive without the data.pkl entry"),
    ],
)
def test_files_that_are_no_checkpoint_are_named_so(tmp_path, name, detail):
    path = tmp_path / f"{name}.pth"
    if name == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif name == "empty":
        path.write_bytes(b"")
    elif name == "html":
        path.write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>")
    elif name == "pickle":
        path.write_bytes(pickle.dumps({"model": {"w": [1.0, 2.0]}}, protocol=2))
    elif name == "truncated":
        data = _torch_file(tmp_path / "full.pth")
        path.write_bytes(data[: len(data) // 2])
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("weights.bin", b"\x00" * 16)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    message = str(exc.value)
    assert message.startswith(f"{path} {NOT_A_CHECKPOINT}: "), message
    assert "arbitrary unpickling" not in message
    assert re.search(detail, message), message


class _Custom:  # a class stored by pickle: needs code to load
    pass


def test_code_carrying_checkpoint_is_refused_not_called_corrupt(tmp_path):
    path = tmp_path / "objects.pth"
    _torch_file(path, {"model": {"w": torch.zeros(2)}, "extra": _Custom()})
    with pytest.raises(CheckpointError, match="needs arbitrary unpickling") as exc:
        load_checkpoint(path)
    assert NOT_A_CHECKPOINT not in str(exc.value)


@pytest.mark.parametrize("zip_format", [True, False])
def test_real_checkpoints_still_load(tmp_path, zip_format):
    path = tmp_path / "w.pth"
    torch.save({"w": torch.arange(3.0)}, path, _use_new_zipfile_serialization=zip_format)
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(3.0))
