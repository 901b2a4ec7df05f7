"""Text-prompted segmentation on tiny random-weight models saved like downloads (no network)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitsam.cli import main
from vitsam.errors import VitsamError
from vitsam.seg import TextSegmenter
from vitsam.seg.detect import GroundingDino, heatmap_regions, nms, split_prompt
from vitsam.seg.results import Detection, decode_rle

JSON_KEYS = {"image", "width", "height", "prompt", "detector", "segmenter", "detections"}
DET_KEYS = {"label", "score", "box", "mask_score", "area", "mask"}


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    arr = (rng.uniform(0, 255, (120, 160, 3))).astype(np.uint8)
    arr[30:90, 40:120] = (200, 30, 30)
    path = tmp_path / "photo.jpg"
    Image.fromarray(arr).save(path)
    return path


def run_cli(models, *args, detector="grounding_dino", segmenter="sam2"):
    return main(
        [
            "segment",
            *args,
            "--detector",
            models[detector],
            "--segmenter",
            models[segmenter],
            "--device",
            "cpu",
            "--quiet",
        ]
    )


def test_cli_writes_overlay_masks_and_json(models, photo, tmp_path):
    out = tmp_path / "out"
    code = run_cli(
        models,
        str(photo),
        "--prompt",
        "cat. remote control",
        "--box-threshold",
        "0.0",
        "--text-threshold",
        "0.0",
        "--max-detections",
        "4",
        "--out",
        str(out),
    )
    assert code == 0
    doc = json.loads((out / "photo.json").read_text())
    assert set(doc) == JSON_KEYS
    assert (doc["width"], doc["height"], doc["prompt"]) == (160, 120, "cat. remote control")
    assert len(doc["detections"]) == 4
    labels = Image.open(out / "photo.masks.png")
    label_map = np.asarray(labels)
    assert label_map.shape == (120, 160)
    for i, d in enumerate(doc["detections"], start=1):
        assert set(d) == DET_KEYS and d["label"] in ("cat", "remote control")
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 120
        mask = decode_rle(d["mask"])
        assert d["mask"]["size"] == [120, 160] and mask.sum() == d["area"]
        later = np.isin(label_map, range(i + 1, 10))  # later detections are drawn on top
        assert np.array_equal((label_map == i), mask & ~later)
    overlay = Image.open(out / "photo.overlay.png")
    assert overlay.size == (160, 120) and overlay.mode == "RGB"


def test_folder_with_a_bad_file_does_the_rest(models, photo, tmp_path, capsys):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    Image.open(photo).save(folder / "a.png")
    Image.open(photo).convert("L").save(folder / "sub" / "b.webp")
    (folder / "notes.jpg").write_text("not an image")
    out = tmp_path / "out"
    code = run_cli(
        models,
        str(folder),
        "--prompt",
        "cat",
        "--max-detections",
        "2",
        "--box-threshold",
        "0.0",
        "--text-threshold",
        "0.0",
        "--out",
        str(out),
        "--format",
        "json,masks",
        "--instance-masks",
    )
    assert code == 1  # one file failed, the others were done
    err = capsys.readouterr().err
    assert "notes.jpg: not an image file" in err
    assert (out / "a.json").exists() and (out / "sub__b.json").exists()
    assert (out / "a.mask_1.png").exists() and not (out / "a.overlay.png").exists()


def test_nothing_detected_is_an_empty_result(models, photo, tmp_path):
    out = tmp_path / "out"
    assert (
        run_cli(models, str(photo), "--prompt", "cat", "--box-threshold", "1.0", "--out", str(out))
        == 0
    )
    doc = json.loads((out / "photo.json").read_text())
    assert doc["detections"] == []
    assert not np.asarray(Image.open(out / "photo.masks.png")).any()


def test_boxes_skip_the_detector(models, photo, tmp_path):
    out = tmp_path / "out"
    code = main(
        [
            "segment",
            str(photo),
            "--box",
            "10,10,80,60",
            "--box",
            "90,50,150,110",
            "--segmenter",
            models["sam"],
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    doc = json.loads((out / "photo.json").read_text())
    assert [d["box"] for d in doc["detections"]] == [[10, 10, 80, 60], [90, 50, 150, 110]]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--prompt", "  . "], "empty prompt"),
        (
            ["--prompt", "cat", "--detector", "no-such-detector"],
            "unknown detector 'no-such-detector'",
        ),
        (["--prompt", "cat", "--format", "gif"], "--format takes"),
        (["--box", "50,50,10,10"], "X2 > X1"),
    ],
)
def test_bad_input_is_one_clear_line(models, photo, args, message, capsys):
    argv = ["segment", str(photo), "--segmenter", models["sam2"], "--device", "cpu", *args]
    if "--detector" not in args:
        argv += ["--detector", models["grounding_dino"]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_missing_inputs_and_corrupt_checkpoint(tmp_path, photo, capsys):
    assert main(["segment", str(tmp_path / "nope.jpg"), "--prompt", "cat"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    bad = tmp_path / "sam_vit_b_01ec64.pth"
    bad.write_bytes(b"not a checkpoint")
    assert main(["segment", str(photo), "--box", "1,1,20,20", "--segmenter", str(bad)]) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err


def test_offline_without_a_cached_model_names_it(tmp_path, photo, monkeypatch, capsys):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache" / "hub"))
    code = main(["segment", str(photo), "--box", "1,1,20,20", "--segmenter", "sam2.1-tiny"])
    err = capsys.readouterr().err
    assert code == 2 and "sam2.1-tiny" in err and "local folder" in err and err.count("\n") == 1


def test_python_api_accepts_path_pil_and_array(models, photo):
    seg = TextSegmenter.from_pretrained(
        models["grounding_dino"],
        models["sam2"],
        device="cpu",
        box_threshold=0.0,
        text_threshold=0.0,
        max_detections=3,
    )
    pil = Image.open(photo)
    for image in (photo, pil, np.asarray(pil)):
        result = seg.segment(image, "cat. dog")
        assert len(result.detections) == 3
        d = result.detections[0]
        assert d.mask.dtype == bool and d.mask.shape == (120, 160) and d.label in ("cat", "dog")
    boxes = seg.segment_boxes(photo, [[10, 10, 50, 50]])
    assert boxes.detections[0].box == (10.0, 10.0, 50.0, 50.0)
    assert boxes.overlay(pil).size == pil.size
    with pytest.raises(VitsamError, match="HxW or HxWxC"):
        seg.segment(np.zeros((4, 4, 3), np.float32), "cat")


@pytest.mark.parametrize("detector,segmenter", [("owlv2", "sam"), ("clipseg", "sam2")])
def test_other_detectors_through_the_pipeline(models, photo, detector, segmenter):
    seg = TextSegmenter.from_pretrained(
        models[detector], models[segmenter], device="cpu", box_threshold=0.3, max_detections=3
    )
    result = seg.segment(photo, "cat. dog")
    assert 1 <= len(result.detections) <= 3
    assert all(d.label in ("cat", "dog") and d.mask.shape == (120, 160) for d in result.detections)


def fake_grounding_dino(models, logits_at: dict[tuple[int, int], float]) -> GroundingDino:
    """Grounding DINO's tokenizer over a model whose logits are -9 except `logits_at`
    {(query, token): logit}; query boxes (cx, cy, w, h) as below."""
    from transformers import AutoProcessor

    class FakeModel(torch.nn.Module):
        config = type("C", (), {"max_text_len": 256})()

        def forward(self, **kw):
            logits = torch.full((1, 3, 256), -9.0)
            for (q, t), v in logits_at.items():
                logits[0, q, t] = v
            boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 1, 1]]])
            return type("O", (), {"logits": logits, "pred_boxes": boxes})()

    det = GroundingDino.__new__(GroundingDino)
    det.name, det.processor = "fake", AutoProcessor.from_pretrained(models["grounding_dino"])
    det.model, det.device, det.dtype = FakeModel(), torch.device("cpu"), torch.float32
    return det


def test_each_box_gets_the_phrase_its_tokens_score_best(models):
    probe = fake_grounding_dino(models, {})
    text, spans = probe.text_inputs(["cat", "remote control"])
    # [CLS] cat . remote control . [SEP], as the tokenizer gives for the joined text
    assert text["input_ids"][0].tolist() == probe.processor.tokenizer("cat. remote control.")["input_ids"]
    assert spans == [[1], [3, 4]]
    det = fake_grounding_dino(models, {
        (0, 1): 3.0,  # query 0: "cat"
        (1, 4): 2.0,  # query 1: "control" -> "remote control"
        (2, 3): -0.8,  # query 2: 0.31, below the box threshold
    })  # fmt: skip
    found = det.detect(Image.new("RGB", (200, 100)), ["cat", "remote control"], 0.35, 0.25)
    assert [d.label for d in found] == ["cat", "remote control"]
    assert found[0].box == pytest.approx((80.0, 40.0, 120.0, 60.0))
    assert found[1].box == pytest.approx((0.0, 0.0, 100.0, 50.0))


def test_labels_are_the_users_phrases_whatever_the_tokenizer_does(models):
    """A phrase the tokenizer drops entirely (a lone combining accent: no tokens) used to
    shift every later phrase, and labels became decoded word pieces ('t - shirt')."""
    phrases = split_prompt("T-shirt\u200b. \u0301, japanese_fruit\ufeff. cat")
    assert phrases == ["t-shirt", "\u0301", "japanese_fruit", "cat"]
    _, spans = fake_grounding_dino(models, {}).text_inputs(phrases)
    assert spans[1] == [] and spans[3] == [spans[2][-1] + 2]  # "cat" after "japanese_fruit ."
    det = fake_grounding_dino(models, {(0, spans[0][1]): 3.0, (1, spans[3][0]): 3.0,
                                       (2, spans[2][-1]): 3.0})  # fmt: skip
    found = det.detect(Image.new("RGB", (200, 100)), phrases, 0.35, 0.25)
    assert sorted(d.label for d in found) == ["cat", "japanese_fruit", "t-shirt"]


def test_prompt_rules_commas_invisible_characters_and_width():
    assert split_prompt("Cat. remote control.\ndog") == ["cat", "remote control", "dog"]
    assert split_prompt("cat, remote control") == ["cat", "remote control"]
    assert split_prompt("cat. Cat, cat") == ["cat"]
    assert split_prompt("cat，dog") == ["cat", "dog"]  # a full-width comma is a comma (NFKC)
    assert split_prompt("t-shirt\u200b") == ["t-shirt"]  # zero-width space
    assert split_prompt("\ufeffｃａｔ\u00ad. cat\u2028dog\tbowl") == ["cat", "dog bowl"]
    assert split_prompt("a  \x00 cat") == ["a cat"]
    with pytest.raises(VitsamError, match="empty prompt"):
        split_prompt("\u200b. , \u200d")


def test_heat_map_regions_long_thin_and_large():
    """CLIPSeg's heat map -> boxes: a 200x200 region and a 1-pixel serpentine about 7,000
    pixels long (each took seconds to minutes with the hand-written labelling)."""
    heat = np.zeros((352, 352), np.float32)
    for row in range(0, 80, 4):
        heat[row, 10:350] = 0.625
        heat[row : row + 5, 350 if row % 8 == 0 else 10] = 0.625  # joins it to the next row
    heat[100:300, 20:220] = 0.875
    heat[150, 30] = 0.9375  # the square's peak
    heat[340, 300:310] = 0.25  # under the threshold
    serpentine, square = ((10, 0, 351, 81), 0.625), ((20, 100, 220, 300), 0.9375)
    assert heatmap_regions(heat, 0.5) == [serpentine, square]  # in raster order
    assert heatmap_regions(heat, 0.5, min_area=0.2) == [square]  # 7,000 px < 20% of the map
    assert heatmap_regions(np.zeros((8, 8)), 0.5) == []


def test_nms_keeps_the_best_of_overlapping_boxes():
    dets = [
        Detection("a", 0.9, (0, 0, 10, 10)),
        Detection("b", 0.8, (1, 1, 10, 10)),
        Detection("c", 0.7, (20, 20, 30, 30)),
    ]
    assert [d.label for d in nms(dets, 0.5)] == ["a", "c"]


def test_original_sam_checkpoint_matches_segment_anything(tmp_path):
    """A renamed original SAM file: variant read from the shapes, same masks as the original."""
    from segment_anything import SamPredictor
    from segment_anything.build_sam import _build_sam

    from vitsam.seg.masks import MaskPredictor

    torch.manual_seed(0)
    original = _build_sam(
        encoder_embed_dim=32,
        encoder_depth=3,
        encoder_num_heads=2,
        encoder_global_attn_indexes=[2],
        checkpoint=None,
    ).eval()
    path = tmp_path / "my_sam.pth"
    torch.save(original.state_dict(), path)
    image = (np.random.default_rng(0).uniform(0, 255, (300, 400, 3))).astype(np.uint8)
    boxes = np.array([[20, 30, 200, 180], [150, 100, 390, 290]], dtype=np.float32)

    ours = MaskPredictor.from_pretrained(str(path), torch.device("cpu"))
    assert ours.model.config.vision_config.global_attn_indexes == [2]
    ours.set_image(Image.fromarray(image))
    masks, scores = ours.predict(boxes)

    ref = SamPredictor(original)
    ref.set_image(image)
    with torch.no_grad():
        tb = ref.transform.apply_boxes_torch(torch.from_numpy(boxes), image.shape[:2])
        ref_masks, ref_scores, _ = ref.predict_torch(
            None, None, boxes=tb, multimask_output=False, return_logits=True
        )
    torch.testing.assert_close(ours._embeddings, ref.features, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores, ref_scores[:, 0].numpy(), rtol=1e-4, atol=1e-4)
    ref_bin = (ref_masks[:, 0] > 0).numpy()
    iou = (masks & ref_bin).sum((1, 2)) / np.maximum((masks | ref_bin).sum((1, 2)), 1)
    assert (iou >= 0.99).all() and masks.any()


def test_original_sam2_checkpoint_matches_the_sam2_package(tmp_path):
    """sam2.1_hiera_tiny.pt as the sam2 package writes it, with random weights."""
    sam2 = pytest.importorskip("sam2", reason="the original sam2 package is not installed")
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from vitsam.seg.masks import MaskPredictor

    assert sam2
    torch.manual_seed(0)
    original = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu").eval()
    path = tmp_path / "renamed.pt"
    torch.save({"model": original.state_dict()}, path)
    image = (np.random.default_rng(0).uniform(0, 255, (300, 400, 3))).astype(np.uint8)
    boxes = np.array([[20, 30, 200, 180], [150, 100, 390, 290]], dtype=np.float32)

    ours = MaskPredictor.from_pretrained(str(path), torch.device("cpu"))
    assert ours.model.config.vision_config.backbone_config.global_attention_blocks == [5, 7, 9]
    ours.set_image(Image.fromarray(image))
    masks, scores = ours.predict(boxes)

    ref = SAM2ImagePredictor(original)
    ref.set_image(image)
    ref_masks, ref_scores, _ = ref.predict(box=boxes, multimask_output=False, return_logits=True)
    np.testing.assert_allclose(scores, ref_scores.reshape(-1), rtol=1e-3, atol=1e-4)
    ref_bin = ref_masks[:, 0] > 0
    iou = (masks & ref_bin).sum((1, 2)) / np.maximum((masks | ref_bin).sum((1, 2)), 1)
    assert (iou >= 0.99).all() and masks.any()


# --- boxes: one check for every interface ---------------------------------------------


@pytest.fixture
def wide(tmp_path):
    """A 600x400 image."""
    path = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (400, 600, 3), np.uint8)).save(path)
    return path


def test_cli_boxes_are_clamped_to_the_image_negative_numbers_parse(models, wide, tmp_path):
    out = tmp_path / "out"
    argv = ["segment", str(wide), "--box", "500,10,700,300", "--box=-20,-20,100,100",
            "--box", "-20,-20,100,100", "--segmenter", models["sam"], "--device", "cpu",
            "--format", "json", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((out / "wide.json").read_text())
    assert [d["box"] for d in doc["detections"]] == [[500, 10, 600, 300], [0, 0, 100, 100],
                                                      [0, 0, 100, 100]]  # fmt: skip
    assert all(d["mask"]["size"] == [400, 600] for d in doc["detections"])


@pytest.mark.parametrize(
    "box,message",
    [("nan,0,10,10", "finite"), ("0,0,inf,100", "finite"), ("-inf,0,10,10", "finite"),
     ("50,50,10,10", "X2 > X1")],
)  # fmt: skip
def test_cli_non_finite_or_reversed_box_is_one_line_exit_2(
    models, wide, box, message, capsys, tmp_path
):
    argv = ["segment", str(wide), "--box", box, "--segmenter", models["sam"], "--device", "cpu",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_box_wholly_outside_the_image_is_an_error_and_the_rest_is_done(
    models, wide, photo, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = ["segment", str(wide), str(photo), "--box", "300,10,400,100", "--segmenter",
            models["sam"], "--device", "cpu", "--format", "json", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 1  # photo.jpg is 160x120: the box misses it
    err = capsys.readouterr().err
    assert "box [300.0, 10.0, 400.0, 100.0] lies wholly outside the 160x120 image" in err
    assert (out / "wide.json").exists() and not (out / "photo.json").exists()


def test_python_boxes_share_the_check(models, wide):
    from vitsam.seg.pipeline import check_boxes

    seg = TextSegmenter.from_pretrained(None, models["sam"], device="cpu", precision="fp32")
    result = seg.segment_boxes(wide, torch.tensor([[500, 10, 700, 300]]))
    assert result.detections[0].box == (500.0, 10.0, 600.0, 300.0)
    assert result.to_json()["detections"][0]["box"] == [500, 10, 600, 300]
    for bad, message in [
        ([[1, 2], [3, 4]], "list of \\[X1, Y1, X2, Y2\\]"),
        ([1, 2, 3, 4], "list of"),
        ([[0, 0, "5", 5]], "list of"),
        ([[True, 0, 5, 5]], "list of"),
        (np.zeros((2, 3)), "list of"),
        ([[0, 0, float("nan"), 5]], "finite"),
        ([[650, 10, 700, 300]], "wholly outside the 600x400 image"),
        ([[-50, 0, 0, 10]], "wholly outside"),
    ]:
        with pytest.raises(VitsamError, match=message):
            seg.segment_boxes(wide, bad)
    assert check_boxes([]).shape == (0, 4)
    assert check_boxes([(1, 2, 3, 4)], (2, 10)).tolist() == [[1, 2, 2, 4]]


def test_max_detections_and_thresholds_are_checked_everywhere(models, photo, capsys):
    argv = ["segment", str(photo), "--prompt", "cat", "--detector", "no-such-detector"]
    assert main([*argv, "--max-detections", "-1"]) == 2  # refused before the detector loads
    err = capsys.readouterr().err
    assert "max_detections must be a count of 0 or more, got -1" in err and err.count("\n") == 1
    assert main([*argv, "--box-threshold", "1.5"]) == 2
    assert "box_threshold must be between 0 and 1" in capsys.readouterr().err
    with pytest.raises(VitsamError, match="max_detections"):
        TextSegmenter.from_pretrained("no-such-detector", max_detections=-1)
    seg = TextSegmenter.from_pretrained(None, models["sam"], device="cpu", precision="fp32")
    with pytest.raises(VitsamError, match="max_detections"):
        TextSegmenter(None, seg.segmenter, max_detections=-1)
    with pytest.raises(VitsamError, match="text_threshold"):
        TextSegmenter(None, seg.segmenter, text_threshold=float("nan"))


def test_segment_help_states_the_prompt_box_and_cap_rules(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "separated by '.' or ','" in help_text and "clamped to the image" in help_text
    assert "--max-detections N" in help_text and "(default 100)" in help_text


# --- prompts: text limits and unknown tokens, before the model runs ---------------------


def no_forward(*args, **kwargs):
    raise AssertionError("the model ran")


@pytest.mark.parametrize("name", ["owlv2", "clipseg", "grounding_dino"])
def test_a_phrase_over_the_text_limit_is_named_before_the_model_runs(models, name):
    from vitsam.seg.detect import Detector

    det = Detector.from_pretrained(models[name], torch.device("cpu"))
    det.model.forward = no_forward
    config = det.model.config
    limit = getattr(config, "max_text_len", None) or config.text_config.max_position_embeddings
    phrase = " ".join(["remote control"] * (limit // 2))
    with pytest.raises(VitsamError, match=f"phrase '{phrase[:57]}\\.\\.\\.' .*limit of {limit}"):
        det.detect(Image.new("RGB", (64, 64)), ["cat", phrase], 0.3, 0.25)


def test_a_phrase_of_unknown_tokens_only_is_a_warning(models, caplog):
    from vitsam.seg.detect import Detector

    det = Detector.from_pretrained(models["grounding_dino"], torch.device("cpu"))
    with caplog.at_level("WARNING", logger="vitsam"):
        found = det.detect(Image.new("RGB", (64, 48)), split_prompt("cat. 🐱"), 0.0, 0.0)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "'🐱'" in warned[0] and "no token" in warned[0]
    assert found and {d.label for d in found} <= {"cat", "🐱"}


# --- precision: non-finite outputs never pass silently ----------------------------------


def running_dtype() -> torch.dtype:
    """The dtype a model runs in on the CPU: autocast's, or fp32 without it."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32


