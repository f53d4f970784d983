"""COCO-2014 experiment config (CoSA, weakly supervised): official key names.

The dataset preset (`cpcl/presets/coco.py`) and CoSA's official COCO settings
(`CoSA.defaults["coco"]`: `args_coco.py` + `run_coco.sh`) give every value; edit below or
override any key with --key=value on the command line. The data: CoSA's COCO-2014 layout
under DATA/coco (see docs/datasets.md), with CoSA's train.txt, val.txt and val_part.txt.
"""

from cpcl.config import load_preset

C = load_preset("coco")
C.method = "cosa"
C.pretrained_model = None  # e.g. "../DATA/pytorch-weight/vit_base_patch16_224.pth" (timm)

config = C  # official alias
