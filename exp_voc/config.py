"""PASCAL VOC experiment config: edit the values below per partition (official key names).

Recommended epochs per partition (official): 1/16: 32, 1/8: 34, 1/4: 40, 1/2: 60.
Derived values (split lists, num_train_imgs, niters_per_epoch, snapshot_dir) follow from these
when the run starts; any key can also be overridden with --key=value on the command line.
"""

from cpcl.config import load_preset

C = load_preset("voc")
C.labeled_ratio = 8  # 1/8 of train_aug labeled: subset_train_aug/train_aug_labeled_1-8.txt
C.nepochs = 34
C.backbone = "resnet50"
C.pretrained_model = "DATA/pytorch-weight/resnet50_v1c.pth"  # official; None: random init
C.lr = 0.005
C.batch_size = 8  # global batch: split evenly across torchrun processes
C.unsup_weight = 1.0

config = C  # official alias
