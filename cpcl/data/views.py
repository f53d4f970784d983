"""Per-method data views: what one batch slot reads and how its samples become tensors.

A `DataView` is a small picklable object (it runs in the loader workers). The loader
(`cpcl.data.loaders`) draws, for every batch slot, one index per entry of `view.streams`
("labeled" or "unlabeled"), decodes those images (uint8 RGB, label or None) and calls
`view.sample(loaded, rng)`, where `rng(k)` is a generator seeded by (seed, rank, epoch,
iteration, slot, k): a sample's randomness never depends on the worker that builds it.
`view.collate(batch, generator)` then adds what is drawn per batch (CutMix boxes), from a
generator seeded by (seed, rank, epoch, iteration).

The stages of a sample: the geometric transform on uint8 (`TrainTransform.geometric`), an
optional photometric stage on the uint8 crop (a method's strong augmentation goes there),
then the normalisation (`TrainTransform.normalize`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .cutmix import BoxMaskSettings, box_masks
from .transforms import TrainTransform

Loaded = tuple[np.ndarray, np.ndarray | None, str]  # (uint8 RGB HxWx3, label HxW or None, name)
RngFor = Callable[[int], np.random.Generator]


@dataclass(frozen=True)
class TransformSettings:
    """Values of the official training transform (from `C.image_mean`, ... )."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop: tuple[int, int]
    scales: tuple[float, ...] | None

    @classmethod
    def from_config(cls, C: Any) -> TransformSettings:
        """Read `image_mean`, `image_std`, `image_height`, `image_width`, `train_scale_array`."""
        scales = C.train_scale_array
        return cls(
            tuple(C.image_mean),
            tuple(C.image_std),
            (int(C.image_height), int(C.image_width)),
            None if scales is None else tuple(float(s) for s in scales),
        )

    def build(self) -> TrainTransform:
        """The `TrainTransform` of these settings."""
        return TrainTransform(self.mean, self.std, self.crop, self.scales)


def labeled_pair(loaded: Loaded) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) of a labeled sample; a missing label is a DataError naming the image."""
    img, gt, name = loaded
    if gt is None:
        raise DataError(f"labeled image {name!r} came without a label")
    return img, gt


class DataView:
    """Base view: subclasses set `streams`, and implement `sample` (and maybe `collate`)."""

    streams: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    # One line for the run log about what the view reads (e.g. where labels come from); "" none.
    description: str = ""
    # False (official CPS epochs): every epoch is a fresh stretched permutation of each stream.
    # True (an endless official loader, e.g. CoSA's DistributedSampler + `next(iter)`): one
    # permutation per pass over the list, continued across epochs; a rank's incomplete last
    # batch of a pass is dropped (drop_last), then the next pass starts.
    continuous_passes: bool = False

    def sample(self, loaded: Sequence[Loaded], rng: RngFor) -> dict[str, np.ndarray]:
        """The arrays of one batch slot from the decoded images of `streams`."""
        raise NotImplementedError

    def collate(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Add per-batch tensors to the stacked samples (default: nothing)."""
        return batch


class LabeledView(DataView):
    """`img` (3,H,W) float32 and `gt` (H,W) int64 from the labeled stream only (sup)."""

    streams = ("labeled",)
    keys = ("img", "gt")

    def __init__(self, settings: TransformSettings) -> None:
        self.settings = settings
        self.transform = settings.build()

    def sample(self, loaded: Sequence[Loaded], rng: RngFor) -> dict[str, np.ndarray]:
        """The official transform of the labeled image."""
        img, gt = self.transform(*labeled_pair(loaded[0]), rng=rng(0))
        return {"img": img, "gt": gt}


class CutMixView(LabeledView):
    """The CPS/CPCL view: labeled `img`, `gt`, two unlabeled images `img_u0`, `img_u1` and a
    CutMix box mask `mask` (B,1,H,W) float32 per batch (1 = take from u1)."""

    streams = ("labeled", "unlabeled", "unlabeled")
    keys = ("img", "gt", "img_u0", "img_u1", "mask")

    def __init__(self, settings: TransformSettings, cutmix: BoxMaskSettings) -> None:
        super().__init__(settings)
        self.cutmix = cutmix

    def sample(self, loaded: Sequence[Loaded], rng: RngFor) -> dict[str, np.ndarray]:
        """Labeled pair and both unlabeled images, each with its own random transform."""
        out = super().sample(loaded, rng)
        out["img_u0"] = self.transform(loaded[1][0], None, rng=rng(1))[0]
        out["img_u1"] = self.transform(loaded[2][0], None, rng=rng(2))[0]
        return out

    def collate(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """One CutMix box mask per slot, drawn for the whole batch."""
        n, size = batch["img"].shape[0], batch["img"].shape[-2:]
        batch["mask"] = box_masks(n, size, generator=generator, settings=self.cutmix)
        return batch
