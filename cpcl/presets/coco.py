"""COCO-2014 preset (CoSA's COCO: 81 classes, `args_coco.py` + `run_coco.sh`).

Only the dataset's own values live here; CoSA's official COCO training settings (batch 8 =
4 x 2 GPUs, 60 x 1000 iterations, loss warm-up 10000, `high_thre` 0.65, `aux_layer` -3,
evaluation every 6000 iterations on `val_part.txt`, the final number on `val.txt`) are
`CoSA.defaults["coco"]` (`cpcl/methods/cosa/settings.py`). Class names and colours:
`cpcl.data.datasets.class_names("coco")` / `palette_for("coco")`.
"""

from easydict import EasyDict

from . import common


def defaults() -> EasyDict:
    """Return the COCO-2014 defaults (81 classes, CoSA's layout under DATA/coco)."""
    C = common.defaults()
    C.dataset_name = "coco"
    C.method = "cosa"  # the one method with an official COCO recipe here
    C.num_classes = 81  # background + 80 categories (`args_coco.py` num_classes=81)
    C.background = 0
    C.ignore_index = 255
    C.image_height = 448  # `crop_size`
    C.image_width = 448
    C.num_train_total = 82081  # ids in CoSA's train.txt
    C.num_eval_imgs = 40137  # ids in CoSA's val.txt (val_part.txt: 4999)
    C.lr = 6e-5
    C.batch_size = 8
    C.nepochs = 60
    return C
