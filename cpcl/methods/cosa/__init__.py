"""CoSA (Yang et al., ECCV 2024): weakly supervised co-training with swapping assignments.

Image-level labels only. A ViT student (classification head -> CAMs, LargeFOV segmentation
head) and an EMA teacher: the teacher's multi-scale CAMs become pseudo masks for the student's
segmentation, the teacher's segmentation refines the student's CAMs. Modules: `vit` (encoder),
`network` (`CoSANet`), `pseudo` (teacher pseudo labels), `losses`, `energy` (CRF regulariser),
`optim` (schedule, loss warm-up, EMA), `step` (one training iteration), `data` (image lists,
image-level labels, the training view), `evaluate` (the official protocol), `best` and
`train_eval` (student + teacher evaluation during training, best_seg.pth, the final CRF
score), `settings` (config keys, official VOC / COCO defaults, checks) and `method` (the
`Method` of `--method=cosa`). See docs/methods/cosa.md.
"""

from .method import CoSA

METHOD = CoSA

__all__ = ["METHOD", "CoSA"]
