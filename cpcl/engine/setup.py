"""Building a run: the finalized config and split lists of the method's declared streams
(`resolve_run_config`), the model on its device(s) (SyncBN, broadcast), the loader and the
loop state (`build_run`)."""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from ..amp import check_amp
from ..data.datasets import build_dataset
from ..data.loaders import build_train_loader
from ..data.splits import check_disjoint
from ..dist import DistInfo, StopFlag, allreduce_grads, broadcast_module, maybe_sync_batchnorm
from ..errors import CheckpointError, CpclError
from ..methods import get_method
from ..runlog import Scalars
from ..weights import explain_weights
from .graphs import check_graph_settings, make_graphed_iteration
from .loop import LoopSettings, TrainState
from .resolve import finalize


def resolve_run_config(C: Any, *, root: str | None) -> tuple[Any, dict[str, Any]]:
    """Finalize `C` with the sizes of the split lists actually read.

    Returns `(C, sources)`: the datasets of the streams `C.method` declares
    (`Method.streams`, e.g. {"labeled": ..., "unlabeled": ...}; lists only, no image is
    decoded here). A split the method does not declare is neither required nor read. The
    labeled and unlabeled lists must be disjoint.
    """
    base = finalize(C, root=root)
    streams = get_method(base.method).streams
    sources = {name: build_dataset(base, name) for name in streams}
    if "labeled" in sources and "unlabeled" in sources:
        names = (base.train_source, base.unsup_source)
        check_disjoint(sources["labeled"].entries, sources["unlabeled"].entries, names=names)
    # From the user's C again: values derived from the official image counts (max_samples,
    # niters_per_epoch) must be derived from the counts actually read instead.
    counts = {f"n_{name}": len(src) for name, src in sources.items()}
    return finalize(C, root=root, **counts), sources


def build_pretrained_model(method: Any, C: Any) -> nn.Module:
    """`method.build_model()` (which loads `C.pretrained_model` strictly); a file that does
    not fit gets what it should be and where it comes from added to the loader's error."""
    try:
        return method.build_model()
    except CheckpointError as err:
        if C.pretrained_model is None:
            raise
        raise CheckpointError(
            f"C.pretrained_model = {C.pretrained_model}: not the file this network loads\n"
            f"{err}\n{explain_weights(C.pretrained_model)}"
        ) from err


def _prepare_model(model: nn.Module, C: Any, info: DistInfo, log: logging.Logger) -> nn.Module:
    """SyncBN under DDP, the device, channels_last, and the same weights on every rank."""
    model, warning = maybe_sync_batchnorm(model, info)
    if warning and info.is_main:
        log.warning(warning)
    model.to(info.device)
    if C.channels_last:
        model.to(memory_format=torch.channels_last)
    broadcast_module(model)
    return model


def build_run(
    C: Any, info: DistInfo, log: logging.Logger, sources: dict[str, Any]
) -> tuple[nn.Module, Any, TrainState]:
    """The method's model (on its device), the loader of its data view, and the loop state."""
    check_amp(C.amp, info.device)  # bf16 without native support: refused before any work
    check_graph_settings(
        cuda_graphs=bool(C.get("cuda_graphs", False)),
        device=info.device,
        compile=bool(C.compile),
        world_size=info.world_size,
    )
    get_method(C.method).check_per_rank_batch(C, info.world_size)
    method = get_method(C.method).from_config(C, per_rank_batch=C.batch_size // info.world_size)
    view = method.data_view()
    undeclared = set(view.streams) - set(method.streams)
    if undeclared:
        raise CpclError(
            f"method {method.name!r}: its data view reads streams {sorted(undeclared)} that "
            f"the method does not declare; expected a subset of streams={method.streams}"
        )
    if view.description and info.is_main:
        log.info("%s", view.description)
    loader = build_train_loader(
        C,
        view=view,
        rank=info.rank,
        world_size=info.world_size,
        labeled=sources.get("labeled"),
        unlabeled=sources.get("unlabeled"),
    )
    random.seed(C.seed)
    np.random.seed(C.seed)
    torch.manual_seed(C.seed)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(C.cudnn_benchmark)
    model = _prepare_model(build_pretrained_model(method, C), C, info, log)
    optimizers = tuple(method.build_optimizers(model))
    method.setup(model)
    state = TrainState(
        method=method,
        optimizers=optimizers,
        loop=LoopSettings.from_config(C),
        device=info.device,
        scaler=torch.amp.GradScaler(info.device.type) if C.amp == "fp16" else None,
        grad_sync=(lambda: allreduce_grads(model)) if info.distributed else None,
        stop=StopFlag(),
        scalars=Scalars(C.log_dir if info.is_main else None),
        is_main=info.is_main,
        graph=make_graphed_iteration(C, model, method, log, is_main=info.is_main),
    )
    return model, loader, state
