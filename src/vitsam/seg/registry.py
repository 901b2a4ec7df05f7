"""Short model names -> Hugging Face hub ids and model kinds; loading with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

from vitsam.errors import VitsamError

DETECTORS = {  # short name: (kind, hub id)
    "grounding-dino-tiny": ("grounding-dino", "IDEA-Research/grounding-dino-tiny"),
    "grounding-dino-base": ("grounding-dino", "IDEA-Research/grounding-dino-base"),
    "mm-grounding-dino-tiny": (
        "grounding-dino",
        "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det",
    ),
    "owlv2": ("owlv2", "google/owlv2-base-patch16-ensemble"),
    "clipseg": ("clipseg", "CIDAS/clipseg-rd64-refined"),
    "omdet-turbo": ("omdet-turbo", "omlab/omdet-turbo-swin-tiny-hf"),  # real-time, edge set
}
SEGMENTERS = {
    "sam2.1-tiny": ("sam2", "facebook/sam2.1-hiera-tiny"),
    "sam2.1-small": ("sam2", "facebook/sam2.1-hiera-small"),
    "sam2.1-base-plus": ("sam2", "facebook/sam2.1-hiera-base-plus"),
    "sam2.1-large": ("sam2", "facebook/sam2.1-hiera-large"),
    "sam-vit-b": ("sam", "facebook/sam-vit-base"),
    "sam-vit-l": ("sam", "facebook/sam-vit-large"),
    "sam-vit-h": ("sam", "facebook/sam-vit-huge"),
    "sam3": ("sam3", "facebook/sam3"),  # text-native: finds and segments, needs no detector
    # SAM 3 with a distilled MobileCLIP-S0 text encoder (42.5M of SAM 3's 353.7M text weights)
    "sam3-lite": ("sam3", "yonigozlan/sam3-litetext-s0"),
    "edgetam": ("edgetam", "yonigozlan/EdgeTAM-hf"),  # SAM 2 with a RepViT encoder: edge set
}
DEFAULT_DETECTOR = "grounding-dino-tiny"
DEFAULT_SEGMENTER = "sam2.1-tiny"
# --models NAME: a detector and a segmenter picked together (--detector / --segmenter win)
MODEL_SETS = {
    "default": (DEFAULT_DETECTOR, DEFAULT_SEGMENTER),
    "fast": ("omdet-turbo", "edgetam"),  # the edge set for CPUs: see the README's figures
}
# transformers' model_type -> our kind
MODEL_TYPES = {
    "grounding-dino": "grounding-dino",
    "mm-grounding-dino": "grounding-dino",
    "owlv2": "owlv2",
    "clipseg": "clipseg",
    "omdet-turbo": "omdet-turbo",
    "sam": "sam",
    "sam2": "sam2",
    "sam2_video": "sam2",  # the hub's SAM 2.1 folders: image and video weights in one
    "sam3": "sam3",
    "sam3_video": "sam3",  # facebook/sam3: detector + tracker; the image model loads from it
    "sam3_lite_text": "sam3",  # SAM 3 LiteText: the image model alone (video borrows a tracker)
    "edgetam": "edgetam",
    "edgetam_video": "edgetam",  # the hub's EdgeTAM folder: image and video weights in one
}


def resolve(name: str, table: dict[str, tuple[str, str]], role: str) -> tuple[str, str]:
    """A short name, hub id or local folder -> (kind, id or path)."""
    if name in table:
        return table[name]
    path = Path(name)
    if path.is_dir():
        config = path / "config.json"
        if not config.exists():
            raise VitsamError(f"{path}: no config.json: not a folder saved by save_pretrained")
        model_type = json.loads(config.read_text()).get("model_type", "")
        return _kind(model_type, name, table, role), str(path)
    if path.suffix in (".pt", ".pth", ".safetensors") or path.exists():
        return "checkpoint", str(path)  # an original checkpoint file (or a clear error later)
    if "/" in name and len(name.split("/")) == 2:
        return _kind(_hub_model_type(name), name, table, role), name
    known = ", ".join(table)
    raise VitsamError(f"unknown {role} {name!r}: use one of {known}, a hub id or a local folder")


TIMM_KINDS = frozenset({"omdet-turbo", "edgetam"})  # their backbones are timm models


def require_timm(kind: str, name: str) -> None:
    """Raise VitsamError, saying how to install it, when `kind` needs timm and it is missing."""
    if kind not in TIMM_KINDS:
        return
    try:
        import timm  # noqa: F401
    except ImportError:
        raise VitsamError(f"{name} needs timm for its backbone: pip install -e '.[edge]'") from None


def _kind(model_type: str, name: str, table: dict, role: str) -> str:
    kind = MODEL_TYPES.get(model_type)
    kinds = {k for k, _ in table.values()}
    if kind not in kinds:
        raise VitsamError(
            f"{name}: model type {model_type!r} cannot serve as a {role} "
            f"(supported: {', '.join(sorted(kinds))})"
        )
    return kind


def _hub_model_type(hub_id: str) -> str:
    from transformers import AutoConfig

    return with_hub_errors(hub_id, lambda: AutoConfig.from_pretrained(hub_id)).model_type


def with_hub_errors(name: str, load):
    """Run a from_pretrained call; a missing model or no network becomes one clear line."""
    try:
        return load()
    except OSError as e:
        raise VitsamError(
            f"model {name!r} is not in the Hugging Face cache and could not be downloaded "
            f"({str(e).splitlines()[0][:120]}): connect once to cache it, pass a local folder "
            "saved with save_pretrained or an original checkpoint file, or set HF_HOME to a "
            "cache that has it"
        ) from None