def nan_when(model, dtypes, field):
    """Patch `model.forward` so its output `field` is NaN while the model runs in `dtypes`."""
    real = model.forward

    def forward(*args, **kwargs):
        out = real(*args, **kwargs)
        if running_dtype() in dtypes:
            out[field] = torch.full_like(out[field], float("nan"))
        return out

    model.forward = forward


def test_detector_nan_in_bf16_reruns_in_fp32_with_a_notice(models, caplog):
    from vitsam.seg.detect import Detector

    det = Detector.from_pretrained(models["grounding_dino"], torch.device("cpu"), torch.bfloat16)
    nan_when(det.model, {torch.bfloat16}, "pred_boxes")
    image = Image.new("RGB", (80, 60), "gray")
    with caplog.at_level("WARNING", logger="vitsam"):
        found = det.detect(image, ["cat", "dog"], 0.0, 0.0)
    assert det.dtype == torch.float32 and next(det.model.parameters()).dtype == torch.float32
    assert found and all(np.isfinite(d.box).all() for d in found)
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1 and "NaN/inf in bfloat16" in notices[0] and "fp32" in notices[0]
    assert len(det.detect(image, ["cat", "dog"], 0.0, 0.0)) == len(found)  # stays in fp32

    det32 = Detector.from_pretrained(models["owlv2"], torch.device("cpu"))
    nan_when(det32.model, {torch.float32}, "logits")
    with pytest.raises(VitsamError, match="NaN/inf outputs even in fp32"):
        det32.detect(image, ["cat"], 0.3, 0.25)


