"""Label a folder from one example: a boxed object in one image, its kind found in others."""

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serving import TOKEN, server
from vitsam.cli import main
from vitsam.errors import VitsamError
from vitsam.seg.request import Exemplar


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        arr = rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)
        arr[20:60, 30:70] = (220, 40, 40)
        Image.fromarray(arr).save(folder / f"{i}.png")
    return folder


def segment(models, *args):
    return main(["segment", *args, "--detector", models["owlv2"], "--segmenter", models["sam2"],
                 "--device", "cpu", "--quiet", "--box-threshold", "0", "--max-detections", "3"])  # fmt: skip


def test_an_exemplar_from_another_image_labels_its_class(models, photos, tmp_path, monkeypatch):
    from transformers import Owlv2ForObjectDetection

    queries = []
    real = Owlv2ForObjectDetection.image_guided_detection

    def spy(self, *args, **kwargs):
        queries.append(kwargs["query_pixel_values"].shape)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Owlv2ForObjectDetection, "image_guided_detection", spy)
    reference = photos / "0.png"
    out = tmp_path / "dataset"
    code = segment(models, str(photos), "--exemplar", f"Cat={reference}:30,20,70,60",
                   "--prompt", "dog", "--export", "coco", "--out", str(out))  # fmt: skip
    assert code == 0
    assert len(queries) == 2  # one query per image, the reference crop as the query image
    doc = json.loads((out / "results" / "1.json").read_text())
    assert doc["exemplars"] == [{"box": [30.0, 20.0, 70.0, 60.0], "label": "cat",
                                 "image": str(reference.resolve())}]  # fmt: skip
    assert "cat" in {d["label"] for d in doc["detections"]}
    assert {d["label"] for d in doc["detections"]} <= {"cat", "dog"}
    coco = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["dog", "cat"]


