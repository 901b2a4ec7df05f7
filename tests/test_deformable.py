"""Deformable attention as one gather: the same numbers as transformers' CPU path."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.grounding_dino.modeling_grounding_dino import (
    MultiScaleDeformableAttention,
)

from tests import seg_models
from vitsam.seg.deformable import ms_deform_attn, use_gather_attention
from vitsam.seg.detect import Detector

SHAPES = [(12, 17), (6, 9), (3, 5), (2, 3)]


def inputs(batch=2, queries=50, heads=4, dim=8, points=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, s, heads, dim, generator=g, dtype=dtype)
    # partly outside [0, 1]: corners off the map must weigh 0, as grid_sample's zero padding
    loc = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=g, dtype=dtype)
    loc = loc * 1.4 - 0.2
    attn = torch.rand(batch, queries, heads, len(SHAPES), points, generator=g, dtype=dtype)
    return value, loc, attn


def level_args() -> tuple[torch.Tensor, list, torch.Tensor]:
    """The module's level arguments: shapes as a tensor and a list, each level's start."""
    shapes = torch.tensor(SHAPES)
    starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    return shapes, SHAPES, starts


def reference(value, loc, attn):
    return MultiScaleDeformableAttention()(value, *level_args(), loc, attn, 64)


def test_gather_equals_transformers_grid_sample_path():
    value, loc, attn = inputs()
    ours = ms_deform_attn(value, SHAPES, loc, attn)
    assert ours.shape == (2, 50, 4 * 8)
    torch.testing.assert_close(ours, reference(value, loc, attn), atol=1e-5, rtol=1e-5)


def test_a_nan_location_gives_nan_not_a_silent_zero():
    value, loc, attn = inputs()
    loc[1, 7, 2, 0, 0, 0] = float("nan")
    out = ms_deform_attn(value, SHAPES, loc, attn).view(2, 50, 4, 8)
    assert out[1, 7, 2].isnan().all()  # the fp32 fallback's finite check still sees it
    assert out.isnan().sum() == 8  # and only that query's head


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    folder = seg_models.grounding_dino(tmp_path_factory.mktemp("gdino"))
    return Detector.from_pretrained(str(folder), torch.device("cpu"))


def test_grounding_dino_routes_its_deformable_attention_and_keeps_its_outputs(detector):
    routed = [m for m in detector.model.modules() if hasattr(m, "_vitsam_forward")]
    assert routed and use_gather_attention(detector.model) == 0  # once, not twice
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), np.uint8))
    text, _ = detector.text_inputs(["cat", "dog"])
    batch = {**detector.processor.image_processor(images=image, return_tensors="pt"), **text}
    with torch.inference_mode():
        ours = detector.model(**batch)
        for m in routed:
            m.forward, m._vitsam_forward = m._vitsam_forward, m.forward
        try:
            theirs = detector.model(**batch)
        finally:
            for m in routed:
                m.forward, m._vitsam_forward = m._vitsam_forward, m.forward
    torch.testing.assert_close(
        ours.encoder_last_hidden_state_vision, theirs.encoder_last_hidden_state_vision,
        atol=1e-5, rtol=1e-5,
    )  # fmt: skip
    torch.testing.assert_close(ours.pred_boxes, theirs.pred_boxes, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_every_dtype_runs_the_gather_with_fp32_positions(detector, dtype):
    """bf16 values and locations: the samples' positions are computed in fp32, so the
    result is the fp32 one on the same (bf16-rounded) inputs to bf16's rounding; float64
    stays float64 throughout."""
    module = next(m for m in detector.model.modules() if hasattr(m, "_vitsam_forward"))
    value, loc, attn = inputs(dtype=dtype)
    out = module(value, *level_args(), loc, attn, 64)
    assert out.dtype == dtype
    expected = reference(value.double(), loc.double(), attn.double()).to(dtype)
    tolerance = {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(out, expected, **tolerance)
