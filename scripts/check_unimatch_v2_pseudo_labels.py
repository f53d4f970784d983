"""How good are UniMatch V2's pseudo labels on the toy benchmark? Train one row of
`bench_semisup.py` (its exact settings), then apply the student and the EMA teacher to every
unlabeled training image (whole image, the toy masks as truth) and count, at the confidence
threshold, how many pixels pass and how many of those are right, split by background and
foreground.

    python scripts/check_unimatch_v2_pseudo_labels.py [--seed 10] [--row unimatch_v2|sup_dinov2]
        [--backbone DATA/toy_pretrain/dinov2_toy_seed0.pth] [--data DATA/toy_voc_semisup]
        [--thresh 0.95] [--key=value ...]

Prints a table and one JSON line. The teacher is what labels the unlabeled images during
training (`unimatch_v2.py`: the EMA model on the weak view), so its row shows what the
unlabeled loss taught at the end of the run; `sup_dinov2` gives the same counts for a run
that never used them. A diagnostic behind docs/methods/unimatch_v2.md#toy-benchmark, not a test.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from cpcl.checkpoint import load_checkpoint
from cpcl.data.datasets import build_dataset
from cpcl.engine import fit
from cpcl.engine.resolve import apply_overrides, finalize
from cpcl.methods import eval_net_from_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _bench():
    """scripts/bench_semisup.py as a module (its row settings)."""
    spec = importlib.util.spec_from_file_location(
        "bench_semisup", REPO / "scripts/bench_semisup.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def pseudo_label_counts(net: torch.nn.Module, ds, mean, std, thresh: float) -> dict[str, float]:
    """Over every image of `ds`: the share of labeled pixels whose confidence is >= `thresh`
    (`pass_ratio`), the accuracy of those (`acc_passed`), of all pixels (`acc_all`), the share
    of foreground among all labeled pixels and among the passing ones, and the accuracy of the
    passing foreground pixels."""
    n = {k: 0 for k in ("valid", "fg_valid", "passed", "right", "right_all", "fg", "fg_right")}
    mean_t = torch.tensor(mean).view(3, 1, 1) * 255
    std_t = torch.tensor(std).view(3, 1, 1) * 255
    for i in range(len(ds)):
        img, gt, _ = ds.load(i)
        x = (torch.from_numpy(img).permute(2, 0, 1).float() - mean_t) / std_t
        conf, pred = net(x[None]).softmax(1)[0].max(0)
        gt_t = torch.from_numpy(gt.astype(np.int64))
        valid = gt_t != 255
        passed = (conf >= thresh) & valid
        right = pred == gt_t
        fg = passed & (gt_t > 0)
        for key, mask in (
            ("valid", valid),
            ("fg_valid", valid & (gt_t > 0)),
            ("passed", passed),
            ("right", passed & right),
            ("right_all", valid & right),
            ("fg", fg),
            ("fg_right", fg & right),
        ):
            n[key] += int(mask.sum())
    return {
        "pass_ratio": round(n["passed"] / max(n["valid"], 1), 4),
        "acc_passed": round(n["right"] / max(n["passed"], 1), 4),
        "acc_all": round(n["right_all"] / max(n["valid"], 1), 4),
        "fg_share_of_valid": round(n["fg_valid"] / max(n["valid"], 1), 4),
        "fg_share_of_passed": round(n["fg"] / max(n["passed"], 1), 4),
        "acc_fg_passed": round(n["fg_right"] / max(n["fg"], 1), 4),
    }


def main(argv: list[str] | None = None) -> int:
    """Train the row, count, print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--row", choices=["unimatch_v2", "sup_dinov2"], default="unimatch_v2")
    parser.add_argument(
        "--backbone", default=str(REPO / "DATA" / "toy_pretrain" / "dinov2_toy_seed0.pth")
    )
    parser.add_argument("--data", default=str(REPO / "DATA" / "toy_voc_semisup"))
    parser.add_argument(
        "--thresh", type=float, default=0.95,
        help="confidence threshold counted (official 0.95, also for sup_dinov2, which trains at 1.0)",
    )  # fmt: skip
    args, extra = parser.parse_known_args(argv)
    for path, what in ((args.backbone, "--backbone"), (args.data, "--data")):
        if not Path(path).exists():
            raise SystemExit(f"{what} {path} does not exist: run scripts/bench_semisup.py "
                             "--methods unimatch_v2 once to write the toy data and backbone")  # fmt: skip
    bench = _bench()
    with tempfile.TemporaryDirectory(prefix="cpcl_pl_") as out:
        C = bench.row_config(args.row, args.seed, args.data, args.backbone, out, extra, "cpu")
        snapshot = Path(fit(C, root=out)["snapshot_dir"]) / "epoch-last.pth"
        ckpt = load_checkpoint(snapshot)
        rows = {}
        for net_name in ("model", "ema"):
            Cn = finalize(apply_overrides(C, [f"--unimatch_v2_eval_net={net_name}"]), root=out)
            Cn.eval_source = Cn.unsup_source  # the unlabeled images, with their toy masks
            ds = build_dataset(Cn, "val")
            net = eval_net_from_checkpoint(Cn, ckpt, "cpu")
            rows[net_name] = pseudo_label_counts(net, ds, Cn.image_mean, Cn.image_std, args.thresh)
    print(f"\n{args.row} seed {args.seed}, {len(ds)} unlabeled images, confidence >= {args.thresh}")
    print(f"{'':<20}" + "".join(f"{name:>9}" for name in rows))
    for key in rows["model"]:
        print(f"{key:<20}" + "".join(f"{r[key]:>9.4f}" for r in rows.values()))
    print(json.dumps({"row": args.row, "seed": args.seed, "thresh": args.thresh, **rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
