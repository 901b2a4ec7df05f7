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
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

    torch.manual_seed(0)
    model = Sam2Model(Sam2Config(vision_config=_hiera_vision())).eval()
    Sam2Processor(image_processor=Sam2ImageProcessor()).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def _hiera_vision():
    """The smallest Hiera that builds and runs (see the tiny-models notes)."""
    from transformers import Sam2HieraDetConfig, Sam2VisionConfig

    hiera = Sam2HieraDetConfig(
        hidden_size=16,
        embed_dim_per_stage=[16, 32, 64, 128],
        blocks_per_stage=[1, 1, 2, 1],
        num_attention_heads_per_stage=[1, 1, 2, 2],
        global_attention_blocks=[3],
        window_size_per_stage=[8, 4, 14, 7],
    )
    return Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[128, 64, 32, 16])


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


SAM3_SIDE = 112  # input side of the tiny SAM 3 (8x8 patches of 14 pixels)


def sam3(folder: Path) -> Path:
    """A tiny SAM 3 as the hub has it (sam3_video: detector + tracker); the image model loads
    its detector half. Biased so that every query scores high (random weights score ~0)."""
    from transformers import (
        Sam3Config,
        Sam3TrackerVideoConfig,
        Sam3VideoConfig,
        Sam3VideoModel,
        Sam3VideoProcessor,
    )
    from transformers.models.sam2_video.video_processing_sam2_video import (
        Sam2VideoVideoProcessor,
    )

    torch.manual_seed(0)
    side, cells = SAM3_SIDE, SAM3_SIDE // 14
    text = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "projection_dim": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 32,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}  # fmt: skip
    detector = Sam3Config(vision_config=_sam3_vision(side), text_config=text, **_sam3_heads())
    tracker = Sam3TrackerVideoConfig(
        vision_config=_sam3_vision(side),
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_fuser_num_layers=1,
        memory_fuser_intermediate_dim=64,
        mask_decoder_config={"mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
    )
    config = Sam3VideoConfig(
        detector_config=detector, tracker_config=tracker, low_res_mask_size=4 * cells
    )
    config.image_size = side  # propagates to the detector, tracker and feature sizes
    model = Sam3VideoModel(config).eval()
    _score_high(model.detector_model)
    Sam3VideoProcessor(
        image_processor=_sam3_images(),
        video_processor=Sam2VideoVideoProcessor(size={"height": side, "width": side}),
        tokenizer=_clip_tokenizer(folder),
    ).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def _sam3_heads() -> dict:
    """The tiny SAM 3's geometry encoder, DETR encoder and decoder (12 queries) and mask
    decoder configs, as Sam3Config / Sam3LiteTextConfig keyword arguments."""
    small = {"num_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    return {"geometry_encoder_config": small, "detr_encoder_config": small,
            "detr_decoder_config": {**small, "num_queries": 12},
            "mask_decoder_config": {"num_attention_heads": 2}}  # fmt: skip


def _score_high(detector) -> None:
    """Every query and the presence token of a SAM 3 detector score high (random weights
    score ~0)."""
    with torch.no_grad():
        detector.dot_product_scoring.text_proj.weight.zero_()
        detector.dot_product_scoring.text_proj.bias.fill_(1.0)
        detector.dot_product_scoring.query_proj.bias.fill_(0.5)
        detector.detr_decoder.presence_head.layer3.bias.fill_(5.0)


def _sam3_images():
    """The tiny SAM 3's image processor: SAM3_SIDE pixels in, masks at 4x the patch grid."""
    from transformers import Sam3ImageProcessor

    cells = SAM3_SIDE // 14
    return Sam3ImageProcessor(size={"height": SAM3_SIDE, "width": SAM3_SIDE},
                              mask_size={"height": 4 * cells, "width": 4 * cells})  # fmt: skip


def _sam3_vision(side: int):
    from transformers import Sam3VisionConfig, Sam3ViTConfig

    vit = Sam3ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=side,
        window_size=4,
        global_attn_indexes=[1],
        pretrain_image_size=side,
    )
    cells = side // vit.patch_size
    sizes = [[4 * cells, 4 * cells], [2 * cells, 2 * cells], [cells, cells]]
    return Sam3VisionConfig(backbone_config=vit, backbone_feature_sizes=sizes)


