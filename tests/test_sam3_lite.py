"""SAM 3 LiteText (`sam3-lite`): SAM 3 with a small MobileCLIP text encoder, text-native in
images and, with SAM 3's tracker, in video; tiny random-weight models, no network."""

import json

import numpy as np
import pytest
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
