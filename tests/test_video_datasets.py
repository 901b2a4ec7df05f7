"""Video datasets: MOT Challenge text and YouTube-VIS JSON from tracked clips, resumable."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.test_video import RED, red_box, write_clip
from vitsam.cli import main
from vitsam.seg.results import decode_rle


def label(video_models, *args, segmenter="sam2_video"):
    return main(["segment", *map(str, args), "--segmenter", video_models[segmenter],
                 "--device", "cpu", "--quiet"])  # fmt: skip


@pytest.fixture
def videos(tmp_path):
    """Two clips, one in a subfolder with the same file name (their names must not collide)."""
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    write_clip(folder / "clip.mp4", n=8)
    write_clip(folder / "sub" / "clip.mp4", n=6)
    return folder


def rows_of(doc: dict, categories: dict[str, int]) -> list[tuple]:
    """The MOT rows a frames JSON should give, as py-motmetrics reads them back: 1-based
    frames, XYWH with the corner 0-based again (it takes MOT's 1-based corners back)."""
    out = []
    for f in doc["frames"]:
        for d in f["detections"]:
            x1, y1, x2, y2 = d["box"]
            out.append((f["frame"] + 1, d["track_id"], x1, y1, x2 - x1, y2 - y1,
                        d["score"], categories[d["label"]]))  # fmt: skip
    return out


def test_mot_and_ytvis_from_a_folder_of_videos(video_models, videos, tmp_path, capsys):
    import motmetrics as mm
    from pycocotools import mask as mask_utils

    out = tmp_path / "dataset"
    code = label(video_models, videos, "--box", "10,40,40,70", "--export", "mot,ytvis",
                 "--out", out)  # fmt: skip
    assert code == 0
    said = capsys.readouterr().out
    assert "2 of 2 videos segmented" in said and "mot: 2 videos" in said
    names = sorted(p.stem for p in (out / "results").glob("*.json"))
    assert names == ["clip", "sub__clip"]  # kept apart, none overwritten

    for name in names:
        doc = json.loads((out / "results" / f"{name}.json").read_text())
        expected = rows_of(doc, {"box": 1})
        assert expected  # the box is tracked on the first frame at least
        table = mm.io.loadtxt(str(out / "mot" / name / "gt" / "gt.txt"), fmt="mot15-2D")
        got = [(int(f), int(i), *row) for (f, i), row in
               zip(table.index, table[["X", "Y", "Width", "Height", "Confidence", "ClassId"]].values)]  # fmt: skip
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g[:2] == e[:2] and g[7] == e[7]
            assert np.allclose(g[2:7], e[2:7], atol=0.01)
        first = (out / "mot" / name / "gt" / "gt.txt").read_text().splitlines()[0].split(",")
        box = doc["frames"][0]["detections"][0]["box"]  # in the file: MOT's 1-based corner
        assert [float(v) for v in first[2:4]] == pytest.approx([box[0] + 1, box[1] + 1], abs=0.01)
        ini = (out / "mot" / name / "seqinfo.ini").read_text()
        assert f"name={name}" in ini and f"seqLength={doc['frame_count']}" in ini

    ytvis = json.loads((out / "ytvis.json").read_text())
    assert ytvis["categories"] == [{"id": 1, "name": "box"}]
    by_name = {v["name"]: v for v in ytvis["videos"]}
    assert set(by_name) == set(names)
    for ann in ytvis["annotations"]:
        video = next(v for v in ytvis["videos"] if v["id"] == ann["video_id"])
        doc = json.loads((out / "results" / f"{video['name']}.json").read_text())
        assert len(ann["segmentations"]) == len(doc["frames"]) == video["length"]
        for k, f in enumerate(doc["frames"]):
            mine = next((d for d in f["detections"] if d["track_id"] == ann["track_id"]), None)
            if mine is None:
                assert ann["segmentations"][k] is None
                continue
            rle = dict(ann["segmentations"][k], counts=ann["segmentations"][k]["counts"].encode())
            assert np.array_equal(mask_utils.decode(rle).astype(bool), decode_rle(mine["mask"]))
            assert ann["areas"][k] == int(mask_utils.area(rle))
        for file_name in video["file_names"]:  # the frames, extracted
            assert (out / "images" / file_name).is_file()


def test_a_rerun_skips_finished_videos_and_redoes_a_cut_one(video_models, videos, tmp_path, capsys):
    out = tmp_path / "dataset"
    args = (videos, "--box", "10,40,40,70", "--export", "mot", "--out", out)
    assert label(video_models, *args) == 0
    capsys.readouterr()
    assert label(video_models, *args) == 0
    assert "nothing left to do: 2 videos done before" in capsys.readouterr().out  # nothing redone
    cut = out / "results" / "sub__clip.json"
    doc = json.loads(cut.read_text())
    doc.update(frames=doc["frames"][:2], frames_processed=2, complete=False)  # as a kill leaves it
    cut.write_text(json.dumps(doc))
    before = (out / "results" / "clip.json").stat().st_mtime_ns
    assert label(video_models, *args) == 0
    said = capsys.readouterr().out
    assert "1 of 1 videos segmented" in said and "(1 done before)" in said
    assert json.loads(cut.read_text())["complete"] is True  # redone from its first frame
    assert (out / "results" / "clip.json").stat().st_mtime_ns == before
    assert label(video_models, *args[:-2], "--stride", "2", "--out", out) == 2
    assert "labelled with other settings" in capsys.readouterr().err


def test_a_video_broken_mid_way_keeps_its_frames_in_the_dataset(video_models, tmp_path, capsys):
    whole = write_clip(tmp_path / "whole.mkv", n=48)
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "cut.mkv").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out = tmp_path / "dataset"
    assert label(video_models, folder, "--box", "10,40,40,70", "--export", "ytvis", "--out", out) == 1
    said = capsys.readouterr()
    assert "1 cut short by a broken stream" in said.out
    video = json.loads((out / "ytvis.json").read_text())["videos"][0]
    assert 0 < video["length"] < 48 and video["stopped"]
    assert label(video_models, folder, "--box", "10,40,40,70", "--export", "ytvis", "--out", out) == 0
    assert "nothing left to do: 1 video done before" in capsys.readouterr().out  # not retried


