"""The method-aware half of the configuration: it needs the method registry, so it lives above
`cpcl.methods` (the method-free half, presets and parsing, is `cpcl.config`).

    C = load_preset("voc")            # cpcl.config
    C = apply_overrides(C, argv)      # method defaults, then --key=value from the command line
    C = finalize(C, root=...)         # derived values, the method's own first

Where a value comes from, lowest priority first (`config_sources` names it):

1. the dataset preset (`cpcl/presets/<dataset>.py`; the official CPCL settings);
   `--dataset_name=` naming another preset moves every key still at the first preset's value
   to the new one's (`switch_preset`);
2. the method's official defaults (`Method.defaults[dataset]`), for every key the experiment
   config left at its preset value; the method's own new keys (`Method.config_keys`) are
   added here. A method without defaults for the dataset is refused, naming the datasets it
   has (its official settings for another dataset would be silently wrong);
3. the experiment config (`exp_*/config.py`): a key set there to a value other than the
   preset's wins over the method default (a key set to the preset's own value cannot be told
   apart from an untouched one and takes the method default: override it on the command line);
4. `--key=value` on the command line, always.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from typing import Any

from easydict import EasyDict

from ..config import (
    DERIVED_KEYS,
    PRESETS,
    RESNET_BACKBONES,
    fill_derived,
    load_preset,
    parse_args,
    parse_value,
    suggest_key,
)
from ..config import validate as validate_generic
from ..errors import ConfigError
from ..methods import Method, get_method, method_names
from ..presets.keys import KEY_HELP


def method_class(name: str) -> type[Method]:
    """The registered `Method` subclass `name`; ConfigError listing the choices otherwise."""
    if name not in method_names():
        raise ConfigError(f"C.method = {name!r}: expected one of {', '.join(method_names())}")
    return get_method(name)


# The dataset presets whose own values are an official recipe (CPCL's configs): a method that
# declares no `defaults` runs with these and on these only.
RECIPE_PRESETS = ("voc", "cityscapes")


def check_method_dataset(C: EasyDict) -> None:
    """Refuse `C.method` on a dataset its `Method.defaults` has no entry for; a method that
    declares no defaults at all runs on the presets that are its recipe (`RECIPE_PRESETS`)."""
    cls = method_class(C.method)
    dataset = C.get("dataset_name")
    allowed = tuple(cls.defaults) or RECIPE_PRESETS
    if dataset not in allowed:
        note = cls.dataset_notes.get(dataset)
        raise ConfigError(
            f"C.method = {C.method!r} on C.dataset_name = {dataset!r}: the method has no "
            f"official settings for this dataset; expected one of {', '.join(allowed)}"
            + (f" ({note})" if note else "")
        )


def apply_method_defaults(C: EasyDict, keep: Iterable[str] = ()) -> EasyDict:
    """Add the keys of `C.method` and its official defaults for `C.dataset_name` (in place).

    A default replaces a value only where `C` still holds the dataset preset's value and the
    key is not in `keep` (the command-line keys). Running it twice changes nothing more.
    """
    cls = method_class(C.method)
    for key, value in cls.config_keys.items():
        if key not in C:
            C[key] = copy.deepcopy(value)
    defaults = cls.defaults.get(C.get("dataset_name"), {})
    if defaults:
        preset = load_preset(C.dataset_name)
        keep = set(keep)
        for key, value in defaults.items():
            if key not in keep and (key not in preset or C.get(key) == preset[key]):
                C[key] = copy.deepcopy(value)
    return C


def switch_preset(C: EasyDict, name: str) -> EasyDict:
    """Move `C` onto the dataset preset `name` (in place): every key still at the current
    preset's value takes the new preset's (classes, counts, default method, ...), keys the
    experiment config changed are kept. `--dataset_name=ade20k` from exp_voc/ thus trains
    ADE20K's 150 classes, not VOC's 21 under another name."""
    if name not in PRESETS:
        raise ConfigError(f"C.dataset_name = {name!r}: expected one of {', '.join(PRESETS)}")
    old = load_preset(C.dataset_name) if C.get("dataset_name") in PRESETS else {}
    for key, value in load_preset(name).items():
        if key not in old or C.get(key) == old[key]:
            C[key] = copy.deepcopy(value)
    return C


def apply_overrides(C: EasyDict, args: Iterable[str]) -> EasyDict:
    """Apply the method defaults, then `--key=value` strings, to a copy of `C`.

    A `--dataset_name=` naming another preset switches to it first (`switch_preset`). The
    method is the last `--method=` argument, else `C.method`. Unknown keys and bad values
    raise ConfigError.
    """
    C = copy.deepcopy(C)
    pairs = parse_args(args)
    datasets = [text for key, text in pairs if key == "dataset_name"]
    if datasets and datasets[-1] != C.get("dataset_name"):
        switch_preset(C, datasets[-1])
    methods = [text for key, text in pairs if key == "method"]
    if methods:
        C.method = methods[-1]
    apply_method_defaults(C, keep=[key for key, _ in pairs])
    for key, text in pairs:
        if key not in C:
            raise ConfigError(f"unknown config key --{key}{suggest_key(key, C)}")
        C[key] = parse_value(key, text, C[key])
    validate(C)
    return C


def validate(C: EasyDict) -> None:
    """`cpcl.config.validate` plus the method's own checks (`Method.check_config`) and the
    method × dataset check; ConfigError naming the key."""
    validate_generic(C)
    if "method" in C:
        check_method_dataset(C)
        cls = method_class(C.method)
        # A method builds the ResNets unless it names its own encoders (`backbone_choices`).
        allowed = getattr(cls, "backbone_choices", RESNET_BACKBONES)
        if "backbone" in C and C.backbone not in allowed:
            raise ConfigError(
                f"C.backbone = {C.backbone!r}: method {C.method!r} expects one of "
                f"{', '.join(allowed)}"
            )
        cls.check_config(C)


def finalize(
    C: EasyDict,
    *,
    root: str | None = None,
    n_labeled: int | None = None,
    n_unlabeled: int | None = None,
) -> EasyDict:
    """A copy of `C` with every derived value still `None` filled in: the method's own
    (`Method.derived_defaults`, e.g. CoSA's training list) first, then the generic ones
    (`cpcl.config.fill_derived`: absolute paths, split lists, counts, iterations)."""
    validate(C)
    return fill_derived(
        C,
        method_class(C.method).derived_defaults,
        root=root,
        n_labeled=n_labeled,
        n_unlabeled=n_unlabeled,
    )


def key_help(C: EasyDict) -> str:
    """Every key of `C` with its value and one line of meaning (the `train.py --help` table).

    The lines come from `cpcl/presets/keys.py` and the method's `config_help`.
    """
    helps = {**KEY_HELP, **method_class(C.method).config_help} if "method" in C else KEY_HELP
    width = max(len(k) for k in C) + 2
    lines = []
    for key in sorted(C):
        value = C[key]
        shown = "None (derived)" if value is None and key in DERIVED_KEYS else repr(value)
        lines.append(f"  --{key:<{width}} {helps.get(key, '(no description)')} [{shown}]")
    return "\n".join(lines)


def official_values(C: EasyDict) -> dict[str, Any]:
    """The official value of every key for `C.method` on `C.dataset_name`: the dataset preset,
    then the method's `config_keys` and `defaults[dataset]` over it."""
    preset = load_preset(C.dataset_name) if C.get("dataset_name") in PRESETS else {}
    cls = method_class(C.method)
    return {**preset, **cls.config_keys, **cls.defaults.get(C.get("dataset_name"), {})}


def _same(key: str, value: Any, default: Any) -> bool:
    """`value == default`, except that a finalized (absolute) weights path equals the relative
    default it was resolved from."""
    if key == "pretrained_model" and isinstance(value, str) and isinstance(default, str):
        return os.path.normpath(value).endswith(os.sep + os.path.normpath(default)) or (
            value == default
        )
    return value == default


def config_sources(C: EasyDict, argv: Iterable[str] | None = None) -> dict[str, str]:
    """Where each non-preset value of `C` comes from: "command line", "<method> default",
    "experiment config" (or "derived" for the keys `finalize` fills)."""
    cli = {a[2:].split("=", 1)[0] for a in (argv or []) if a.startswith("--") and "=" in a}
    preset = load_preset(C.dataset_name) if C.get("dataset_name") in PRESETS else {}
    cls = method_class(C.method)
    method_defaults = {**cls.config_keys, **cls.defaults.get(C.get("dataset_name"), {})}
    out: dict[str, str] = {}
    for key, value in C.items():
        if key in cli:
            out[key] = "command line"
        elif key in DERIVED_KEYS:
            if preset.get(key) != value:
                out[key] = "derived"
        elif key in method_defaults and _same(key, value, method_defaults[key]):
            if not _same(key, value, preset.get(key, object())):
                out[key] = f"{C.method} default"
        elif key not in preset or not _same(key, value, preset[key]):
            out[key] = "experiment config"
    return out


def describe_sources(C: EasyDict, argv: Iterable[str] | None = None) -> str:
    """One line: `key=value (source)` for every value that is not the preset's or derived."""
    sources = config_sources(C, argv)
    parts = [f"{k}={C[k]!r} ({v})" for k, v in sources.items() if v != "derived"]
    return ", ".join(parts) if parts else "none"
