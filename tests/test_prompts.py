"""Class maps, negative phrases and per-class thresholds, on every way in."""

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serving import TOKEN, server
from tests.test_segment import run_cli
from vitsam.errors import VitsamError
from vitsam.seg import TextSegmenter
from vitsam.seg.pipeline import apply_prompt
from vitsam.seg.request import Prompt, load_classes, parse_classes
from vitsam.seg.results import Detection

CAT = (10.0, 10.0, 60.0, 60.0)


class Fixed:
    """A detector that answers what it is told (its phrases are checked): the filtering
    rules are under test here, not a random-weight model's scores."""

    name = "fixed"
    text_native = False

    def __init__(self, found):
        self.found, self.asked = found, None

    def detect(self, image, phrases, box_threshold, text_threshold):
        self.asked = (list(phrases), box_threshold)
        return [Detection(lab, s, b) for lab, s, b in self.found if lab in phrases and s > box_threshold]


def test_a_class_map_labels_by_class_and_a_negative_removes_what_it_names():
    prompt = Prompt.parse("dog", {"Cat": ["kitten", "tabby cat"]}, "toy cat")
    assert prompt.classes == ("dog", "cat") and prompt.phrases == ["dog", "kitten", "tabby cat", "toy cat"]
    found = [Detection("toy cat", 0.9, (100, 100, 150, 150)),
             Detection("kitten", 0.8, CAT),
             Detection("tabby cat", 0.7, (102, 101, 150, 152)),  # on the toy: IoU 0.9
             Detection("dog", 0.6, (0, 0, 30, 30))]  # fmt: skip
    kept, removed = apply_prompt(found, prompt, 0.3, 0.5)
    assert [(d.label, d.box) for d in kept] == [("cat", CAT), ("dog", (0, 0, 30, 30))]
    assert removed == {"toy cat": 2}  # its own box, and the tabby on it
    kept, removed = apply_prompt([Detection("tabby cat", 0.7, (102, 101, 150, 152)),
                                  Detection("toy cat", 0.9, (100, 100, 150, 150))],
                                 prompt, 0.3, 0.0)  # fmt: skip
    assert [d.label for d in kept] == ["cat"] and removed == {"toy cat": 1}  # by label only


def test_per_class_box_thresholds_filter_per_class(models):
    import torch

    from vitsam.seg.masks import MaskPredictor

    det = Fixed([("cat", 0.45, CAT), ("dog", 0.45, (70, 20, 110, 60)), ("dog", 0.25, (0, 0, 9, 9))])
    sam = MaskPredictor.from_pretrained(models["sam2"], torch.device("cpu"))
    seg = TextSegmenter(det, sam, box_threshold=0.3)
    image = Image.new("RGB", (120, 80))
    result = seg.segment(image, "cat. dog", box_threshold={"cat": 0.5})
    assert [d.label for d in result.detections] == ["dog"]
    assert det.asked == (["cat", "dog"], 0.3)  # the lowest threshold, then per class
    assert result.to_json()["box_thresholds"] == {"cat": 0.5}
    assert [d.label for d in seg.segment(image, "cat. dog").detections] == ["cat", "dog"]
    with pytest.raises(VitsamError, match="box threshold for 'bird', which is not a class"):
        seg.segment(image, "cat. dog", box_threshold={"bird": 0.5})


@pytest.mark.parametrize(
    "prompt,classes,negative,message",
    [
        ("cat", {"cat": ["kitten"]}, "", "class 'cat' is listed twice"),
        ("", {"cat": ["kitten"], "pet": ["kitten"]}, "", "phrase 'kitten' is under both 'cat' and 'pet'"),
        ("cat. dog", None, "dog", "'dog' is both a phrase and a negative phrase"),
        ("", {}, "", "the class map has no classes"),
        ("", {"cat": []}, "", "class 'cat' has no phrases"),
        ("", {"cat": ["  "]}, "", "class 'cat': empty prompt"),
        ("", ["cat"], "", "a class map is a mapping"),
    ],
)
def test_bad_class_maps_and_negatives_are_one_clear_error(prompt, classes, negative, message):
    with pytest.raises(VitsamError, match=message):
        Prompt.parse(prompt, classes, negative)


