"""The bf16 capability check: CPU flags and CUDA support mocked both ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cpcl.amp as amp_mod
from cpcl.amp import AmpError, bf16_supported, check_amp, cpu_flags, fp16_supported
from cpcl.errors import CpclError


@pytest.fixture
def linux_x86(monkeypatch):
    monkeypatch.setattr(amp_mod.platform, "system", lambda: "Linux")
    monkeypatch.setattr(amp_mod.platform, "machine", lambda: "x86_64")


@pytest.mark.parametrize(
    "flags,expected",
    [
        ({"avx2", "fma"}, False),
        ({"avx2", "avx512f", "avx512bw"}, False),
        ({"avx512f", "avx512_bf16"}, True),
        ({"avx512f", "amx_tile", "amx_bf16"}, True),
    ],
)
def test_cpu_bf16_from_flags(linux_x86, flags, expected):
    assert bf16_supported("cpu", flags=lambda: frozenset(flags)) is expected


def test_cpu_bf16_not_on_other_platforms(monkeypatch):
    monkeypatch.setattr(amp_mod.platform, "system", lambda: "Darwin")
    assert not bf16_supported("cpu", flags=lambda: frozenset({"avx512_bf16"}))


def test_cuda_bf16_follows_torch(monkeypatch):
    for answer in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda answer=answer: answer)
        assert bf16_supported("cuda:0") is answer


def test_cpu_flags_reads_the_first_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nflags\t: other\n")
    assert cpu_flags(str(info)) == frozenset({"fpu", "avx2", "amx_bf16"})
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_check_amp_refuses_emulated_bf16():
    with pytest.raises(AmpError, match=r"amp=bf16 on cpu: .*no native bf16") as err:
        check_amp("bf16", "cpu", supported=lambda d: False)
    assert isinstance(err.value, CpclError)  # entry points print it without a traceback
    assert "\n" not in str(err.value)
    assert check_amp("bf16", "cpu", supported=lambda d: True) is torch.bfloat16
    assert check_amp("none", "cpu", supported=lambda d: False) is None
    assert check_amp("fp16", "cpu", supported=lambda d: True) is torch.float16
    with pytest.raises(AmpError, match="amp='fp8'"):
        check_amp("fp8", "cpu")


def test_evaluator_refuses_emulated_bf16_at_start(monkeypatch):
    from cpcl.evaluate import sliding_predict

    monkeypatch.setattr(amp_mod, "cpu_flags", lambda *a: frozenset({"avx2"}))
    monkeypatch.setattr(amp_mod.platform, "system", lambda: "Linux")
    monkeypatch.setattr(amp_mod.platform, "machine", lambda: "x86_64")
    calls = []
    net = torch.nn.Conv2d(3, 2, 1)
    net.register_forward_hook(lambda *a: calls.append(1))
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    kw = dict(num_classes=2, crop_size=8, stride_rate=2 / 3, scales=(1.0,), flip=False)
    with pytest.raises(AmpError, match="no native bf16"):
        sliding_predict(net, img, mean=(0, 0, 0), std=(1, 1, 1), amp="bf16", **kw)
    assert not calls  # refused before any forward


@pytest.mark.parametrize(
    "flags,expected",
    [({"avx2", "avx512f"}, False), ({"avx512f", "avx512_fp16"}, True), ({"amx_fp16"}, True)],
)
def test_cpu_fp16_from_flags_and_refused_without(linux_x86, flags, expected):
    """fp16 on a CPU without native fp16 is refused like bf16 (it ran ~40x slower)."""
    assert fp16_supported("cpu", flags=lambda: frozenset(flags)) is expected
    native = lambda d: fp16_supported(d, flags=lambda: frozenset(flags))  # noqa: E731
    if expected:
        assert check_amp("fp16", "cpu", supported=native) is torch.float16
    else:
        with pytest.raises(AmpError, match=r"amp=fp16 on cpu: .*native fp16.*--amp=none"):
            check_amp("fp16", "cpu", supported=native)


def test_cuda_fp16_is_always_native():
    assert fp16_supported("cuda:0")
