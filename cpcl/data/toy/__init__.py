"""Deterministic procedural toy datasets in the exact CPS VOC and Cityscapes layouts.

The toy sets let the quickstart, the tests and a small semi-supervised benchmark run on a CPU
in minutes while exercising the real loaders (same folders, list formats and label encodings).

Scene design (why the task needs shape and context, and why unlabeled images help):

* VOC-toy: a smooth, often two-tone background (wall/floor) with illumination gradients,
  background clutter (irregular blobs, lines, weak textures) and 1-4 objects per image.
  Each foreground class is a *shape* (disc, square, triangle, ring, cross, ...). Its texture
  (flat, stripes, checker, dots) and hue follow a class preference only part of the time,
  so colour and texture are priors, not answers; clutter borrows the same colours and
  textures, so only the outline separates objects from background reliably. Objects vary in
  size, position, rotation and aspect, are truncated at borders and occlude each other.
* Cityscapes-toy: a street in perspective (sky top, buildings with windows, road with lane
  marks and sidewalks bottom) with cars, persons, trees and poles whose size follows depth,
  random car/clothing colours, ego-vehicle hoods (void, 255) and 1-px void rings around
  things, like the unlabeled borders of the real annotations.
* With few labeled images (the semi-supervised benchmark labels 16 of 128), a network sees
  each class in only a few appearance combinations (hue x texture x size x placement x
  lighting) and overfits them; the unlabeled images come from the same generator and show
  the combinations it missed, which is the signal consistency-based semi-supervised
  learning exploits. `voc_toy_scene` renders scenes in memory (for pre-training on the
  objects a dataset does not use, see `cpcl.toy_pretrain`).

Determinism: every image is drawn from its own `numpy.random.Generator` seeded by
(seed, dataset, split, index); JPEG (fixed quality) and PNG encoding are deterministic, so
the same arguments give byte-identical files.

Modules: `common` (class tables, difficulty, drawing primitives), `voc` and `cityscapes` (a
scene generator and a dataset writer each), `coco` (a COCO-layout mini dataset of VOC-toy
scenes, CoSA's folders and lists), `files` (split lists, encoding, metadata).
"""

from .cityscapes import make_toy_cityscapes
from .coco import make_toy_coco
from .common import (
    CITY_TOY_CLASSES,
    DIFFICULTY,
    META_NAME,
    OBJECTS_PER_IMAGE,
    RATIOS,
    TEXTURES,
    VOC_TOY_CLASSES,
    VOC_TOY_OBJECTS,
    voc_colormap,
)
from .files import is_complete
from .voc import make_toy_voc, voc_toy_scene

__all__ = [
    "CITY_TOY_CLASSES",
    "DIFFICULTY",
    "META_NAME",
    "OBJECTS_PER_IMAGE",
    "RATIOS",
    "TEXTURES",
    "VOC_TOY_CLASSES",
    "VOC_TOY_OBJECTS",
    "is_complete",
    "make_toy_cityscapes",
    "make_toy_coco",
    "make_toy_voc",
    "voc_colormap",
    "voc_toy_scene",
]
