"""Split lists: every public list parses to its documented size, partitions and equalities hold,
each format maps to the documented paths, and bad lists fail with the file and line named."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest

from cpcl.data.splits import (
    check_disjoint,
    parse_split,
    partition,
    read_split,
    write_split,
)
from cpcl.errors import DataError

REPO = Path(__file__).resolve().parents[1]

CPS = "charlesCXK-TorchSemiSeg"
U2PL = "Haochen-Wang409-U2PL"
UNI = "LiheYoung-UniMatch"
UNI2 = "LiheYoung-UniMatch-V2"

# Entry counts from the tables of ../shared/splits/README.md (non-empty lines; no list there
# has duplicate lines).
EXPECTED_COUNTS: dict[str, int] = {
    f"{CPS}/DATA/city/config_new/coarse_split/train_extra_3000.txt": 3000,
    f"{CPS}/DATA/city/config_new/coarse_split/train_extra_6000.txt": 6000,
    f"{CPS}/DATA/city/config_new/coarse_split/train_extra_9000.txt": 9000,
    f"{CPS}/DATA/city/config_new/subset_train/train_aug_labeled_1-16.txt": 186,
    f"{CPS}/DATA/city/config_new/subset_train/train_aug_labeled_1-2.txt": 1488,
    f"{CPS}/DATA/city/config_new/subset_train/train_aug_labeled_1-4.txt": 744,
    f"{CPS}/DATA/city/config_new/subset_train/train_aug_labeled_1-8.txt": 372,
    f"{CPS}/DATA/city/config_new/subset_train/train_aug_unlabeled_1-16.txt": 2789,
    f"{CPS}/DATA/city/config_new/subset_train/train_aug_unlabeled_1-2.txt": 1487,
    f"{CPS}/DATA/city/config_new/subset_train/train_aug_unlabeled_1-4.txt": 2231,
    f"{CPS}/DATA/city/config_new/subset_train/train_aug_unlabeled_1-8.txt": 2603,
    f"{CPS}/DATA/city/config_new/test.txt": 1525,
    f"{CPS}/DATA/city/config_new/train.txt": 2975,
    f"{CPS}/DATA/city/config_new/train_val.txt": 3475,
    f"{CPS}/DATA/city/config_new/val.txt": 500,
    f"{CPS}/DATA/pascal_voc/subset_train_aug/pseudoseg_labeled_1-16.txt": 92,
    f"{CPS}/DATA/pascal_voc/subset_train_aug/pseudoseg_labeled_1-2.txt": 732,
    f"{CPS}/DATA/pascal_voc/subset_train_aug/pseudoseg_labeled_1-4.txt": 366,
    f"{CPS}/DATA/pascal_voc/subset_train_aug/pseudoseg_labeled_1-8.txt": 183,
    f"{CPS}/DATA/pascal_voc/subset_train_aug/pseudoseg_unlabeled_1-16.txt": 1373,
    f"{CPS}/DATA/pascal_voc/subset_train_aug/pseudoseg_unlabeled_1-2.txt": 733,
    f"{CPS}/DATA/pascal_voc/subset_train_aug/pseudoseg_unlabeled_1-4.txt": 1099,
    f"{CPS}/DATA/pascal_voc/subset_train_aug/pseudoseg_unlabeled_1-8.txt": 1282,
    f"{CPS}/DATA/pascal_voc/subset_train_aug/train_aug_labeled_1-16.txt": 662,
    f"{CPS}/DATA/pascal_voc/subset_train_aug/train_aug_labeled_1-2.txt": 5291,
    f"{CPS}/DATA/pascal_voc/subset_train_aug/train_aug_labeled_1-4.txt": 2646,
    f"{CPS}/DATA/pascal_voc/subset_train_aug/train_aug_labeled_1-8.txt": 1323,
    f"{CPS}/DATA/pascal_voc/subset_train_aug/train_aug_unlabeled_1-16.txt": 9920,
    f"{CPS}/DATA/pascal_voc/subset_train_aug/train_aug_unlabeled_1-2.txt": 5291,
    f"{CPS}/DATA/pascal_voc/subset_train_aug/train_aug_unlabeled_1-4.txt": 7936,
    f"{CPS}/DATA/pascal_voc/subset_train_aug/train_aug_unlabeled_1-8.txt": 9259,
    f"{U2PL}/data/splits/cityscapes/1488/labeled.txt": 1488,
    f"{U2PL}/data/splits/cityscapes/1488/unlabeled.txt": 1487,
    f"{U2PL}/data/splits/cityscapes/186/labeled.txt": 186,
    f"{U2PL}/data/splits/cityscapes/186/unlabeled.txt": 2789,
    f"{U2PL}/data/splits/cityscapes/372/labeled.txt": 372,
    f"{U2PL}/data/splits/cityscapes/372/unlabeled.txt": 2603,
    f"{U2PL}/data/splits/cityscapes/744/labeled.txt": 744,
    f"{U2PL}/data/splits/cityscapes/744/unlabeled.txt": 2231,
    f"{U2PL}/data/splits/cityscapes/val.txt": 500,
    f"{U2PL}/data/splits/pascal/1323/labeled.txt": 1323,
    f"{U2PL}/data/splits/pascal/1323/unlabeled.txt": 9259,
    f"{U2PL}/data/splits/pascal/1464/labeled.txt": 1464,
    f"{U2PL}/data/splits/pascal/1464/unlabeled.txt": 9118,
    f"{U2PL}/data/splits/pascal/183/labeled.txt": 183,
    f"{U2PL}/data/splits/pascal/183/unlabeled.txt": 10399,
    f"{U2PL}/data/splits/pascal/2646/labeled.txt": 2646,
    f"{U2PL}/data/splits/pascal/2646/unlabeled.txt": 7936,
    f"{U2PL}/data/splits/pascal/366/labeled.txt": 366,
    f"{U2PL}/data/splits/pascal/366/unlabeled.txt": 10216,
    f"{U2PL}/data/splits/pascal/5291/labeled.txt": 5291,
    f"{U2PL}/data/splits/pascal/5291/unlabeled.txt": 5291,
    f"{U2PL}/data/splits/pascal/662/labeled.txt": 662,
    f"{U2PL}/data/splits/pascal/662/unlabeled.txt": 9920,
    f"{U2PL}/data/splits/pascal/732/labeled.txt": 732,
    f"{U2PL}/data/splits/pascal/732/unlabeled.txt": 9850,
    f"{U2PL}/data/splits/pascal/92/labeled.txt": 92,
    f"{U2PL}/data/splits/pascal/92/unlabeled.txt": 10490,
    f"{U2PL}/data/splits/pascal/val.txt": 1449,
    f"{UNI}/splits/cityscapes/1_16/labeled.txt": 186,
    f"{UNI}/splits/cityscapes/1_16/unlabeled.txt": 2789,
    f"{UNI}/splits/cityscapes/1_2/labeled.txt": 1488,
    f"{UNI}/splits/cityscapes/1_2/unlabeled.txt": 1487,
    f"{UNI}/splits/cityscapes/1_30/labeled.txt": 100,
    f"{UNI}/splits/cityscapes/1_30/unlabeled.txt": 2875,
    f"{UNI}/splits/cityscapes/1_4/labeled.txt": 744,
    f"{UNI}/splits/cityscapes/1_4/unlabeled.txt": 2231,
    f"{UNI}/splits/cityscapes/1_8/labeled.txt": 372,
    f"{UNI}/splits/cityscapes/1_8/unlabeled.txt": 2603,
    f"{UNI}/splits/cityscapes/val.txt": 500,
    f"{UNI}/splits/pascal/1464/labeled.txt": 1464,
    f"{UNI}/splits/pascal/1464/unlabeled.txt": 9118,
    f"{UNI}/splits/pascal/183/labeled.txt": 183,
    f"{UNI}/splits/pascal/183/unlabeled.txt": 10399,
    f"{UNI}/splits/pascal/1_16/labeled.txt": 662,
    f"{UNI}/splits/pascal/1_16/unlabeled.txt": 9920,
    f"{UNI}/splits/pascal/1_4/labeled.txt": 2646,
    f"{UNI}/splits/pascal/1_4/unlabeled.txt": 7936,
    f"{UNI}/splits/pascal/1_8/labeled.txt": 1323,
    f"{UNI}/splits/pascal/1_8/unlabeled.txt": 9259,
    f"{UNI}/splits/pascal/366/labeled.txt": 366,
    f"{UNI}/splits/pascal/366/unlabeled.txt": 10216,
    f"{UNI}/splits/pascal/732/labeled.txt": 732,
    f"{UNI}/splits/pascal/732/unlabeled.txt": 9850,
    f"{UNI}/splits/pascal/92/labeled.txt": 92,
    f"{UNI}/splits/pascal/92/unlabeled.txt": 10490,
    f"{UNI}/splits/pascal/train_aug.txt": 10582,
    f"{UNI}/splits/pascal/u2pl_1_16/labeled.txt": 662,
    f"{UNI}/splits/pascal/u2pl_1_16/unlabeled.txt": 9920,
    f"{UNI}/splits/pascal/u2pl_1_4/labeled.txt": 2646,
    f"{UNI}/splits/pascal/u2pl_1_4/unlabeled.txt": 7936,
    f"{UNI}/splits/pascal/u2pl_1_8/labeled.txt": 1323,
    f"{UNI}/splits/pascal/u2pl_1_8/unlabeled.txt": 9259,
    f"{UNI}/splits/pascal/val.txt": 1449,
    f"{UNI2}/splits/cityscapes/all/train.txt": 2975,
    f"{UNI2}/splits/cityscapes/all/unlabeled.txt": 19998,
    f"{UNI2}/splits/pascal/all/labeled.txt": 10582,
}

# Format each folder's lists must be detected as.
_FORMATS = {
    f"{CPS}/DATA/city": "cps-city",
    f"{CPS}/DATA/pascal_voc": "cps-voc",
    f"{U2PL}/data/splits/cityscapes": "u2pl-city",
    f"{U2PL}/data/splits/pascal": "u2pl-voc",
    UNI: "pairs",
}


def _layout(rel: str) -> str:
    return "u2pl" if rel.startswith(f"{U2PL}/data/splits/pascal") else "cps"


_CACHE: dict[str, list] = {}


def _read(splits_dir: Path, rel: str) -> list[tuple[str, str | None]]:
    # Many tests reuse the big lists; parse each once per session.
    if rel not in _CACHE:
        _CACHE[rel] = read_split(splits_dir / rel, layout=_layout(rel))
    return _CACHE[rel]


def _ids(splits_dir: Path, rel: str) -> set[str]:
    """Image names without folder, extension or the Cityscapes `_leftImg8bit` suffix."""
    return {Path(img).stem.removesuffix("_leftImg8bit") for img, _ in _read(splits_dir, rel)}


def test_every_public_list_parses_to_its_documented_count(splits_dir: Path) -> None:
    found = sorted(str(p.relative_to(splits_dir)) for p in splits_dir.rglob("*.txt"))
    assert found == sorted(EXPECTED_COUNTS), "list files differ from the README tables"
    for rel, count in EXPECTED_COUNTS.items():
        split = parse_split(splits_dir / rel, layout=_layout(rel))
        _CACHE[rel] = split.entries
        assert len(split.entries) == count, rel
        expected_fmt = next((f for k, f in _FORMATS.items() if rel.startswith(k + "/")), "pairs")
        assert split.format == expected_fmt, rel


def _pairs() -> list[tuple[str, str, int]]:
    """(labeled, unlabeled, expected union size) for every public labeled/unlabeled pair."""
    out = []
    for rel in EXPECTED_COUNTS:
        if "unlabeled" in rel or "labeled" not in rel or "/all/" in rel:
            continue
        other = rel.replace("labeled", "unlabeled")
        total = 2975 if "city" in rel else 10582
        if "pseudoseg" in rel:
            total = 1464
        out.append((rel, other, total))
    return out


_PSEUDOSEG_SHARED = {
    "1-2.txt": "2009_000662",
    "1-4.txt": "2007_000032",
    "1-8.txt": "2009_001036",
    "1-16.txt": "2008_004822",
}


def test_labeled_unlabeled_pairs_are_disjoint_and_complete(splits_dir: Path) -> None:
    pairs = _pairs()
    assert len(pairs) == 12 + 13 + 16  # CPS (city, VOC, pseudoseg), U2PL, UniMatch
    for lab_rel, unlab_rel, total in pairs:
        lab, unlab = _read(splits_dir, lab_rel), _read(splits_dir, unlab_rel)
        if "pseudoseg" in lab_rel:
            # Known CPS quirk: one image in both parts, reported, not fatal. The image differs
            # per ratio (the splits README names only the 1/8 one, 2009_001036).
            img = _PSEUDOSEG_SHARED[lab_rel.rsplit("_", 1)[1]]
            with pytest.warns(
                UserWarning, match=rf"share 1 of 1464 images \(train_aug/image/{img}"
            ):
                shared = check_disjoint(lab, unlab, names=(lab_rel, unlab_rel))
            assert shared == [f"train_aug/image/{img}.jpg"]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert check_disjoint(lab, unlab) == []
        assert len({i for i, _ in lab} | {i for i, _ in unlab}) == total, lab_rel


def test_documented_set_equalities(splits_dir: Path) -> None:
    cps_voc = f"{CPS}/DATA/pascal_voc/subset_train_aug"
    cps_city = f"{CPS}/DATA/city/config_new/subset_train"
    u2pl = f"{U2PL}/data/splits"
    for n in (16, 8, 4):
        for part in ("labeled", "unlabeled"):
            assert _ids(splits_dir, f"{cps_voc}/train_aug_{part}_1-{n}.txt") == _ids(
                splits_dir, f"{UNI}/splits/pascal/1_{n}/{part}.txt"
            )
    for n in (16, 8, 4, 2):
        for part in ("labeled", "unlabeled"):
            assert _ids(splits_dir, f"{cps_city}/train_aug_{part}_1-{n}.txt") == _ids(
                splits_dir, f"{UNI}/splits/cityscapes/1_{n}/{part}.txt"
            )
    for count, n in ((92, 16), (183, 8), (366, 4)):
        assert _ids(splits_dir, f"{u2pl}/pascal/{count}/labeled.txt") == _ids(
            splits_dir, f"{cps_voc}/pseudoseg_labeled_1-{n}.txt"
        )
    shared_732 = _ids(splits_dir, f"{u2pl}/pascal/732/labeled.txt") & _ids(
        splits_dir, f"{cps_voc}/pseudoseg_labeled_1-2.txt"
    )
    assert len(shared_732) == 371
    for count in (92, 183, 366, 732, 1464):
        for part in ("labeled", "unlabeled"):
            assert _ids(splits_dir, f"{UNI}/splits/pascal/{count}/{part}.txt") == _ids(
                splits_dir, f"{u2pl}/pascal/{count}/{part}.txt"
            )
    for count, n, shared in ((662, 16, 43), (1323, 8, 172), (2646, 4, 666), (5291, 2, 2690)):
        u2pl_ids = _ids(splits_dir, f"{u2pl}/pascal/{count}/labeled.txt")
        assert len(u2pl_ids & _ids(splits_dir, f"{cps_voc}/train_aug_labeled_1-{n}.txt")) == shared
        if n != 2:
            assert u2pl_ids == _ids(splits_dir, f"{UNI}/splits/pascal/u2pl_1_{n}/labeled.txt")
    for count, n, shared in ((186, 16, 8), (372, 8, 48), (744, 4, 182), (1488, 2, 720)):
        u2pl_ids = _ids(splits_dir, f"{u2pl}/cityscapes/{count}/labeled.txt")
        assert len(u2pl_ids & _ids(splits_dir, f"{cps_city}/train_aug_labeled_1-{n}.txt")) == shared
    train_aug = _ids(splits_dir, f"{UNI}/splits/pascal/train_aug.txt")
    assert train_aug == _ids(splits_dir, f"{cps_voc}/train_aug_labeled_1-8.txt") | _ids(
        splits_dir, f"{cps_voc}/train_aug_unlabeled_1-8.txt"
    )
    assert train_aug == _ids(splits_dir, f"{UNI2}/splits/pascal/all/labeled.txt")


def test_cps_pseudoseg_quirks_are_read(splits_dir: Path) -> None:
    rel = f"{CPS}/DATA/pascal_voc/subset_train_aug/pseudoseg_labeled_1-16.txt"
    raw = (splits_dir / rel).read_bytes()
    assert b"\r\n" in raw and not raw.endswith(b"\n")  # CRLF and no final newline
    entries = _read(splits_dir, rel)
    assert entries[0] == ("train_aug/image/2007_000733.jpg", "train_aug/label/2007_000733.png")
    assert all("\r" not in img and "\r" not in lab for img, lab in entries)


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def test_each_format_maps_to_exact_paths(tmp_path: Path) -> None:
    ids = _write(tmp_path, "train_aug_labeled_1-8.txt", "2007_000032\r\n\n2007_000250")
    assert read_split(ids) == [
        ("train_aug/image/2007_000032.jpg", "train_aug/label/2007_000032.png"),
        ("train_aug/image/2007_000250.jpg", "train_aug/label/2007_000250.png"),
    ]
    val = _write(tmp_path, "val.txt", "2007_000033\n")
    assert read_split(val) == [("val/image/2007_000033.jpg", "val/label/2007_000033.png")]
    assert read_split(ids, layout="u2pl")[0] == (
        "JPEGImages/2007_000032.jpg",
        "SegmentationClassAug/2007_000032.png",
    )
    assert read_split(val, layout="u2pl")[0][0] == "JPEGImages/2007_000033.jpg"
    city = _write(
        tmp_path,
        "city.txt",
        "/images/train/jena_000078_000019.png\t/segmentation/train/jena_000078_000019_gtFine.png\n",
    )
    assert read_split(city) == [
        ("images/train/jena_000078_000019.png", "segmentation/train/jena_000078_000019_gtFine.png")
    ]
    u2pl_city = _write(
        tmp_path, "u2pl_city.txt", "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png"
    )
    assert read_split(u2pl_city) == [
        (
            "leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png",
            "gtFine/train/aachen/aachen_000001_000019_gtFine_labelTrainIds.png",
        )
    ]
    uni = _write(
        tmp_path,
        "uni.txt",
        "JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png\n"
        "JPEGImages/2007_000039.jpg None\n",
    )
    assert read_split(uni) == [
        ("JPEGImages/2007_000032.jpg", "SegmentationClass/2007_000032.png"),
        ("JPEGImages/2007_000039.jpg", None),
    ]


def test_auto_layout_follows_the_folders_under_root(tmp_path: Path) -> None:
    lst = _write(tmp_path, "l.txt", "2007_000032\n")
    u2pl_root = tmp_path / "u2pl"
    (u2pl_root / "JPEGImages").mkdir(parents=True)
    cps_root = tmp_path / "cps"
    (cps_root / "train_aug").mkdir(parents=True)
    assert read_split(lst, root=u2pl_root)[0][0] == "JPEGImages/2007_000032.jpg"
    assert read_split(lst, root=cps_root)[0][0] == "train_aug/image/2007_000032.jpg"
    assert read_split(lst, root=tmp_path / "empty")[0][0] == "train_aug/image/2007_000032.jpg"


def test_duplicates_are_kept_once_and_reported_once(tmp_path: Path) -> None:
    lst = _write(tmp_path, "dups.txt", "a_1\nb_2\na_1\na_1\n")
    with pytest.warns(UserWarning, match=r"dups\.txt: 2 duplicate entries") as rec:
        entries = read_split(lst)
    assert len(rec) == 1
    assert [Path(i).stem for i, _ in entries] == ["a_1", "b_2"]


@pytest.mark.parametrize(
    ("text", "lineno", "fragment"),
    [
        ("2007_000032\na b c\n", 2, "'a b c'"),
        ("2007_000032\n\nimages/x.png\n", 3, "'images/x.png'"),
        ("x.png\ty.png\tz.png\n", 1, "z.png"),
    ],
)
def test_unreadable_line_names_file_line_and_text(
    tmp_path: Path, text: str, lineno: int, fragment: str
) -> None:
    lst = _write(tmp_path, "bad_list.txt", text)
    with pytest.raises(DataError, match=rf"bad_list\.txt, line {lineno}: ") as exc:
        read_split(lst)
    assert fragment in str(exc.value)


def test_mixed_formats_empty_and_missing_lists_fail(tmp_path: Path) -> None:
    mixed = _write(tmp_path, "mixed.txt", "2007_000032\nJPEGImages/a.jpg None\n")
    with pytest.raises(DataError, match=r"mixed\.txt, line 2: .*line 1 is in format cps-voc"):
        read_split(mixed)
    empty = _write(tmp_path, "empty.txt", "\r\n\n  \n")
    with pytest.raises(DataError, match=r"empty\.txt is empty"):
        read_split(empty)
    with pytest.raises(DataError, match=r"not found: .*nope\.txt \(dataset root /some/root\)"):
        read_split(tmp_path / "nope.txt", root="/some/root")
    with pytest.raises(DataError, match="layout='voc'"):
        read_split(empty, layout="voc")
    binary = _write(tmp_path, "bin.txt", b"\xff\xfe\x00a\n")
    with pytest.raises(DataError, match=r"bin\.txt is not UTF-8"):
        read_split(binary)


def test_check_disjoint_raises_above_the_allowed_overlap() -> None:
    lab = [(f"img/{i}.jpg", None) for i in range(10)]
    unlab = [(f"img/{i}.jpg", None) for i in range(5, 20)]
    with pytest.raises(DataError, match=r"A\.txt and B\.txt share 5 of 20 images \(img/5\.jpg"):
        check_disjoint(lab, unlab, names=("A.txt", "B.txt"))
    with pytest.warns(UserWarning, match="share 5 of 20"):
        assert len(check_disjoint(lab, unlab, max_overlap_fraction=0.25)) == 5


def test_partition_is_seeded_disjoint_complete_and_ceil_sized() -> None:
    entries = [(f"img/{i}.jpg", f"lab/{i}.png") for i in range(2975)]
    for ratio, n_lab in ((2, 1488), (4, 744), (8, 372), (16, 186)):
        lab, unlab = partition(entries, ratio, seed=3)
        assert len(lab) == n_lab and len(lab) + len(unlab) == len(entries)
        assert set(lab).isdisjoint(unlab) and set(lab) | set(unlab) == set(entries)
        assert partition(entries, ratio, seed=3) == (lab, unlab)
        assert partition(entries, ratio, seed=4)[0] != lab
    assert len(partition(entries[:3], 8, 0)[0]) == 1  # tiny lists keep >= 1 labeled


def _make_splits_module():
    spec = importlib.util.spec_from_file_location("make_splits", REPO / "scripts/make_splits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fmt", [None, "cps-voc", "unimatch"])
def test_make_splits_script_writes_readable_partitions(tmp_path: Path, fmt: str | None) -> None:
    ms = _make_splits_module()
    ids = [f"2007_{i:06d}" for i in range(20)]
    src = _write(tmp_path, "train_aug.txt", "\n".join(ids))
    lab_path, unlab_path = ms.make_splits(src, 8, 0, tmp_path / "out", fmt=fmt)
    names = {None: "train_aug_labeled_1-8.txt", "cps-voc": "train_aug_labeled_1-8.txt"}
    assert lab_path.name == names.get(fmt, "labeled.txt")
    lab, unlab = read_split(lab_path), read_split(unlab_path)
    lab_ids = [Path(i).stem for i, _ in lab]
    unlab_ids = [Path(i).stem for i, _ in unlab]
    assert len(lab_ids) == 3 and sorted(lab_ids + unlab_ids) == ids
    if fmt == "unimatch":
        assert lab[0] == (f"train_aug/image/{lab_ids[0]}.jpg", f"train_aug/label/{lab_ids[0]}.png")


def test_make_splits_cps_city_round_trip_and_errors(tmp_path: Path) -> None:
    ms = _make_splits_module()
    entries = [
        (f"images/train/c_{i}.png", f"segmentation/train/c_{i}_gtFine.png") for i in range(9)
    ]
    write_split(tmp_path / "train.txt", entries, "cps-city")
    assert (
        (tmp_path / "train.txt")
        .read_text()
        .startswith("/images/train/c_0.png\t/segmentation/train/c_0_gtFine.png\n")
    )
    lab_p, unlab_p = ms.make_splits(tmp_path / "train.txt", 4, 1, tmp_path / "o")
    lab, unlab = read_split(lab_p), read_split(unlab_p)
    assert len(lab) == 3 and sorted(lab + unlab) == sorted(entries)
    assert ms.main(["--list", str(tmp_path / "train.txt"), "--ratio", "50", "--out", "x"]) == 2
