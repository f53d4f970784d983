"""Cityscapes preset: the official CPCL exp_city/config.py values."""

from easydict import EasyDict

from . import common


def defaults() -> EasyDict:
    """Return the Cityscapes defaults (ResNet-50, 1/8 labels, 137 epochs)."""
    C = common.defaults()
    C.dataset_name = "cityscapes"
    C.num_classes = 19
    C.background = 255
    C.ignore_index = 255
    C.image_height = 800
    C.image_width = 800
    C.num_train_total = 2975
    C.num_eval_imgs = 500
    # The official config's ImageNet file (C.volna + 'DATA/pytorch-weight/resnet50_v1c.pth'),
    # relative to the repository root; missing: the run stops at start-up (cpcl.weights).
    C.pretrained_model = "DATA/pytorch-weight/resnet50_v1c.pth"
    C.lr = 0.01
    # The paper trains with 16 images per iteration (the public config file's 3 is a
    # per-GPU leftover); with torchrun the batch is split across ranks.
    C.batch_size = 16
    C.nepochs = 137  # recommended: 1/16: 128, 1/8: 137, 1/4: 160, 1/2: 240
    C.unsup_weight = 5.0
    C.sup_loss = "ohem"  # ProbOhemCrossEntropy2d, thresh 0.7, min_kept 50000 * batch
    C.ohem_thresh = 0.7
    C.ohem_min_kept_per_image = 50000
    return C
