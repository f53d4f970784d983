"""Training methods, one subpackage each, behind the `Method` interface of `cpcl.methods.base`.

`get_method(C.method)` returns the method class; the registry maps each name to its package
`cpcl/methods/<name>/`, imported only when asked for. Everything only one method uses (its
`Method` subclass, exported as `METHOD`, losses, network, data view, presets, schedule,
official evaluator) lives in its package; shared pieces live in `cpcl.models`, `cpcl.data`,
`cpcl.evaluate` and `cpcl.methods.two_branch` and name no method. To add a method: write the
package and add one line to `REGISTRY`; removing one is deleting its package, its line and
its tests (`tests/methods/<name>/`); see docs/adding-a-method.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_weights
from ..errors import CpclError
from .base import Method, OfficialEvaluator, StepInfo, TrainEvalContext

# C.method -> package under cpcl.methods (each exports METHOD, a Method subclass).
REGISTRY: dict[str, str] = {
    "cosa": "cosa",
    "cpcl": "cpcl",
    "cps": "cps",
    "sup": "sup",
    "u2pl": "u2pl",
    "unimatch": "unimatch",
    "unimatch_v2": "unimatch_v2",
}

__all__ = [
    "REGISTRY",
    "Method",
    "OfficialEvaluator",
    "StepInfo",
    "TrainEvalContext",
    "eval_net_from_checkpoint",
    "get_method",
    "method_names",
    "select_evaluator",
]


def method_names() -> tuple[str, ...]:
    """The registered method names, in registry order."""
    return tuple(REGISTRY)


def get_method(name: str) -> type[Method]:
    """The `Method` subclass registered as `name`; an unknown name lists the choices."""
    if name not in REGISTRY:
        raise CpclError(f"method={name!r}: expected one of {', '.join(REGISTRY)}")
    module = importlib.import_module(f"{__name__}.{REGISTRY[name]}")
    return module.METHOD


def select_evaluator(C: Any) -> OfficialEvaluator | None:
    """The protocol `C.eval_protocol` asks for: None for "cpcl" (the project's evaluator), the
    method's `official_evaluator(C)` for "official". CpclError naming the choices when the
    method has no protocol of its own (sup, cps, cpcl: theirs IS the project's evaluator)."""
    protocol = C.get("eval_protocol", "cpcl")
    if protocol == "cpcl":
        return None
    if protocol != "official":
        raise CpclError(f"eval_protocol={protocol!r}: expected one of cpcl, official")
    evaluator = get_method(C.method).official_evaluator(C)
    if evaluator is None:
        raise CpclError(
            f"eval_protocol=official: method {C.method!r} has no official protocol other than "
            "the project's evaluator (CPCL's sliding windows, eval_protocol=cpcl); expected "
            f"eval_protocol=cpcl for it (own protocols: {', '.join(_with_own_protocol())})"
        )
    return evaluator


def _with_own_protocol() -> list[str]:
    """The registered methods that override `Method.official_evaluator`."""
    base = Method.official_evaluator.__func__
    return [n for n in REGISTRY if get_method(n).official_evaluator.__func__ is not base]


def eval_net_from_checkpoint(
    C: Any,
    ckpt: Mapping[str, Any],
    device: torch.device | str = "cpu",
    notes: list[str] | None = None,
) -> nn.Module:
    """The network `C.method` evaluates, with the weights of checkpoint dict `ckpt`.

    `C` must be finalized. Builds the model without ImageNet weights, loads `ckpt["model"]`
    (official snapshots included), moves it to `device`, runs `setup`, restores
    `method_state` (e.g. an EMA teacher; `Method.load_eval_state`) and returns
    `eval_net(model)` in eval mode: a plain module `x (B,3,H,W) -> logits (B,C,H,W)` at the
    input size. The method's note on what is evaluated (if any) is appended to `notes`.
    """
    method = get_method(C.method).from_config(C, per_rank_batch=1)
    model = method.build_model(pretrained=False)
    load_weights(model, ckpt)
    model.to(device)
    method.setup(model)
    note = method.load_eval_state(ckpt)
    if note and notes is not None:
        notes.append(note)
    return method.eval_net(model).eval()
