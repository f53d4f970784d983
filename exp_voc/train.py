"""Train CPCL on PASCAL VOC.

    python train.py [-c CKPT] [--key=value ...]          # one process: GPU 0, or the CPU
    torchrun --nproc_per_node=4 train.py [--key=value]   # one process per GPU (DDP + SyncBN)

Values come from config.py; any key can be overridden, e.g. --labeled_ratio=16 --nepochs=32.
"""

import sys

from config import C

from cpcl.cli.train import main

if __name__ == "__main__":
    sys.exit(main(C, sys.argv[1:]))
