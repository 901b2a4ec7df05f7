"""Non-finite model outputs never pass silently: one fallback to fp32, then an error.

Reduced precision can overflow or produce NaN where fp32 does not (Grounding DINO in bf16
on the CPU returns NaN boxes on some calls, from its multi-scale deformable attention);
dropping those boxes quietly makes the same input give different answers. So a model
whose outputs are not finite in bf16/fp16 is converted to fp32 for the rest of the
session, with a one-line warning, and run again; in fp32 it is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch

from vitsam.errors import VitsamError

log = logging.getLogger("vitsam")
T = TypeVar("T")


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True when no tensor holds NaN or +-inf."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class Fp32Fallback:
    """Mixin for a model holder with `name`, `model`, `device` and `dtype` attributes."""

    name: str
    model: torch.nn.Module
    device: torch.device
    dtype: torch.dtype

    def run_finite(self, run: Callable[[], T], outputs: Callable[[T], Iterable[torch.Tensor]]) -> T:
        """`run()` the model (building its inputs in `self.dtype`); `outputs(result)` are the
        tensors that must be finite. Returns the result, from fp32 if the first try was not
        finite in reduced precision.

        Raises VitsamError when the outputs are not finite in fp32.
        """
        result = run()
        if all_finite(outputs(result)):
            return result
        if self.dtype != torch.float32:
            log.warning(
                "%s returned NaN/inf in %s on %s: running it in fp32 from now on",
                self.name, str(self.dtype).removeprefix("torch."), self.device.type,
            )  # fmt: skip
            self.to_fp32()
            result = run()
            if all_finite(outputs(result)):
                return result
        raise VitsamError(
            f"{self.name} returned NaN/inf outputs even in fp32: its weights or the input are "
            "broken (re-download the model, or check the image)"
        )

    def to_fp32(self) -> None:
        """Convert the model to fp32 for good (outside inference mode, so the new
        parameters are ordinary tensors)."""
        with torch.inference_mode(False):
            self.model.float()
        self.dtype = torch.float32
