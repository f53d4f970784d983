"""Evaluate snapshots of this experiment: `python eval.py -e best_seg.pth -d 0` (see `-h`)."""

import os
import sys

from config import C

from cpcl.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main(C, sys.argv[1:], root=os.path.dirname(os.path.abspath(__file__))))
