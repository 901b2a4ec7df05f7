"""Text-prompted segmentation on tiny random-weight models saved like downloads (no network)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitsam.cli import main
from vitsam.errors import VitsamError
from vitsam.seg import TextSegmenter
from vitsam.seg.detect import GroundingDino, connected_components, nms, split_prompt
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


def test_each_box_gets_the_phrase_its_tokens_score_best(models):
    from transformers import AutoProcessor

    det = GroundingDino.__new__(GroundingDino)
    det.processor = AutoProcessor.from_pretrained(models["grounding_dino"])
    ids = det.processor.tokenizer("cat. remote control.", return_tensors="pt")["input_ids"][0]
    spans = det._phrase_spans(ids)
    assert [s.tolist() for s in spans] == [[1], [3, 4]]  # [CLS] cat . remote control . [SEP]

    class FakeModel(torch.nn.Module):
        config = type("C", (), {"max_text_len": 256})()

        def forward(self, **kw):
            logits = torch.full((1, 3, 256), -9.0)
            logits[0, 0, 1] = 3.0  # query 0: "cat"
            logits[0, 1, 4] = 2.0  # query 1: "control" -> "remote control"
            logits[0, 2, 3] = -0.8  # query 2: 0.31, below the box threshold
            boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 1, 1]]])
            return type("O", (), {"logits": logits, "pred_boxes": boxes})()

    det.model, det.device, det.dtype = FakeModel(), torch.device("cpu"), torch.float32
    found = det.detect(Image.new("RGB", (200, 100)), ["cat", "remote control"], 0.35, 0.25)
    assert [d.label for d in found] == ["cat", "remote control"]
    assert found[0].box == pytest.approx((80.0, 40.0, 120.0, 60.0))
    assert found[1].box == pytest.approx((0.0, 0.0, 100.0, 50.0))


def test_prompt_splitting_connected_components_and_nms():
    assert split_prompt("Cat. remote control.\ndog") == ["cat", "remote control", "dog"]
    mask = torch.zeros(6, 8, dtype=torch.bool)
    mask[0:2, 0:2] = True
    mask[4:6, 3:8] = True
    mask[0, 7] = True
    labels = connected_components(mask)
    assert labels.max() == 3 and (labels > 0).eq(mask).all()
    assert len({int(labels[0, 0]), int(labels[5, 7]), int(labels[0, 7])}) == 3
    assert connected_components(torch.ones(3, 3, dtype=torch.bool)).eq(1).all()
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