def test_segmenter_nan_in_bf16_reruns_in_fp32_with_a_notice(models, caplog):
    from vitsam.seg.masks import MaskPredictor

    sam = MaskPredictor.from_pretrained(models["sam"], torch.device("cpu"), torch.bfloat16)
    encoded = []  # dtypes the image was encoded in (a cheap stand-in for the bf16 encoder)

    def embeddings(pixels):
        encoded.append(running_dtype())
        return torch.zeros((1, 256, 64, 64), dtype=running_dtype())

    sam.model.get_image_embeddings = embeddings
    nan_when(sam.model, {torch.bfloat16}, "pred_masks")
    sam.set_image(Image.new("RGB", (80, 60), "gray"))
    with caplog.at_level("WARNING", logger="vitsam"):
        masks, scores = sam.predict(np.array([[10, 10, 50, 40]]))
    assert masks.shape == (1, 60, 80) and np.isfinite(scores).all()
    assert encoded == [torch.bfloat16, torch.float32]  # the image encoded again in fp32
    assert sam.dtype == torch.float32 and next(sam.model.parameters()).dtype == torch.float32
    assert "fp32" in caplog.records[0].getMessage()

    sam32 = MaskPredictor.from_pretrained(models["sam"], torch.device("cpu"))
    sam32.model.get_image_embeddings = lambda pixels: torch.full((1, 256, 64, 64), float("inf"))
    with pytest.raises(VitsamError, match="even in fp32"):
        sam32.set_image(Image.new("RGB", (80, 60)))


