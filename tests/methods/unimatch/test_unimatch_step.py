"""The forwards of one UniMatch iteration: modes, order, CutMix of images, FP split."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cpcl.errors import CpclError
from cpcl.methods.unimatch.losses import build_criterion_l, unimatch_loss
from cpcl.methods.unimatch.net import UniMatchDeepLabV3Plus
from cpcl.methods.unimatch.step import BATCH_KEYS, cutmix_images, unimatch_forward_loss


class _TinyNet(nn.Module):
    """UniMatch's forward (need_fp, one decoder pass) over a tiny conv+BN encoder/decoder."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.low = nn.Conv2d(6, 6, 1)
        self.dec = nn.Sequential(nn.BatchNorm2d(12), nn.Conv2d(12, classes, 1))
        self.fp_dropout = 0.5

    def features(self, x):
        c1 = self.backbone(x)
        return c1, self.low(c1)

    def decode(self, c1, c4, size=None):
        return self.dec(torch.cat((c1, c4), 1))

    forward = UniMatchDeepLabV3Plus.forward


def _batch(seed: int, b: int = 2, s: int = 9) -> dict:
    g = torch.Generator().manual_seed(seed)
    img = {k: torch.randn(b, 3, s, s, generator=g) for k in BATCH_KEYS if k.startswith("img")}
    box1 = torch.zeros(b, s, s)
    box1[0, 2:6, 1:5] = 1
    box2 = torch.zeros(b, s, s)
    box2[1, 0:3, 3:9] = 1
    ignore = torch.zeros(b, s, s, dtype=torch.long)
    ignore[:, -2:] = 255
    return {
        **img,
        "mask_x": torch.randint(0, 4, (b, s, s), generator=g),
        "ignore_mask": ignore,
        "ignore_mask_mix": torch.zeros(b, s, s, dtype=torch.long),
        "cutmix_box1": box1,
        "cutmix_box2": box2,
    }


def test_forward_loss_matches_the_official_sequence():
    torch.manual_seed(0)
    net = _TinyNet()
    ref = _TinyNet()
    ref.load_state_dict(net.state_dict())
    batch = _batch(1)
    crit = build_criterion_l("CELoss", {"ignore_index": 255})

    torch.manual_seed(5)
    out = unimatch_forward_loss(net, batch, criterion_l=crit, conf_thresh=0.5)
    assert net.training

    # The official lines, written out on the reference copy.
    torch.manual_seed(5)
    with torch.no_grad():
        ref.eval()
        pred_mix = ref(batch["img_u_w_mix"])
    s1, s2 = batch["img_u_s1"].clone(), batch["img_u_s2"].clone()
    m1 = batch["cutmix_box1"].unsqueeze(1).expand(s1.shape) == 1
    m2 = batch["cutmix_box2"].unsqueeze(1).expand(s2.shape) == 1
    s1[m1] = batch["img_u_s1_mix"][m1]
    s2[m2] = batch["img_u_s2_mix"][m2]
    ref.train()
    preds, preds_fp = ref(torch.cat((batch["img_x"], batch["img_u_w"])), True)
    pred_x, pred_u_w = preds.split([2, 2])
    pred_s1, pred_s2 = ref(torch.cat((s1, s2))).chunk(2)
    want = unimatch_loss(
        pred_x,
        batch["mask_x"],
        pred_u_w,
        pred_mix,
        pred_s1,
        pred_s2,
        preds_fp[2:],
        batch["cutmix_box1"],
        batch["cutmix_box2"],
        batch["ignore_mask"],
        batch["ignore_mask_mix"],
        criterion_l=crit,
        conf_thresh=0.5,
    )
    for key in ("loss", "loss_x", "loss_u_s1", "loss_u_s2", "loss_u_w_fp", "mask_ratio"):
        torch.testing.assert_close(getattr(out, key), getattr(want, key), rtol=0, atol=0)
    # BN running statistics moved by the same train-mode forwards (the eval one moves nothing).
    for k, v in ref.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    # pred_u_w_mix came from running statistics: the eval forward of the mixing images.
    torch.testing.assert_close(out.conf_u_w_mix, pred_mix.softmax(1).max(1)[0])


def test_cutmix_images_and_missing_keys():
    img, mix = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    box = torch.zeros(1, 4, 4)
    box[0, 1:3, 2:4] = 1
    out = cutmix_images(img, mix, box)
    assert torch.equal(out[0, 0], box[0]) and torch.equal(out[0, 2], box[0])
    assert img.sum() == 0  # the inputs stay as they are
    with pytest.raises(CpclError, match="do not fit"):
        cutmix_images(img, mix, torch.zeros(1, 4, 5))
    batch = _batch(0)
    del batch["img_u_s2_mix"]
    with pytest.raises(CpclError, match="img_u_s2_mix"):
        unimatch_forward_loss(_TinyNet(), batch, criterion_l=nn.CrossEntropyLoss(), conf_thresh=0)
