"""Original checkpoint files mapped onto transformers models: SAM (`sam_vit_b_01ec64.pth`,
`_l_`, `_h_`) and SAM 2 / 2.1 (`sam2.1_hiera_tiny.pt`, small, base_plus, large).

The variant is read from the tensor shapes, so renamed files load too: for SAM the width,
depth, heads and globally-attending blocks all show in the shapes; for SAM 2 the width and
blocks per stage do, and pick the variant whose global-attention blocks and windows the
shapes cannot show. Files load with weights_only=True.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from vitsam.errors import VitsamError

# original SAM name -> transformers SamModel name (applied in order, as substrings)
SAM_RENAMES = [
    ("iou_prediction_head.layers.0", "iou_prediction_head.proj_in"),
    ("iou_prediction_head.layers.1", "iou_prediction_head.layers.0"),
    ("iou_prediction_head.layers.2", "iou_prediction_head.proj_out"),
    ("mask_decoder.output_upscaling.0", "mask_decoder.upscale_conv1"),
    ("mask_decoder.output_upscaling.1", "mask_decoder.upscale_layer_norm"),
    ("mask_decoder.output_upscaling.3", "mask_decoder.upscale_conv2"),
    ("mask_downscaling.0", "mask_embed.conv1"),
    ("mask_downscaling.1", "mask_embed.layer_norm1"),
    ("mask_downscaling.3", "mask_embed.conv2"),
    ("mask_downscaling.4", "mask_embed.layer_norm2"),
    ("mask_downscaling.6", "mask_embed.conv3"),
    ("point_embeddings", "point_embed"),
    ("pe_layer.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    ("image_encoder", "vision_encoder"),
    ("neck.0", "neck.conv1"),
    ("neck.1", "neck.layer_norm1"),
    ("neck.2", "neck.conv2"),
    ("neck.3", "neck.layer_norm2"),
    ("patch_embed.proj", "patch_embed.projection"),
    (".norm", ".layer_norm"),
    ("blocks", "layers"),
]
_HYPER_MLP = re.compile(r"output_hypernetworks_mlps\.(\d+)\.layers\.(\d)")
_HYPER_NAMES = {"0": "proj_in", "1": "layers.0", "2": "proj_out"}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise VitsamError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise VitsamError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__})"
        ) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # SAM 2 files wrap the weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VitsamError(f"{path}: not a state dict of tensors")
    return state


def load_original(path: str | Path):
    """An original SAM or SAM 2 checkpoint -> (kind, transformers model, processor)."""
    state = read_state_dict(path)
    if "image_encoder.patch_embed.proj.weight" in state and "image_encoder.neck.0.weight" in state:
        return ("sam", *sam_from_original(state))
    if "image_encoder.trunk.patch_embed.proj.weight" in state:
        return ("sam2", *sam2_from_original(state, Path(path).name))
    if any(k.startswith("detector.backbone.") for k in state):
        raise VitsamError(
            f"{path}: an original SAM 3 checkpoint; these are not mapped: use the transformers "
            "format (--segmenter sam3, i.e. facebook/sam3, or a folder saved with save_pretrained)"
        )
    raise VitsamError(
        f"{path}: neither an original SAM nor SAM 2 checkpoint (unknown weight names)"
    )


def sam_config_from_shapes(state: dict[str, torch.Tensor]):
    """SamVisionConfig read off the tensors: width, depth, heads, MLP width, global blocks."""
    from transformers import SamVisionConfig

    hidden = state["image_encoder.patch_embed.proj.weight"].shape[0]
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks."))
    rel = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
    head_dim = rel[0].shape[1]
    window = (min(r.shape[0] for r in rel) + 1) // 2
    image_size = state["image_encoder.pos_embed"].shape[1] * 16
    global_blocks = [i for i, r in enumerate(rel) if r.shape[0] != 2 * window - 1]
    return SamVisionConfig(
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=hidden // head_dim,
        mlp_dim=state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0],
        global_attn_indexes=global_blocks,
        window_size=window,
        image_size=image_size,
        output_channels=state["image_encoder.neck.0.weight"].shape[0],
    )


def sam_from_original(state: dict[str, torch.Tensor]):
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    vision = sam_config_from_shapes(state)
    model = SamModel(SamConfig(vision_config=vision))
    renamed = {}
    for key, value in state.items():
        if key in ("pixel_mean", "pixel_std"):
            continue
        for old, new in SAM_RENAMES:
            key = key.replace(old, new)
        key = _HYPER_MLP.sub(
            lambda m: f"output_hypernetworks_mlps.{m[1]}.{_HYPER_NAMES[m[2]]}", key
        )
        renamed[key] = value
    renamed["shared_image_embedding.positional_embedding"] = renamed[
        "prompt_encoder.shared_embedding.positional_embedding"
    ]
    _load_strict(model, renamed, "SAM")
    processor = SamProcessor(image_processor=SamImageProcessor())
    return model.eval(), processor


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise VitsamError(
            f"original {what} checkpoint does not map onto the transformers model: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]})"
        )


# SAM 2 (Hiera) variants: (width, blocks per stage) -> (global-attention blocks, windows, heads)
SAM2_VARIANTS = {
    (96, (1, 2, 7, 2)): ("tiny", [5, 7, 9], [8, 4, 14, 7], 1),
    (96, (1, 2, 11, 2)): ("small", [7, 10, 13], [8, 4, 14, 7], 1),
    (112, (2, 3, 16, 3)): ("base-plus", [12, 16, 20], [8, 4, 14, 7], 2),
    (144, (2, 6, 36, 4)): ("large", [23, 33, 43], [8, 4, 16, 8], 2),
}
# original SAM 2 name -> transformers Sam2Model name (regex, replacement), applied in order
SAM2_RENAMES = [
    (r"^no_mem_embed$", "no_memory_embedding"),
    (r"^image_encoder\.trunk\.", "vision_encoder.backbone."),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
    (r"patch_embed\.proj\.", "patch_embed.projection."),
    (r"^sam_prompt_encoder\.", "prompt_encoder."),
    (r"pe_layer\.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    (r"mask_downscaling\.0\.", "mask_embed.conv1."),
    (r"mask_downscaling\.1\.", "mask_embed.layer_norm1."),
    (r"mask_downscaling\.3\.", "mask_embed.conv2."),
    (r"mask_downscaling\.4\.", "mask_embed.layer_norm2."),
    (r"mask_downscaling\.6\.", "mask_embed.conv3."),
    (r"^sam_mask_decoder\.", "mask_decoder."),
    (r"output_upscaling\.0\.", "upscale_conv1."),
    (r"output_upscaling\.1\.", "upscale_layer_norm."),
    (r"output_upscaling\.3\.", "upscale_conv2."),
    (r"norm_final_attn\.", "layer_norm_final_attn."),
    (r"\.out_proj\.", ".o_proj."),
    (r"\.norm(\d)\.", r".layer_norm\1."),
    # three-layer heads: first, middle, last
    (r"(hypernetworks_mlps\.\d+|prediction_head|obj_score_head)\.layers\.0\.", r"\1.proj_in."),
    (r"(hypernetworks_mlps\.\d+|prediction_head|obj_score_head)\.layers\.1\.", r"\1.layers.0."),
    (r"(hypernetworks_mlps\.\d+|prediction_head|obj_score_head)\.layers\.2\.", r"\1.proj_out."),
    # two-layer MLPs (Hiera blocks, two-way transformer)
    (r"\.mlp\.layers\.0\.", ".mlp.proj_in."),
    (r"\.mlp\.layers\.1\.", ".mlp.proj_out."),
]
# video-tracking parts that the image model does not have
SAM2_VIDEO_ONLY = re.compile(
    r"^(memory_attention|memory_encoder|obj_ptr_proj|obj_ptr_tpos_proj|mask_downsample)\.|"
    r"^(maskmem_tpos_enc|no_mem_pos_enc|no_obj_ptr|no_obj_embed_spatial)$"
)


def sam2_config_from_shapes(state: dict[str, torch.Tensor], filename: str = ""):
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2VisionConfig

    width = state["image_encoder.trunk.patch_embed.proj.weight"].shape[0]
    depth = 1 + max(
        int(k.split(".")[3]) for k in state if k.startswith("image_encoder.trunk.blocks.")
    )
    # a block with its own projection opens a new stage (its width doubles)
    starts = [0] + [
        i for i in range(depth) if f"image_encoder.trunk.blocks.{i}.proj.weight" in state
    ]
    stages = tuple(b - a for a, b in zip(starts, [*starts[1:], depth]))
    variant = SAM2_VARIANTS.get((width, stages))
    if variant is None:
        known = ", ".join(v[0] for v in SAM2_VARIANTS.values())
        raise VitsamError(
            f"{filename}: a SAM 2 image encoder of width {width} with blocks {list(stages)} "
            f"is not a known variant ({known})"
        )
    _, global_blocks, windows, heads = variant
    dims = [width * 2**i for i in range(len(stages))]
    hiera = Sam2HieraDetConfig(
        hidden_size=width,
        num_attention_heads=heads,
        blocks_per_stage=list(stages),
        embed_dim_per_stage=dims,
        num_attention_heads_per_stage=[heads * 2**i for i in range(len(stages))],
        window_size_per_stage=windows,
        global_attention_blocks=global_blocks,
        window_positional_embedding_background_size=list(
            state["image_encoder.trunk.pos_embed"].shape[-2:]
        ),
    )
    return Sam2Config(
        vision_config=Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=dims[::-1])
    )


def sam2_from_original(state: dict[str, torch.Tensor], filename: str = ""):
    from transformers import Sam2ImageProcessor, Sam2Model, Sam2Processor

    model = Sam2Model(sam2_config_from_shapes(state, filename))
    renamed: dict[str, torch.Tensor] = {}
    points = {}
    for key, value in state.items():
        if SAM2_VIDEO_ONLY.search(key):
            continue
        if m := re.fullmatch(r"sam_prompt_encoder\.point_embeddings\.(\d+)\.weight", key):
            points[int(m[1])] = value
            continue
        for pattern, new in SAM2_RENAMES:
            key = re.sub(pattern, new, key)
        renamed[key] = value
    renamed["prompt_encoder.point_embed.weight"] = torch.cat([points[i] for i in sorted(points)])
    renamed["shared_image_embedding.positional_embedding"] = renamed[
        "prompt_encoder.shared_embedding.positional_embedding"
    ]
    _load_strict(model, renamed, "SAM 2")
    return model.eval(), Sam2Processor(image_processor=Sam2ImageProcessor())
