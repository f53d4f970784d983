"""CoSA's official evaluation protocol against a literal copy of the official loop
(`evaluation_engine.py`, `utils/seg_helper.py`, `utils/evaluation.py`) with a stub network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cpcl.errors import CpclError
from cpcl.methods.base import OfficialEvaluator
from cpcl.methods.cosa.evaluate import (
    OFFICIAL_EVAL_SCALES,
    CosaSegNet,
    cosa_official_evaluator,
    cosa_scores,
    evaluate_cosa,
    multi_scale_camseg,
    multi_scale_seg,
)
from cpcl.methods.cosa.image_labels import ImageLabels, class_vector

# ------------------------------------------------------------------ literal official code


def normalize_img(img, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]):  # noqa: B006
    imgarr = np.asarray(img)
    proc_img = np.empty_like(imgarr, np.float32)
    proc_img[..., 0] = (imgarr[..., 0] - mean[0]) / std[0]
    proc_img[..., 1] = (imgarr[..., 1] - mean[1]) / std[1]
    proc_img[..., 2] = (imgarr[..., 2] - mean[2]) / std[2]
    return proc_img


def denormalize_img_(imgs, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]):  # noqa: B006
    _imgs = torch.zeros_like(imgs)
    _imgs[:, 0, :, :] = imgs[:, 0, :, :] * std[0] + mean[0]
    _imgs[:, 1, :, :] = imgs[:, 1, :, :] * std[1] + mean[1]
    _imgs[:, 2, :, :] = imgs[:, 2, :, :] * std[2] + mean[2]
    _imgs = _imgs.type(torch.uint8)
    return _imgs


def multi_scale_camsegv3(model, imgs, scales, getcls=False):
    b, _c, h, w = imgs.shape
    cam_list = []
    cam_aux_list = []
    seg_list = []
    assert 1.0 in scales, "scale 1.0 must be in scales"
    with torch.no_grad():
        for s in scales:
            if s != 1.0:
                imgs_ = F.interpolate(
                    imgs, size=(int(s * h), int(s * w)), mode="bilinear", align_corners=False
                )
            else:
                imgs_ = imgs
            imgs_cat = torch.cat([imgs_, imgs_.flip(-1)], dim=0)
            _cls_f, _cls_a, _, _seg, _cam, _cam_aux = model(imgs_cat, cam_only=False)
            _cam = F.interpolate(_cam, size=(h, w), mode="bilinear", align_corners=False)
            _cam = torch.max(_cam[:b, ...], _cam[b:, ...].flip(-1))
            _cam_aux = F.interpolate(_cam_aux, size=(h, w), mode="bilinear", align_corners=False)
            _cam_aux = torch.max(_cam_aux[:b, ...], _cam_aux[b:, ...].flip(-1))
            cam_list.append(F.relu(_cam))
            cam_aux_list = [F.relu(_cam_aux)]
            _seg = F.interpolate(_seg, size=(h, w), mode="bilinear", align_corners=False)
            seg = torch.sum(torch.stack([_seg[:b, ...], _seg[b:, ...].flip(-1)], dim=0), dim=0)
            seg_list.append(seg)
        cam = torch.sum(torch.stack(cam_list, dim=0), dim=0)
        cam = cam + F.adaptive_max_pool2d(-cam, (1, 1))
        cam /= F.adaptive_max_pool2d(cam, (1, 1)) + 1e-5
        cam_aux = torch.sum(torch.stack(cam_aux_list, dim=0), dim=0)
        cam_aux = cam_aux + F.adaptive_max_pool2d(-cam_aux, (1, 1))
        cam_aux /= F.adaptive_max_pool2d(cam_aux, (1, 1)) + 1e-5
        seg = torch.sum(torch.stack(seg_list, dim=0), dim=0)
    return cam, cam_aux, seg


def cam_to_label(cam, cls_label, img_box=None, bkg_thre=None, high_thre=None, low_thre=None,
                 ignore_mid=False, ignore_index=None):  # fmt: skip
    _b, _c, h, w = cam.shape
    if cls_label is not None:
        cls_label_rep = cls_label.unsqueeze(-1).unsqueeze(-1).repeat([1, 1, h, w])
        valid_cam = cls_label_rep * cam
    else:
        valid_cam = cam
    cam_value, _pseudo_label = valid_cam.max(dim=1, keepdim=False)
    _pseudo_label += 1
    _pseudo_label[cam_value <= bkg_thre] = 0
    return _pseudo_label


def seg_validation(seg, cls_label):
    b, _c, _h, _w = seg.shape
    if cls_label is not None:
        cls_label_bk = torch.cat([torch.ones(b, 1).long().to(cls_label.device), cls_label], dim=1)
        valid_seg = seg.clone()
        valid_seg[cls_label_bk == 0] = -1e5
        return valid_seg
    return seg


def cam_validation(cam, cls_label):
    _b, _c, h, w = cam.shape
    cls_label_rep = cls_label.unsqueeze(-1).unsqueeze(-1).repeat([1, 1, h, w])
    valid_cam = cls_label_rep * cam
    return valid_cam


def _refine_cams(refine_model, images, cams, valid_key, orig_size):
    if refine_model:  # noqa: SIM108 (official text)
        refined_cams = refine_model(images, cams)
    else:
        refined_cams = cams
    refined_cams = F.interpolate(refined_cams, size=orig_size, mode="bilinear", align_corners=False)
    refined_label = refined_cams.argmax(dim=1)
    refined_label = valid_key[refined_label]
    return refined_label


def cam2mask(images, img_boxes, cams, cls_labels, threshold_high, threshold_low,
             refine_model=None, ignore_index=255, downscale=2):  # fmt: skip
    b, _, h, w = images.shape
    if downscale:
        _images = F.interpolate(images, size=[h // downscale, w // downscale], mode="bilinear",
                                align_corners=False)  # fmt: skip
    else:
        _images = images
    threshold_temp = torch.ones((b, 1, h, w)).to(cams.device)
    cams_high_threshold = torch.cat([threshold_temp.clone() * threshold_high, cams], dim=1)
    cams_low_threshold = torch.cat([threshold_temp.clone() * threshold_low, cams], dim=1)
    if downscale:
        _cams_high_threshold = F.interpolate(cams_high_threshold, size=[h // downscale, w // downscale],
                                             mode="bilinear", align_corners=False)  # fmt: skip
        _cams_low_threshold = F.interpolate(cams_low_threshold, size=[h // downscale, w // downscale],
                                            mode="bilinear", align_corners=False)  # fmt: skip
    else:
        _cams_high_threshold = cams_high_threshold
        _cams_low_threshold = cams_low_threshold
    cls_labels_with_bkg = torch.cat([torch.ones((b, 1)).to(cls_labels.device), cls_labels], dim=1)
    refined_label_mask = threshold_temp.squeeze(1) * ignore_index
    refined_label_mask_high = refined_label_mask.clone()
    refined_label_mask_low = refined_label_mask.clone()
    for b_idx, coord in enumerate(img_boxes):
        current_labels = torch.nonzero(cls_labels_with_bkg[b_idx, ...])[:, 0]
        active_cams_high = (
            _cams_high_threshold[b_idx, current_labels, ...].unsqueeze(0).softmax(dim=1)
        )
        active_cams_low = (
            _cams_low_threshold[b_idx, current_labels, ...].unsqueeze(0).softmax(dim=1)
        )
        _refined_label_mask_high = _refine_cams(refine_model, _images[[b_idx], ...],
                                                active_cams_high, current_labels, orig_size=(h, w))  # fmt: skip
        _refined_label_mask_low = _refine_cams(refine_model, _images[[b_idx], ...],
                                               active_cams_low, current_labels, orig_size=(h, w))  # fmt: skip
        refined_label_mask_high[b_idx, coord[0]:coord[1], coord[2]:coord[3]] = _refined_label_mask_high[0, coord[0]:coord[1], coord[2]:coord[3]]  # fmt: skip
        refined_label_mask_low[b_idx, coord[0]:coord[1], coord[2]:coord[3]] = _refined_label_mask_low[0, coord[0]:coord[1], coord[2]:coord[3]]  # fmt: skip
    refined_label_mask = refined_label_mask_high.clone()
    refined_label_mask[refined_label_mask_high == 0] = ignore_index
    refined_label_mask[(refined_label_mask_high + refined_label_mask_low) == 0] = 0
    return refined_label_mask


def pseudo_scores(label_trues, label_preds, num_classes):
    """`pseudo_scores`: its loop body, then the reduction it shares verbatim with `scores`."""
    trues, preds = [], []
    for lt, lp in zip(label_trues, label_preds, strict=True):
        lt = lt.flatten()
        lp = lp.flatten()
        lt[lp == 255] = 255
        lp[lp == 255] = 0
        trues.append(lt)
        preds.append(lp)
    return scores(trues, preds, num_classes)


def _fast_hist(label_true, label_pred, num_classes):
    mask = (label_true >= 0) & (label_true < num_classes)
    hist = np.bincount(
        num_classes * label_true[mask].astype(int) + label_pred[mask],
        minlength=num_classes**2,
    )
    return hist.reshape(num_classes, num_classes)


def scores(label_trues, label_preds, num_classes):
    hist = np.zeros((num_classes, num_classes))
    for lt, lp in zip(label_trues, label_preds, strict=True):
        hist += _fast_hist(lt.flatten(), lp.flatten(), num_classes)
    acc = np.diag(hist).sum() / hist.sum()
    _acc_cls = np.diag(hist) / hist.sum(axis=1)
    acc_cls = np.nanmean(_acc_cls)
    iu = np.diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - np.diag(hist))
    valid = hist.sum(axis=1) > 0
    mean_iu = np.nanmean(iu[valid])
    return {"pAcc": acc, "mAcc": acc_cls, "miou": mean_iu, "iou": iu, "hist": hist}


def official_evaluate(model, samples, num_classes, crop_size, bkg_thre, crf, threshold_filters):
    """The per-image body of `evaluation_engine.evaluate` (batch 1, one rank), then `scores`."""
    store = {"preds_ps": [], "preds_vd": [], "gts": [], "cams": [], "cams_aux": [], "vd_crfs": []}
    store["cams_threshed"] = {thre: [] for thre in threshold_filters}
    store["cams_aux_threshed"] = {thre: [] for thre in threshold_filters}
    seg_logits = []
    for image, label, cls_np in samples:
        img_org = torch.from_numpy(np.transpose(normalize_img(image), (2, 0, 1)))[None]
        labels = torch.from_numpy(label)[None]
        cls_label = torch.from_numpy(cls_np)[None]
        inputs = F.interpolate(img_org, size=[crop_size, crop_size], mode="bilinear",
                               align_corners=False)  # fmt: skip
        _cams, _cams_aux, seg_ps = multi_scale_camsegv3(
            model, inputs.clone(), [1.0, 0.5, 1.5, 0.75, 1.25]
        )
        seg_logits.append(seg_ps)
        resized_cam = F.interpolate(_cams, size=labels.shape[1:], mode="bilinear",
                                    align_corners=False)  # fmt: skip
        cam_label = cam_to_label(resized_cam.clone(), cls_label, bkg_thre=bkg_thre)
        resized_cam_aux = F.interpolate(_cams_aux, size=labels.shape[1:], mode="bilinear",
                                        align_corners=False)  # fmt: skip
        cam_label_aux = cam_to_label(resized_cam_aux.clone(), cls_label, bkg_thre=bkg_thre)
        resized_seg_ps = F.interpolate(seg_ps, size=labels.shape[1:], mode="bilinear",
                                       align_corners=False)  # fmt: skip
        valid_seg_ps = seg_validation(resized_seg_ps, cls_label)
        img_denorm = denormalize_img_(img_org) / 255.0
        valid_cam = cam_validation(resized_cam.clone(), cls_label)
        valid_cam_aux = cam_validation(resized_cam_aux.clone(), cls_label)
        for thre in threshold_filters:
            cam_label_thred = cam2mask(images=img_denorm.clone(), img_boxes=[[0, -1, 0, -1]],
                                       cams=valid_cam.clone(), cls_labels=cls_label,
                                       threshold_high=1 - thre, threshold_low=thre)  # fmt: skip
            cam_aux_label_threshed = cam2mask(images=img_denorm.clone(), img_boxes=[[0, -1, 0, -1]],
                                              cams=valid_cam_aux.clone(), cls_labels=cls_label,
                                              threshold_high=1 - thre, threshold_low=thre)  # fmt: skip
            store["cams_threshed"][thre] += list(cam_label_thred.cpu().numpy().astype(np.uint8))
            store["cams_aux_threshed"][thre] += list(
                cam_aux_label_threshed.cpu().numpy().astype(np.uint8)
            )
        store["gts"] += list(labels.cpu().numpy().astype(np.uint8))
        store["preds_ps"] += list(
            torch.argmax(resized_seg_ps, dim=1).cpu().numpy().astype(np.uint8)
        )
        store["preds_vd"] += list(torch.argmax(valid_seg_ps, dim=1).cpu().numpy().astype(np.uint8))
        vd_crf = valid_seg_ps.softmax(dim=1)[0].cpu().numpy()
        ori_img = denormalize_img_(img_org).permute(0, 2, 3, 1).cpu().numpy()[0]
        vd_crfv2_score = np.argmax(crf(ori_img, vd_crf), axis=0)
        store["vd_crfs"] += [vd_crfv2_score.astype(np.uint8)]
        store["cams"] += list(cam_label.cpu().numpy().astype(np.uint8))
        store["cams_aux"] += list(cam_label_aux.cpu().numpy().astype(np.uint8))
    out = {
        "seg_vd": scores(store["gts"], store["preds_vd"], num_classes),
        "seg_ps": scores(store["gts"], store["preds_ps"], num_classes),
        "crf": scores(store["gts"], store["vd_crfs"], num_classes),
        "cam": scores(store["gts"], store["cams"], num_classes),
        "cam_aux": scores(store["gts"], store["cams_aux"], num_classes),
    }
    for thre in threshold_filters:
        out[f"cam_t{thre:g}"] = pseudo_scores(
            store["gts"], store["cams_threshed"][thre], num_classes
        )
        out[f"cam_aux_t{thre:g}"] = pseudo_scores(
            store["gts"], store["cams_aux_threshed"][thre], num_classes
        )
    return out, seg_logits


# ------------------------------------------------------------------ stub network and data


class StubCoSA(nn.Module):
    """A fixed random CoSA-shaped network: patch conv (stride 4) -> features; seg, CAM and aux
    CAM heads; the official 6 outputs, or the seg logits alone with ``seg_only=True``."""

    def __init__(self, num_classes: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.aux = nn.Conv2d(3, 8, 4, stride=4)
        self.seg = nn.Conv2d(8, num_classes, 3, padding=1)
        self.classifier = nn.Conv2d(8, num_classes - 1, 1, bias=False)
        self.aux_classifier = nn.Conv2d(8, num_classes - 1, 1, bias=False)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.5
        self.num_classes = num_classes

    def forward(self, x, cam_only=False, seg_only=False):
        feat, feat_aux = torch.tanh(self.patch(x)), torch.tanh(self.aux(x))
        seg = self.seg(feat)
        if seg_only:
            return seg
        cam, cam_aux = self.classifier(feat), self.aux_classifier(feat_aux)
        if cam_only:
            return cam, cam_aux
        cls = self.classifier(F.adaptive_max_pool2d(feat, 1)).flatten(1)
        cls_aux = self.aux_classifier(F.adaptive_max_pool2d(feat_aux, 1)).flatten(1)
        return cls, cls_aux, feat, seg, cam, cam_aux


class ListDataset:
    """`load(i) -> (uint8 RGB, label, name)` over in-memory samples."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def load(self, i):
        img, label = self.samples[i]
        return img, label, f"img_{i}"


