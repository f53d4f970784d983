"""Configuration: official key names, dataset presets, type-checked `--key=value` overrides.

A config is an `EasyDict` with the official CPCL key names (`C.labeled_ratio`, `C.nepochs`,
`C.lr`, ...). The flow is::

    C = load_preset("voc")            # dataset defaults (cpcl/presets/voc.py: official CPCL)
    C.labeled_ratio = 16              # user edits in exp_voc/config.py
    C = apply_overrides(C, argv)      # method defaults, then --key=value from the command line
    C = finalize(C, root=...)         # derived values (paths, counts, iterations)

This module is the method-free part (presets, parsing, generic checks, the derived values
given the method's own); it sits below `cpcl.methods` and never imports it. The steps that
need the method registry (`apply_overrides`, `apply_method_defaults`, `finalize`,
`config_sources`, `describe_sources`, `key_help`) live in `cpcl.engine.resolve`.

Where a value comes from, lowest priority first:

1. the dataset preset (`cpcl/presets/<dataset>.py`; the official CPCL settings);
2. the method's official defaults (`Method.defaults[dataset]` in `cpcl/methods/<name>.py`),
   for every key the experiment config left at its preset value; the method's own new keys
   (`Method.config_keys`) are added here;
3. the experiment config (`exp_*/config.py`): a key set there to a value other than the
   preset's wins over the method default (a key set to the preset's own value cannot be told
   apart from an untouched one and takes the method default: override it on the command line);
4. `--key=value` on the command line, always.

So `python train.py --method=u2pl` runs U2PL's official lr, batch, crop, epochs, ... unless
the user overrides a key. `describe_sources` names the origin of every value that is not
the preset's; the training log prints it.

Derived keys hold `None` in the presets; `finalize` fills each one that the user left at
`None`, so editing `labeled_ratio` alone moves the split lists and the epoch length.
"""

from __future__ import annotations

import ast
import copy
import difflib
import importlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from easydict import EasyDict

from .errors import ConfigError

PRESETS = ("voc", "cityscapes", "coco", "ade20k", "coco2017")
# Default dataset folder under <repository>/DATA per preset.
_DATA_DIRS = {
    "voc": "pascal_voc",
    "cityscapes": "city",
    "coco": "coco",
    "ade20k": "ade20k",
    "coco2017": "coco2017",
}

# Types of keys whose preset default is None (so the type cannot be read off the default).
_NONE_DEFAULT_TYPES: dict[str, type] = {
    "dataset_path": str,
    "train_source": str,
    "unsup_source": str,
    "eval_source": str,
    "snapshot_dir": str,
    "pretrained_model": str,
    "num_train_imgs": int,
    "num_unsup_imgs": int,
    "max_samples": int,
    "niters_per_epoch": int,
    "eval_crop_size": int,
    "class_names": tuple,
}

RESNET_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
# DINOv2 encoders: only methods whose `backbone_choices` name them build these (unimatch_v2).
DINOV2_BACKBONES = ("dinov2_small", "dinov2_base", "dinov2_large", "dinov2_giant", "dinov2_toy")