# --- orientation: the displayed image on every interface --------------------------------


def exif_rotated_jpeg(path):
    """Stored 160x120, EXIF orientation 6 (rotate 90 degrees clockwise): shown 120x160."""
    arr = np.zeros((120, 160, 3), np.uint8)
    arr[:, :80] = (200, 40, 40)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(path, exif=exif)
    return path


def test_exif_orientation_is_applied_on_the_cli_and_in_python(models, tmp_path):
    path = exif_rotated_jpeg(tmp_path / "phone.jpg")
    out = tmp_path / "out"
    args = ["--prompt", "cat", "--box-threshold", "0", "--text-threshold", "0",
            "--max-detections", "1", "--out", str(out), "--precision", "fp32"]  # fmt: skip
    assert run_cli(models, str(path), *args, segmenter="sam") == 0
    doc = json.loads((out / "phone.json").read_text())
    assert (doc["width"], doc["height"]) == (120, 160)
    assert doc["detections"][0]["mask"]["size"] == [160, 120]
    assert np.asarray(Image.open(out / "phone.masks.png")).shape == (160, 120)
    assert Image.open(out / "phone.overlay.png").size == (120, 160)

    seg = TextSegmenter.from_pretrained(
        models["grounding_dino"], models["sam"], device="cpu", precision="fp32", box_threshold=0.0,
        text_threshold=0.0, max_detections=1,
    )  # fmt: skip
    opened = Image.open(path)  # as a user opens it: pixels stored sideways, EXIF tag kept
    assert opened.size == (160, 120)
    for image in (str(path), opened):
        result = seg.segment(image, "cat")
        assert (result.width, result.height) == (120, 160)
        assert result.detections[0].mask.shape == (160, 120)
    assert result.overlay(opened).size == (120, 160)
    boxes = seg.segment_boxes(opened, [[0, 0, 120, 80]])  # the top half, as displayed
    assert boxes.detections[0].box == (0.0, 0.0, 120.0, 80.0)
    with pytest.raises(VitsamError, match="draw it over the image it was made from"):
        result.overlay(Image.new("RGB", (160, 120)))


