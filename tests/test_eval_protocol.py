"""`eval.py --eval_protocol=official` end to end: tiny U2PL and UniMatch runs evaluated through
the eval command line give the number of their protocol function called directly, the output
names the protocol, and exports work where the protocol predicts whole images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
import torch
from conftest import TINY_TRAIN

import cpcl.engine as engine
from cpcl.checkpoint import load_checkpoint
from cpcl.cli.evaluate import main
from cpcl.cli.snapshot import evaluate_snapshot
from cpcl.config import load_preset
from cpcl.data.datasets import build_dataset
from cpcl.engine.resolve import apply_overrides, finalize
from cpcl.methods import eval_net_from_checkpoint
from cpcl.methods.u2pl.eval import evaluate_u2pl
from cpcl.methods.unimatch.eval import evaluate_unimatch

# eval_crop_size: U2PL's VOC default is the official val crop 513; small here.
RUNS = {
    "u2pl": ["--method=u2pl", "--train_scale_array=1", "--eval_crop_size=32"],
    "unimatch": ["--method=unimatch", "--nepochs=1", "--eval_crop_size=32"],
}


@pytest.fixture(scope="module", params=sorted(RUNS))
def run(request, toy_voc_small, tmp_path_factory) -> dict:
    method = request.param
    root = tmp_path_factory.mktemp(method)
    args = [*TINY_TRAIN, *RUNS[method], f"--dataset_path={toy_voc_small}"]
    summary = engine.fit(
        apply_overrides(load_preset("voc"), [*args, f"--log_dir={root / 'log'}"]), root=str(root)
    )
    snapshot = Path(summary["snapshot_dir"]) / "epoch-last.pth"
    C = finalize(apply_overrides(load_preset("voc"), args), root=str(root))
    net = eval_net_from_checkpoint(C, load_checkpoint(snapshot))
    return {"method": method, "root": root, "snapshot": snapshot, "C": C, "net": net}


def _direct(run: dict) -> dict:
    """The protocol function itself, with the official settings of a VOC run spelled out."""
    C = run["C"]
    common = {"num_classes": 4, "mean": C.image_mean, "std": C.image_std}
    data = build_dataset(C, "val")
    if run["method"] == "u2pl":
        return evaluate_u2pl(run["net"], data, mode="whole", crop_size=(32, 32), **common)
    return evaluate_unimatch(run["net"], data, mode="original", **common)


def _eval(run: dict, capsys, *extra: str) -> tuple[int, list[dict], str, str]:
    argv = ["-e", str(run["snapshot"]), "-d", "cpu", f"--log_dir={run['root'] / 'eval'}"]
    rc = main(load_preset("voc"), [*argv, *extra], root=str(run["root"]))
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return rc, records, out, err


def test_cli_official_protocol_is_the_protocol_function(run, capsys):
    rc, records, out, _ = _eval(run, capsys, "--eval_protocol=official")
    assert rc == 0 and len(records) == 1
    ref = _direct(run)
    assert records[0]["mIoU"] == ref["miou"]
    assert list(records[0]["per_class"].values()) == ref["iou"].tolist()
    label = records[0]["protocol"]
    assert label.startswith(f"{run['method']} official") and f"protocol: {label}" in out
    log = (run["root"] / "eval" / "val_last.log").read_text()
    assert f"protocol: {label}" in log

    # The same through evaluate_snapshot, and the default protocol is the project's.
    C = apply_overrides(run["C"], ["--eval_protocol=official"])
    again = evaluate_snapshot(C, run["snapshot"], device="cpu", progress=False)
    assert again["miou"] == ref["miou"] and torch.equal(again["hist"], ref["hist"])
    rc, records, out, _ = _eval(run, capsys)
    assert rc == 0 and records[0]["protocol"].startswith("cpcl: sliding windows 32x32")


def test_cli_official_protocol_exports(run, capsys, tmp_path):
    pred = tmp_path / "pred"
    extra = ["--eval_protocol=official", "-p", str(pred)]
    if run["method"] == "u2pl":
        # train_semi's validation predicts a padded centre crop: no PNGs, a clear error ...
        rc, _, _, err = _eval(run, capsys, *extra)
        assert rc == 2 and "no prediction PNGs" in err and "--eval_protocol=cpcl" in err
        extra.append("--u2pl_eval_mode=sliding")  # ... eval.py's sliding windows export
    rc, records, _, err = _eval(run, capsys, *extra)
    assert rc == 0 and "official" in records[0]["protocol"], err
    data = build_dataset(run["C"], "val")
    assert len(list(pred.iterdir())) == len(data)
    for i in range(len(data)):  # one PNG per image, at the image size
        img, _, name = data.load(i)
        assert cv2.imread(str(pred / f"{name}.png"), cv2.IMREAD_UNCHANGED).shape == img.shape[:2]
