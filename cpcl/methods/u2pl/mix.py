"""U2PL pseudo-labels and strong mixing (`train_semi.py:318-337`,
`u2pl/dataset/augmentation.py:471-541`, commit ab3d2be).

* Pseudo-labels: the EVAL-mode teacher on the unmixed unlabeled images; its logits are
  upsampled (bilinear, align_corners=True) to the label size, softmaxed, and `torch.max`
  gives the confidence and the label (no threshold, no 255).
* One coin per batch, `rng.uniform(0, 1) < 0.5`, drawn every iteration BEFORE `apply_aug` is
  looked at; heads mix the whole batch with `apply_aug` ("cutmix" in both official configs,
  "classmix", or "cutout"), tails leave it unmixed.
* CutMix box (`generate_cutout_mask`, ratio 2): `w = randint(int(W/2 + 1), W)`,
  `h = round(H*W/2 / w)` (half to even), `x0 = randint(0, W-w+1)`, `y0 = randint(0, H-h+1)`;
  the mask is 1 outside the box, 0 inside. Image i takes the box from image (i+1) % B (the
  unmixed originals); the same mask mixes image, pseudo-label and confidence.
* ClassMix: `torch.unique` (sorted) of image i's pseudo-label map, `torch.randperm` on the torch
  generator, the first `len // 2` classes are kept from image i.
* Cutout: the box is zeroed in image and confidence and set to 255 in the label.

Random draws: `rng` is a numpy RandomState-like object (default: the global `np.random`, as
officially) for the coin and the boxes; `generator` is a torch.Generator for ClassMix's
randperm (default: the global torch generator, as officially).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import ConfigError

APPLY_AUG = ("cutmix", "classmix", "cutout")
IGNORE = 255


def check_apply_aug(apply_aug: str | None) -> str | None:
    """`apply_aug` itself, or a ConfigError (None / "" / "none" mean: never mix)."""
    if apply_aug in (None, "", "none", False):
        return None
    if apply_aug not in APPLY_AUG:
        raise ConfigError(
            f"apply_aug = {apply_aug!r}: expected one of {', '.join(APPLY_AUG)} or none"
        )
    return apply_aug


def teacher_pseudo_labels(
    teacher_logits: Tensor, label_size: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor]:
    """`(conf, label, prob)` from eval-mode teacher logits at feature size (official 319-324)."""
    logits = F.interpolate(teacher_logits, label_size, mode="bilinear", align_corners=True)
    prob = F.softmax(logits, dim=1)
    conf, label = torch.max(prob, dim=1)
    return conf, label, prob


def cutmix_box_mask(height: int, width: int, rng: Any = None) -> Tensor:
    """Official `generate_cutout_mask([H, W], ratio=2)`: int64 (H, W), 0 inside the box."""
    rng = np.random if rng is None else rng
    cutout_area = height * width / 2
    # numpy's legacy randint truncates the official float bound W/2 + 1.
    w = rng.randint(int(width / 2 + 1), width)
    h = np.round(cutout_area / w)
    x_start = rng.randint(0, int(width - w + 1))
    y_start = rng.randint(0, int(height - h + 1))
    mask = torch.ones(height, width)
    mask[y_start : int(y_start + h), x_start : int(x_start + w)] = 0
    return mask.long()


def classmix_mask(label_map: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Official `generate_class_mask`: float (H, W), 1 where the label is one of a random half
    of the classes present (`torch.unique` sorted, then `torch.randperm`)."""
    labels = torch.unique(label_map)
    perm = torch.randperm(len(labels), generator=generator)
    selected = labels[perm.to(labels.device)][: len(labels) // 2]
    return (label_map.unsqueeze(-1) == selected).any(-1).float()


def generate_unsup_data(
    images: Tensor,
    labels: Tensor,
    conf: Tensor,
    mode: str,
    *,
    rng: Any = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Official `generate_unsup_data`: `(images, labels (int64), conf, masks)` mixed per image
    (`masks` (B,H,W): int64 for cutmix/cutout, float for classmix; 1 keeps image i)."""
    if check_apply_aug(mode) is None:
        raise ConfigError("generate_unsup_data needs a mixing mode, got none")
    batch_size, _, im_h, im_w = images.shape
    labels = labels.clone()
    new_images, new_labels, new_conf, masks = [], [], [], []
    for i in range(batch_size):
        if mode == "classmix":
            mask = classmix_mask(labels[i], generator).to(images.device)
        else:
            mask = cutmix_box_mask(im_h, im_w, rng).to(images.device)
        masks.append(mask)
        if mode == "cutout":
            labels[i].masked_fill_((1 - mask).bool(), IGNORE)  # no host sync
            new_images.append((images[i] * mask).unsqueeze(0))
            new_labels.append(labels[i].unsqueeze(0))
            new_conf.append((conf[i] * mask).unsqueeze(0))
            continue
        j = (i + 1) % batch_size
        new_images.append((images[i] * mask + images[j] * (1 - mask)).unsqueeze(0))
        new_labels.append((labels[i] * mask + labels[j] * (1 - mask)).unsqueeze(0))
        new_conf.append((conf[i] * mask + conf[j] * (1 - mask)).unsqueeze(0))
    return (
        torch.cat(new_images),
        torch.cat(new_labels).long(),
        torch.cat(new_conf),
        torch.stack(masks),
    )


def strong_mix(
    images: Tensor,
    labels: Tensor,
    conf: Tensor,
    apply_aug: str | None,
    *,
    rng: Any = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, bool, Tensor | None]:
    """The official per-batch decision (`train_semi.py:327-337`).

    Returns `(image_u_aug, label_u_aug, conf_u_aug, applied, masks)`; when not applied the
    inputs come back unchanged and `masks` is None. The coin is drawn even when `apply_aug`
    is none, as officially.
    """
    mode = check_apply_aug(apply_aug)
    rng = np.random if rng is None else rng
    heads = rng.uniform(0, 1) < 0.5
    if heads and mode is not None:
        mixed = generate_unsup_data(images, labels, conf, mode, rng=rng, generator=generator)
        return mixed[0], mixed[1], mixed[2], True, mixed[3]
    return images, labels, conf, False, None