# --- scale: packed masks and lists of images --------------------------------------------


def test_masks_are_kept_packed_and_decoded_in_chunks(models, photo):
    from pycocotools import mask as mask_utils

    seg = TextSegmenter.from_pretrained(None, models["sam"], device="cpu", precision="fp32")
    boxes = [[10, 10, 80, 60], [90, 50, 150, 110], [0, 0, 160, 120]]
    seg.segmenter.chunk_pixels = 2 * 120 * 160  # two full-size masks at a time
    seg.segmenter.set_image(Image.open(photo))
    chunks = list(seg.segmenter.predict_chunks(np.array(boxes)))
    assert [len(m) for m, _ in chunks] == [2, 1]
    dense, _ = seg.segmenter.predict(np.array(boxes))
    result = seg.segment_boxes(photo, boxes)
    for d, expected in zip(result.detections, dense):
        assert not any(isinstance(v, np.ndarray) for v in vars(d).values())  # no dense mask held
        assert isinstance(d.rle["counts"], bytes) and d.rle["size"] == [120, 160]
        assert d.mask.dtype == bool and np.array_equal(d.mask, expected)
        assert d.area == int(expected.sum()) == int(mask_utils.area(d.rle))
    doc = result.to_json()
    assert doc["detections"][0]["mask"]["counts"] == result.detections[0].rle["counts"].decode()
    assert np.array_equal(decode_rle(doc["detections"][0]["mask"]), dense[0])
    d = Detection("x", 1.0, (0, 0, 1, 1), mask=dense[0])
    assert d.rle is not None and np.array_equal(d.mask, dense[0])
    d.mask = None
    assert d.rle is None and d.area == 0


