"""Toy-data settings shared by scripts/quickstart.py and scripts/bench_semisup.py.

The toy dataset (cpcl.data.toy, "easy" difficulty) and the short CPU schedule: two
DeepLabv3+ ResNet-18 branches from scratch, 64x64 crops, 1/8 of the images labeled, 120
iterations. Mild scale augmentation because the toy objects are small; every other value
is the official VOC preset.
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
