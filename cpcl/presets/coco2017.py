"""COCO 2017 preset (81 classes, UniMatch V2's layout and splits; CPCL has no COCO config).

The generic values are the VOC preset's; the dataset values are COCO 2017's (train2017 /
val2017 with UniMatch V2's pre-processed masks). A method with official COCO settings
(`Method.defaults["coco2017"]`, e.g. UniMatch V2) replaces them; see cpcl.data.coco2017 for
the label format and the expected folder tree. `--dataset_name=coco` is another dataset:
CoSA's COCO 2014 layout (`cpcl/presets/coco.py`).
"""

from easydict import EasyDict

from . import voc


def defaults() -> EasyDict:
    """Return the COCO 2017 defaults (the VOC training values, 81 classes, 118,287 images)."""
    C = voc.defaults()
    C.dataset_name = "coco2017"
    C.method = "unimatch_v2"  # the one method with an official COCO 2017 recipe here
    C.backbone = "dinov2_small"  # its official encoder and file (its defaults repeat them)
    C.pretrained_model = "DATA/pytorch-weight/dinov2_small.pth"
    C.num_classes = 81
    C.background = 0  # index 0 ("void" in UniMatch V2's names) is a trained, scored class
    C.ignore_index = 255
    C.num_train_total = 118287  # train2017
    C.num_eval_imgs = 5000  # val2017 (UniMatch V2's splits/coco/val.txt)
    C.labeled_ratio = 512  # the smallest official partition (splits/coco/1_512)
    return C
