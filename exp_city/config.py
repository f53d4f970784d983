"""Cityscapes experiment config: edit the values below per partition (official key names).

Recommended epochs per partition (official): 1/16: 128, 1/8: 137, 1/4: 160, 1/2: 240.
Derived values (split lists, num_train_imgs, niters_per_epoch, snapshot_dir) follow from these
when the run starts; any key can also be overridden with --key=value on the command line.
"""

from cpcl.config import load_preset

C = load_preset("cityscapes")
C.labeled_ratio = 8  # config_new/subset_train/train_aug_labeled_1-8.txt
C.nepochs = 137
C.backbone = "resnet50"
C.pretrained_model = "DATA/pytorch-weight/resnet50_v1c.pth"  # official; None: random init
C.lr = 0.01
C.batch_size = 16  # global batch: split evenly across torchrun processes
C.unsup_weight = 5.0

config = C  # official alias
