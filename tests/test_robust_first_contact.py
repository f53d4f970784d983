"""First contact: --help lists every key, unknown keys suggest the intended one, a missing
dataset shows the tree and the ways forward, the README shows exp_voc on the toy data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cpcl.cli import train as train_cli
from cpcl.config import ConfigError, load_preset
from cpcl.data.datasets import build_dataset
from cpcl.engine.resolve import apply_overrides, finalize
from cpcl.errors import DataError
from cpcl.methods import get_method, method_names
from cpcl.presets.keys import KEY_HELP
from cpcl.presets.toy import exp_voc_toy_commands

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dataset", ["voc", "cityscapes"])
@pytest.mark.parametrize("method", method_names())
def test_every_key_of_every_resolved_config_has_a_help_line(dataset, method, tmp_path):
    if get_method(method).defaults and dataset not in get_method(method).defaults:
        pytest.skip(f"{method} has no settings for {dataset} (refused: tests/test_real_run.py)")
    C = finalize(apply_overrides(load_preset(dataset), [f"--method={method}"]), root=tmp_path)
    helps = {**KEY_HELP, **get_method(method).config_help}
    missing = sorted(k for k in C if not helps.get(k, "").strip())
    assert not missing, f"keys without a line in cpcl/presets/keys.py or config_help: {missing}"


def test_help_lists_every_key_with_default_and_meaning(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(load_preset("voc"), ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    C = apply_overrides(load_preset("voc"), [])
    for key in C:
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(f"--{key} ")), None)
        assert line is not None, f"--{key} not in --help"
        assert KEY_HELP[key] in line
    assert "--lr " in out and "[0.005]" in out and "[None (derived)]" in out
    assert "0-based epoch" in out


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("learning_rate", "--lr"),
        ("epochs", "--nepochs"),
        ("batch", "--batch_size"),
        ("workers", "--num_workers"),
        ("num-workers", "--num_workers"),
        ("data_root", "--dataset_path"),
        ("resume", "-c CKPT"),
        ("lrr", "--lr"),  # the fuzzy match still works for typos
    ],
)
def test_unknown_key_suggests_the_intended_one(typed, meant):
    with pytest.raises(ConfigError, match=f"unknown config key --{typed}; did you mean {meant}"):
        apply_overrides(load_preset("voc"), [f"--{typed}=1"])


def test_every_alias_points_at_a_real_key():
    from cpcl.config import KEY_ALIASES

    C = apply_overrides(load_preset("voc"), [])
    for alias, key in KEY_ALIASES.items():
        assert alias not in C
        assert key.split("=")[0].split(" ")[0] in C, (alias, key)


@pytest.mark.parametrize("what", ["split list", "images"])
def test_missing_dataset_shows_the_tree_and_the_ways_forward(tmp_path, what):
    root = tmp_path / "pascal_voc"  # exists (the repository ships a README in it)
    root.mkdir()
    (root / "README.md").write_text("put the data here\n")
    if what == "images":
        sub = root / "subset_train_aug"
        sub.mkdir()
        (sub / "train_aug_labeled_1-8.txt").write_text("2007_000032\n2007_000039\n")
    C = finalize(apply_overrides(load_preset("voc"), [f"--dataset_path={root}"]), root=tmp_path)
    with pytest.raises(DataError) as exc:
        build_dataset(C, "labeled")
    msg = str(exc.value)
    first = "split list not found" if what == "split list" else "image not found"
    assert msg.startswith(first)
    assert "train_aug/image/<id>.jpg" in msg  # the expected tree
    assert "README.md" in msg and "python scripts/quickstart.py" in msg
    for command in exp_voc_toy_commands():
        assert command in msg


def test_readme_shows_exp_voc_on_the_toy_data_with_the_exact_commands():
    readme = (REPO / "README.md").read_text()
    for command in exp_voc_toy_commands():
        assert command in readme


def test_exp_voc_toy_overrides_are_valid_keys(tmp_path):
    _, train = exp_voc_toy_commands()
    overrides = [a for a in train.split()[2:]]
    C = apply_overrides(load_preset("voc"), overrides)
    assert C.dataset_path == "../DATA/toy_voc" and C.num_classes == 6


def test_train_py_help_runs_as_a_script():
    env_path = {"PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "train.py", "--help"],
        cwd=REPO / "exp_voc",
        env={**__import__("os").environ, **env_path},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--niters_per_epoch" in proc.stdout and "--snapshot_weights_only" in proc.stdout
