"""Device and precision choice, and seeding."""

from __future__ import annotations

import functools
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vitsam.errors import VitsamError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# x86 flags (Linux /proc/cpuinfo) of the units that run bf16 matrix products natively.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# Where no flags can be read: bf16 is chosen when a matmul runs this much faster in bf16.
BF16_MIN_SPEEDUP = 1.3


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then the CPU; a named device must exist."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise VitsamError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VitsamError(
            "--device cuda was asked for but no CUDA GPU is visible: use --device cpu"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise VitsamError("--device mps was asked for but MPS is not available: use --device cpu")
    return torch.device(name)


def _cpuinfo(*keys: str) -> str | None:
    """The value of the first /proc/cpuinfo line whose key is one of `keys`; None where
    that file does not exist (macOS, Windows) or has no such line."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo ('flags' on x86, 'Features' on Arm);
    empty where that file does not exist (macOS, Windows)."""
    return frozenset((_cpuinfo("flags", "Features") or "").split())


def matmul_gflops(
    dtype: torch.dtype, m: int = 4096, k: int = 256, n: int = 768, seconds: float = 0.2
) -> float:
    """GFLOP/s of an (m, k) @ (k, n) CPU matmul in `dtype`: the best of repeated runs for
    about `seconds`. The default shape is the seed ViT's qkv projection at batch 64."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b  # warm-up: first-call kernel selection
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best / 1e9


# Overrides the CPU's bf16 decision for 'auto': "1" picks bf16, "0" fp32 (for a VM that
# hides the flags, or to run a test suite in one precision on any CPU: pytest --precision).
BF16_ENV = "VITSAM_CPU_BF16"


@functools.cache
def cpu_bf16_support() -> tuple[bool, str]:
    """(whether bf16 pays off on this CPU, why), decided once per process.

    `VITSAM_CPU_BF16=1` (or `0`) decides it outright. Otherwise from the CPU flags where
    they can be read: bf16 runs natively only on AVX512-BF16 or AMX units; elsewhere
    PyTorch emulates it, 4-5x slower than fp32 (measured on an AVX-512 Xeon without them,
    see docs/BENCHMARKS.md). Where there are no flags to read (macOS, Windows) or on Arm,
    from a one-off timing of a matmul in both precisions. Raises VitsamError for another
    value of VITSAM_CPU_BF16.
    """
    forced = os.environ.get(BF16_ENV, "")
    if forced:
        if forced not in ("0", "1"):
            raise VitsamError(f"{BF16_ENV}={forced!r}: set it to 1 (bf16) or 0 (fp32), or unset it")
        return forced == "1", f"{BF16_ENV}={forced} says so"
    flags = cpu_flags()
    if platform.machine().lower() in ("x86_64", "amd64", "i686") and flags:
        found = [f for f in BF16_CPU_FLAGS if f in flags]
        if found:
            return True, f"this CPU has bf16 matrix units ({', '.join(found)})"
        return False, f"this CPU has no bf16 matrix units (no {' or '.join(BF16_CPU_FLAGS)} flag)"
    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    why = f"a bf16 matmul ran at {bf16:.0f} GFLOP/s against {fp32:.0f} in fp32 on this CPU"
    return bf16 >= BF16_MIN_SPEEDUP * fp32, why


def cpu_has_fast_bf16() -> bool:
    """True where the CPU runs bf16 matrix products faster than fp32 (see cpu_bf16_support)."""
    return cpu_bf16_support()[0]


def cpu_description() -> str:
    """'AMD EPYC, 2 cores, bf16 units: avx512_bf16' — the CPU to name beside a timing."""
    name = _cpuinfo("model name") or platform.processor() or platform.machine()
    units = [f for f in BF16_CPU_FLAGS if f in cpu_flags()]
    return f"{name}, {torch.get_num_threads()} threads, bf16 units: {', '.join(units) or 'none'}"


@dataclass(frozen=True)
class Precision:
    """A resolved precision: the autocast dtype (float32 means no autocast) and why."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


def choose_precision(name: str, device: torch.device) -> Precision:
    """Map a precision name onto a dtype, with the reason; one rule for training and inference.

    'auto' is bf16 on CUDA GPUs that support it and on CPUs that run bf16 fast (see
    `cpu_bf16_support`), fp32 elsewhere; fp16 needs a gradient scaler when training and is
    only used when asked for. Raises VitsamError for an unknown name, or fp16 on the CPU.
    """
    if name not in PRECISIONS:
        raise VitsamError(f"unknown precision {name!r}: choose one of {', '.join(PRECISIONS)}")
    if name == "fp16" and device.type == "cpu":
        raise VitsamError("--precision fp16 needs a GPU: on the CPU use --precision bf16 or fp32")
    if name != "auto":
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        return Precision(dtype, "asked for")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, "this GPU supports bf16")
        return Precision(torch.float32, "this GPU has no bf16 support")
    if device.type == "cpu":
        fast, why = cpu_bf16_support()
        return Precision(torch.bfloat16 if fast else torch.float32, why)
    return Precision(torch.float32, f"the default on {device.type}")


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The dtype of `choose_precision` (float32 means no autocast)."""
    return choose_precision(name, device).dtype


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
