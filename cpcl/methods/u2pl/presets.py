"""The official U2PL `ours` settings as plain constants (U2PL commit ab3d2be).

Sources: `experiments/pascal/1464/ours/config.yaml`, `experiments/cityscapes/744/ours/config.yaml`,
`train_semi.py` (defaults of keys the yamls omit), `u2pl/dataset/*.py`, `eval.py` and the
`eval.sh` scripts.

| setting | VOC 1464 `ours` | Cityscapes 744 `ours` | source |
|---|---|---|---|
| network | DeepLabv3+ R101, OS 8, 21 classes | same, 19 classes, + aux head (layer3) | `net` |
| crop (train) | 513 x 513, rand resize [0.5, 2.0], flip | 769 x 769, same | `dataset.train` |
| batch per GPU (labeled = unlabeled) | 4 (yaml comment: 4 GPUs, 16 total) | 2 (8 GPUs, 16 total) | `dataset.batch_size` |
| epoch length | both lists resampled to 10582-1464 = 9118 | 2975-744 = 2231 | `*_dset(n_sup)` |
| epochs | 80 | 200 | `trainer.epochs` |
| supervised-only epochs | 1 (epoch 0; yaml omits it, code default 1) | 0 | `sup_only_epoch` |
| SGD lr / momentum / wd | 0.001 / 0.9 / 1e-4 on all parameters | 0.01 / 0.9 / 5e-4 | `trainer.optimizer` |
| head lr (decoder, aux) | x10 | x1 | `train_semi.py:100` |
| lr schedule | poly 0.9 per iteration, set before the step | same | `lr_scheduler` |
| EMA decay | min(1 - 1/(k+1), 0.99) | same | `net.ema_decay` |
| drop percent | 80 -> 100 linearly (`100 - 20*(1-e/E)`) | same | `unsupervised.drop_percent` |
| strong mix | CutMix, one coin per batch (p 0.5) | same | `unsupervised.apply_aug` |
| contrastive | ContraSettings() below, weight 1 | same | `trainer.contrastive` |
| memory banks | 30000 keys per class, 50000 for class 0 | same | `train_semi.py:162-169` |
| supervised loss | CE (ignore 255) | OHEM 0.7, min_kept 100000, no class weights, + 0.4 x OHEM(aux) | `criterion`, `aux_loss` |
| loss weights | sup + unsup + contra, all 1 | same | `train_semi.py:524` |
| normalisation | mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375) on 0..255 RGB | same | `dataset` |
| evaluation (`eval.py`) | whole image, scale 1.0, logits upsampled bilinear align_corners=True | sliding 769 crops, stride ceil(769*2/3), long side resized to 2048 (base_size), crop logits AVERAGED over overlaps, zero padding of the normalised image | `eval.sh` |

One official iteration (`train_semi.py:272-548`) with these blocks, in order:

1. `set_poly_lr(opt, base_lrs, i_iter, epochs * iters_per_epoch)` (before the step).
2. Supervised-only epoch (`TeacherSchedule.phase(epoch) == "sup_only"`): student on image_l,
   `U2PLSupLoss` on the upsampled `pred` (+ `aux`), then `teacher.train()` forward on image_l
   (no_grad) only to move the teacher's BN buffers; unsup = contra = `0 * rep.sum()`.
3. Otherwise: `TeacherSchedule.before_iteration` (aliases in the teacher-copy epoch);
   `teacher.eval()` on image_u -> `teacher_pseudo_labels`; `strong_mix` (one numpy coin per
   iteration); student on `cat(image_l, image_u_aug)`; sup loss on the labeled part;
   `teacher.train()` forward on the same batch (no_grad, Dropout2d active) ->
   `split_teacher_outputs`; `drop_percent` -> `unreliable_unsup_loss`; `contra_alpha_t` ->
   `contrastive_masks` (feature size = `pred_all.shape[2:]`) -> `contra_memobank_loss`
   (`label_*_small.long()`) -> `reduce_contra_loss`.
4. `loss = sup + unsup + contra`; backward; step; `TeacherSchedule.after_step` (EMA).
5. Validation: the student while `epoch < sup_only_epoch`, the teacher afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .losses import ContraSettings
from .memory import official_queue_sizes


@dataclass(frozen=True)
class U2PLPreset:
    """One official U2PL configuration (see the module table)."""

    dataset: str
    num_classes: int
    n_sup: int
    epoch_images: int
    crop_size: tuple[int, int]
    batch_size_per_gpu: int
    official_gpus: int
    epochs: int
    sup_only_epoch: int
    lr: float
    momentum: float
    weight_decay: float
    lr_head_times: float
    sup_loss: str
    aux_loss_weight: float
    backbone: str = "resnet101"
    lr_power: float = 0.9
    ema_decay: float = 0.99
    drop_percent: float = 80.0
    apply_aug: str = "cutmix"
    unsup_loss_weight: float = 1.0
    contra: ContraSettings = field(default_factory=ContraSettings)
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100000
    rand_resize: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    image_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    image_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    ignore_label: int = 255
    eval_mode: str = "whole"
    eval_crop_size: tuple[int, int] | None = None
    eval_stride_rate: float = 2 / 3
    eval_base_size: int | None = None
    eval_scales: tuple[float, ...] = (1.0,)

    @property
    def aux_loss(self) -> bool:
        """Whether the network has the auxiliary head."""
        return self.aux_loss_weight > 0

    @property
    def queue_sizes(self) -> list[int]:
        """The official memory-bank sizes for this preset's classes."""
        return official_queue_sizes(self.num_classes)


U2PL_VOC_1464 = U2PLPreset(
    dataset="voc",
    num_classes=21,
    n_sup=1464,
    epoch_images=10582 - 1464,
    crop_size=(513, 513),
    batch_size_per_gpu=4,
    official_gpus=4,
    epochs=80,
    sup_only_epoch=1,
    lr=0.001,
    momentum=0.9,
    weight_decay=1e-4,
    lr_head_times=10,
    sup_loss="ce",
    aux_loss_weight=0.0,
    eval_mode="whole",
)

U2PL_CITYSCAPES_744 = U2PLPreset(
    dataset="cityscapes",
    num_classes=19,
    n_sup=744,
    epoch_images=2975 - 744,
    crop_size=(769, 769),
    batch_size_per_gpu=2,
    official_gpus=8,
    epochs=200,
    sup_only_epoch=0,
    lr=0.01,
    momentum=0.9,
    weight_decay=5e-4,
    lr_head_times=1,
    sup_loss="ohem",
    aux_loss_weight=0.4,
    eval_mode="sliding",
    eval_crop_size=(769, 769),
    eval_base_size=2048,
)

U2PL_PRESETS = {"voc": U2PL_VOC_1464, "cityscapes": U2PL_CITYSCAPES_744}
