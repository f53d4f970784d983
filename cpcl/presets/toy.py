"""Toy-data settings of scripts/quickstart.py and scripts/bench_semisup.py.

Quickstart: the toy dataset (cpcl.data.toy, "easy" difficulty) and a short CPU schedule: two
DeepLabv3+ ResNet-18 branches from scratch, 64x64 crops, 1/8 of the images labeled, 120
iterations. Mild scale augmentation because the toy objects are small; every other value
is the official VOC preset.

Semi-supervised benchmark: the same scenes, but few labeled images (1/16 of 128 = 8, the other
120 unlabeled), so that training on the labeled part alone is data-limited as in the paper's
low-label settings, and every network starts from a backbone pre-trained on the other toy
shapes (cpcl.toy_pretrain, the stand-in for ImageNet weights). 120 iterations in 4 epochs of 30,
so that U2PL's one supervised-only epoch is a quarter of the schedule, as short as the
epochs allow; poly lr 0.01, a fine-tuning lr (scripts/bench_semisup.py gives U2PL and
UniMatch, which keep their official 10x head multiplier, a backbone lr of 0.001).
"""

NUM_CLASSES = 6
TOY_DATA = dict(
    n_train=320, n_val=48, height=96, width=128, num_classes=NUM_CLASSES, difficulty="easy"
)
# What make_toy_voc records for those arguments (to detect an existing, complete dataset).
TOY_DATA_PARAMS = {"dataset": "voc", **TOY_DATA, "vary_size": True, "seed": 0}
TOY_CLASS_NAMES = (
    "background",
    "disc_flat",
    "square_checker",
    "triangle_stripes",
    "ring_flat",
    "cross_dots",
)

QUICKSTART_OVERRIDES = (
    "--backbone=resnet18",
    "--pretrained_model=None",
    f"--num_classes={NUM_CLASSES}",
    f"--class_names={','.join(TOY_CLASS_NAMES)}",
    "--labeled_ratio=8",
    "--image_height=64",
    "--image_width=64",
    "--batch_size=8",
    "--lr=0.05",
    "--nepochs=4",
    "--niters_per_epoch=30",
    "--train_scale_array=0.75,1,1.25",
    "--num_workers=2",
    "--snapshot_iter=1",
    "--display_iter=10",
    "--eval_crop_size=144",
)


def exp_voc_toy_commands() -> tuple[str, str]:
    """The two commands, run in exp_voc/, that train exp_voc/train.py on the toy data: write
    DATA/toy_voc (the quickstart's dataset), then train with the quickstart's settings."""
    return (
        "python ../scripts/make_toy_data.py",
        "python train.py --dataset_path=../DATA/toy_voc " + " ".join(QUICKSTART_OVERRIDES),
    )


# --- semi-supervised benchmark (scripts/bench_semisup.py) ---
SEMISUP_DATA = dict(TOY_DATA, n_train=128, vary_size=True, seed=0)
SEMISUP_SEEDS = (0, 1, 2)  # fine-tuning seeds of the default run
PRETRAIN = dict(backbone="resnet18", iters=400, batch_size=16, size=64, lr=0.05, seed=0)
_SEMISUP_EPOCHS = 4
_SEMISUP_CHANGES = (
    "--labeled_ratio=16",
    # Fine-tuning a pre-trained backbone: at the quickstart's 0.05 (from scratch) `sup` swung
    # by up to 13 points between seeds; at 0.01 its seeds agree within a point.
    "--lr=0.01",
    f"--nepochs={_SEMISUP_EPOCHS}",
    "--niters_per_epoch=30",
    "--num_workers=1",
    "--display_iter=20",
    # A numbered snapshot every nepochs epochs: only the last epoch's is written.
    f"--snapshot_iter={_SEMISUP_EPOCHS}",
    # The published toy figures were measured in the NCHW layout for every method; UniMatch's
    # channels-last speed default would change its float32 reduction order (and its seeds'
    # numbers), so the protocol pins the layout.
    "--channels_last=false",
)
# The quickstart settings with those changes; the benchmark adds --pretrained_model itself.
SEMISUP_OVERRIDES = (
    *(
        o
        for o in QUICKSTART_OVERRIDES
        if o.split("=")[0]
        not in {c.split("=")[0] for c in (*_SEMISUP_CHANGES, "--pretrained_model")}
    ),
    *_SEMISUP_CHANGES,
)

# --- weakly supervised section (scripts/bench_semisup.py --weak) ---
# CoSA on the image-level labels of all 128 training images of the semi-supervised toy set
# (derived from the masks), from scratch: a toy ViT (D 64, 4 blocks) with a 64-channel LargeFOV,
# 96x96 crops, 200 iterations. The official schedule constants are scaled from 32000 to 200
# iterations: LR warm-up 1500 -> 10, loss warm-up 6000 -> 40, EMA momentum 0.9994 -> 0.9 (a time
# constant of 10 instead of 1667 iterations: at 0.9994 the teacher would still be 89% its random
# init after 200 iterations). AdamW lr 1e-3 (the official 6e-5 fine-tunes an ImageNet ViT-B;
# this one starts from random weights), heads x10 as the official lrscale. aux_layer stays the
# VOC default -4 (on the 4-block toy ViT: the first block's tokens).
WEAK_OVERRIDES = (
    "--method=cosa",
    "--cosa_backbone=vit_toy_patch16",
    "--cosa_decoder_width=64",
    "--pretrained_model=None",
    f"--num_classes={NUM_CLASSES}",
    f"--class_names={','.join(TOY_CLASS_NAMES)}",
    "--image_height=96",
    "--image_width=96",
    "--batch_size=8",
    "--lr=1e-3",
    "--nepochs=4",
    "--niters_per_epoch=50",
    "--cosa_lr_warmup_iters=10",
    "--cosa_warmup_iters=40",
    "--cosa_momentum=0.9",
    "--num_workers=1",
    "--display_iter=25",
    "--snapshot_iter=4",
    # The bench scores epoch-last.pth itself: no training-time evaluation, no best_seg.pth.
    "--eval_every=0",
    "--cosa_final_eval=false",
)
# The CAM baseline: the same run with the seg, CAM and energy losses off (classification only,
# no co-training); its student's CAMs become masks as the official CAM score does.
CAM_BASELINE_OVERRIDES = ("--cosa_seg_weight=0", "--cosa_cam_weight=0", "--cosa_reg_weight=0")