@pytest.mark.parametrize(
    "detector,exemplar,message",
    [
        ("grounding_dino", "{ref}:30,20,70,60", "takes text only: exemplars need --detector owlv2"),
        ("owlv2", "{ref}:200,200,300,300", "lies wholly outside the 100x80 image"),
        ("owlv2", "{missing}:30,20,70,60", "no such image file"),
        ("owlv2", "cat=nobox.png", "give \\[CLASS=\\]REF.jpg:X1,Y1,X2,Y2"),
    ],
)
def test_bad_exemplars_are_one_clear_line_and_nothing_is_written(
    models, photos, tmp_path, capsys, detector, exemplar, message
):
    out = tmp_path / "out"
    text = exemplar.format(ref=photos / "0.png", missing=tmp_path / "missing.png")
    code = main(["segment", str(photos), "--exemplar", text, "--detector", models[detector],
                 "--segmenter", models["sam2"], "--device", "cpu", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert __import__("re").search(message, err), err
    assert not out.exists()


def test_exemplar_text_and_json_forms():
    assert Exemplar.parse("ref.jpg:1,2,30,40") == Exemplar((1, 2, 30, 40), "ref.jpg", "exemplar")
    assert Exemplar.parse("Tabby Cat=d/ref.jpg:1,2,30,40").label == "tabby cat"
    assert Exemplar.from_json({"box": [1, 2, 30, 40]}).image is None
    with pytest.raises(VitsamError, match="an exemplar is"):
        Exemplar.from_json([1, 2, 3, 4])


def test_http_exemplars_are_boxes_on_the_upload(models, photos):
    data = {"exemplars": json.dumps([{"box": [30, 20, 70, 60], "label": "cat"}]),
            "detector": models["owlv2"], "box_threshold": "0", "max_detections": "2"}  # fmt: skip
    with server(models, "--token", TOKEN) as url:
        r = httpx.post(url + "/v1/segment", headers={"Authorization": f"Bearer {TOKEN}"},
                       files={"image": ("0.png", (photos / "0.png").read_bytes(), "image/png")},
                       data=data, timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["detections"] and {d["label"] for d in r.json()["detections"]} == {"cat"}
        data["detector"] = models["grounding_dino"]
        r = httpx.post(url + "/v1/segment", headers={"Authorization": f"Bearer {TOKEN}"},
                       files={"image": ("0.png", (photos / "0.png").read_bytes(), "image/png")},
                       data=data, timeout=60)  # fmt: skip
        assert r.status_code == 400 and "exemplars need --detector owlv2" in r.json()["error"]


def test_sam3_takes_exemplars_in_the_image_and_from_another(video_models, photos):
    """Same image: SAM 3's geometric prompt (input_boxes + input_boxes_labels); another
    image: reference and image side by side, only the image's instances kept."""
    from vitsam.seg import TextSegmenter

    seg = TextSegmenter.from_pretrained(None, video_models["sam3"], device="cpu", box_threshold=0.0)
    here = Exemplar((30, 20, 70, 60), None, "cat")
    result = seg.segment(str(photos / "0.png"), "", exemplars=[here])
    assert result.detections and {d.label for d in result.detections} == {"cat"}
    reference = Image.new("RGB", (60, 50), (220, 40, 40)).copy()
    path = photos.parent / "reference.png"
    reference.save(path)
    other = Exemplar((5, 5, 55, 45), str(path), "cat")
    result = seg.segment(str(photos / "1.png"), "", exemplars=[other])
    assert result.detections
    for d in result.detections:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= 100 and 0 <= y1 < y2 <= 80  # on the image, not the reference
        assert d.mask.shape == (80, 100)
    assert result.to_json()["exemplars"][0]["image"] == str(path)


def test_sam3_negative_exemplars_are_label_0_boxes(video_models, photos, monkeypatch):
    """A negative exemplar goes into its class's geometric prompt with label 0: beside the
    positive boxes (text "visual"), or beside the class's phrase when it has no positive."""
    from transformers import Sam3Model

    from vitsam.seg import TextSegmenter

    calls = []
    real = Sam3Model.forward

    def spy(self, *args, **kwargs):
        if kwargs.get("input_boxes") is not None:
            calls.append((kwargs["input_boxes_labels"].tolist(), kwargs["input_ids"]))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Sam3Model, "forward", spy)
    seg = TextSegmenter.from_pretrained(None, video_models["sam3"], device="cpu", box_threshold=0.0)
    reference = photos.parent / "reference.png"
    Image.new("RGB", (60, 50), (40, 40, 220)).save(reference)
    group = [Exemplar((30, 20, 70, 60), None, "cat"),
             Exemplar((5, 5, 55, 45), str(reference), "cat", negative=True)]  # fmt: skip
    result = seg.segment(str(photos / "0.png"), "", exemplars=group)
    assert [labels for labels, _ in calls] == [[[1, 0]]]  # one pass: both boxes, one prompt
    assert {d.label for d in result.detections} <= {"cat"}
    assert result.to_json()["exemplars"][1]["negative"] is True
    for d in result.detections:  # instances on the image's part of the canvas only
        assert d.mask.shape == (80, 100) and 0 <= d.box[0] < d.box[2] <= 100

    calls.clear()
    result = seg.segment(str(photos / "0.png"), "red square",
                         exemplars=[Exemplar((5, 5, 55, 45), str(reference), "red square", negative=True)])  # fmt: skip
    assert len(calls) == 1 and calls[0][0] == [[0]]
    tokenizer = seg.detector.processor.tokenizer
    assert tokenizer.decode(calls[0][1][0], skip_special_tokens=True) == "red square"
    assert {d.label for d in result.detections} <= {"red square"}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--detector", "{owlv2}", "--exemplar", "cat={ref}:30,20,70,60",
          "--neg-exemplar", "cat={ref}:0,0,20,20"], "negative exemplars are SAM 3's label-0 boxes"),
        (["--segmenter", "{sam3}", "--prompt", "dog", "--neg-exemplar", "cat={ref}:0,0,20,20"],
         "negative exemplar of 'cat', which is not a class here"),
    ],
)  # fmt: skip
def test_bad_negative_exemplars_are_one_line(models, video_models, photos, tmp_path, capsys,
                                             args, message):  # fmt: skip
    out = tmp_path / "out"
    names = {"owlv2": models["owlv2"], "sam3": video_models["sam3"], "ref": photos / "0.png"}
    args = [a.format(**names) for a in args]
    if "--segmenter" not in args:
        args += ["--segmenter", models["sam2"]]
    code = main(["segment", str(photos), *args, "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists()
