"""CoSA (Yang et al., ECCV 2024): weakly supervised co-training with swapping assignments.

Image-level labels only. A ViT student (classification head -> CAMs, LargeFOV segmentation
head) and an EMA teacher: the teacher's multi-scale CAMs become pseudo masks for the student's
segmentation, the teacher's segmentation refines the student's CAMs. Modules: `vit` (encoder),
`network` (`CoSANet`), `pseudo` (teacher pseudo labels), `losses`, `energy` (CRF regulariser),
`optim` (schedule, loss warm-up, EMA), `step` (one training iteration). See docs/methods/cosa.md.
"""
