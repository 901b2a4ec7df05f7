"""Tiny random-weight models built from the real transformers configs, saved like a download.

Each builder saves model + processor with save_pretrained into a folder and returns it, so
the code under test loads them exactly as it loads a cached hub model (no network).
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["a", "cat", "dog", "remote", "control", "red", "blue", "square", "circle", "thing"]


def bert_vocab() -> dict[str, int]:
    """bert-base-uncased's special ids (Grounding DINO hard-codes them) and a few words."""
    vocab = {f"[unused{i}]": i for i in range(1100)}
    for token, i in {
        "[PAD]": 0,
        "[UNK]": 100,
        "[CLS]": 101,
        "[SEP]": 102,
        "[MASK]": 103,
        ".": 1012,
        "?": 1029,
    }.items():
        vocab.pop(next(k for k, v in vocab.items() if v == i))
        vocab[token] = i
    for j, w in enumerate(WORDS):
        vocab.pop(f"[unused{200 + j}]")
        vocab[w] = 200 + j
    return vocab


def grounding_dino(folder: Path) -> Path:
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    backbone = SwinConfig(
        embed_dim=32,
        depths=[1, 1, 1, 1],
        num_heads=[1, 2, 4, 8],
        window_size=7,
        out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=1100,
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=128,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=64,
        num_queries=30,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_feature_levels=4,
    )
    model = GroundingDinoForObjectDetection(config).eval()
    tokenizer = BertTokenizer(vocab=bert_vocab(), do_lower_case=True)
    images = GroundingDinoImageProcessor(size={"shortest_edge": 160, "longest_edge": 240})
    GroundingDinoProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def sam2(folder: Path) -> Path:
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2ImageProcessor,
        Sam2Model,
        Sam2Processor,
        Sam2VisionConfig,
    )

    torch.manual_seed(0)
    hiera = Sam2HieraDetConfig(
        hidden_size=16,
        embed_dim_per_stage=[16, 32, 64, 128],
        blocks_per_stage=[1, 1, 2, 1],
        num_attention_heads_per_stage=[1, 1, 2, 2],
        global_attention_blocks=[3],
        window_size_per_stage=[8, 4, 14, 7],
    )
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[128, 64, 32, 16])
    model = Sam2Model(Sam2Config(vision_config=vision)).eval()
    Sam2Processor(image_processor=Sam2ImageProcessor()).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def sam(folder: Path) -> Path:
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor, SamVisionConfig

    torch.manual_seed(0)
    vision = SamVisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        global_attn_indexes=[1],
        mlp_dim=64,
    )
    model = SamModel(SamConfig(vision_config=vision)).eval()
    SamProcessor(image_processor=SamImageProcessor()).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def owlv2(folder: Path) -> Path:
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    torch.manual_seed(0)
    config = Owlv2Config(
        **_clip_towers(vision_layers=1),
        projection_dim=32,
    )
    model = Owlv2ForObjectDetection(config).eval()
    with torch.no_grad():  # random weights score ~0 everywhere: make some boxes clear 0.35
        model.class_head.logit_shift.bias.fill_(2.0)
        model.class_head.logit_scale.bias.fill_(0.0)
        model.box_head.dense2.weight.mul_(0.01)
        model.box_head.dense2.bias.zero_()
    tokenizer = _clip_tokenizer(folder)
    images = Owlv2ImageProcessor(size={"height": 64, "width": 64})
    Owlv2Processor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def clipseg(folder: Path) -> Path:
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        ViTImageProcessor,
    )

    torch.manual_seed(0)
    config = CLIPSegConfig(
        **_clip_towers(vision_layers=2),
        projection_dim=32,
        reduce_dim=16,
        extract_layers=[0, 1],
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    )
    model = CLIPSegForImageSegmentation(config).eval()
    images = ViTImageProcessor(size={"height": 64, "width": 64}, do_resize=True)
    CLIPSegProcessor(image_processor=images, tokenizer=_clip_tokenizer(folder)).save_pretrained(
        folder
    )
    model.save_pretrained(folder)
    return folder


def _clip_towers(vision_layers: int) -> dict:
    """Tiny CLIP text and vision towers, as OWLv2 and CLIPSeg both take them."""
    text = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 1,
            "eos_token_id": 2, "pad_token_id": 0}  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": vision_layers,
              "num_attention_heads": 2, "image_size": 64, "patch_size": 16}  # fmt: skip
    return {"text_config": text, "vision_config": vision}


def _clip_tokenizer(folder: Path):
    """A byte-level BPE vocabulary over the test words (CLIP's tokenizer needs files)."""
    import json

    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = sorted({c for w in WORDS for c in w})
    vocab = {"!": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}  # OWL masks queries starting with 0
    for c in letters:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "tok_vocab.json").write_text(json.dumps(vocab))
    (folder / "tok_merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        str(folder / "tok_vocab.json"),
        str(folder / "tok_merges.txt"),
        pad_token="!",
        model_max_length=16,
    )
