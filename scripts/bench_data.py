"""Training-data throughput: the three streams (labeled, u0, u1) plus CutMix masks per iteration.

Writes a few synthetic images of the real sizes to a temp folder (VOC: ~500x375 JPEG images
with PNG labels; Cityscapes: 2048x1024 PNG images and labels), builds the real training loader
(`cpcl.data.loaders.build_train_loader`) with the preset crop (512 / 800) and batch, and times it
with 0..N workers. Also times the per-image stages in the main process (decode, transform,
mask batch).

Prints a table and one JSON line. `--step-ms` is the training step time (ms/iteration) to
compare against: the loader keeps up when its ms/iteration is below it.

    python scripts/bench_data.py                      # default, well under a minute on 2 cores
    python scripts/bench_data.py --workers 0,4,8 --iters 20 --step-ms 450
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from cpcl.config import load_preset
from cpcl.data.cutmix import BoxMaskSettings, box_masks
from cpcl.data.loaders import build_train_loader
from cpcl.data.transforms import TrainTransform
from cpcl.engine.resolve import finalize
from cpcl.methods import get_method

SIZES = {"voc": [(375, 500), (500, 375), (333, 500), (375, 500)], "cityscapes": [(1024, 2048)]}
EXT = {"voc": ".jpg", "cityscapes": ".png"}


def _natural_image(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth colour blobs plus mild noise: compresses like a photo, unlike pure noise."""
    small = rng.integers(0, 256, (max(h // 32, 2), max(w // 32, 2), 3), dtype=np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _label(h: int, w: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    small = rng.integers(0, n_classes, (max(h // 64, 2), max(w // 64, 2)), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


@dataclass
class FileDataset:
    """Image/label files read as the real datasets do (cv2 decode, BGR->RGB)."""

    images: list[str]
    labels: list[str] | None

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int):
        img = cv2.cvtColor(cv2.imread(self.images[i], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        lab = None if self.labels is None else cv2.imread(self.labels[i], cv2.IMREAD_GRAYSCALE)
        return img, lab, os.path.basename(self.images[i])


def write_files(root: str, name: str, n: int, seed: int = 0) -> FileDataset:
    """Write `n` synthetic image/label pairs of the dataset's real sizes under `root`."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        h, w = SIZES[name][i % len(SIZES[name])]
        ip = os.path.join(root, f"{name}_{i}{EXT[name]}")
        lp = os.path.join(root, f"{name}_{i}_label.png")
        cv2.imwrite(ip, _natural_image(h, w, rng))
        cv2.imwrite(lp, _label(h, w, 21 if name == "voc" else 19, rng))
        images.append(ip)
        labels.append(lp)
    return FileDataset(images, labels)


def stage_times(name: str, ds: FileDataset, batch: int, reps: int) -> dict[str, float]:
    """Median ms per image of decode and transform, and per batch of the mask generation."""
    C = load_preset(name)
    t = TrainTransform(
        C.image_mean, C.image_std, (C.image_height, C.image_width), C.train_scale_array
    )
    rng = np.random.default_rng(0)
    dec, tr, mk = [], [], []
    gen = torch.Generator().manual_seed(0)
    for r in range(reps):
        t0 = time.perf_counter()
        img, lab, _ = ds.load(r % len(ds))
        t1 = time.perf_counter()
        t(img, lab, rng=rng)
        t2 = time.perf_counter()
        box_masks(batch, (C.image_height, C.image_width), generator=gen, settings=BoxMaskSettings())
        t3 = time.perf_counter()
        dec.append(t1 - t0)
        tr.append(t2 - t1)
        mk.append(t3 - t2)
    return {
        "decode_ms": 1e3 * float(np.median(dec)),
        "transform_ms": 1e3 * float(np.median(tr)),
        "mask_batch_ms": 1e3 * float(np.median(mk)),
    }


def loader_time(name: str, ds: FileDataset, workers: int, batch: int, iters: int) -> float:
    """Seconds per iteration of the real training loader (first iteration not timed)."""
    C = load_preset(name)
    C.batch_size, C.num_workers = batch, workers
    C.niters_per_epoch = iters + 1
    C = finalize(C, root=tempfile.gettempdir(), n_labeled=len(ds), n_unlabeled=len(ds))
    unl = FileDataset(ds.images, None)
    view = get_method(C.method).from_config(C, per_rank_batch=batch).data_view()
    loader = build_train_loader(C, view=view, labeled=ds, unlabeled=unl)
    it = iter(loader)
    next(it)  # worker start-up and first prefetch are not steady state
    t0 = time.perf_counter()
    n = sum(1 for _ in it)
    assert n == iters
    return (time.perf_counter() - t0) / iters


def main() -> None:
    """Run the benchmark and print the table and the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="voc,cityscapes")
    ap.add_argument("--workers", default=None, help="comma list; default 0..min(2, cpus)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations (default 6/2)")
    ap.add_argument("--batch", type=int, default=None, help="per-rank batch (default: preset)")
    ap.add_argument("--step-ms", type=float, default=None, help="training ms/iteration")
    ap.add_argument("--files", type=int, default=4, help="distinct files per dataset")
    args = ap.parse_args()
    cpus = os.cpu_count() or 1
    workers = (
        [int(w) for w in args.workers.split(",")] if args.workers else list(range(min(2, cpus) + 1))
    )
    torch.set_num_threads(1)  # the loader's own work; workers are separate processes
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name in args.datasets.split(","):
            C = load_preset(name)
            batch = args.batch or C.batch_size
            iters = args.iters or (6 if name == "voc" else 2)
            ds = write_files(root, name, args.files)
            st = stage_times(name, ds, batch, reps=5 if name == "voc" else 3)
            for w in workers:
                s_it = loader_time(name, ds, w, batch, iters)
                rows.append(
                    {
                        "dataset": name,
                        "crop": C.image_height,
                        "batch": batch,
                        "workers": w,
                        "ms_per_iter": 1e3 * s_it,
                        "images_per_s": 3 * batch / s_it,
                        **st,
                    }
                )
    need = None if args.step_ms is None else {"step_ms": args.step_ms}
    print(
        f"{'dataset':<11}{'crop':>5}{'batch':>6}{'workers':>8}{'ms/iter':>10}{'img/s':>8}"
        f"{'decode':>8}{'transf':>8}{'mask':>7}  keeps up with step?"
    )
    for r in rows:
        verdict = (
            "unknown (pass --step-ms)"
            if args.step_ms is None
            else ("yes" if r["ms_per_iter"] <= args.step_ms else "NO")
        )
        print(
            f"{r['dataset']:<11}{r['crop']:>5}{r['batch']:>6}{r['workers']:>8}"
            f"{r['ms_per_iter']:>10.1f}{r['images_per_s']:>8.1f}{r['decode_ms']:>8.1f}"
            f"{r['transform_ms']:>8.1f}{r['mask_batch_ms']:>7.1f}  {verdict}"
        )
    print("(img/s counts the 3 streams; decode/transf are ms per image, mask ms per batch)")
    print(json.dumps({"bench": "data", "cpus": cpus, "step": need, "rows": rows}))


if __name__ == "__main__":
    main()
