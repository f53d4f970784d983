"""ADE20K (SceneParsing, 150 classes) as UniMatch V2 uses it: class names, colours, folder tree.

The names are UniMatch V2's `util/classes.py` list (`CLASSES['ade20k']`, f6afb4d; its trailing
space in "bed " dropped). The labels are the pre-processed annotations UniMatch V2 distributes
(README "The ADE20K and COCO annotations have already been pre-processed"): class indices
0..149 (0 = wall) and 255 = ignore (the raw ADEChallengeData2016 PNGs use 0 = "other" and
1..150; map them with `label - 1`, 0 -> 255, first). No official palette exists; `ade20k_palette`
is the VOC bit-interleaved colour map (distinct colours for all 150 indices, 255 light grey).
"""

from __future__ import annotations

ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

ADE20K_TREE = """\
DATA/ade20k/                     (C.dataset_path; UniMatch V2 layout, ADEChallengeData2016)
├── images/{training,validation}/ADE_*.jpg          20,210 / 2,000 images
├── annotations/{training,validation}/ADE_*.png     pre-processed: 0-149, 255 = ignore
└── splits/                       UniMatch V2's splits/ade20k/ ('image label' per line)
    ├── val.txt
    └── 1_{2,4,8,16,32,64}/{labeled,unlabeled}.txt"""