def _samples(seed: int, num_classes: int, n: int = 3):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        h, w = 20 + 3 * k, 27 - 2 * k
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        label = np.zeros((h, w), np.uint8)
        label[h // 3 :, : w // 2] = rng.integers(1, num_classes)
        label[: h // 4, w // 2 :] = rng.integers(1, num_classes)
        label[-2:, :] = 255
        out.append((img, label))
    return out


def stub_crf(image: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Deterministic stand-in for the dense CRF: probabilities reweighted by the image."""
    weight = 1.0 + np.sin(image.astype(np.float64).sum(axis=2) / 50.0)
    return probs * weight[None] + np.roll(probs, 1, axis=0) * 0.3


def _assert_same(ours: dict, theirs: dict) -> None:
    np.testing.assert_array_equal(ours["hist"].numpy(), theirs["hist"].astype(np.int64))
    np.testing.assert_array_equal(ours["iou"], theirs["iou"])
    assert ours["miou"] == theirs["miou"]
    assert ours["pixel_acc"] == theirs["pAcc"]
    assert ours["mean_class_acc"] == theirs["mAcc"]


# ------------------------------------------------------------------ tests


# The official `scores` divides 0/0 for classes absent from gt and prediction (NaN, as intended).
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize(
    "num_classes, crop, seed, thresholds", [(4, 32, 0, (0.25, 0.4)), (6, 24, 1, (0.3,))]
)
def test_matches_official_loop(num_classes: int, crop: int, seed: int, thresholds) -> None:
    torch.manual_seed(0)
    model = StubCoSA(num_classes, seed).eval()
    samples = _samples(seed, num_classes)
    cls = [class_vector(label, num_classes) for _, label in samples]
    official, seg_logits = official_evaluate(
        model, [(i, lab, c) for (i, lab), c in zip(samples, cls, strict=True)], num_classes, crop, 0.5,
        stub_crf, thresholds,
    )  # fmt: skip
    net = CosaSegNet(model)
    res = evaluate_cosa(
        net, ListDataset(samples), num_classes=num_classes, crop_size=crop, crf=stub_crf,
        cams=True, cam_thresholds=thresholds,
    )  # fmt: skip
    assert set(official) == {k for k in res if isinstance(res[k], dict)}
    for key in official:
        _assert_same(res[key], official[key])
    _assert_same(res, official["crf"])  # the reported number: the CRF's when a CRF is given
    assert res["num_images"] == len(samples)
    plain = evaluate_cosa(net, ListDataset(samples), num_classes=num_classes, crop_size=crop)
    _assert_same(plain, official["seg_vd"])
    assert set(plain) >= {"iou", "miou", "pixel_acc", "hist", "num_images", "seg_ps"}
    unfiltered = evaluate_cosa(
        net, ListDataset(samples), num_classes=num_classes, crop_size=crop,
        filter_by_image_labels=False,
    )  # fmt: skip
    _assert_same(unfiltered, official["seg_ps"])
    # The multi-scale logits themselves, seg-only forward vs the official full forward.
    img = torch.from_numpy(np.transpose(normalize_img(samples[0][0]), (2, 0, 1)))[None]
    x = F.interpolate(img, size=[crop, crop], mode="bilinear", align_corners=False)
    assert torch.equal(multi_scale_seg(net, x, OFFICIAL_EVAL_SCALES), seg_logits[0])
    cam, cam_aux, seg = multi_scale_camseg(net, x, OFFICIAL_EVAL_SCALES)
    ref = multi_scale_camsegv3(model, x, list(OFFICIAL_EVAL_SCALES))
    assert torch.equal(cam, ref[0]) and torch.equal(cam_aux, ref[1]) and torch.equal(seg, ref[2])


def test_npy_labels_change_the_filtered_prediction() -> None:
    """The class vectors come from `image_labels` when given (the official npy), else masks."""
    model = StubCoSA(4, 2).eval()
    samples = _samples(2, 4)
    everything = ImageLabels(4, {f"img_{i}": np.ones(3, np.float32) for i in range(3)}, "all")
    a = evaluate_cosa(CosaSegNet(model), ListDataset(samples), num_classes=4, crop_size=16,
                      image_labels=everything)  # fmt: skip
    b = evaluate_cosa(CosaSegNet(model), ListDataset(samples), num_classes=4, crop_size=16,
                      filter_by_image_labels=False)  # fmt: skip
    assert torch.equal(a["hist"], b["hist"])  # nothing filtered when every class is "present"


def test_cosa_scores_counts_gt_classes_only() -> None:
    hist = np.array([[5, 1, 0], [0, 0, 0], [1, 2, 3]])  # class 1 predicted but absent from gt
    out = cosa_scores(hist)
    assert np.isclose(out["miou"], np.mean([5 / 7, 3 / 6]))
    assert out["iou"][1] == 0.0 and out["pixel_acc"] == 8 / 12


def test_bad_inputs() -> None:
    model = StubCoSA(4, 0).eval()
    ds = ListDataset([(np.zeros((8, 8, 3), np.uint8), None)])
    with pytest.raises(CpclError, match="no label"):
        evaluate_cosa(CosaSegNet(model), ds, num_classes=4, crop_size=16)
    with pytest.raises(CpclError, match=r"scale 1\.0"):
        evaluate_cosa(CosaSegNet(model), ds, num_classes=4, scales=(0.5, 1.5))
    with pytest.raises(CpclError, match="for 21 classes"):
        evaluate_cosa(model, ds, num_classes=4, image_labels=ImageLabels.from_masks(21))


def test_official_evaluator_wiring() -> None:
    """`cosa_official_evaluator` is an `OfficialEvaluator` called as the CLI calls it."""
    model = StubCoSA(4, 3).eval()
    data = ListDataset(_samples(3, 4, 2))
    ev = cosa_official_evaluator(num_classes=4, crop_size=16)
    assert isinstance(ev, OfficialEvaluator) and "cosa official" in ev.label
    res = ev.evaluate(CosaSegNet(model), data, device="cpu", exports=None, progress=False)
    assert res["num_images"] == 2 and res["hist"].dtype == torch.int64
    direct = evaluate_cosa(CosaSegNet(model), data, num_classes=4, crop_size=16)
    assert torch.equal(res["hist"], direct["hist"])
