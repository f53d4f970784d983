"""The first real run (issue 28): the official weights file by default and what a run checks at
start-up (device, method x dataset, the log_dir lock, the checkpoint's method), and how it ends
(a finished run resumed again, an interrupted run's exit code)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRAIN

import cpcl.engine as engine
from cpcl.cli import train as train_cli
from cpcl.config import PRESETS, load_preset
from cpcl.engine.resolve import RECIPE_PRESETS, apply_overrides
from cpcl.errors import ConfigError
from cpcl.fileio import _host
from cpcl.methods import get_method, method_names
from cpcl.models.resnet import resnet18
from cpcl.runlock import LOCK_NAME
from cpcl.weights import OFFICIAL_WEIGHTS, sha256_of

REPO = Path(__file__).resolve().parents[1]


def _args(toy: Path, run: Path, *extra: str) -> list[str]:
    return [*TINY_TRAIN, f"--dataset_path={toy}", f"--log_dir={run / 'log'}", *extra]


def _log(run: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((run / "log").glob("train_*.log")))


class _NoImages:
    """Stands in for `read_image`: the start-up must fail before any image is read."""

    def __call__(self, path):
        raise AssertionError(f"an image was read before the start-up checks: {path}")


@pytest.mark.parametrize(
    "dataset, method, file",
    [
        ("voc", "cpcl", "DATA/pytorch-weight/resnet50_v1c.pth"),
        ("cityscapes", "cpcl", "DATA/pytorch-weight/resnet50_v1c.pth"),
        ("voc", "sup", "DATA/pytorch-weight/resnet50_v1c.pth"),
        ("cityscapes", "u2pl", "DATA/pytorch-weight/u2pl/resnet101.pth"),
        ("voc", "unimatch", "DATA/pytorch-weight/unimatch/resnet101.pth"),
        ("voc", "cosa", "DATA/pytorch-weight/jx_vit_base_p16_224-80ecf9dd.pth"),
        ("coco", "cosa", "DATA/pytorch-weight/jx_vit_base_p16_224-80ecf9dd.pth"),
        ("voc", "unimatch_v2", "DATA/pytorch-weight/dinov2_small.pth"),
        ("ade20k", "unimatch_v2", "DATA/pytorch-weight/dinov2_small.pth"),
        ("coco2017", "unimatch_v2", "DATA/pytorch-weight/dinov2_small.pth"),
    ],
)
def test_default_run_without_the_weights_file_stops_at_start_up(
    dataset, method, file, tmp_path, capsys, monkeypatch
):
    """The shipped defaults name the official file; without it nothing is read or trained."""
    monkeypatch.setattr("cpcl.data.datasets.read_image", _NoImages())
    monkeypatch.chdir(tmp_path)  # neither here nor at the repository root: missing
    if (REPO / file).exists():
        pytest.skip(f"{file} exists in this checkout")
    args = [f"--method={method}", f"--dataset_path={tmp_path / 'no_data'}", "--device=cpu"]
    assert train_cli.main(load_preset(dataset), args) == 2
    err = capsys.readouterr().err
    assert f"C.pretrained_model = {REPO / file}: file not found" in err
    info = OFFICIAL_WEIGHTS[file]
    assert f"expected: {info.name}, " in err and f"where it comes from: {info.origin}" in err
    assert "--pretrained_model=None" in err


def test_a_weights_file_that_does_not_fit_stops_before_any_image(
    toy_voc_small, tmp_path, capsys, monkeypatch
):
    """The strict key check of the loader, at start-up, with where the right file comes from."""
    weights = tmp_path / "pytorch-weight" / "resnet50_v1c.pth"  # named as CPCL's, but ResNet-18
    weights.parent.mkdir()
    torch.save(resnet18(deep_stem=True, stem_width=64, output_stride=16).state_dict(), weights)
    monkeypatch.setattr("cpcl.data.datasets.read_image", _NoImages())
    args = [a for a in _args(toy_voc_small, tmp_path) if not a.startswith("--pretrained_model")]
    args = [*args, f"--pretrained_model={weights}", "--backbone=resnet34"]
    assert train_cli.main(load_preset("voc"), args) == 2
    err = capsys.readouterr().err
    assert f"C.pretrained_model = {weights}: not the file this network loads" in err
    assert "missing in the checkpoint" in err and "layer1.2.conv1.weight" in err
    info = OFFICIAL_WEIGHTS["DATA/pytorch-weight/resnet50_v1c.pth"]
    assert f"where it comes from: {info.origin}" in err


def test_shipped_experiment_configs_name_the_official_file():
    for exp in ("exp_voc", "exp_city"):
        text = (REPO / exp / "config.py").read_text()
        assert 'C.pretrained_model = "DATA/pytorch-weight/resnet50_v1c.pth"' in text
    for name in RECIPE_PRESETS:
        assert load_preset(name).pretrained_model == "DATA/pytorch-weight/resnet50_v1c.pth"
    # Every method on every dataset it has settings for resolves to an official file.
    for name in PRESETS:
        for method in method_names():
            if name in (tuple(get_method(method).defaults) or RECIPE_PRESETS):
                C = apply_overrides(load_preset(name), [f"--method={method}"])
                assert C.pretrained_model in OFFICIAL_WEIGHTS, (name, method)


@pytest.mark.parametrize("method", method_names())
@pytest.mark.parametrize("dataset", PRESETS)
def test_method_on_a_dataset_without_its_defaults_is_refused(method, dataset):
    has = tuple(get_method(method).defaults) or RECIPE_PRESETS
    if dataset in has:
        apply_overrides(load_preset(dataset), [f"--method={method}"])  # accepted
        return
    with pytest.raises(ConfigError) as info:
        apply_overrides(load_preset(dataset), [f"--method={method}"])
    assert f"C.method = {method!r} on C.dataset_name = {dataset!r}" in str(info.value)
    assert f"expected one of {', '.join(has)}" in str(info.value)


def test_cosa_on_cityscapes_is_refused_naming_its_datasets():
    with pytest.raises(ConfigError, match=r"no official settings .*expected one of voc, coco"):
        apply_overrides(load_preset("cityscapes"), ["--method=cosa"])


def test_cuda_without_cuda_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = [*_args(tmp_path / "no_data", tmp_path), "--device=cuda"]
    assert train_cli.main(load_preset("voc"), args) == 2
    err = capsys.readouterr().err
    assert "C.device = 'cuda': CUDA is not available on this machine" in err
    assert "Traceback" not in err


def test_a_second_run_on_a_held_log_dir_is_refused(toy_voc_small, tmp_path, capsys, monkeypatch):
    lock = tmp_path / "log" / LOCK_NAME
    lock.parent.mkdir(parents=True)
    # pid 1 is alive on every Linux host: a live run of this host.
    lock.write_text(f"pid=1\nhost={_host()}\nstarted=2026-01-01 00:00:00\n")
    monkeypatch.setattr("cpcl.data.datasets.read_image", _NoImages())
    assert train_cli.main(load_preset("voc"), _args(toy_voc_small, tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"log_dir {lock.parent} is in use by another training run: pid 1 on host " in err
    assert lock.read_text().startswith("pid=1\n")  # not taken
    assert not list((tmp_path / "log").glob("train_*.log"))


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


@pytest.fixture(scope="module")
def finished_run(toy_voc_small, tmp_path_factory):
    """A finished tiny run that took over a stale lock and loaded a weights file."""
    run = tmp_path_factory.mktemp("finished")
    weights = run / "resnet18_v1c.pth"
    torch.manual_seed(0)
    torch.save(resnet18(deep_stem=True, stem_width=64, output_stride=16).state_dict(), weights)
    (run / "log").mkdir()
    (run / "log" / LOCK_NAME).write_text(f"pid={_dead_pid()}\nhost={_host()}\nstarted=x\n")
    args = [a for a in _args(toy_voc_small, run) if not a.startswith("--pretrained_model")]
    args += ["--nepochs=1", "--niters_per_epoch=2"]  # as short as a finished run gets
    code = train_cli.main(load_preset("voc"), [*args, f"--pretrained_model={weights}"])
    return run, weights, args, code


def test_finished_run_took_over_the_stale_lock_and_logged_the_weights(finished_run):
    run, weights, _, code = finished_run
    assert code == 0
    text = _log(run)
    assert f"took over the stale run lock {run / 'log' / LOCK_NAME}" in text
    assert f"pretrained weights: {weights} (sha256 {sha256_of(weights)})" in text
    assert not (run / "log" / LOCK_NAME).exists()  # released at the end


def test_resuming_a_finished_run_says_nothing_is_left(finished_run, capsys):
    run, _, args, _ = finished_run
    last = run / "log" / "snapshot" / "epoch-last.pth"
    # Another crop size is allowed (the weights do not depend on it), with a warning line.
    resume = [*args, "--pretrained_model=None", "--image_height=48", "-c", str(last)]
    assert train_cli.main(load_preset("voc"), resume) == 0
    text = _log(run)
    assert f"{last} is at the end of the schedule (1 epochs): nothing is left to train" in text
    assert "resuming with image_height=48 (the checkpoint was trained with 32)" in text
    assert "C.pretrained_model is None: the network starts from RANDOM weights" in text


def test_resuming_with_another_method_names_both(finished_run, capsys, monkeypatch):
    run, _, args, _ = finished_run
    last = run / "log" / "snapshot" / "epoch-last.pth"
    # CPS builds the same two-branch network: its weights would load without a word.
    loads = []
    monkeypatch.setattr("cpcl.snapshots.load_weights", lambda *a, **k: loads.append(a))
    resume = [*args, "--pretrained_model=None", "--method=cps", "-c", str(last)]
    assert train_cli.main(load_preset("voc"), resume) == 2
    err = capsys.readouterr().err
    assert (
        f"-c {last}: the checkpoint was trained with method 'cpcl', this run is method 'cps'" in err
    )
    assert loads == []


def test_an_interrupted_run_exits_130(toy_voc_small, tmp_path, capsys, monkeypatch):
    real = engine.train_step

    def interrupt(*args, **kwargs):  # Ctrl-C during the first iteration
        out = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(engine.loop, "train_step", interrupt)
    code = train_cli.main(load_preset("voc"), _args(toy_voc_small, tmp_path))
    assert code == train_cli.EXIT_INTERRUPTED == 130
    assert (tmp_path / "log" / "snapshot" / "interrupted.pth").is_file()
    assert "training interrupted; resume with: -c" in capsys.readouterr().out
    assert not (tmp_path / "log" / LOCK_NAME).exists()
