"""Clicks for SAM and SAM 2: points (with at most one box) on every way in."""

import json

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.serving import TOKEN, server
from tests.test_segment import run_cli
from vitsam.errors import VitsamError
from vitsam.seg import TextSegmenter
from vitsam.seg.masks import MaskPredictor
from vitsam.seg.request import check_points


@pytest.fixture
def photo(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    arr[20:70, 30:90] = (200, 30, 30)
    path = tmp_path / "photo.png"
    Image.fromarray(arr).save(path)
    return path


@pytest.mark.parametrize("kind", ["sam2", "sam"])
def test_points_reach_the_model_and_the_image_is_encoded_once(models, photo, kind):
    sam = MaskPredictor.from_pretrained(models[kind], torch.device("cpu"))
    seg = TextSegmenter(None, sam)
    seen = []
    sam.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True
    )
    result = seg.segment_points(str(photo), [[60, 45, 1], [5, 5, 0]])
    given = seen[-1]
    assert given["input_points"].shape[-2:] == (2, 2)  # two clicks, XY
    assert given["input_labels"].flatten().tolist() == [1, 0]
    assert result.to_json()["points"] == [[60.0, 45.0, 1.0], [5.0, 5.0, 0.0]]
    assert result.detector == "" and all(d.label == "object" for d in result.detections)
    seg.segment_points(str(photo), [[60, 45, 1]], box=[20, 10, 100, 80])  # another click
    assert "input_boxes" in seen[-1] and sam.encoded == 1  # the same picture: no new encoding
    seg.segment_points(Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT), [[60, 45]])
    assert sam.encoded == 2


@pytest.mark.parametrize(
    "points,message",
    [
        ([], "points must be a list"),
        ([[1, 2, 3, 4]], "points must be a list"),
        ([[1, 2, 2]], "label is 1 .* or 0"),
        ([[float("nan"), 2]], "finite"),
        ([[500, 2]], r"point \(500.0, 2.0\) lies outside the 120x90 image"),
    ],
)
def test_bad_points_are_one_clear_error(points, message):
    with pytest.raises(VitsamError, match=message):
        check_points(points, (120, 90))


def test_the_cli_takes_clicks_and_refuses_them_off_the_image(models, photo, tmp_path, capsys):
    out = tmp_path / "out"
    args = [str(photo), "--point", "60,45", "--neg-point", "5,5", "--box", "20,10,100,80",
            "--format", "json", "--out", str(out)]  # fmt: skip
    assert run_cli(models, *args) == 0
    doc = json.loads((out / "photo.json").read_text())
    assert doc["points"] == [[60.0, 45.0, 1.0], [5.0, 5.0, 0.0]] and doc["box"] == [20.0, 10.0, 100.0, 80.0]
    bad = tmp_path / "bad"
    assert run_cli(models, str(photo), "--point", "500,5", "--out", str(bad)) == 1
    assert "lies outside the 120x90 image" in capsys.readouterr().err
    from vitsam.cli import main

    assert main(["segment", str(photo), "--point", "5,5", "--segmenter", "sam3"]) == 2
    assert "box prompts need a SAM or SAM 2 segmenter" in capsys.readouterr().err
    assert not bad.exists()


def test_http_takes_points_as_json(models, photo):
    with server(models, "--token", TOKEN) as url:
        def post(points):
            return httpx.post(url + "/v1/segment", headers={"Authorization": f"Bearer {TOKEN}"},
                              files={"image": ("photo.png", photo.read_bytes(), "image/png")},
                              data={"points": points}, timeout=60)  # fmt: skip

        r = post("[[60, 45, 1], [5, 5, 0]]")
        assert r.status_code == 200 and r.json()["points"] == [[60, 45, 1], [5, 5, 0]]
        assert post("[[60, 45, 7]]").status_code == 400
        assert "lies outside" in post("[[600, 45]]").json()["error"]


def test_negative_click_coordinates_parse_and_detection_options_are_refused(models, photo, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(models, str(photo), "--point", "-1,40", "--out", str(out)) == 1
    assert "point (-1.0, 40.0) lies outside" in capsys.readouterr().err  # not "expected one argument"
    assert run_cli(models, str(photo), "--point", "60,45", "--negative", "dog", "--out", str(out)) == 2
    assert "leave them out with --box or --point" in capsys.readouterr().err
