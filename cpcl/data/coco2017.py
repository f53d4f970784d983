"""COCO 2017 as UniMatch V2 (and UniMatch V1) train it: class names, folder tree.

81 classes: 0 plus the 80 COCO "thing" categories in the order of their category ids, as in
UniMatch V2's `util/classes.py` (`CLASSES['coco'][:81]`, f6afb4d; `configs/coco.yaml` has
`nclass: 81`, so the stuff names past index 80 are never used). The names are CoSA's COCO-2014
names (`COCO_CLASSES`) except index 0, which UniMatch V2 calls "void" and CoSA "background":
same masks convention, 0 is a trained, scored class. The masks are the pre-processed PNGs
UniMatch V2 distributes (README "The ADE20K and COCO annotations have already been
pre-processed"): class indices 0..80, 255 = ignore. The images are read with PIL
(`.convert('RGB')`, no EXIF rotation) as `dataset/semi.py:33` does: a few train2017 JPEGs carry
an EXIF orientation that OpenCV would apply, turning the image against its mask.
No official palette exists; the VOC bit-interleaved colour map is used (as for ADE20K).

The official lists (`splits/coco/`, identical in UniMatch V1 and V2) hold 'image mask' per line
relative to the COCO root (`train2017/000000283213.jpg masks/000000283213.png`,
`val2017/000000000139.jpg masks/000000000139.png`): partitions 1_512, 1_256, 1_128, 1_64,
1_32 (labeled.txt and unlabeled.txt each) and val.txt (5,000 images).
"""

from __future__ import annotations

COCO2017_TREE = """\
DATA/coco2017/                   (C.dataset_path; UniMatch V2 layout)
├── train2017/<id>.jpg           118,287 images
├── val2017/<id>.jpg             5,000 images
├── masks/<id>.png               UniMatch V2's pre-processed masks (train and val): 0-80, 255 = ignore
└── splits/                      UniMatch V2's splits/coco/ ('image mask' per line)
    ├── val.txt
    └── 1_{32,64,128,256,512}/{labeled,unlabeled}.txt
                                 (copy the unlabeled lists from UniMatch V2; docs/datasets.md)"""
