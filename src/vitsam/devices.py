"""Device and precision choice, and seeding."""

from __future__ import annotations

import random

import numpy as np
import torch

from vitsam.errors import VitsamError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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


def cpu_has_fast_bf16() -> bool:
    """True where the CPU has bf16 matrix units (AVX512-BF16 or AMX), where bf16 pays off."""
    try:
        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """Map a precision name onto the autocast dtype (float32 means no autocast).

    'auto' is bf16 on CUDA GPUs that support it and on CPUs with bf16 matrix units,
    fp32 elsewhere (fp16 needs a gradient scaler and is only chosen when asked for).
    """
    if name not in PRECISIONS:
        raise VitsamError(f"unknown precision {name!r}: choose one of {', '.join(PRECISIONS)}")
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    if name == "fp16" and device.type == "cpu":
        raise VitsamError("fp16 training is not supported on the CPU: use --precision bf16 or fp32")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
