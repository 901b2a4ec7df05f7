"""SAM 3 for images: text-native, one vision pass for all phrases, on a tiny random-weight
model saved as facebook/sam3 is (detector + tracker), no network; and SAM 3 LiteText
(`sam3-lite`: SAM 3 with a small MobileCLIP text encoder) in images and, with SAM 3's
tracker, in video."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_video import write_clip
from vitsam.cli import main
from vitsam.errors import VitsamError
from vitsam.seg import TextSegmenter, VideoSegmenter
from vitsam.seg.registry import SEGMENTERS, resolve
from vitsam.seg.results import decode_rle


@pytest.fixture
def photo(tmp_path):
    arr = np.random.default_rng(0).uniform(0, 255, (120, 160, 3)).astype(np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(arr).save(path)
    return path


def test_cli_sam3_needs_no_detector(video_models, photo, tmp_path):
    out = tmp_path / "out"
    code = main(["segment", str(photo), "--prompt", "cat. remote control",
                 "--segmenter", video_models["sam3"], "--detector", "no-such-detector",
                 "--max-detections", "5", "--device", "cpu", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0  # the detector named is never loaded
    doc = json.loads((out / "photo.json").read_text())
    assert doc["detector"] == "sam3" and doc["segmenter"] == video_models["sam3"]
    assert 1 <= len(doc["detections"]) <= 5
    scores = [d["score"] for d in doc["detections"]]
    assert scores == sorted(scores, reverse=True) and min(scores) > 0.35
    for d in doc["detections"]:
        assert d["label"] in ("cat", "remote control")
        mask = decode_rle(d["mask"])
        assert mask.shape == (120, 160) and mask.sum() == d["area"] > 0
    assert Image.open(out / "photo.overlay.png").size == (160, 120)


def test_one_vision_pass_and_each_instance_labelled_with_its_phrase(video_models, photo):
    """Three phrases: the image is encoded once and the text once; the decoder's outputs are
    patched so that phrase i's only confident query is query i."""
    seg = TextSegmenter.from_pretrained(segmenter=video_models["sam3"], device="cpu")
    model = seg.segmenter.model
    calls = {"vision": 0, "text": 0, "decoder": 0}
    vision, text, forward = model.get_vision_features, model.get_text_features, model.forward

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)

        return wrapped

    def decoder(*a, **k):
        out = forward(*a, **k)
        i = calls["decoder"]
        calls["decoder"] += 1
        out.pred_logits = torch.full_like(out.pred_logits, -10.0)
        out.pred_logits[0, i] = 10.0
        out.presence_logits = torch.full_like(out.presence_logits, 10.0)
        out.pred_boxes[0, i] = torch.tensor([0.1 * (i + 1), 0.1, 0.1 * (i + 1) + 0.2, 0.5])
        return out

    model.get_vision_features = count("vision", vision)
    model.get_text_features = count("text", text)
    model.forward = decoder
    result = seg.segment(photo, "cat. dog. remote control")
    assert calls == {"vision": 1, "text": 1, "decoder": 3}
    assert sorted(d.label for d in result.detections) == ["cat", "dog", "remote control"]
    for d in result.detections:
        i = ["cat", "dog", "remote control"].index(d.label)
        assert d.box == pytest.approx((16.0 * (i + 1), 12.0, 16.0 * (i + 1) + 32.0, 60.0), abs=1e-3)
        assert d.mask.shape == (120, 160) and d.score > 0.99
    assert result.detector == "sam3" and "detector" in result.timings


def test_thresholds_nms_and_caps_apply_to_sam3(video_models, photo):
    seg = TextSegmenter.from_pretrained(segmenter=video_models["sam3"], device="cpu")
    every = seg.segment(photo, "cat")
    assert len(every.detections) > 1  # the tiny model's biased queries all score high
    assert seg.segment(photo, "cat", box_threshold=1.0).detections == []
    seg.max_detections = 2
    assert len(seg.segment(photo, "cat. dog").detections) == 2
    seg.max_detections, seg.nms_iou = 100, 0.01
    assert len(seg.segment(photo, "cat").detections) < len(every.detections)


