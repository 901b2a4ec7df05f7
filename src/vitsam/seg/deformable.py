"""Multi-scale deformable attention on the CPU as one weighted gather (`embedding_bag`).

Grounding DINO's encoder and decoder use multi-scale deformable attention (Deformable
DETR, Zhu et al. 2021, eq. 3): each query reads, per head, `levels x points` bilinear
samples of the value maps and sums them with its attention weights. transformers' CPU
path (`MultiScaleDeformableAttention`, the CUDA kernel's fallback) runs one
`grid_sample` per level over (heads, channels, H, W) maps, stacks the samples, multiplies
and sums: on a 2-core CPU a fifth of the detector's time at 1024x768, most of it in
`grid_sample` and the copies around it.

The same sum is a sparse product: every output row (batch, query, head) is a weighted sum
of `levels x points x 4` rows of the value table (the four bilinear corners of each
sample). `torch.nn.functional.embedding_bag(mode="sum", per_sample_weights=...)` computes
exactly that without materialising the samples. Bilinear weights follow `grid_sample`
with `align_corners=False` and zero padding (pixel x = loc_x * W - 0.5; a corner outside
the map weighs 0), so the result equals transformers' to float rounding (tested to 1e-5).

In bf16 and fp16 it is also the correct path, not only the faster one: the sample
positions and bilinear weights are computed in fp32 (in bf16 a position of 130 px has a
step of 1 px, so every sample would snap to a pixel), and PyTorch's CPU `grid_sample`
in bf16/fp16 returns garbage (values of 1e25 to 1e38, or NaN) on the strided value maps
transformers hands it (torch 2.14.1; maps of 16x16 and more, channels-last strides; fp32
and contiguous inputs are right). That is what made Grounding DINO return NaN in bf16.
"""

from __future__ import annotations

import types

import torch
from torch import Tensor, nn


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention's sampling and weighted sum.

    value: (B, S, heads, D), the levels' maps flattened row-major one after another
    (S = sum of H_l * W_l over `spatial_shapes`, each (H_l, W_l)).
    sampling_locations: (B, Q, heads, levels, points, 2), (x, y) in [0, 1] of each level.
    attention_weights: (B, Q, heads, levels, points).
    Returns (B, Q, heads * D), as transformers' `MultiScaleDeformableAttention.forward`.
    A NaN location gives a NaN output (as `grid_sample` does), so the caller's finite
    check still sees it. Positions and weights are computed in fp32 (or finer) whatever
    the inputs' dtype; the weighted sum runs in `value`'s dtype, which is the output's.
    """
    b, s, heads, d = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    table = value.transpose(1, 2).reshape(b * heads * s, d)  # row ((b * heads + h) * S + s)
    geometry = torch.promote_types(sampling_locations.dtype, torch.float32)  # fp32 or finer
    sampling_locations, attention_weights = sampling_locations.to(geometry), attention_weights.to(geometry)
    dims = torch.tensor(spatial_shapes, device=value.device)  # (levels, 2): H_l, W_l
    h = dims[:, 0].view(levels, 1).to(sampling_locations.dtype)  # broadcasts over points
    w = dims[:, 1].view(levels, 1).to(sampling_locations.dtype)
    starts = torch.cat([dims.new_zeros(1), (dims[:, 0] * dims[:, 1]).cumsum(0)[:-1]])
    base = (torch.arange(b * heads, device=value.device) * s).view(b, 1, heads, 1, 1)
    base = base + starts.view(levels, 1)  # (B, 1, heads, levels, 1)
    x = sampling_locations[..., 0] * w - 0.5  # (B, Q, heads, levels, points); align_corners=False
    y = sampling_locations[..., 1] * h - 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    indices, weights = [], []
    for dx, dy, cw in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                       (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):  # fmt: skip
        cx, cy = x0 + dx, y0 + dy
        inside = (cx >= 0) & (cx <= w - 1) & (cy >= 0) & (cy <= h - 1)
        weights.append(cw * attention_weights * inside)  # a product, not a where: NaN stays NaN
        # whole numbers held in floats: exact while a level has under 2^24 positions
        row = torch.minimum(cy.clamp(min=0), h - 1) * w + torch.minimum(cx.clamp(min=0), w - 1)
        # a NaN location reads row 0 (its weight is NaN); masked_fill, as OpenVINO converts it
        indices.append(base + row.masked_fill(row.isnan(), 0).long())
    k = levels * points * 4
    out = nn.functional.embedding_bag(
        torch.stack(indices, -1).view(-1, k),  # (B * Q * heads, k) bags
        table,
        per_sample_weights=torch.stack(weights, -1).view(-1, k).to(table.dtype),
        mode="sum",
    )
    return out.view(b, q, heads * d)


def _forward(
    self,
    value: Tensor,
    value_spatial_shapes: Tensor,
    value_spatial_shapes_list: list[tuple],
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    im2col_step: int,
) -> Tensor:
    if value.device.type != "cpu":  # CUDA: transformers' kernel
        return self._vitsam_forward(
            value, value_spatial_shapes, value_spatial_shapes_list, level_start_index,
            sampling_locations, attention_weights, im2col_step,
        )  # fmt: skip
    return ms_deform_attn(
        value, value_spatial_shapes_list, sampling_locations, attention_weights
    ).contiguous()


def use_gather_attention(model: nn.Module) -> int:
    """Route every transformers `MultiScaleDeformableAttention` module of `model` through
    `ms_deform_attn` when it runs on the CPU, in any dtype (on CUDA the module's own
    forward, or the kernel it loads, runs as before). Returns how many modules were routed."""
    n = 0
    for module in model.modules():
        if type(module).__name__ == "MultiScaleDeformableAttention" and not hasattr(
            module, "_vitsam_forward"
        ):
            module._vitsam_forward = module.forward
            module.forward = types.MethodType(_forward, module)
            n += 1
    return n