@pytest.mark.parametrize(
    "export,message",
    [("labelme", "not labelme"), ("mot,labelme", "not labelme")],
)
def test_formats_that_do_not_fit_videos_are_one_line(video_models, videos, tmp_path, capsys,
                                                     export, message):  # fmt: skip
    out = tmp_path / "dataset"
    assert label(video_models, videos, "--box", "1,1,9,9", "--export", export, "--out", out) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_video_formats_for_images_are_one_line(models, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    code = main(["segment", str(tmp_path / "a.png"), "--prompt", "cat", "--export", "mot",
                 "--out", str(tmp_path / "out"), "--detector", models["grounding_dino"],
                 "--segmenter", models["sam2"], "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "mot and ytvis take videos" in err and err.count("\n") == 1


def test_coco_and_yolo_on_the_frames_keep_track_ids(video_models, videos, tmp_path):
    import cv2
    from pycocotools.coco import COCO

    out = tmp_path / "dataset"
    assert label(video_models, videos, "--box", "10,40,40,70", "--stride", "2",
                 "--export", "coco,yolo", "--out", out) == 0  # fmt: skip
    coco = COCO(str(out / "annotations.json"))
    doc = json.loads((out / "results" / "sub__clip.json").read_text())
    frames = {img["file_name"]: img["id"] for img in coco.dataset["images"]}
    assert [f"sub__clip/{f['frame']:06d}.jpg" for f in doc["frames"]] == [
        n for n in frames if n.startswith("sub__clip/")]  # every 2nd frame: 0, 2, 4
    for f in doc["frames"]:
        name = f"sub__clip/{f['frame']:06d}.jpg"
        saved = np.asarray(Image.open(out / "images" / name)).astype(int)  # the frame it labels:
        x1, y1, x2, y2 = red_box(f["frame"])  # the red square where that frame has it
        assert np.abs(saved[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2] - RED).mean() < 30
        anns = coco.loadAnns(coco.getAnnIds(imgIds=frames[name]))
        assert sorted(a["track_id"] for a in anns) == sorted(
            d["track_id"] for d in f["detections"] if d["area"])
        for a in anns:
            mine = next(d for d in f["detections"] if d["track_id"] == a["track_id"])
            assert np.array_equal(coco.annToMask(a).astype(bool), decode_rle(mine["mask"]))
        lines = (out / "labels" / name).with_suffix(".txt").read_text().splitlines()
        assert len(lines) == len(anns)
        for line, a in zip(lines, anns):  # YOLO's polygon fills back to the mask
            xy = np.array(line.split()[1:], dtype=float).reshape(-1, 2) * (160, 120)
            filled = np.zeros((120, 160), np.uint8)
            cv2.fillPoly(filled, [xy.astype(np.int32)], 1)
            assert filled.sum() == pytest.approx(a["area"], rel=0.02)
