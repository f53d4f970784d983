"""Checkpoints: one strict loader for every weight file, and atomic saving.

Reads official CPCL snapshots (`{'model', 'optimizer_1', 'optimizer_2', 'epoch', 'iteration'}`),
bare state dicts, `{'state_dict': ...}` files, and keys prefixed by `module.` (DDP) or
`_orig_mod.` (torch.compile). Files are always read with `weights_only=True`: a checkpoint is
data, and a file that would need arbitrary unpickling is refused before anything in it runs.
Two plain-data classes are allowed besides tensors and containers: `argparse.Namespace` and
`pathlib.PosixPath`, which official checkpoints store as their run arguments (e.g. CoSA's
``best_seg.pth``: ``{'s_or_t', 'model', 'epoch', 'args', 'result'}``).

Unlike the official `load_model(..., strict=False)`, a key or shape mismatch is an error that
lists what is missing, unexpected and mis-shaped.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .fileio import atomic_write, remove_stale_temps

log = logging.getLogger(__name__)

_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 5  # keys listed per category in a mismatch message


# Data-only classes official checkpoints pickle (their `args`); rebuilt without running code.
_DATA_CLASSES = (argparse.Namespace, pathlib.PosixPath)

_ZIP_MAGIC = b"PK\x03\x04"
# The 0x1950a86a20f9469cfc6c magic number that starts a legacy (pre-zip) torch.save pickle.
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _not_a_checkpoint(path: Path) -> str | None:
    """Why `path` is no torch.save file at all (from its bytes), or None if it looks like one."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None  # unreadable: the caller reports the OS error itself
    if size == 0:
        detail = "it is empty (0 bytes)"
    elif head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return (
                f"{path} is not a checkpoint (corrupt or wrong file): it is a truncated or "
                f"damaged zip archive ({size} bytes), e.g. an interrupted copy or download"
            )
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return None
        detail = "it is a zip archive without the data.pkl entry of a torch.save file"
    elif head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        if _LEGACY_MAGIC in head:
            return None
        detail = "it is a plain Python pickle, not written by torch.save"
    else:
        text = head[:40].decode("ascii", errors="replace")
        if text.isprintable():
            detail = (
                f"it is text starting with {text!r}, not a torch.save file (a failed download "
                "often saves a web page)"
            )
        else:
            detail = (
                f"it starts with the bytes {head[:8].hex(' ')}, not a torch.save file (a zip "
                "archive or a torch pickle)"
            )
    return f"{path} is not a checkpoint (corrupt or wrong file): {detail}"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file as plain data (tensors, numbers, strings, containers).

    A file that is no torch.save file at all (random bytes, empty, truncated archive, a web
    page) is reported as "not a checkpoint (corrupt or wrong file)"; a real checkpoint that
    stores Python objects needing arbitrary unpickling is refused as such.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(list(_DATA_CLASSES)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        wrong = _not_a_checkpoint(path)
        if wrong is not None:
            raise CheckpointError(wrong) from None
        if not isinstance(err, pickle.UnpicklingError):
            raise CheckpointError(
                f"cannot read checkpoint {path}: {err} (is it a complete torch.save file?)"
            ) from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"refused to load {path}: it needs arbitrary unpickling (it stores Python objects "
            f"other than tensors and plain containers), and a checkpoint is loaded as data only. "
            f"Nothing in it was run. Re-save it with tensors and builtin types only. ({first})"
        ) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return dict(obj)


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove leading `module.` / `_orig_mod.` prefixes (DDP, torch.compile) from every key."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        out[key] = value
    return out


