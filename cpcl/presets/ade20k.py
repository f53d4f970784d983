"""ADE20K preset (150 classes, UniMatch V2's layout and splits; CPCL has no ADE20K config).

The generic values are the VOC preset's; the dataset values are ADEChallengeData2016's. A
method with official ADE20K settings (`Method.defaults["ade20k"]`, e.g. UniMatch V2) replaces
them; see cpcl.data.ade20k for the label format and the expected folder tree.
"""

from easydict import EasyDict

from . import voc


def defaults() -> EasyDict:
    """Return the ADE20K defaults (the VOC training values, 150 classes, 20,210 images)."""
    C = voc.defaults()
    C.dataset_name = "ade20k"
    C.method = "unimatch_v2"  # the one method with an official ADE20K recipe here
    C.backbone = "dinov2_small"  # its official encoder and file (its defaults repeat them)
    C.pretrained_model = "DATA/pytorch-weight/dinov2_small.pth"
    C.num_classes = 150
    C.background = 255  # no background class: 0 is "wall"
    C.ignore_index = 255
    C.num_train_total = 20210
    C.num_eval_imgs = 2000
    return C