def test_segment_takes_lists_of_images_and_prompts(models, photo):
    seg = TextSegmenter.from_pretrained(
        models["grounding_dino"], models["sam"], device="cpu", precision="fp32", box_threshold=0.0,
        text_threshold=0.0, max_detections=2,
    )  # fmt: skip
    a, b, c = photo, Image.open(photo).resize((80, 60)), np.zeros((50, 40, 3), np.uint8)
    results = seg.segment([a, b, c], ["cat", "dog. cat", "dog"])
    assert [r.prompt for r in results] == ["cat", "dog. cat", "dog"]
    assert [(r.width, r.height) for r in results] == [(160, 120), (80, 60), (40, 50)]
    assert {d.label for d in results[0].detections} == {"cat"}
    assert {d.label for d in results[1].detections} <= {"dog", "cat"}
    alike = seg.segment((b, c), "cat, dog", box_threshold=1.0)  # one prompt for all
    assert [(r.prompt, r.width) for r in alike] == [("cat, dog", 80), ("cat, dog", 40)]
    with pytest.raises(VitsamError, match="3 images but 2 prompts"):
        seg.segment([a, b, c], ["cat", "dog"])
    with pytest.raises(VitsamError, match="empty prompt"):
        seg.segment([a, b], ["cat", " . "])
    with pytest.raises(VitsamError, match="one image takes one prompt string"):
        seg.segment(a, ["cat", "dog"])
    with pytest.raises(VitsamError, match="a prompt is a string of phrases, not a NoneType"):
        seg.segment([a, b], ["cat", None])
