"""U2PL (Wang et al., CVPR 2022) as `--method=u2pl`: the official `ours` training on the
generic engine. The method is `method.U2PL` (its docstring describes one iteration); its
configuration is in `settings`, the teacher helpers in `teacher`, the data view in `view`,
the losses, memory bank, mixing, network, presets and schedules in their own modules."""

from .method import U2PL
from .settings import CONFIG_KEYS, EVAL_NETS
from .teacher import U2PLEvalNet
from .view import U2PLView

METHOD = U2PL

__all__ = ["CONFIG_KEYS", "EVAL_NETS", "METHOD", "U2PL", "U2PLEvalNet", "U2PLView"]