# Keys restricted to a fixed set of values.
_CHOICES: dict[str, tuple[str, ...]] = {
    "backbone": RESNET_BACKBONES + DINOV2_BACKBONES,
    "device": ("auto", "cpu", "cuda"),
    "amp": ("none", "bf16", "fp16"),
    "eval_branch": ("1", "2", "avg"),
    "eval_protocol": ("cpcl", "official"),
    "label_policy": ("error", "ignore"),
    "sup_loss": ("ce", "ohem"),
    "dataset_name": PRESETS,
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NONE = {"none", "null"}


def load_preset(name: str) -> EasyDict:
    """Return a fresh copy of the official defaults for dataset `name` (one of `PRESETS`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    module = importlib.import_module(f"cpcl.presets.{name}")
    return module.defaults()


def _parse_bool(key: str, text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"--{key}={text}: expected a boolean (true/false, 1/0, yes/no)")


def _parse_sequence(key: str, text: str, default: Sequence[Any]) -> tuple:
    stripped = text.strip()
    try:
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError):
        value = None
    if isinstance(value, (int, float)):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        # Accept the shell-friendly form 0.75,1,1.25 as well.
        value = tuple(_literal_or_text(part) for part in stripped.split(",") if part.strip())
    numeric = key != "class_names" and all(isinstance(v, (int, float)) for v in default or (0,))
    for v in value:
        if numeric and not isinstance(v, (int, float)):
            raise ConfigError(
                f"--{key}={text}: expected a list of numbers such as [0.75,1,1.25] or 0.75,1,1.25"
            )
    return tuple(value)


def _literal_or_text(part: str) -> Any:
    try:
        return ast.literal_eval(part.strip())
    except (ValueError, SyntaxError):
        return part.strip()


def parse_value(key: str, text: str, default: Any) -> Any:
    """Parse the string `text` for config key `key` into the type of its `default`."""
    expected = _NONE_DEFAULT_TYPES.get(key, type(default) if default is not None else str)
    if text.strip().lower() in _NONE and (default is None or key in _NONE_DEFAULT_TYPES):
        return None
    if expected is bool:
        value: Any = _parse_bool(key, text)
    elif expected is int:
        try:
            value = int(text)
        except ValueError as err:
            raise ConfigError(f"--{key}={text}: expected an integer") from err
    elif expected is float:
        try:
            value = float(ast.literal_eval(text.strip())) if "/" not in text else _ratio(text)
        except (ValueError, SyntaxError) as err:
            raise ConfigError(f"--{key}={text}: expected a number") from err
    elif expected in (list, tuple):
        value = _parse_sequence(key, text, default)
    else:
        value = text
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"--{key}={text}: expected one of {', '.join(_CHOICES[key])}")
    return value


def _ratio(text: str) -> float:
    num, den = text.split("/", 1)
    return float(num) / float(den)


def parse_args(args: Iterable[str]) -> list[tuple[str, str]]:
    pairs = []
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"cannot read argument {arg!r}: expected --key=value")
        key, text = arg[2:].split("=", 1)
        pairs.append((key, text))
    return pairs


# Spellings other tools use for our keys (checked before the fuzzy match, which would answer
# --learning_rate with --eval_stride_rate). The value is a key or a hint for a CLI option.
KEY_ALIASES: dict[str, str] = {
    "learning_rate": "lr",
    "base_lr": "lr",
    "epochs": "nepochs",
    "num_epochs": "nepochs",
    "n_epochs": "nepochs",
    "max_epochs": "nepochs",
    "epoch": "nepochs",
    "batch": "batch_size",
    "bs": "batch_size",
    "batchsize": "batch_size",
    "train_batch_size": "batch_size",
    "workers": "num_workers",
    "num_worker": "num_workers",
    "n_workers": "num_workers",
    "wd": "weight_decay",
    "data": "dataset_path",
    "data_root": "dataset_path",
    "data_dir": "dataset_path",
    "dataset": "dataset_path",
    "root": "dataset_path",
    "ratio": "labeled_ratio",
    "label_ratio": "labeled_ratio",
    "arch": "backbone",
    "model": "backbone",
    "encoder": "backbone",
    "crop_size": "image_height and --image_width",
    "crop": "image_height and --image_width",
    "gpu": "device",
    "gpus": "device",
    "iters": "niters_per_epoch",
    "iters_per_epoch": "niters_per_epoch",
    "num_iters": "niters_per_epoch",
    "pretrained": "pretrained_model",
    "weights": "pretrained_model",
    "output_dir": "log_dir",
    "out": "log_dir",
    "save_dir": "snapshot_dir",
    "checkpoint_dir": "snapshot_dir",
    "ckpt_dir": "snapshot_dir",
    "fp16": "amp=fp16",
    "bf16": "amp=bf16",
    "mixed_precision": "amp",
    "lambda": "unsup_weight",
    "unsup_loss_weight": "unsup_weight",
    "classes": "num_classes",
    "n_classes": "num_classes",
}
# Options that are not config keys.
_OPTION_ALIASES = {
    "resume": "-c CKPT (resume from a checkpoint)",
    "checkpoint": "-c CKPT (resume from a checkpoint)",
    "ckpt": "-c CKPT (resume from a checkpoint)",
    "continue": "-c CKPT (resume from a checkpoint)",
}


def suggest_key(key: str, C: EasyDict) -> str:
    """`; did you mean --x?` for an unknown key: known spellings first, then close matches."""
    norm = key.strip().lower().replace("-", "_")
    if norm in C and norm != key:
        return f"; did you mean --{norm}? (keys use underscores)"
    if norm in _OPTION_ALIASES:
        return f"; did you mean {_OPTION_ALIASES[norm]}?"
    if norm in KEY_ALIASES:
        return f"; did you mean --{KEY_ALIASES[norm]}?"
    close = difflib.get_close_matches(norm, list(C.keys()), n=3, cutoff=0.6)
    return f"; did you mean {', '.join('--' + c for c in close)}?" if close else ""


# Keys that `finalize` derives or turns into absolute paths (not reported as user choices).
DERIVED_KEYS = (
    "dataset_path",
    "log_dir",
    "snapshot_dir",
    "train_source",
    "unsup_source",
    "eval_source",
    "eval_crop_size",
    "num_train_imgs",
    "num_unsup_imgs",
    "max_samples",
    "niters_per_epoch",
)


def validate(C: EasyDict) -> None:
    """Check the method-free values the rest of the code relies on; raise ConfigError naming
    the key (`cpcl.engine.resolve.validate` adds the method's own checks)."""
    for key, choices in _CHOICES.items():
        if key in C and C[key] not in choices:
            raise ConfigError(f"C.{key} = {C[key]!r}: expected one of {', '.join(choices)}")
    for key in ("batch_size", "nepochs", "image_height", "image_width", "num_classes"):
        if key in C and (not isinstance(C[key], int) or C[key] < 1):
            raise ConfigError(f"C.{key} = {C[key]!r}: expected a positive integer")
    if "labeled_ratio" in C and (not isinstance(C.labeled_ratio, int) or C.labeled_ratio < 1):
        raise ConfigError(f"C.labeled_ratio = {C.labeled_ratio!r}: expected a positive integer")
    if C.get("niters_per_epoch") is not None and C.niters_per_epoch < 1:
        raise ConfigError(f"C.niters_per_epoch = {C.niters_per_epoch}: expected >= 1")
    if not 0 < C.eval_stride_rate <= 1:
        raise ConfigError(f"C.eval_stride_rate = {C.eval_stride_rate}: expected in (0, 1]")


def default_split_paths(C: EasyDict) -> tuple[str, str, str]:
    """The official list files for `C.labeled_ratio` under `C.dataset_path` (CPS layout)."""
    root = C.dataset_path
    r = C.labeled_ratio
    if C.dataset_name in ("ade20k", "coco2017"):  # UniMatch V2's splits/<name>/ in <root>/splits
        sub = os.path.join(root, "splits", f"1_{r}")
        return (
            os.path.join(sub, "labeled.txt"),
            os.path.join(sub, "unlabeled.txt"),
            os.path.join(root, "splits", "val.txt"),
        )
    if C.dataset_name == "voc":
        sub = os.path.join(root, "subset_train_aug")
        return (
            os.path.join(sub, f"train_aug_labeled_1-{r}.txt"),
            os.path.join(sub, f"train_aug_unlabeled_1-{r}.txt"),
            os.path.join(root, "val.txt"),
        )
    sub = os.path.join(root, "config_new", "subset_train")
    return (
        os.path.join(sub, f"train_aug_labeled_1-{r}.txt"),
        os.path.join(sub, f"train_aug_unlabeled_1-{r}.txt"),
        os.path.join(root, "config_new", "val.txt"),
    )


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_weights_path(path: str | None, base: str) -> str | None:
    """The absolute path of weights file `path` (None stays None).

    A relative path is tried against the experiment folder `base` first, then the repository
    root (where the shipped defaults such as `DATA/pytorch-weight/resnet50_v1c.pth` live, as in
    the official configs); the first that exists wins, else the repository-root one (the
    start-up check then names it).
    """
    if path is None or os.path.isabs(path):
        return path
    local = os.path.normpath(os.path.join(base, path))
    return local if os.path.exists(local) else os.path.normpath(os.path.join(REPO_ROOT, path))


def fill_derived(
    C: EasyDict,
    method_derived: Callable[[EasyDict], Mapping[str, Any]],
    *,
    root: str | None = None,
    n_labeled: int | None = None,
    n_unlabeled: int | None = None,
) -> EasyDict:
    """Return a copy of `C` with every derived value that is still `None` filled in.

    method_derived: the method's `derived_defaults` (values it reads instead of the
    labeled-ratio ones); `cpcl.engine.resolve.finalize` passes it for `C.method`.
    root: folder relative paths are resolved against (the experiment folder); default cwd.
    n_labeled, n_unlabeled: the sizes of the split lists actually read. Without them the
    official formula `num_train_total // labeled_ratio` is used, as in the official config.
    """
    C = copy.deepcopy(C)
    validate(C)
    base = os.path.abspath(root or os.getcwd())
    if C.dataset_path is None:
        C.dataset_path = os.path.join(REPO_ROOT, "DATA", _DATA_DIRS[C.dataset_name])
    C.pretrained_model = resolve_weights_path(C.get("pretrained_model"), base)
    C.dataset_path = os.path.join(base, C.dataset_path)
    C.log_dir = os.path.join(base, C.log_dir)
    if C.snapshot_dir is None:
        C.snapshot_dir = os.path.join(C.log_dir, "snapshot")
    C.snapshot_dir = os.path.join(base, C.snapshot_dir)
    # The method's own derived values (e.g. another training list) before the generic ones.
    for key, value in method_derived(C).items():
        if C.get(key) is None:
            C[key] = value
    train, unsup, val = default_split_paths(C)
    C.train_source = C.train_source or train
    C.unsup_source = C.unsup_source or unsup
    C.eval_source = C.eval_source or val
    if C.eval_crop_size is None:
        C.eval_crop_size = C.image_height
    if n_labeled is not None:
        C.num_train_imgs = n_labeled
    elif C.num_train_imgs is None:
        C.num_train_imgs = C.num_train_total // C.labeled_ratio
    if n_unlabeled is not None:
        C.num_unsup_imgs = n_unlabeled
    elif C.num_unsup_imgs is None:
        C.num_unsup_imgs = C.num_train_total - C.num_train_imgs
    if C.max_samples is None:
        C.max_samples = max(C.num_train_imgs, C.num_unsup_imgs)
    if C.niters_per_epoch is None:
        C.niters_per_epoch = max(1, C.max_samples // C.batch_size)
    return C


def to_plain(C: Any) -> Any:
    """Convert a config to builtin containers (for checkpoints loaded with weights_only=True)."""
    if isinstance(C, dict):
        return {str(k): to_plain(v) for k, v in C.items()}
    if isinstance(C, (list, tuple)):
        return [to_plain(v) for v in C]
    if hasattr(C, "tolist"):
        return C.tolist()
    return C
