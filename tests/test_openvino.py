"""--runtime openvino: the detector and image encoder as compiled graphs, cached on disk;
tiny random-weight models, against eager fp32."""

import json
import logging
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from vitsam.cli import main
from vitsam.seg import TextSegmenter, compiled

pytest.importorskip("openvino", reason="--runtime openvino needs OpenVINO (.[openvino])")
# The graphs run in fp32 and are checked against eager fp32: --precision does not apply.
pytestmark = pytest.mark.fp32_only


@pytest.fixture(scope="module")
def first_run(models, tmp_path_factory):
    """One run with an empty cache (tiny Grounding DINO + SAM 2, "cat", a 4:3 photo: its
    processed shape is a bucket, so it runs unpadded): (cache folder, the pipeline, result).
    Converting takes tens of seconds even for tiny models, so the tests share it."""
    root = tmp_path_factory.mktemp("first-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VITSAM_CACHE", str(root / "cache"))
        ts = load(models)
        result = ts.segment(photo(root), "cat")
    return root / "cache", ts, result


@pytest.fixture
def cache(first_run, tmp_path, monkeypatch):
    """A copy of the first run's cache, in VITSAM_CACHE."""
    root = tmp_path / "cache"
    shutil.copytree(first_run[0], root)
    monkeypatch.setenv("VITSAM_CACHE", str(root))
    return root / "openvino"


def photo(tmp_path, w=160, h=120, name="photo.png"):
    arr = np.random.default_rng(w * h).integers(0, 255, (h, w, 3), dtype=np.uint8)
    arr[30:90, 40:120] = (220, 40, 40)
    path = tmp_path / name
    Image.fromarray(arr).save(path)
    return path


def load(models, runtime="openvino", detector="grounding_dino", segmenter="sam2"):
    return TextSegmenter.from_pretrained(models[detector], models[segmenter], device="cpu",
                                         precision="fp32", runtime=runtime, max_detections=3,
                                         box_threshold=0.05, text_threshold=0.05)  # fmt: skip


def agree(eager, graphs):
    """Every detection of the graphs' run has one of the eager run's within 1 px, same
    label, and their masks overlap by IoU >= 0.98."""
    assert len(graphs.detections) == len(eager.detections) > 0
    for d in graphs.detections:
        e = min(eager.detections, key=lambda e: max(abs(a - b) for a, b in zip(e.box, d.box)))
        assert max(abs(a - b) for a, b in zip(e.box, d.box)) <= 1 and e.label == d.label
        iou = (e.mask & d.mask).sum() / max(1, (e.mask | d.mask).sum())
        assert iou >= 0.98


def test_a_second_run_loads_the_cache_and_converts_nothing(first_run, models, cache, tmp_path):
    _, first, result = first_run
    assert (first.graphs.converted, first.graphs.loaded) == (2, 0)  # detector, image encoder
    assert len(list(cache.glob("*/graph.xml"))) == 2
    image = photo(tmp_path)
    second = load(models)
    again = second.segment(image, "cat")
    assert (second.graphs.converted, second.graphs.loaded) == (0, 2)
    agree(result, again)
    agree(load(models, runtime="torch").segment(image, "cat"), again)  # eager fp32


def test_sizes_share_padded_shapes_and_prompt_lengths_their_own(models, cache, tmp_path):
    ts = load(models)
    ts.segment(photo(tmp_path, 160, 120, "a.png"), "cat")
    ts.segment(photo(tmp_path, 150, 120, "b.png"), "dog")  # 200x160 processed: padded to 213
    assert (ts.graphs.converted, ts.graphs.loaded) == (0, 2)
    assert len(ts.detector.compiled.graphs) == 1
    ts.segment(photo(tmp_path, 150, 120, "b.png"), "red square")  # another prompt length
    assert ts.graphs.converted == 1 and len(ts.detector.compiled.graphs) == 2


def test_a_graph_from_other_versions_is_rebuilt(models, cache, tmp_path):
    """The image encoder's graph says another OpenVINO made it: converted again, and the
    cache then records this one."""
    (meta,) = [m for m in cache.glob("*/meta.json") if "image encoder" in m.read_text()]
    doc = json.loads(meta.read_text())
    doc["versions"]["openvino"] = "2023.0.0"
    meta.write_text(json.dumps(doc))
    ts = load(models)
    ts.segment(photo(tmp_path), "cat")
    assert (ts.graphs.converted, ts.graphs.loaded) == (1, 1)
    assert json.loads(meta.read_text())["versions"] == compiled.versions()


def test_the_edge_set_converts_too(edge_models, cache, tmp_path):
    image = photo(tmp_path)
    eager = load(edge_models, "torch", "omdet_turbo", "edgetam_video").segment(image, "cat. dog")
    ts = load(edge_models, "openvino", "omdet_turbo", "edgetam_video")
    agree(eager, ts.segment(image, "cat. dog"))
    assert ts.graphs.converted == 2  # OmDet-Turbo's vision backbone, EdgeTAM's image encoder


def test_a_model_that_cannot_be_converted_runs_eagerly(models, tmp_path, monkeypatch, caplog):
    def fails(*args, **kwargs):
        raise RuntimeError("no conversion rule for aten::something\nmore detail")

    monkeypatch.setenv("VITSAM_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(compiled, "_convert", fails)
    image = photo(tmp_path)
    ts = load(models)
    with caplog.at_level(logging.WARNING, logger="vitsam"):
        result = ts.segment(image, "cat")
    lines = [r.getMessage() for r in caplog.records if "cannot be converted" in r.getMessage()]
    assert len(lines) == 2 and all("runs eagerly" in m and "\n" not in m for m in lines)
    assert ts.graphs.converted == 0
    agree(load(models, runtime="torch").segment(image, "cat"), result)


def test_the_cli_runs_a_folder_and_says_what_is_missing(
    models, cache, tmp_path, monkeypatch, capsys
):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(folder, name="0.png"), photo(folder, 150, 120, "1.png")
    args = ["segment", str(folder), "--prompt", "cat", "--detector", models["grounding_dino"],
            "--segmenter", models["sam2"], "--device", "cpu", "--runtime", "openvino",
            "--out", str(tmp_path / "out"), "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.json")) == ["0.json", "1.json"]
    assert len(list(cache.glob("*/graph.xml"))) == 2  # both images in the cached shape
    monkeypatch.setitem(sys.modules, "openvino", None)  # not installed
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pip install" in err and "openvino" in err and err.count("\n") == 1
