"""Host synchronisations of one iteration, found without a GPU (`find_host_syncs`).

A CUDA graph cannot contain a host synchronisation, and `torch.cuda.set_sync_debug_mode`
exists only on CUDA. Here the method's `forward_loss` + backward runs on META tensors (shapes
and dtypes, no data) under a dispatch mode that records every operation that would read the
device from the host: `.item()` / `float()` / a python branch on a tensor
(`_local_scalar_dense`, `is_nonzero`), `nonzero`, boolean-mask reads and writes
(`index` / `index_put_` with a bool index), `masked_select`, `unique`, `equal`,
`repeat_interleave` without an output size, and copies from host memory onto the device
(`torch.tensor(..., device=)`, `.to(device)` of a CPU tensor). `.tolist()` of a device tensor
fails on meta tensors and is reported too.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..methods import Method, StepInfo

_READS = {
    "_local_scalar_dense",
    "is_nonzero",
    "item",
    "nonzero",
    "masked_select",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "equal",
}
_COPIES = {"_to_copy", "copy_", "lift_fresh_copy", "_copy_from"}


_TORCH_DIR = str(Path(torch.__file__).parent)


def _place(frames: list[traceback.FrameSummary]) -> str:
    """The innermost frame outside torch and this module: the code that issued the op."""
    ours = [
        f
        for f in frames
        if not f.filename.startswith(_TORCH_DIR) and not f.filename.endswith("capture_check.py")
    ]
    if not ours:
        return "?"
    f = ours[-1]
    name = f.filename.split("/cpcl/", 1)[1] if "/cpcl/" in f.filename else f.filename
    return f"{name}:{f.lineno} ({f.name})"


class HostSyncFound(RuntimeError):
    """A host read: the check stops there (meta tensors cannot go on past it)."""


class _SyncRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        leaves = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        reason = None
        if name in _READS:
            reason = name
        elif name in ("index", "index_put", "index_put_", "_index_put_impl_"):
            indices = args[1] if len(args) > 1 else ()
            if any(isinstance(i, Tensor) and i.dtype == torch.bool for i in indices or ()):
                reason = f"{name} with a boolean mask"
        elif name == "repeat_interleave" and kwargs.get("output_size") is None:
            reason = "repeat_interleave without output_size"
        if reason is not None:  # a read: record it and stop
            self.found.append(f"{reason} at {_here()}")
            raise HostSyncFound(reason)
        devices = {t.device.type for t in leaves}
        to_meta = "meta" in devices or str(kwargs.get("device")) == "meta"
        if name in _COPIES and "cpu" in devices and to_meta:
            self.found.append(f"{name}: a host-to-device copy at {_here()}")
        return func(*args, **kwargs)


class _FunctionRecorder(TorchFunctionMode):
    """What the dispatcher does not see: `torch.tensor(data, device=)` copies host data onto
    the device below the dispatch level, and `.tolist()` reads memory directly."""

    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("tensor", "as_tensor") and str(kwargs.get("device", "cpu")) != "cpu":
            self.found.append(f"torch.{name}(..., device=): a host-to-device copy at {_here()}")
        elif name == "tolist" and args and isinstance(args[0], Tensor) and args[0].is_meta:
            self.found.append(f"tolist at {_here()}")
            raise HostSyncFound(name)
        return func(*args, **kwargs)


def _here() -> str:
    return _place(traceback.extract_stack())


def find_host_syncs(
    method: Method, model: nn.Module, batch: Mapping[str, Tensor], step: StepInfo | None = None
) -> list[str]:
    """Each host synchronisation of `method.forward_loss` + backward, as "op at file:line".

    `model` (the method's network, as built) and `batch` (CPU tensors) are moved to the meta
    device; `method.setup(model)` runs again there. An error that a meta tensor raises (e.g.
    `.tolist()`) is reported as the last entry. Empty list: capturable as one CUDA graph as
    far as synchronisation goes.
    """
    model = model.to("meta")
    method.setup(model)
    meta_batch = {k: v.to("meta") for k, v in batch.items()}
    recorder = _SyncRecorder()
    try:
        with _FunctionRecorder(recorder.found), recorder:
            loss, _ = method.forward_loss(model, meta_batch, step or StepInfo(), None)
            loss.backward()
    except HostSyncFound:
        pass
    except (RuntimeError, NotImplementedError) as err:  # e.g. tolist / data of a meta tensor
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        where = _place(traceback.extract_tb(err.__traceback__))
        recorder.found.append(f"failed on meta tensors ({first}) at {where}")
    return recorder.found


def describe(found: list[str]) -> str:
    """One line per host synchronisation (for assertion messages and logs)."""
    return "\n".join(found) if found else "no host synchronisation"


__all__: list[Any] = ["describe", "find_host_syncs"]