def sam2_video(folder: Path) -> Path:
    """A tiny SAM 2 as the hub's SAM 2.1 folders are (sam2_video): it tracks in video, and
    its image half loads as Sam2Model for boxes. 128-pixel input: at the default 1024 the
    memory attention alone takes seconds a frame on a CPU."""
    from transformers import Sam2ImageProcessor, Sam2VideoConfig, Sam2VideoModel, Sam2VideoProcessor
    from transformers.models.sam2_video.video_processing_sam2_video import (
        Sam2VideoVideoProcessor,
    )

    torch.manual_seed(0)
    side, cells = 128, 128 // 16  # the image and its stride-16 feature map
    vision = _hiera_vision()
    vision.backbone_config.image_size = [side, side]
    vision.backbone_feature_sizes = [[4 * cells, 4 * cells], [2 * cells, 2 * cells], [cells, cells]]
    config = Sam2VideoConfig(
        vision_config=vision,
        image_size=side,
        prompt_encoder_config={"image_size": side},
        memory_attention_rope_feat_sizes=[cells, cells],
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_fuser_num_layers=1,
        memory_fuser_intermediate_dim=64,
    )
    model = Sam2VideoModel(config).eval()
    size = {"height": side, "width": side}
    images = Sam2ImageProcessor(size=size, mask_size={"height": 4 * cells, "width": 4 * cells})
    Sam2VideoProcessor(
        image_processor=images, video_processor=Sam2VideoVideoProcessor(size=size)
    ).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def omdet_turbo(folder: Path) -> Path:
    """OmDet-Turbo with its real backbone (timm's Swin-T: the config's only backbone that
    matches its channel layout), a one-layer CLIP text tower over the test words, one
    decoder layer and 30 queries, at 224 pixels."""
    from transformers import (
        CLIPTextConfig,
        DetrImageProcessor,
        OmDetTurboConfig,
        OmDetTurboForObjectDetection,
        OmDetTurboProcessor,
    )

    torch.manual_seed(0)
    text = CLIPTextConfig(vocab_size=64, hidden_size=512, intermediate_size=1024, num_hidden_layers=1,
                          num_attention_heads=8, max_position_embeddings=77, bos_token_id=1,
                          eos_token_id=2, pad_token_id=0, projection_dim=512)  # fmt: skip
    config = OmDetTurboConfig(text_config=text, image_size=224, decoder_num_layers=1, num_queries=30,
                              encoder_dim_feedforward=256, decoder_dim_feedforward=256)  # fmt: skip
    model = OmDetTurboForObjectDetection(config).eval()
    images = DetrImageProcessor(size={"height": 224, "width": 224}, do_pad=False)
    OmDetTurboProcessor(image_processor=images, tokenizer=_clip_tokenizer(folder)).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def edgetam_video(folder: Path) -> Path:
    """EdgeTAM as the hub's folder is (edgetam_video): its real RepViT encoder (timm,
    random weights), 256-pixel input, one memory-attention layer; the image half loads as
    EdgeTamModel."""
    import timm
    from transformers import (
        EdgeTamVideoConfig,
        EdgeTamVideoModel,
        EdgeTamVisionConfig,
        Sam2ImageProcessor,
        Sam2VideoProcessor,
        TimmWrapperConfig,
    )
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    torch.manual_seed(0)
    side = 256
    args = {"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]}
    channels = [f["num_chs"] for f in timm.create_model("repvit_m1", **args).feature_info]
    vision = EdgeTamVisionConfig(
        backbone_config=TimmWrapperConfig(architecture="repvit_m1", model_args=args),
        backbone_channel_list=channels[::-1],
        backbone_feature_sizes=[[side // 4] * 2, [side // 8] * 2, [side // 16] * 2],
    )
    config = EdgeTamVideoConfig(vision_config=vision, image_size=side,
                                prompt_encoder_config={"image_size": side},
                                memory_attention_rope_feat_sizes=[side // 16] * 2,
                                memory_attention_num_layers=1)  # fmt: skip
    model = EdgeTamVideoModel(config).eval()
    size = {"height": side, "width": side}
    images = Sam2ImageProcessor(size=size, mask_size={"height": side // 4, "width": side // 4})
    Sam2VideoProcessor(image_processor=images,
                       video_processor=Sam2VideoVideoProcessor(size=size)).save_pretrained(folder)  # fmt: skip
    model.save_pretrained(folder)
    return folder


def sam3_lite(folder: Path) -> Path:
    """A tiny SAM 3 LiteText as yonigozlan/sam3-litetext-s0 is saved (sam3_lite_text: the
    image model alone, no tracker): SAM 3's ViT and heads with a three-layer MobileCLIP-style
    text encoder (RepMixer blocks first and last, as the S0 student). Biased as `sam3`."""
    from transformers import Sam3LiteTextConfig, Sam3LiteTextModel, Sam3Processor

    torch.manual_seed(0)
    text = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "projection_dim": 32,
            "num_hidden_layers": 3, "num_attention_heads": 2, "max_position_embeddings": 32,
            "repmixer_kernel_size": 3}  # fmt: skip
    config = Sam3LiteTextConfig(vision_config=_sam3_vision(SAM3_SIDE), text_config=text,
                                **_sam3_heads())  # fmt: skip
    model = Sam3LiteTextModel(config).eval()
    _score_high(model)
    Sam3Processor(image_processor=_sam3_images(), tokenizer=_clip_tokenizer(folder)).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder
