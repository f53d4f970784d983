"""U2PL's teacher network around the engine: the official DDP buffer broadcast of its
forwards (`TeacherBuffers`) and the evaluated network (`U2PLEvalNet`)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class U2PLEvalNet(nn.Module):
    """`net(x)["pred"]` upsampled to the input size (bilinear, align_corners=True, as
    U2PL's `eval.py` and validation): `x (B,3,H,W) -> logits (B,C,H,W)`."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        """Logits at the input size."""
        pred = self.net(x)["pred"]
        return F.interpolate(pred, size=x.shape[-2:], mode="bilinear", align_corners=True)


class TeacherBuffers:
    """The buffer broadcast of the official DDP-wrapped teacher.

    DDP (`broadcast_buffers=True`) copies rank 0's buffers to all ranks before a forward
    when the previous forward ran with grad enabled (and before the first one). The official
    teacher forwards are grad-enabled except the no-grad train-mode one of a
    semi-supervised iteration; `pending` carries that flag between forwards (and resumes).
    """

    def __init__(self) -> None:
        self.pending = True

    def forward(self, teacher: nn.Module, x: Tensor, *, train: bool, official_grad: bool):
        """`teacher(x)` under no_grad in the given mode, after the official buffer sync."""
        if self.pending and dist.is_available() and dist.is_initialized():
            with torch.no_grad():
                for buf in teacher.buffers():
                    dist.broadcast(buf, 0)
        teacher.train(train)
        with torch.no_grad():
            out = teacher(x)
        self.pending = official_grad
        return out
