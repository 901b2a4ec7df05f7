"""Original checkpoint files (`sam_vit_b_01ec64.pth`, ...) mapped onto transformers models.

The variant is read from the tensor shapes (width, depth, heads, which blocks attend
globally), so renamed files and other sizes load too. Files load with weights_only=True.
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
    if any(k.startswith("image_encoder.trunk.") for k in state):
        raise VitsamError(
            f"{path}: original SAM 2 checkpoints are not mapped yet: use the transformers "
            "release of the same model (--segmenter sam2.1-tiny, sam2.1-small, ...)"
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