def test_a_class_map_file_refuses_a_class_listed_twice(tmp_path):
    good = tmp_path / "classes.yaml"
    good.write_text("cat: [kitten, tabby cat]\ndog: puppy\n")
    assert load_classes(good) == {"cat": ["kitten", "tabby cat"], "dog": "puppy"}
    twice = tmp_path / "twice.yaml"
    twice.write_text("cat: [kitten]\ndog: [puppy]\ncat: [tabby]\n")
    with pytest.raises(VitsamError, match="class 'cat' is listed twice"):
        load_classes(twice)
    (tmp_path / "list.yaml").write_text("- cat\n")
    with pytest.raises(VitsamError, match="a class map is a mapping"):
        load_classes(tmp_path / "list.yaml")
    with pytest.raises(VitsamError, match="no such class map file"):
        load_classes(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("{}\n")
    with pytest.raises(VitsamError, match="empty.yaml: the class map is empty"):
        load_classes(tmp_path / "empty.yaml")
    assert parse_classes("pet: [cat, dog]", "the page") == {"pet": ["cat", "dog"]}
    with pytest.raises(VitsamError, match="^the page: not YAML"):
        parse_classes("pet: [cat", "the page")


@pytest.fixture
def photo(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    arr[30:90, 40:120] = (200, 30, 30)
    path = tmp_path / "photos" / "photo.png"
    path.parent.mkdir()
    Image.fromarray(arr).save(path)
    return path


ASK = ["--box-threshold", "0", "--text-threshold", "0", "--max-detections", "6"]


def test_the_cli_labels_a_dataset_by_class(models, photo, tmp_path, capsys):
    classes = tmp_path / "classes.yaml"
    classes.write_text("cat: [kitten, tabby cat]\nremote: [remote control]\n")
    out = tmp_path / "dataset"
    args = [str(photo.parent), "--classes", str(classes), "--prompt", "dog", "--negative", "toy",
            "--export", "coco,yolo", "--out", str(out), *ASK]  # fmt: skip
    assert run_cli(models, *args) == 0
    doc = json.loads((out / "results" / "photo.json").read_text())
    assert doc["classes"] == {"dog": ["dog"], "cat": ["kitten", "tabby cat"], "remote": ["remote control"]}
    assert [n["phrase"] for n in doc["negatives"]] == ["toy"]
    assert doc["detections"] and {d["label"] for d in doc["detections"]} <= {"dog", "cat", "remote"}
    coco = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["dog", "cat", "remote"]
    assert run_cli(models, *args) == 0 and "1 of 1 images already done" in capsys.readouterr().out
    changed = [("poster" if a == "toy" else a) for a in args]
    assert run_cli(models, *changed) == 2
    assert "labelled with other settings (negative 'toy' -> 'poster')" in capsys.readouterr().err


def test_refused_requests_write_nothing(models, photo, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_cli(models, str(photo), "--prompt", "cat", "--negative", "cat", "--out", str(out))
    assert code == 2 and "both a phrase and a negative phrase" in capsys.readouterr().err
    assert not out.exists()
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")
    assert run_cli(models, str(clip), "--prompt", "cat", "--negative", "cat", "--out", str(out)) == 2
    assert "both a phrase and a negative phrase" in capsys.readouterr().err  # videos: the same
    assert not out.exists()


def test_cli_python_and_http_give_the_same_json(models, photo, tmp_path):
    """One request three ways: the CLI, TextSegmenter.segment and POST /v1/segment."""
    out = tmp_path / "out"
    cli_args = [str(photo), "--prompt", "dog", "--negative", "toy", "--box-threshold",
                "cat=0.2", "--format", "json", "--out", str(out), *ASK]  # fmt: skip
    classes = {"cat": ["kitten", "tabby cat"]}
    (tmp_path / "c.json").write_text(json.dumps(classes))
    assert run_cli(models, *cli_args, "--classes", str(tmp_path / "c.json")) == 0
    cli = json.loads((out / "photo.json").read_text())
    seg = TextSegmenter.from_pretrained(models["grounding_dino"], models["sam2"], device="cpu",
                                        box_threshold=0.0, text_threshold=0.0, max_detections=6)  # fmt: skip
    python = seg.segment(str(photo), "dog", {"cat": 0.2}, negative="toy", classes=classes).to_json()
    with server(models, "--token", TOKEN) as url:
        r = httpx.post(url + "/v1/segment", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60,
                       files={"image": ("photo.png", photo.read_bytes(), "image/png")},
                       data={"prompt": "dog", "negative": "toy", "classes": json.dumps(classes),
                             "box_thresholds": json.dumps({"cat": 0.2}), "box_threshold": "0",
                             "text_threshold": "0", "max_detections": "6"})  # fmt: skip
        assert r.status_code == 200, r.text
        http = r.json()
        bad = httpx.post(url + "/v1/segment", headers={"Authorization": f"Bearer {TOKEN}"},
                         files={"image": ("photo.png", photo.read_bytes(), "image/png")},
                         data={"prompt": "cat", "classes": "[1]"}, timeout=60)  # fmt: skip
        assert bad.status_code == 400 and "classes must be a JSON object" in bad.json()["error"]

    def same(doc):
        return ({k: v for k, v in doc.items() if k not in ("image", "detections")},
                [(d["label"], d["box"], d["area"]) for d in doc["detections"]])  # fmt: skip

    assert cli["detections"] and same(cli) == same(python) == same(http)
    assert cli["negatives"][0]["phrase"] == "toy" and cli["box_thresholds"] == {"cat": 0.2}
