"""UniMatch V2 (Yang, Zhao, Zhao, 2024) on the generic engine: `C.method = "unimatch_v2"`.

DINOv2 encoder + DPT head (`net`, `dinov2`, `dpt`), the official iteration (`step`, `losses`,
`schedule`), views (`views`), configs (`presets`) and evaluation protocol (`evaluate`); the
`Method` subclass is in `method`. See docs/methods/unimatch_v2.md.
"""

from .method import UniMatchV2, unimatch_v2_eval_settings

METHOD = UniMatchV2

__all__ = ["METHOD", "UniMatchV2", "unimatch_v2_eval_settings"]
