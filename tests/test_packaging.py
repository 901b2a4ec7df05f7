"""What an installed wheel holds, and the defaults every interface shows."""

import inspect
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_an_installed_wheel_finds_its_examples(tmp_path):
    """The page's examples (and the README's first command's pictures) are package data."""
    pytest.importorskip("setuptools")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("vitsam-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:  # installing a pure-Python wheel is unpacking it
        names = z.namelist()
        z.extractall(site)
    assert {f"vitsam/examples/{n}.png" for n in ("checker", "ring", "triangle")} <= set(names)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import vitsam, vitsam.serve.page as page; "
        "assert vitsam.__file__.startswith(sys.argv[1]), vitsam.__file__; "
        "print('\\n'.join(str(p) for p in page.example_images()))"
    )
    found = subprocess.run([sys.executable, "-c", probe, str(site)], capture_output=True,
                           text=True, cwd=tmp_path, timeout=120)  # fmt: skip
    assert found.returncode == 0, found.stderr
    paths = found.stdout.split()
    assert [Path(p).name for p in paths] == ["checker.png", "ring.png", "triangle.png"]
    assert all(p.startswith(str(site)) and Path(p).is_file() for p in paths)


def test_the_cli_python_http_and_page_show_the_same_defaults():
    from vitsam.cli import build_parser
    from vitsam.seg import registry, request
    from vitsam.seg.labelset import LabelSettings
    from vitsam.seg.pipeline import TextSegmenter
    from vitsam.serve.api import create_app
    from vitsam.serve.service import SegmentService

    parser = build_parser()
    segment = parser._subparsers._group_actions[0].choices["segment"]
    serve = parser._subparsers._group_actions[0].choices["serve"]
    cli = {a.dest: a.default for a in segment._actions}
    python = inspect.signature(TextSegmenter.__init__).parameters
    service = inspect.signature(SegmentService.segment).parameters
    route = next(r for r in create_app(SegmentService(["d"], ["s"])).routes if r.path == "/v1/segment")
    http = {p.name: p.field_info.default for p in route.dependant.body_params}
    settings = LabelSettings()
    for name, constant in (("box_threshold", request.BOX_THRESHOLD),
                           ("text_threshold", request.TEXT_THRESHOLD),
                           ("max_detections", request.MAX_DETECTIONS)):  # fmt: skip
        assert cli[name] is constant and python[name].default is constant
        assert service[name].default is constant and http[name] is constant
        assert getattr(settings, name) is constant
    assert cli["nms"] is request.NMS_IOU is python["nms_iou"].default
    for parser_, what in ((segment, "segment"), (serve, "serve")):  # --models picks both
        defaults = {a.dest: a.default for a in parser_._actions}
        assert defaults["detector"] is None and defaults["segmenter"] is None, what
        detector, segmenter = registry.MODEL_SETS[defaults["models"]]
        assert detector is registry.DEFAULT_DETECTOR and segmenter is registry.DEFAULT_SEGMENTER
    assert settings.detector is registry.DEFAULT_DETECTOR


def test_the_page_sliders_start_at_the_defaults():
    pytest.importorskip("gradio")
    import gradio as gr

    from vitsam.seg import request
    from vitsam.serve.page import build_page
    from vitsam.serve.service import SegmentService

    page = build_page(SegmentService(["d"], ["s"]))
    sliders = {b.label: b.value for b in page.blocks.values() if isinstance(b, gr.Slider)}
    assert sliders == {"Box threshold": request.BOX_THRESHOLD,
                       "Text threshold": request.TEXT_THRESHOLD}  # fmt: skip
