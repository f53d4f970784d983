"""U2PL losses (`u2pl/utils/loss_helper.py`, `train_semi.py:376-522`, commit ab3d2be).

* `unreliable_unsup_loss`: CE on the reliable pixels, the drop-percent entropy filter and the
  official `B*H*W / N_kept` weight (`compute_unsupervised_loss`).
* `label_onehot`: the official one-hot, which writes the labels of the WHOLE batch into image 0
  (`onehot="official"`, the default), or a per-image one-hot (`onehot="corrected"`, opt-in).
* `contrastive_masks`: entropy percentiles, low/high-entropy masks and one-hot labels at
  feature resolution (`train_semi.py:397-465`).
* `contra_memobank_loss`: anchors, class prototypes as positives, negatives sampled from the
  class-wise memory banks, with the official second-loop pairing (U2PL issue #111) and the
  official random draws (`torch.randint` on the global CPU generator, anchors then negatives,
  per used position); `draw` can inject the indices instead.
* `U2PLSupLoss`: the supervised criterion: CE (VOC) or OHEM (Cityscapes: thresh 0.7,
  min_kept 100000, no class weights), plus `aux_weight` x the same loss on the aux head.
* `reduce_contra_loss`: the official rank average of the contrastive loss (value averaged,
  gradient local / world_size).

Percentiles follow `numpy.percentile` (method "linear", numpy >= 2 promotion: the result has
the dtype of the data) and are computed on the tensor's device (`np_percentile`).
See the golden README "UniMatch and U2PL: semantics..." for the details reproduced here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError, CpclError
from ...losses import ProbOhemCrossEntropy2d
from .memory import ClassMemoryBank

IGNORE = 255
ONEHOT_MODES = ("official", "corrected")
DrawFn = Callable[[int, int], Tensor]


@dataclass(frozen=True)
class ContraSettings:
    """`trainer.contrastive` of the official `ours` configs (VOC 1464 and Cityscapes 744 alike).

    `loss_weight` is absent from the yamls (so 1; the paper's 0.1 is not in the code, U2PL
    issue #57). `onehot` selects the official batch-into-image-0 one-hot or the corrected one.
    """

    negative_high_entropy: bool = True
    low_rank: int = 3
    high_rank: int = 20
    current_class_threshold: float = 0.3
    current_class_negative_threshold: float = 1.0
    low_entropy_threshold: float = 20.0
    num_negatives: int = 50
    num_queries: int = 256
    temperature: float = 0.5
    loss_weight: float = 1.0
    onehot: str = "official"

    def __post_init__(self) -> None:
        if self.onehot not in ONEHOT_MODES:
            raise ConfigError(
                f"contrastive onehot={self.onehot!r}: expected one of {', '.join(ONEHOT_MODES)}"
            )
        if not 0 <= self.low_rank < self.high_rank:
            raise ConfigError(
                f"contrastive low_rank={self.low_rank}, high_rank={self.high_rank}: "
                "expected 0 <= low_rank < high_rank"
            )
        for key in ("num_queries", "num_negatives"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"contrastive {key}={getattr(self, key)!r}: expected >= 1")
        if not self.temperature > 0:
            raise ConfigError(f"contrastive temperature={self.temperature!r}: expected > 0")
        if not 0 <= self.low_entropy_threshold <= 50:
            raise ConfigError(
                f"contrastive low_entropy_threshold={self.low_entropy_threshold!r}: expected a "
                "percent in [0, 50] (low and high masks use alpha_t and 100 - alpha_t)"
            )


def check_percent(name: str, q: float) -> float:
    """`q` as a float, or a ConfigError naming `name` when it is outside [0, 100]."""
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q <= 100:
        raise ConfigError(f"{name} = {q!r}: expected a percent in [0, 100]")
    return float(q)


def np_percentile(values: Tensor, q: float) -> Tensor:
    """`numpy.percentile(values, q)` (linear) as a 0-dim tensor of `values`' dtype and device.

    Same arithmetic as numpy 2: virtual index `(n-1)*q/100` in float64, then
    `a + (b-a)*g` (or `b - (b-a)*(1-g)` when `g >= 0.5`) in the data's dtype.
    """
    q = check_percent("percentile", q)
    flat = values.reshape(-1)
    n = flat.numel()
    if n == 0:
        raise CpclError("percentile of an empty set: no valid (label != 255) pixel in the batch")
    ordered = torch.sort(flat).values
    virtual = (n - 1) * (q / 100)
    if virtual >= n - 1:
        return ordered[-1]
    prev = math.floor(virtual)
    gamma = virtual - prev
    a, b = ordered[prev], ordered[prev + 1]
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


def entropy_of_logits(logits: Tensor) -> Tensor:
    """Official pixel entropy `-sum(p * log(p + 1e-10))` over dim 1 of softmax(logits)."""
    prob = torch.softmax(logits, dim=1)
    return -torch.sum(prob * torch.log(prob + 1e-10), dim=1)


def unreliable_unsup_loss(
    pred: Tensor, target: Tensor, percent: float, pred_teacher: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """Official `compute_unsupervised_loss` (the caller's `target` is not modified).

    Pixels whose teacher entropy is `>= percentile(valid entropies, percent)` are set to 255;
    the loss is `B*H*W / N_kept * CE_mean_over_kept`. Returns the loss and diagnostics:
    `entropy`, `thresh`, `dropped` (bool), `target` (after dropping), `weight`, `ce`.
    """
    percent = check_percent("unsupervised drop percent", percent)
    batch_size, _, h, w = pred.shape
    with torch.no_grad():
        entropy = entropy_of_logits(pred_teacher)
        valid = target != IGNORE
        thresh = np_percentile(entropy[valid], percent)
        dropped = entropy.ge(thresh) & valid
        target = target.clone()
        target.masked_fill_(dropped, IGNORE)  # not `target[dropped] = ...`: no host sync
        weight = batch_size * h * w / torch.sum(target != IGNORE)
    ce = F.cross_entropy(pred, target, ignore_index=IGNORE)
    info = {
        "entropy": entropy,
        "thresh": thresh,
        "dropped": dropped,
        "target": target,
        "weight": weight,
        "ce": ce.detach(),
    }
    return weight * ce, info


def label_onehot(labels: Tensor, num_classes: int, onehot: str = "official") -> Tensor:
    """(B,H,W) labels -> (B,C,H,W) float one-hot with 255 pixels all-zero.

    `"official"` reproduces `u2pl/utils/utils.py:50-59`: the scatter index has shape
    (B,1,H,W) on a (C,B,H,W) buffer, so every image's labels land in batch slot 0 (a multi-hot
    union; the 255 pixels of images 1.. add class 0 there) and slots 1.. stay zero.
    `"corrected"` is the per-image one-hot; both agree when B == 1.
    """
    if onehot not in ONEHOT_MODES:
        raise ConfigError(f"onehot={onehot!r}: expected one of {', '.join(ONEHOT_MODES)}")
    batch_size, h, w = labels.shape
    ignored = labels == IGNORE
    safe = labels.masked_fill(ignored, 0)
    if onehot == "corrected":
        out = F.one_hot(safe, num_classes).permute(0, 3, 1, 2).float()
        return out * (~ignored).unsqueeze(1)
    out = torch.zeros((num_classes, batch_size, h, w), device=labels.device)
    out.scatter_(0, safe.unsqueeze(1), 1.0)
    out.masked_fill_(ignored.unsqueeze(0), 0)  # `out[:, ignored] = 0` without a host sync
    return out.permute(1, 0, 2, 3)


def contrastive_masks(
    pred_u_large_teacher: Tensor,
    label_l: Tensor,
    label_u: Tensor,
    feat_size: tuple[int, int],
    alpha_t: float,
    num_classes: int,
    *,
    negative_high_entropy: bool = True,
    onehot: str = "official",
) -> dict[str, Tensor]:
    """Inputs of the contrastive loss (`train_semi.py:401-465`), under no_grad.

    `pred_u_large_teacher` are the train-mode teacher logits of the unlabeled (mixed) images
    at label size; the entropy percentiles use the unlabeled pixels with label != 255
    (`low = entropy <= p(alpha_t)`, `high = entropy >= p(100 - alpha_t)`), the labeled part of
    both masks is `label_l != 255`; masks and one-hot labels go to `feat_size` with nearest
    interpolation. Returns `entropy, low_thresh, high_thresh, low_entropy_mask,
    high_entropy_mask, low_mask_all, high_mask_all, label_l_small, label_u_small`.
    """
    alpha_t = check_percent("contrastive alpha_t", alpha_t)
    with torch.no_grad():
        entropy = entropy_of_logits(pred_u_large_teacher)
        valid_u = label_u != IGNORE
        valid_entropy = entropy[valid_u]
        low_thresh = np_percentile(valid_entropy, alpha_t)
        low_entropy_mask = entropy.le(low_thresh).float() * valid_u
        high_thresh = np_percentile(valid_entropy, 100 - alpha_t)
        high_entropy_mask = entropy.ge(high_thresh).float() * valid_u
        labeled = (label_l.unsqueeze(1) != IGNORE).float()
        low_mask_all = torch.cat((labeled, low_entropy_mask.unsqueeze(1)))
        low_mask_all = F.interpolate(low_mask_all, size=feat_size, mode="nearest")
        if negative_high_entropy:
            high_u = high_entropy_mask.unsqueeze(1)
        else:
            high_u = torch.ones_like(low_entropy_mask).unsqueeze(1)
        high_mask_all = torch.cat((labeled, high_u))
        high_mask_all = F.interpolate(high_mask_all, size=feat_size, mode="nearest")
        label_l_small = F.interpolate(
            label_onehot(label_l, num_classes, onehot), size=feat_size, mode="nearest"
        )
        label_u_small = F.interpolate(
            label_onehot(label_u, num_classes, onehot), size=feat_size, mode="nearest"
        )
    return {
        "entropy": entropy,
        "low_thresh": low_thresh,
        "high_thresh": high_thresh,
        "low_entropy_mask": low_entropy_mask,
        "high_entropy_mask": high_entropy_mask,
        "low_mask_all": low_mask_all,
        "high_mask_all": high_mask_all,
        "label_l_small": label_l_small,
        "label_u_small": label_u_small,
    }


def split_teacher_outputs(
    pred_all_teacher: Tensor, num_labeled: int, label_size: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor]:
    """`(prob_l, prob_u, pred_u_large)` from the train-mode teacher logits of
    `cat(image_l, image_u_aug)` (`train_semi.py:365-374`): softmax at feature size, and the
    unlabeled logits upsampled (bilinear, align_corners=True) to the label size."""
    prob_all = F.softmax(pred_all_teacher, dim=1)
    pred_u_large = F.interpolate(
        pred_all_teacher[num_labeled:], size=label_size, mode="bilinear", align_corners=True
    )
    return prob_all[:num_labeled], prob_all[num_labeled:], pred_u_large


def _global_randint(high: int, size: int) -> Tensor:
    # The official call: no generator and no device, i.e. the global CPU generator.
    return torch.randint(high, size=(size,))


def contra_memobank_loss(
    rep: Tensor,
    label_l: Tensor,
    label_u: Tensor,
    prob_l: Tensor,
    prob_u: Tensor,
    low_mask: Tensor,
    high_mask: Tensor,
    rep_teacher: Tensor,
    bank: ClassMemoryBank,
    settings: ContraSettings,
    *,
    draw: DrawFn | None = None,
    record: dict[str, Any] | None = None,
) -> Tensor:
    """Official `compute_contra_memobank_loss` (without the unused `anchor_ema` branch).

    Args:
        rep, rep_teacher: student / teacher representations (B,F,h,w), labeled images first.
        label_l, label_u: one-hot labels at feature size (B_l,C,h,w), (B_u,C,h,w) (integers,
            as `label_onehot(...)` resized and `.long()`-ed by the caller).
        prob_l, prob_u: teacher softmax at feature size.
        low_mask, high_mask: (B,1,h,w) from `contrastive_masks`.
        bank: the class-wise memory banks; this batch's negative keys are enqueued first
            (gathered over ranks), then negatives are sampled from the updated queues.
        draw: `draw(high, size) -> LongTensor` of indices in [0, high); default
            `torch.randint(high, size=(size,))` on the global CPU generator, called for the
            anchors then the negatives of each used position, as officially.
        record: if a dict, filled with the intermediate values (for tests and debugging).

    Returns the loss before the rank average and `loss_weight` (done by the caller).
    """
    draw = draw if draw is not None else _global_randint
    thr_pos = settings.current_class_threshold
    thr_neg = settings.current_class_negative_threshold
    low_rank, high_rank = settings.low_rank, settings.high_rank
    num_queries, num_negatives = settings.num_queries, settings.num_negatives
    num_feat = rep.shape[1]
    num_segments = label_l.shape[1]
    if len(bank) != num_segments:
        raise CpclError(f"memory bank has {len(bank)} classes, the labels {num_segments}")

    labels = torch.cat((label_l, label_u), dim=0)
    low_valid_pixel = labels * low_mask
    high_valid_pixel = labels * high_mask
    rep = rep.permute(0, 2, 3, 1)
    rep_teacher = rep_teacher.permute(0, 2, 3, 1)
    prob_indices_l = torch.sort(prob_l, 1, True)[1].permute(0, 2, 3, 1)
    prob_indices_u = torch.sort(prob_u, 1, True)[1].permute(0, 2, 3, 1)
    prob = torch.cat((prob_l, prob_u), dim=0)

    # Pixels per class in one host transfer (not one `.item()` per class: a sync each on CUDA).
    low_counts = (low_valid_pixel != 0).sum(dim=(0, 2, 3)).tolist()
    anchors_per_class: list[Tensor] = []
    proto_list: list[Tensor] = []
    valid_classes: list[int] = []
    seg_num_list: list[int] = []
    new_keys: list[int] = []
    masks: dict[str, list[Tensor]] = {}
    for i in range(num_segments):
        low_seg = low_valid_pixel[:, i].bool()
        high_seg = high_valid_pixel[:, i].bool()
        prob_seg = prob[:, i]
        rep_mask_low_entropy = (prob_seg > thr_pos) & low_seg
        rep_mask_high_entropy = (prob_seg < thr_neg) & high_seg
        anchors_per_class.append(rep[rep_mask_low_entropy])
        # Positive: mean teacher rep over all low-valid pixels of the class (NaN if none).
        proto_list.append(torch.mean(rep_teacher[low_seg].detach(), dim=0, keepdim=True))
        # Negatives: class i ranked low_rank..high_rank-1 (unlabeled) / in the top low_rank
        # AND not labeled i (labeled; contradicts label i, so labeled keys never appear).
        class_mask_u = prob_indices_u[..., low_rank:high_rank].eq(i).sum(dim=3).bool()
        class_mask_l = prob_indices_l[..., :low_rank].eq(i).sum(dim=3).bool()
        class_mask = torch.cat((class_mask_l & (label_l[:, i] == 0), class_mask_u), dim=0)
        negative_mask = rep_mask_high_entropy & class_mask
        new_keys.append(bank.enqueue(i, rep_teacher[negative_mask].detach()))
        num_low = int(low_counts[i])
        if num_low > 0:
            seg_num_list.append(num_low)
            valid_classes.append(i)
        if record is not None:
            for key, value in (
                ("low_valid_pixel", low_seg),
                ("high_valid_pixel", high_seg),
                ("rep_mask_low_entropy", rep_mask_low_entropy),
                ("rep_mask_high_entropy", rep_mask_high_entropy),
                ("class_mask_u", class_mask_u),
                ("class_mask_l", class_mask_l),
                ("class_mask", class_mask),
                ("negative_mask", negative_mask),
            ):
                masks.setdefault(key, []).append(value)
    if record is not None:
        record.update({k: torch.stack(v) for k, v in masks.items()})
        record.update(
            prob_indices_l=prob_indices_l,
            prob_indices_u=prob_indices_u,
            num_anchor_candidates=[len(a) for a in anchors_per_class],
            new_keys=new_keys,
            valid_classes=valid_classes,
            seg_num_list=seg_num_list,
            valid_seg=len(seg_num_list),
        )

    if len(seg_num_list) <= 1:
        # A batch with at most one present class (official early return).
        return torch.zeros((), dtype=rep.dtype, device=rep.device) * rep.sum()

    seg_proto = torch.cat(proto_list)
    valid_seg = len(seg_num_list)
    reco_loss = torch.zeros((), dtype=rep.dtype, device=rep.device)
    used, anchor_idx, negative_idx, logits_list = [], [], [], []
    # Official pairing (issue #111): anchors and prototype of CLASS `pos`, negatives from the
    # bank of the pos-th PRESENT class; the sum is divided by valid_seg, skipped ones included.
    for pos in range(valid_seg):
        negatives_bank = bank[valid_classes[pos]]
        if len(anchors_per_class[pos]) == 0 or negatives_bank.shape[0] == 0:
            reco_loss = reco_loss + 0 * rep.sum()
            continue
        a_idx = draw(len(anchors_per_class[pos]), num_queries)
        # index_select, not `anchors[a_idx]`: the drawn indices repeat, and the backward of
        # advanced indexing accumulates them with parallel atomic adds on a multi-threaded
        # CPU (run-to-run noise ~1e-7); index_add sums each row in index order, the same
        # values as indexing under torch.use_deterministic_algorithms.
        anchor_feat = torch.index_select(anchors_per_class[pos], 0, a_idx.to(rep.device))
        with torch.no_grad():
            negative_feat = negatives_bank.to(rep.device)
            n_idx = draw(len(negative_feat), num_queries * num_negatives)
            negative_feat = negative_feat[n_idx.to(rep.device)]
            negative_feat = negative_feat.reshape(num_queries, num_negatives, num_feat)
            positive_feat = seg_proto[pos].unsqueeze(0).unsqueeze(0).repeat(num_queries, 1, 1)
            all_feat = torch.cat((positive_feat, negative_feat), dim=1)
        seg_logits = torch.cosine_similarity(anchor_feat.unsqueeze(1), all_feat, dim=2)
        target = torch.zeros(num_queries, dtype=torch.long, device=rep.device)
        reco_loss = reco_loss + F.cross_entropy(seg_logits / settings.temperature, target)
        if record is not None:
            used.append(pos)
            anchor_idx.append(a_idx)
            negative_idx.append(n_idx)
            logits_list.append(seg_logits.detach())
    if record is not None:
        record.update(
            seg_proto=seg_proto.detach(),
            positions_used=used,
            anchor_idx=anchor_idx,
            negative_idx=negative_idx,
            seg_logits=logits_list,
            reco_loss_sum=reco_loss.detach(),
        )
    return reco_loss / valid_seg


def reduce_contra_loss(loss: Tensor, loss_weight: float = 1.0) -> Tensor:
    """The official `dist.all_reduce(contra_loss); contra_loss / world_size * loss_weight`.

    The in-place all_reduce has no autograd kernel: the VALUE becomes the mean over ranks,
    but the GRADIENT stays the local one, divided by world_size. Reproduced exactly: the
    result's value is `mean_r(loss_r) * loss_weight` and its gradient `d loss_local *
    loss_weight / world_size` (the gradient average across ranks then scales the contrastive
    term by a further 1/world_size relative to the others, as in the official training).
    Without an active process group this is `loss * loss_weight`.
    """
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        return loss * loss_weight
    total = loss.detach().clone()
    dist.all_reduce(total)
    return (loss + (total - loss.detach())) / world * loss_weight


class U2PLSupLoss(nn.Module):
    """The official supervised criterion (`get_criterion`, `loss_helper.py:238-360`).

    `kind="ce"`: `CrossEntropyLoss(ignore_index=255)` (VOC, `use_weight: False`).
    `kind="ohem"`: `OhemCrossEntropy2dTensor(thresh, min_kept)` without class weights
    (Cityscapes: 0.7, 100000 per process), i.e. `cpcl.losses.ProbOhemCrossEntropy2d`.
    With `aux_weight > 0` the forward takes the aux logits too and returns
    `loss(pred) + aux_weight * loss(aux)` (both upsampled to the label size by the caller).
    """

    def __init__(
        self,
        kind: str = "ce",
        aux_weight: float = 0.0,
        thresh: float = 0.7,
        min_kept: int = 100000,
        ignore_index: int = IGNORE,
    ) -> None:
        super().__init__()
        if kind == "ce":
            self.main: nn.Module = nn.CrossEntropyLoss(ignore_index=ignore_index)
            self.aux: nn.Module = nn.CrossEntropyLoss(ignore_index=ignore_index)
        elif kind == "ohem":
            self.main = ProbOhemCrossEntropy2d(ignore_index, thresh=thresh, min_kept=min_kept)
            self.aux = ProbOhemCrossEntropy2d(ignore_index, thresh=thresh, min_kept=min_kept)
        else:
            raise ConfigError(f"U2PL supervised loss kind={kind!r}: expected 'ce' or 'ohem'")
        if aux_weight < 0:
            raise ConfigError(f"U2PL aux loss weight={aux_weight!r}: expected >= 0")
        self.kind = kind
        self.aux_weight = float(aux_weight)

    def forward(self, pred: Tensor, target: Tensor, aux: Tensor | None = None) -> Tensor:
        """Loss of label-size logits `pred` (and `aux` when `aux_weight > 0`) on `target`."""
        if self.aux_weight > 0:
            if aux is None:
                raise CpclError("U2PLSupLoss with aux_weight > 0 needs the aux logits")
            return self.main(pred, target) + self.aux_weight * self.aux(aux, target)
        return self.main(pred, target)
