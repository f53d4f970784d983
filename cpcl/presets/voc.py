"""PASCAL VOC 2012 preset: the official CPCL exp_voc/config.py values."""

from easydict import EasyDict

from . import common


def defaults() -> EasyDict:
    """Return the VOC defaults (ResNet-50, 1/8 labels, 34 epochs)."""
    C = common.defaults()
    C.dataset_name = "voc"
    C.num_classes = 21
    C.background = 0
    C.ignore_index = 255
    C.image_height = 512
    C.image_width = 512
    C.num_train_total = (
        10582  # size of train_aug; num_train_imgs = num_train_total // labeled_ratio
    )
    C.num_eval_imgs = 1449
    # The official config's ImageNet file (C.volna + 'DATA/pytorch-weight/resnet50_v1c.pth'),
    # relative to the repository root; missing: the run stops at start-up (cpcl.weights).
    C.pretrained_model = "DATA/pytorch-weight/resnet50_v1c.pth"
    C.lr = 0.005
    C.batch_size = 8
    C.nepochs = 34  # recommended: 1/16: 32, 1/8: 34, 1/4: 40, 1/2: 60
    C.unsup_weight = 1.0
    C.sup_loss = "ce"  # CrossEntropyLoss(ignore_index=255)
    return C