def test_box_prompts_with_sam3_are_one_clear_line(video_models, photo, capsys):
    code = main(["segment", str(photo), "--box", "1,1,40,40", "--segmenter", video_models["sam3"],
                 "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "box prompts need a SAM or SAM 2 segmenter" in err
    assert err.count("\n") == 1


def test_registry_short_name_and_saved_folders(video_models):
    assert resolve("sam3", SEGMENTERS, "segmenter") == ("sam3", "facebook/sam3")
    assert resolve(video_models["sam3"], SEGMENTERS, "segmenter")[0] == "sam3"  # sam3_video
    assert resolve(video_models["sam2_video"], SEGMENTERS, "segmenter")[0] == "sam2"


def test_a_sam2_video_folder_segments_boxes(video_models, photo):
    seg = TextSegmenter.from_pretrained(None, video_models["sam2_video"], device="cpu")
    result = seg.segment_boxes(photo, [[10, 10, 80, 60]])
    assert result.detections[0].mask.shape == (120, 160)


def test_offline_without_sam3_cached_names_it(tmp_path, photo, monkeypatch, capsys):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache" / "hub"))
    code = main(["segment", str(photo), "--prompt", "cat", "--segmenter", "sam3"])
    err = capsys.readouterr().err
    assert code == 2 and "'sam3'" in err and "local folder" in err and err.count("\n") == 1


def test_serve_offers_sam3_beside_a_detector_pipeline(models, video_models, photo):
    from fastapi.testclient import TestClient

    from vitsam.serve.api import create_app
    from vitsam.serve.service import SegmentService

    service = SegmentService([models["grounding_dino"]], [models["sam2"], video_models["sam3"]],
                             device="cpu")  # fmt: skip
    service.load()
    assert service.ready, service.error
    client = TestClient(create_app(service))
    files = {"image": ("photo.png", photo.read_bytes(), "image/png")}
    data = {"prompt": "cat. dog", "segmenter": video_models["sam3"], "max_detections": "3"}
    doc = client.post("/v1/segment", data=data, files=files).json()
    assert doc["detector"] == "sam3" and 1 <= len(doc["detections"]) <= 3
    assert all(d["label"] in ("cat", "dog") for d in doc["detections"])
    data["segmenter"] = models["sam2"]
    assert client.post("/v1/segment", data=data, files=files).json()["detector"] == models[
        "grounding_dino"
    ]


def test_an_original_sam3_checkpoint_is_named_not_mapped(tmp_path, photo, capsys):
    path = tmp_path / "sam3.pt"
    torch.save({"model": {"detector.backbone.vision_backbone.trunk.pos_embed": torch.zeros(2)}}, path)
    assert main(["segment", str(photo), "--box", "1,1,20,20", "--segmenter", str(path)]) == 2
    err = capsys.readouterr().err
    assert "original SAM 3 checkpoint" in err and "facebook/sam3" in err and err.count("\n") == 1


# SAM 3 LiteText


@pytest.fixture
def sam3_tracker(video_models, monkeypatch):
    """The registry's `sam3` (facebook/sam3, where LiteText's video tracker comes from) is
    the tiny SAM 3 here."""
    monkeypatch.setitem(SEGMENTERS, "sam3", ("sam3", video_models["sam3"]))


def test_the_short_name_is_the_transformers_checkpoint():
    assert resolve("sam3-lite", SEGMENTERS, "segmenter") == ("sam3", "yonigozlan/sam3-litetext-s0")


def test_cli_segments_with_the_small_text_encoder(video_models, photo, tmp_path):
    out = tmp_path / "out"
    code = main(["segment", str(photo), "--prompt", "cat. remote control", "--segmenter",
                 video_models["sam3_lite"], "--max-detections", "4", "--device", "cpu",
                 "--export", "coco", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    doc = json.loads((out / "results" / "photo.json").read_text())
    assert doc["detector"] == "sam3" and doc["segmenter"] == video_models["sam3_lite"]
    assert 1 <= len(doc["detections"]) <= 4
    for d in doc["detections"]:
        assert d["label"] in ("cat", "remote control") and d["score"] > 0.35
        assert decode_rle(d["mask"]).shape == (120, 160)
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["annotations"]) == len(doc["detections"])


def test_api_loads_the_lite_model_and_checks_prompts(video_models, photo):
    from transformers import Sam3LiteTextModel

    seg = TextSegmenter.from_pretrained(segmenter=video_models["sam3_lite"], device="cpu",
                                        max_detections=3)  # fmt: skip
    assert isinstance(seg.segmenter.model, Sam3LiteTextModel) and seg.detector is seg.segmenter
    result = seg.segment(photo, "cat")
    assert 1 <= len(result.detections) <= 3 and result.detector == "sam3"
    assert all(d.label == "cat" and d.mask.shape == (120, 160) for d in result.detections)
    with pytest.raises(VitsamError, match="over SAM 3's 32 tokens"):
        seg.segment(photo, " ".join(["cat"] * 40))
    with pytest.raises(VitsamError, match="takes no box prompts|box prompts"):
        seg.segmenter.set_image(Image.open(photo))


def test_video_tracks_with_sam3s_tracker(video_models, sam3_tracker, tmp_path):
    from transformers import Sam3LiteTextModel

    clip = write_clip(tmp_path / "clip.mp4")
    video = VideoSegmenter.from_pretrained(segmenter=video_models["sam3_lite"], device="cpu",
                                           max_detections=3)  # fmt: skip
    assert isinstance(video.tracker.model.detector_model, Sam3LiteTextModel)
    assert video.tracker.name == video_models["sam3_lite"]
    out = tmp_path / "out"
    code = main(["segment", str(clip), "--prompt", "cat. dog", "--segmenter",
                 video_models["sam3_lite"], "--max-frames", "4", "--max-detections", "3",
                 "--format", "json", "--device", "cpu", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    doc = json.loads((out / "clip.json").read_text())
    assert doc["frames_processed"] == 4 and doc["segmenter"] == video_models["sam3_lite"]
    tracks = [d for f in doc["frames"] for d in f["detections"]]
    assert tracks and {d["label"] for d in tracks} <= {"cat", "dog"}
    label = {}
    for d in tracks:  # a track keeps its phrase
        assert label.setdefault(d["track_id"], d["label"]) == d["label"]


def test_offline_without_the_lite_model_cached_names_it(tmp_path, photo, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    code = main(["segment", str(photo), "--prompt", "cat", "--segmenter", "sam3-lite"])
    err = capsys.readouterr().err
    assert code == 2 and "sam3-lite" in err and err.count("\n") == 1


def test_serve_offers_the_lite_model(video_models, photo):
    from fastapi.testclient import TestClient

    from vitsam.serve.api import create_app
    from vitsam.serve.service import SegmentService

    service = SegmentService([], [video_models["sam3_lite"]], device="cpu")
    service.load()
    assert service.ready, service.error
    client = TestClient(create_app(service))
    files = {"image": ("photo.png", photo.read_bytes(), "image/png")}
    doc = client.post("/v1/segment", data={"prompt": "cat", "max_detections": "2"},
                      files=files).json()  # fmt: skip
    assert doc["detector"] == "sam3" and 1 <= len(doc["detections"]) <= 2
