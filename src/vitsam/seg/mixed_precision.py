"""Reduced precision for the segmentation models: bf16 bodies, fp32 geometry and scores.

The models keep fp32 weights and run under `torch.autocast` in the chosen dtype (bf16 or
fp16), as the official SAM 2 code runs on GPUs: matrix products and convolutions take the
reduced dtype, and what adds to fp32 tensors stays fp32. The parts that compute positions
and scores (box heads and their reference points, prompt encoders' Fourier features,
score heads) are named per model in `FP32_PARTS` and run with autocast off and their
inputs in fp32: bf16 has an 8-bit mantissa, so a box coordinate of 500 px computed in
bf16 is off by up to 1 px, and a random-Fourier prompt encoding of a box corner is wrong
outright.

Non-finite outputs never pass silently: a model whose outputs are not finite in bf16/fp16
is run in fp32 for the rest of the session, with a one-line warning; in fp32 it is an
error (`Fp32Fallback`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
from torch import nn

from vitsam.errors import VitsamError

log = logging.getLogger("vitsam")
T = TypeVar("T")

# Submodules (attribute paths, matched as a suffix of the qualified name) that run in fp32
# under autocast, per transformers model class. A box head in bf16 quantises its
# coordinates to 1/128 of the box's scale; a prompt encoder's sin/cos of a random
# projection of the coordinates loses them altogether.
# Grounding DINO: the input projections set the dtype of the valid ratios, reference points
# and position embeddings; the heads give boxes and text scores.
_GROUNDING_DINO = ("model.input_proj_vision", "model.encoder_output_bbox_embed",
                   "model.encoder_output_class_embed", "bbox_embed", "class_embed")
# SAM, SAM 2: the image encoder is the body. The mask decoder is a head: it picks one of
# its mask tokens by a stability score (SAM 2's dynamic multimask), a discrete choice that
# bf16's rounding can flip, and it is a small share of the time.
_SAM = ("prompt_encoder", "shared_image_embedding", "mask_decoder")
# SAM 3: the DETR decoder's box refinement, the scoring against the phrase, the masks.
_SAM3 = ("detr_decoder.box_head", "detr_decoder.presence_head", "dot_product_scoring",
         "geometry_encoder", "mask_decoder")
FP32_PARTS: dict[str, tuple[str, ...]] = {
    "GroundingDinoForObjectDetection": _GROUNDING_DINO,
    "MMGroundingDinoForObjectDetection": _GROUNDING_DINO,
    "Owlv2ForObjectDetection": ("box_head", "class_head", "objectness_head"),
    "CLIPSegForImageSegmentation": (),
    "SamModel": _SAM,
    "Sam2Model": _SAM,
    "Sam2VideoModel": _SAM,
    "Sam3Model": _SAM3,
    "Sam3LiteTextModel": _SAM3,
    "EdgeTamModel": _SAM,
    "EdgeTamVideoModel": _SAM,
    # OmDet-Turbo: its encoder's and decoder's box and class heads, and the query positions
    "OmDetTurboForObjectDetection": ("encoder_class_head", "encoder_bbox_head", "decoder_class_head",
                                     "decoder_bbox_head", "query_position_head"),
    # (its tracker's mask decoder matches "mask_decoder" already: names match as suffixes)
    "Sam3VideoModel": (*_SAM3, "tracker_model.prompt_encoder", "tracker_model.shared_image_embedding"),
}  # fmt: skip


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True when no tensor holds NaN or +-inf."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def as_fp32(value):
    """Floating tensors in `value` (a tensor, or tuples, lists and dicts of them) in fp32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(as_fp32(v) for v in value)
    if isinstance(value, dict):
        return {k: as_fp32(v) for k, v in value.items()}
    return value


def keep_fp32(model: nn.Module, parts: Iterable[str] | None = None) -> int:
    """Make the submodules named in `parts` (default: FP32_PARTS for the model's class)
    run in fp32 under autocast: autocast off inside them and their floating inputs cast
    to fp32. Their weights stay fp32 (the model's are). Returns how many were wrapped;
    wrapping twice is a no-op."""
    parts = tuple(FP32_PARTS.get(type(model).__name__, ()) if parts is None else parts)
    found = [m for name, m in model.named_modules()
             if any(name == p or name.endswith("." + p) for p in parts)]  # fmt: skip
    n = 0
    for module in found:
        # a ModuleList has no forward of its own: its members are what the model calls
        for m in module.children() if isinstance(module, (nn.ModuleList, nn.ModuleDict)) else [module]:
            if not getattr(m, "_vitsam_fp32", False):
                m.forward, m._vitsam_fp32 = _fp32_forward(m.forward), True
                n += 1
    return n


def _fp32_forward(forward: Callable) -> Callable:
    @functools.wraps(forward)
    def run(*args, **kwargs):
        device = next((a.device.type for a in (*args, *kwargs.values())
                       if isinstance(a, torch.Tensor)), "cpu")  # fmt: skip
        with torch.autocast(device, enabled=False):
            return forward(*as_fp32(args), **as_fp32(kwargs))

    return run


class Mixed:
    """Mixin for a model holder with `name`, `model`, `device` and `dtype` attributes: the
    model's weights stay fp32, `dtype` is the autocast dtype (fp32: no autocast)."""

    name: str
    model: nn.Module
    device: torch.device
    dtype: torch.dtype

    def place(self, model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
        """`model` in eval mode, on `device`, fp32 weights, its FP32_PARTS wrapped; records
        `device` and `dtype` (the autocast dtype)."""
        self.device, self.dtype = device, dtype
        model = model.eval().to(device, torch.float32)
        keep_fp32(model)
        return model

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the model runs in: autocast in `self.dtype`, or nothing in fp32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


class Fp32Fallback(Mixed):
    """A Mixed holder whose outputs are checked: one fallback to fp32, then an error."""

    def run_finite(self, run: Callable[[], T], outputs: Callable[[T], Iterable[torch.Tensor]]) -> T:
        """`run()` the model under `self.autocast()`; `outputs(result)` are the tensors that
        must be finite. Returns the result, from fp32 if the first try was not finite in
        reduced precision.

        Raises VitsamError when the outputs are not finite in fp32.
        """
        with self.autocast():
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
        """Run in fp32 from now on (the weights already are)."""
        self.dtype = torch.float32
