"""Train CoSA on COCO-2014.

    python train.py [-c CKPT] [--key=value ...]          # one process: GPU 0, or the CPU
    torchrun --nproc_per_node=2 train.py [--key=value]   # official: 2 GPUs x 4 images

Values come from config.py (preset + CoSA's official COCO settings); any key can be
overridden, e.g. --nepochs=6 --cosa_train_eval_list=val_part.txt.
"""

import sys

from config import C

from cpcl.cli.train import main

if __name__ == "__main__":
    sys.exit(main(C, sys.argv[1:]))
