"""Mixed-precision modes and the bf16 / fp16 capability checks shared by training and evaluation.

bf16 autocast only pays where the hardware computes in bf16: x86 CPUs with AVX-512-BF16 or AMX,
and GPUs that `torch.cuda.is_bf16_supported()` accepts. On other CPUs oneDNN emulates bf16 and
a ResNet-50 forward becomes about 150x slower, so `check_amp` refuses that combination at
start-up instead of letting a run crawl. fp16 is the same on a CPU: without AVX-512-FP16 or
AMX-FP16 it is emulated (a tiny run measured ~40x slower), so it is refused the same way; every
CUDA GPU computes fp16.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

from .errors import CpclError

AMP_MODES: dict[str, torch.dtype | None] = {
    "none": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
# CPU flags (as /proc/cpuinfo spells them) that give native bf16 arithmetic.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
FP16_CPU_FLAGS = ("avx512_fp16", "amx_fp16")


class AmpError(CpclError):
    """An amp mode that is unknown or that the device cannot run natively."""


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of the first CPU listed in `cpuinfo` (empty where there is none)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_supported(
    device: torch.device | str,
    *,
    flags: Callable[[], frozenset[str]] | None = None,
) -> bool:
    """Whether `device` computes bf16 natively (not emulated).

    CPU: Linux x86 with one of `BF16_CPU_FLAGS` in `flags()` (default `cpu_flags`; other platforms:
    False, since the flags cannot be read there). CUDA: `torch.cuda.is_bf16_supported()`. Other
    devices: True (their backends reject what they cannot run).
    """
    device = torch.device(device)
    if device.type == "cpu":
        return _cpu_has(BF16_CPU_FLAGS, flags)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return True


def fp16_supported(
    device: torch.device | str,
    *,
    flags: Callable[[], frozenset[str]] | None = None,
) -> bool:
    """Whether `device` computes fp16 natively: a Linux x86 CPU with one of `FP16_CPU_FLAGS`
    in `flags()` (other CPU platforms: False), any CUDA device, any other device (True)."""
    device = torch.device(device)
    if device.type == "cpu":
        return _cpu_has(FP16_CPU_FLAGS, flags)
    return True


def _cpu_has(wanted: tuple[str, ...], flags: Callable[[], frozenset[str]] | None) -> bool:
    """Whether this Linux x86 CPU lists one of `wanted` (other platforms: False, their flags
    cannot be read here)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    have = (flags or cpu_flags)()
    return any(flag in have for flag in wanted)


def check_amp(
    amp: str,
    device: torch.device | str,
    *,
    supported: Callable[[torch.device | str], bool] | None = None,
) -> torch.dtype | None:
    """The autocast dtype of `amp` ("none" | "bf16" | "fp16"), or AmpError if unusable on `device`.

    Refuses bf16 / fp16 where `supported(device)` (default `bf16_supported` / `fp16_supported`)
    is False: emulated half precision is far slower than float32. Call it once at start-up,
    before any forward.
    """
    if amp not in AMP_MODES:
        raise AmpError(f"amp={amp!r}: expected one of {', '.join(AMP_MODES)}")
    device = torch.device(device)
    if amp == "bf16" and not (supported or bf16_supported)(device):
        raise AmpError(
            f"amp=bf16 on {device}: this device has no native bf16 (CPU flags avx512_bf16/amx_bf16 "
            "or a bf16-capable GPU); emulated bf16 is ~100x slower than float32, use --amp=none"
        )
    if amp == "fp16" and not (supported or fp16_supported)(device):
        raise AmpError(
            f"amp=fp16 on {device}: this CPU has no native fp16 (CPU flags avx512_fp16/amx_fp16; "
            "every CUDA GPU has it); emulated fp16 is ~40x slower than float32, use --amp=none"
        )
    return AMP_MODES[amp]


def autocast(dtype: torch.dtype | None, device: torch.device) -> AbstractContextManager:
    """`torch.autocast` to `dtype` on `device`'s type, or a no-op for None (float32/float64)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)