def extract_state_dict(obj: Mapping[str, Any], source: str = "<state_dict>") -> dict[str, Any]:
    """Return the model weights inside a snapshot / `state_dict` wrapper / bare state dict."""
    for wrapper in ("model", "state_dict"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and inner and all(torch.is_tensor(v) for v in inner.values()):
            return strip_prefixes(inner)
    if obj and all(torch.is_tensor(v) for v in obj.values()):
        return strip_prefixes(obj)
    raise CheckpointError(
        f"{source}: no weights found; expected a state dict, or a dict with a 'model' or "
        f"'state_dict' entry (top-level keys: {', '.join(map(str, list(obj)[:8]))})"
    )


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(t.shape) if torch.is_tensor(t) else ()


def _listing(title: str, items: list[str]) -> str:
    more = f", ... (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return f"  {title} ({len(items)}): {', '.join(items[:_SHOW])}{more}"


def _mismatch_report(
    model_sd: Mapping[str, Any], sd: Mapping[str, Any], source: str, what: str
) -> tuple[list[str], list[str], list[str], str]:
    missing = [k for k in model_sd if k not in sd]
    unexpected = [k for k in sd if k not in model_sd]
    bad_shape = [
        f"{k} {list(_shape(sd[k]))} vs {list(_shape(model_sd[k]))}"
        for k in model_sd
        if k in sd and _shape(sd[k]) != _shape(model_sd[k])
    ]
    lines = [f"{source} does not fit the {what} (strict loading):"]
    if missing:
        lines.append(_listing("missing in the checkpoint", missing))
    if unexpected:
        lines.append(_listing("unexpected in the checkpoint", unexpected))
    if bad_shape:
        lines.append(_listing("shape mismatch (checkpoint vs model)", bad_shape))
    hints = []
    cls = [k for k in model_sd if k.endswith("classifier.weight")]
    if cls and cls[0] in sd and _shape(sd[cls[0]]) != _shape(model_sd[cls[0]]):
        hints.append(
            f"the checkpoint has {_shape(sd[cls[0]])[0]} classes and the model "
            f"{_shape(model_sd[cls[0]])[0]}: set C.num_classes to match"
        )
    branch = ("branch1.", "branch2.")
    if (
        missing
        and unexpected
        and all(k.startswith(branch) for k in missing)
        and not any(k.startswith(branch) for k in unexpected)
    ):
        hints.append("this looks like a backbone-only file: use it as C.pretrained_model")
    if hints:
        lines.append("  hint: " + "; ".join(hints))
    return missing, unexpected, bad_shape, "\n".join(lines)


def load_weights(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    *,
    strict: bool = True,
) -> dict[str, list[str]]:
    """Load weights into `model` (unwrapping DDP / compile wrappers) and return a key report.

    strict=True (default): any missing, unexpected or mis-shaped key raises CheckpointError
    listing them. strict=False loads the keys that fit and logs a warning with the same
    listing (never silently, unlike the official loader).
    """
    if isinstance(path_or_state_dict, Mapping):
        source = "the given state dict"
        sd = extract_state_dict(path_or_state_dict, source)
    else:
        source = str(path_or_state_dict)
        sd = extract_state_dict(load_checkpoint(path_or_state_dict), source)
    target = unwrap(model)
    model_sd = target.state_dict()
    missing, unexpected, bad_shape, message = _mismatch_report(
        model_sd, sd, source, type(target).__name__
    )
    if missing or unexpected or bad_shape:
        if strict:
            raise CheckpointError(message)
        log.warning("%s", message)
        sd = {k: v for k, v in sd.items() if k in model_sd and _shape(v) == _shape(model_sd[k])}
    target.load_state_dict(sd, strict=strict)
    return {"missing": missing, "unexpected": unexpected, "shape_mismatch": bad_shape}


def load_backbone_weights(
    backbone: nn.Module, path: str | os.PathLike, *, keep_missing_counters: bool = False
) -> None:
    """Load an ImageNet backbone file (`resnet50_v1c.pth` layout) strictly, minus `fc.*`.

    The official furnace ResNet has no classifier, so a classification head stored in the
    file is dropped (and logged); every other key must match by name and shape.
    `keep_missing_counters=True` also accepts a file without the BN `num_batches_tracked`
    counters (older torch saves): the model keeps its own values (logged).
    """
    sd = extract_state_dict(load_checkpoint(path), str(path))
    fc = [k for k in sd if k.startswith("fc.")]
    if fc:
        log.info("%s: dropping the ImageNet classifier (%s)", path, ", ".join(fc))
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    model_sd = backbone.state_dict()
    if keep_missing_counters:
        counters = [k for k in model_sd if k.endswith("num_batches_tracked") and k not in sd]
        if counters:
            log.info("%s: %d num_batches_tracked counters absent, kept", path, len(counters))
            sd.update({k: model_sd[k] for k in counters})
    missing, unexpected, bad_shape, message = _mismatch_report(
        model_sd, sd, str(path), "ResNet backbone"
    )
    if missing or unexpected or bad_shape:
        raise CheckpointError(message)
    backbone.load_state_dict(sd, strict=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _as_data(value: Any) -> Any:
    # Optimisers, schedulers and GradScalers are stored by their state dicts.
    return value.state_dict() if hasattr(value, "state_dict") else value


def state_nbytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) state: about the size `torch.save` writes."""
    if torch.is_tensor(obj):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v) for v in obj)
    return 0


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra_state: Any) -> Path:
    """Write `{'model': state_dict, **extra_state}` atomically and return the path.

    The official snapshot layout is `model`, `optimizer_1`, `optimizer_2`, `epoch`,
    `iteration`; pass those as keyword arguments (objects with `state_dict()` are stored by
    it). The file is written to a temporary name in the same folder, flushed to disk and
    renamed (`cpcl.fileio.atomic_write`), so an interruption never leaves a truncated
    checkpoint under `path`; temp files of earlier killed saves in that folder are removed
    first. A full disk or read-only folder raises OutputError naming the path and the space
    needed.
    """
    path = Path(path)
    state = {"model": unwrap(model).state_dict()}
    state.update({k: _as_data(v) for k, v in extra_state.items()})
    remove_stale_temps(path.parent)
    return atomic_write(path, lambda f: torch.save(state, f), size=state_nbytes(state))
