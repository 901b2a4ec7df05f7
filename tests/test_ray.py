"""`vitsam segment --engine ray` on a local 2-CPU Ray cluster: the plain run's results."""

import json

import numpy as np
import pytest
from PIL import Image

from vitsam.cli import main

ray = pytest.importorskip("ray", reason="Ray is the optional extra .[scale]")


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module: Ray's start-up costs seconds."""
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("a.png", "sub/b.jpg"):
        Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_text("not an image")
    return folder


def segment(models, *args):
    argv = ["segment", *args, "--detector", models["grounding_dino"], "--segmenter",
            models["sam2"], "--device", "cpu", "--quiet", "--prompt", "cat. dog",
            "--box-threshold", "0", "--text-threshold", "0", "--max-detections", "2",
            "--negative", "bird", "--box-threshold", "dog=0.1"]  # fmt: skip
    return main(argv)


def test_ray_gives_the_plain_runs_results_and_resumes(cluster, models, photos, tmp_path, capsys):
    plain, spread = tmp_path / "plain", tmp_path / "ray"
    assert segment(models, str(photos), "--export", "coco", "--out", str(plain)) == 1
    capsys.readouterr()
    args = [str(photos), "--engine", "ray", "--workers", "2", "--export", "coco"]
    assert segment(models, *args, "--out", str(spread)) == 1  # the broken file
    captured = capsys.readouterr()
    assert "broken.png: not an image file" in captured.err
    assert "2 of 3 images segmented" in captured.out

    names = sorted(p.name for p in (plain / "results").iterdir())
    assert names == ["a.json", "sub__b.json"]
    assert sorted(p.name for p in (spread / "results").iterdir()) == names
    for name in names:  # same decoding, same models, same settings: the same documents
        expected = json.loads((plain / "results" / name).read_text())
        assert expected["negatives"][0]["phrase"] == "bird"  # the request's rules reach workers
        assert expected["box_thresholds"] == {"dog": 0.1}
        assert json.loads((spread / "results" / name).read_text()) == expected
    assert (spread / "annotations.json").read_text() == (plain / "annotations.json").read_text()

    assert segment(models, *args, "--out", str(spread)) == 1  # only the broken file again
    assert "2 of 3 images already done" in capsys.readouterr().out


def test_ray_reads_a_uri_and_copies_its_images(cluster, models, photos, tmp_path):
    """A URI source (file:// here, s3:// alike): the dataset gets copies, not links."""
    out = tmp_path / "out"
    uri = (photos / "sub").resolve().as_uri()
    assert segment(models, uri, "--engine", "ray", "--export", "yolo", "--out", str(out)) == 0
    copy = out / "images" / "b.jpg"
    assert copy.is_file() and not copy.is_symlink()
    assert copy.read_bytes() == (photos / "sub" / "b.jpg").read_bytes()
    assert len((out / "labels" / "b.txt").read_text().splitlines()) == 2
    doc = json.loads((out / "results" / "b.json").read_text())
    assert doc["image"] == f"{uri}/b.jpg"


def test_ray_refuses_other_formats_and_unknown_models(models, photos, tmp_path, capsys):
    """Checked before any cluster starts: one line each."""
    out = str(tmp_path / "out")
    base = ["segment", str(photos), "--engine", "ray", "--prompt", "cat", "--out", out]
    assert main([*base, "--format", "overlay,json"]) == 2
    assert main([*base, "--detector", "no-such-detector", "--segmenter", models["sam2"]]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "--engine ray writes the per-image JSON only" in err[0]
    assert "unknown detector 'no-such-detector'" in err[1] and len(err) == 2


def test_ray_tracks_a_folder_of_videos_one_per_task(cluster, video_models, tmp_path, capsys):
    """Two clips on two workers: the same tracks as the local engine, the same dataset,
    and a rerun skips both."""
    from tests.test_video import write_clip

    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    write_clip(folder / "a.mp4", n=5)
    write_clip(folder / "sub" / "b.mp4", n=4)
    runs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        code = main(["segment", str(folder), "--box", "10,40,40,70", "--export", "mot",
                     "--engine", engine, "--workers", "2", "--out", str(out), "--segmenter",
                     video_models["sam2_video"], "--device", "cpu", "--quiet"])  # fmt: skip
        assert code == 0
        runs[engine] = out
    said = capsys.readouterr().out
    assert said.count("2 of 2 videos segmented") == 2
    for name in ("a", "sub__b"):
        local, spread = (json.loads((runs[e] / "results" / f"{name}.json").read_text())
                         for e in ("local", "ray"))  # fmt: skip
        assert spread["complete"] and spread["frames_processed"] == local["frames_processed"]
        ids = [[d["track_id"] for d in f["detections"]] for f in spread["frames"]]
        assert ids == [[d["track_id"] for d in f["detections"]] for f in local["frames"]]
        assert (runs["ray"] / "mot" / name / "gt" / "gt.txt").read_text().count("\n") == sum(map(len, ids))
    assert main(["segment", str(folder), "--box", "10,40,40,70", "--export", "mot", "--engine",
                 "ray", "--out", str(runs["ray"]), "--segmenter", video_models["sam2_video"],
                 "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    assert "nothing left to do: 2 videos done before" in capsys.readouterr().out
