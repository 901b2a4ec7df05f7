"""Video: clips written with PyAV (a red square moving over a textured background), tracked
by tiny random-weight SAM 3 / SAM 2 video models, or by patched ones that follow the square."""

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image

from vitsam.cli import main
from vitsam.errors import VitsamError
from vitsam.seg.results import Detection, decode_rle, draw_overlay
from vitsam.seg.tracking import CpuPostprocessing, DetectTrackSam2, mask_iou
from vitsam.seg.video import VideoSegmenter
from vitsam.seg.videoio import FramesJson, VideoReader

W, H, FPS = 160, 120, 12
RED, BLUE = (230, 20, 20), (20, 20, 230)


def red_box(t: int) -> tuple[int, int, int, int]:
    """Where the red square is on frame t (XYXY pixels): 4 pixels right a frame."""
    return 10 + 4 * t, 40, 40 + 4 * t, 70


BLUE_BOX, BLUE_FROM = (110, 85, 135, 110), 12  # a blue square appears on frame 12


def frame(t: int) -> np.ndarray:
    rng = np.random.default_rng(t)
    img = rng.integers(90, 140, (H, W, 3), dtype=np.uint8)  # textured, far from both colours
    x1, y1, x2, y2 = red_box(t)
    img[y1:y2, x1:x2] = RED
    if t >= BLUE_FROM:
        x1, y1, x2, y2 = BLUE_BOX
        img[y1:y2, x1:x2] = BLUE
    return img


def write_clip(path, n=24, codec="libx264", fps=FPS, options=None):
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for t in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame(t), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode(path) -> tuple[list[np.ndarray], float, tuple[int, int]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, float(stream.average_rate), (stream.width, stream.height)


@pytest.fixture
def clip(tmp_path):
    return write_clip(tmp_path / "clip.mp4")


def segment(video_models, *args, segmenter="sam2_video"):
    return main(["segment", *map(str, args), "--segmenter", video_models[segmenter],
                 "--device", "cpu", "--quiet"])  # fmt: skip


@pytest.mark.parametrize("suffix,codec", [(".mp4", "libx264"), (".mov", "libx264"),
                                          (".webm", "libvpx-vp9"), (".mkv", "mpeg4")])  # fmt: skip
def test_reader_streams_each_container(tmp_path, suffix, codec):
    with VideoReader(write_clip(tmp_path / f"clip{suffix}", codec=codec)) as reader:
        assert (reader.info.width, reader.info.height, reader.info.fps) == (W, H, FPS)
        assert reader.info.frame_count == 24
        frames = list(reader.frames(stride=5, max_frames=4))
    assert [f.index for f in frames] == [0, 5, 10, 15]
    assert frames[1].time == pytest.approx(5 / FPS, abs=1e-3) and frames[0].image.size == (W, H)
    red = np.asarray(frames[1].image)[55, 40]  # inside the square on frame 5
    assert red[0] > 180 and red[1] < 80


def upright(w: int, h: int) -> np.ndarray:
    """A w x h picture as a viewer should see it: a wide red bar at the top left and a blue
    square at the bottom left, so that each of the 8 turns and flips looks different."""
    img = np.full((h, w, 3), 110, np.uint8)
    img[6:22, 8:56] = RED
    img[h - 30 : h - 10, 8:28] = BLUE
    return img


def write_turned(path, ccw: int, hflip: bool = False, n: int = 3):
    """A clip whose display matrix turns it `ccw` degrees counter-clockwise (PyAV's and
    VideoFrame.rotation's sign; a phone's portrait clip is -90), then mirrors it, coded so
    that it shows upright(W or H, H or W): its coded frames are W x H whatever the turn."""
    k = ccw // 90 % 4
    shown = upright(*((H, W) if k % 2 else (W, H)))
    coded = np.ascontiguousarray(np.rot90(shown[:, ::-1] if hflip else shown, -k))
    assert coded.shape == (H, W, 3)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.set_display_rotation(ccw, hflip=hflip)
        for _ in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(coded, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path, shown


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize("ccw,hflip,rotation", [
    (-90, False, 90), (90, False, 270), (180, False, 180),
    (0, True, 0), (-90, True, 90), (180, True, 180),
])  # fmt: skip
def test_reader_shows_frames_as_their_display_matrix_says(tmp_path, suffix, ccw, hflip, rotation):
    path, shown = write_turned(tmp_path / f"turned{suffix}", ccw, hflip)
    with av.open(str(path)) as container:  # PyAV reports counter-clockwise degrees
        reported = next(container.decode(video=0)).rotation
    assert hflip or ((reported - ccw) % 360 == 0 and rotation == -ccw % 360)
    with VideoReader(path) as reader:
        assert (reader.info.rotation, reader.info.mirrored) == (rotation, hflip)
        assert (reader.info.width, reader.info.height) == (shown.shape[1], shown.shape[0])
        frames = list(reader.frames())
    assert [f.image.size for f in frames] == [(reader.info.width, reader.info.height)] * 3
    image = np.asarray(frames[-1].image).astype(int)
    assert np.abs(image - shown).mean() < 6  # where a viewer sees the bar and the square
    red, blue = image[14, 30], image[shown.shape[0] - 20, 18]
    assert red[0] > 180 > 80 > red[2] and blue[2] > 180 > 80 > blue[0]


def test_phone_portrait_clip_is_segmented_upright(video_models, tmp_path):
    """Coded 160x120 and turned 90 degrees clockwise to show (a phone held upright)."""
    clip, shown = write_turned(tmp_path / "phone.mp4", -90, n=4)
    out = tmp_path / "out"
    assert segment(video_models, clip, "--box", "8,6,56,22", "--out", out) == 0
    doc = json.loads((out / "phone.json").read_text())
    assert (doc["width"], doc["height"], doc["rotation"], doc["mirrored"]) == (H, W, 90, False)
    assert doc["frames_processed"] == 4
    masks = [decode_rle(d["mask"]) for f in doc["frames"] for d in f["detections"]]
    assert len(doc["frames"][0]["detections"]) == 1 and {m.shape for m in masks} == {(W, H)}
    frames, _, size = decode(out / "phone.overlay.mp4")
    assert size == (H, W) and len(frames) == 4 and frames[0].shape == (W, H, 3)
    d = doc["frames"][0]["detections"][0]  # the overlay is drawn on the upright frame
    mask = decode_rle(d["mask"]).astype(bool)
    track = Detection(d["label"], d["score"], d["box"], mask)
    drawn = np.asarray(draw_overlay(Image.fromarray(shown), [track], ids=[d["track_id"]]))
    for region in np.s_[6:22, 8:56], np.s_[W - 30 : W - 10, 8:28]:  # the bar, the square
        seen, meant = frames[0][region].mean((0, 1)), drawn[region].mean((0, 1))
        assert np.abs(seen - meant).max() < 25  # (mirrored or turned: 40 and more)


def test_box_tracking_writes_overlay_and_json(video_models, clip, tmp_path):
    out = tmp_path / "out"
    assert segment(video_models, clip, "--box", "10,40,40,70", "--out", out) == 0
    frames, fps, size = decode(out / "clip.overlay.mp4")
    assert (len(frames), fps, size) == (24, FPS, (W, H))
    doc = json.loads((out / "clip.json").read_text())
    assert (doc["width"], doc["height"], doc["fps"], doc["frame_count"]) == (W, H, FPS, 24)
    assert (doc["frames_processed"], doc["complete"], doc["stopped"]) == (24, True, None)
    assert [f["frame"] for f in doc["frames"]] == list(range(24))
    first = doc["frames"][0]["detections"]
    assert [d["track_id"] for d in first] == [1] and first[0]["label"] == "box"
    assert {"track_id", "label", "score", "box", "mask", "area"} <= set(first[0])
    assert decode_rle(first[0]["mask"]).shape == (H, W)


def test_stride_and_max_frames(video_models, clip, tmp_path):
    out = tmp_path / "out"
    code = segment(video_models, clip, "--box", "10,40,40,70", "--stride", "3",
                   "--max-frames", "5", "--format", "json,overlay", "--out", out)  # fmt: skip
    assert code == 0
    doc = json.loads((out / "clip.json").read_text())
    assert [f["frame"] for f in doc["frames"]] == [0, 3, 6, 9, 12]
    assert [f["time"] for f in doc["frames"]][:2] == [0.0, 0.25]
    frames, fps, _ = decode(out / "clip.overlay.mp4")
    assert (len(frames), fps) == (5, FPS / 3)  # the clip's pace is kept


def test_sam3_video_tracks_each_phrase(video_models, clip, tmp_path):
    out = tmp_path / "out"
    code = segment(video_models, clip, "--prompt", "cat. dog", "--max-frames", "4",
                   "--max-detections", "3", "--format", "json", "--out", out, segmenter="sam3")  # fmt: skip
    assert code == 0 and not (out / "clip.overlay.mp4").exists()
    doc = json.loads((out / "clip.json").read_text())
    assert doc["detector"] == "sam3" and doc["frames_processed"] == 4
    tracks = [d for f in doc["frames"] for d in f["detections"]]
    assert tracks and {d["label"] for d in tracks} <= {"cat", "dog"}
    assert 1 <= len({d["track_id"] for d in tracks}) <= 3 and min(d["track_id"] for d in tracks) >= 1
    label = {}
    for d in tracks:  # a track keeps its phrase
        assert label.setdefault(d["track_id"], d["label"]) == d["label"]


def test_sessions_stay_bounded_on_long_clips(video_models, tmp_path):
    """After every frame the model sessions hold one frame and a window of memories."""
    clip = write_clip(tmp_path / "long.mp4", n=20)  # past the 16-frame memory window
    for name, prompt, boxes in (("sam2_video", "", [[10, 40, 40, 70]]), ("sam3", "cat", None)):
        video = VideoSegmenter.from_pretrained(
            None, video_models[name], device="cpu", max_detections=2
        )
        for _ in video.track(clip, prompt, boxes=boxes):
            session = video.tracker._session
            assert len(session.processed_frames or {}) <= 1
            for outputs in session.output_dict_per_obj.values():
                assert len(outputs["non_cond_frame_outputs"]) <= video.tracker.window + 1
                assert len(outputs["cond_frame_outputs"]) <= max(video.tracker.max_cond, 1) + 1


class FollowTheSquares:
    """Stands in for the detector, SAM 2's image masks and SAM 2's video model: finds the
    coloured squares on a frame, masks a box exactly, and moves each tracked object's mask
    with the square its conditioning mask covered."""

    def __init__(self, tracker: DetectTrackSam2, miss_blue_at: int | None = None) -> None:
        self.tracker, self.colour_of, self.miss_blue_at, self.t = tracker, {}, miss_blue_at, 0
        finder = tracker.finder
        finder.detector.detect = self.detect
        finder.segmenter.predict_chunks = lambda boxes: iter([self.predict(boxes)])
        tracker.model = self.video

    def detect(self, image, phrases, box_threshold, text_threshold):
        rgb = np.asarray(image).astype(int)
        found = []
        for colour, label in ((RED, "square"), (BLUE, "other square")):
            near = (np.abs(rgb - colour).sum(-1) < 120)
            if near.sum() > 50 and not (label == "other square" and self.t == self.miss_blue_at):
                ys, xs = np.nonzero(near)
                found.append(Detection(label, 0.9, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)))
        return found

    def predict(self, boxes):
        masks = np.zeros((len(boxes), H, W), dtype=bool)
        for m, (x1, y1, x2, y2) in zip(masks, np.asarray(boxes).round().astype(int)):
            m[y1:y2, x1:x2] = True
        return masks, np.ones(len(boxes), dtype=np.float32)

    def video(self, inference_session, frame, frame_idx):
        from transformers.models.sam2_video.modeling_sam2_video import (
            Sam2VideoSegmentationOutput,
        )

        self.t = frame_idx
        session, logits = inference_session, []
        for obj_idx, obj_id in enumerate(session.obj_ids):
            given = session.mask_inputs_per_obj[obj_idx].get(frame_idx)
            if given is not None:  # a conditioning mask: which square is it on?
                ys, xs = np.nonzero(given[0, 0].float().numpy() > 0)  # any dtype the session keeps
                x, y = xs.mean() * W / given.shape[-1], ys.mean() * H / given.shape[-2]
                bx1, by1, bx2, by2 = BLUE_BOX
                self.colour_of[obj_id] = "blue" if bx1 <= x <= bx2 and by1 <= y <= by2 else "red"
            box = red_box(frame_idx) if self.colour_of[obj_id] == "red" else BLUE_BOX
            low = torch.full((1, 1, 32, 32), -10.0)  # SAM 2's low-res mask logits
            x1, y1, x2, y2 = box
            low[..., round(y1 * 32 / H) : round(y2 * 32 / H), round(x1 * 32 / W) : round(x2 * 32 / W)] = 10.0
            logits.append(low)
        return Sam2VideoSegmentationOutput(
            object_ids=list(session.obj_ids),
            pred_masks=torch.cat(logits),
            object_score_logits=torch.full((len(logits),), 10.0),
            frame_idx=frame_idx,
        )


@pytest.mark.parametrize("miss_blue_at", [None, 18])
def test_ids_stay_with_the_square_and_a_newcomer_gets_a_new_id(models, video_models, clip, miss_blue_at):
    video = VideoSegmenter.from_pretrained(
        models["grounding_dino"], video_models["sam2_video"], device="cpu", redetect=6
    )
    FollowTheSquares(video.tracker, miss_blue_at)
    seen = {}
    for f, tracks in video.track(clip, "square"):
        ids = {t.label: t.track_id for t in tracks}
        assert ids.get("square") == 1, (f.index, ids)  # the moving square keeps id 1
        if f.index < BLUE_FROM:
            assert "other square" not in ids
        else:  # enters on a re-detection frame (12 = 2 x 6): a new id, kept even when missed
            assert ids.get("other square") == 2, (f.index, ids)
        red = next(t for t in tracks if t.track_id == 1)
        assert mask_iou(red.mask[None], _box_mask(red_box(f.index))[None])[0, 0] > 0.6
        seen[f.index] = ids
    assert len(seen) == 24


def _box_mask(box) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = True
    return mask


def test_folder_of_frames_in_natural_order(video_models, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(12):  # frame_10 sorts before frame_2 as text
        Image.fromarray(frame(t)).save(folder / f"frame_{t}.png")
    out = tmp_path / "out"
    code = segment(video_models, folder, "--video", "--fps", "6", "--box", "10,40,40,70",
                   "--format", "json", "--out", out)  # fmt: skip
    assert code == 0
    doc = json.loads((out / "frames.json").read_text())
    assert (doc["fps"], doc["frame_count"], doc["frames_processed"]) == (6, 12, 12)
    assert [f["time"] for f in doc["frames"]][2] == pytest.approx(2 / 6, abs=1e-3)


@pytest.mark.parametrize("name,options", [("cut.mkv", {}), ("cut.mp4", {"movflags": "faststart"})])
def test_a_video_cut_short_keeps_the_frames_before(video_models, tmp_path, capsys, name, options):
    """Cut in half: FFmpeg either stops early (truncated) or fails on a packet (corrupt)."""
    whole = write_clip(tmp_path / f"whole{name[-4:]}", n=48, options=options)
    cut = tmp_path / name
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out = tmp_path / "out"
    assert segment(video_models, cut, "--box", "10,40,40,70", "--out", out) == 1
    err = capsys.readouterr().err
    said = ("truncated video: decoding stopped after", "corrupt video: decoding failed at frame")
    assert any(s in err for s in said) and err.count("\n") == 1
    doc = json.loads((out / "cut.json").read_text())  # valid, and says where it stopped
    n = doc["frames_processed"]
    assert 0 < n < 48 and doc["complete"] is False and any(s in doc["stopped"] for s in said)
    assert len(doc["frames"]) == n and len(decode(out / "cut.overlay.mp4")[0]) == n


def _garbage(path):
    path.write_bytes(b"not a video at all " * 50)


def _empty(path):
    path.write_bytes(b"")


def _moov_cut(path):  # an .mp4 whose index (written last) is gone
    whole = write_clip(path.with_name("whole.mp4"))
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])


def _unknown_codec(path):  # a Matroska codec id no FFmpeg decoder claims
    whole = write_clip(path.with_name("whole.mkv"), codec="mpeg4")
    path.write_bytes(whole.read_bytes().replace(b"V_MPEG4/ISO/ASP", b"V_MPEG4/ISO/XYZ"))


def _audio_only(path):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        sound = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        sound.sample_rate = 8000
        for packet in [*stream.encode(sound), *stream.encode()]:
            container.mux(packet)


@pytest.mark.parametrize("make,name,message", [
    (_garbage, "noise.mp4", "not a readable video"),
    (_empty, "empty.mp4", "not a readable video"),
    (_moov_cut, "cut.mp4", "not a readable video"),
    (_unknown_codec, "odd.mkv", "unsupported codec"),
    (_audio_only, "sound.mkv", "has no video stream"),
])  # fmt: skip
def test_bad_videos_are_one_clear_line(video_models, tmp_path, capsys, make, name, message):
    make(tmp_path / name)
    out = tmp_path / "out"
    assert segment(video_models, tmp_path / name, "--box", "1,1,20,20", "--out", out) == 1
    err = capsys.readouterr().err
    assert message in err and name in err and err.count("\n") == 1


def test_bad_video_arguments_fail_before_loading(video_models, clip, tmp_path, capsys):
    for args, message in (
        (["--box", "1,1,20,20", "--format", "masks"], "for a video, --format takes"),
        (["--box", "1,1,20,20", "--stride", "0"], "--stride must be"),
        (["--prompt", " . "], "empty prompt"),
    ):
        assert segment(video_models, clip, *args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    (tmp_path / "photo.png").write_bytes(b"")
    assert segment(video_models, clip, tmp_path / "photo.png", "--box", "1,1,9,9") == 2
    assert "separate commands" in capsys.readouterr().err


def test_interrupted_run_keeps_what_it_did(video_models, clip, tmp_path):
    video = VideoSegmenter.from_pretrained(None, video_models["sam2_video"], device="cpu")

    def stop_after_three(f, tracks):
        if f.index == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        video.segment(clip, "", tmp_path, boxes=[[10, 40, 40, 70]], on_frame=stop_after_three)
    doc = json.loads((tmp_path / "clip.json").read_text())
    assert (doc["frames_processed"], doc["complete"], doc["stopped"]) == (3, False, "interrupted")
    assert len(decode(tmp_path / "clip.overlay.mp4")[0]) == 3


def test_frames_json_is_valid_after_every_frame(tmp_path):
    doc = FramesJson(tmp_path / "a.json", {"video": "a.mp4", "fps": 12})
    assert json.loads(doc.path.read_text())["frames"] == []
    for i in range(3):
        doc.add({"frame": i, "detections": []})
        now = json.loads(doc.path.read_text())
        assert (len(now["frames"]), now["frames_processed"], now["complete"]) == (i + 1, i + 1, False)
    doc.close()
    assert json.loads(doc.path.read_text())["complete"] is True


def test_cpu_postprocessing_for_sam3_video():
    ious = torch.tensor([[1.0, 0.6, 0.0], [0.6, 1.0, 0.05], [0.0, 0.05, 1.0]])
    kept = CpuPostprocessing.generic_nms(ious, torch.tensor([0.5, 0.9, 0.7]), 0.1)
    assert kept.tolist() == [1, 2]
    mask = torch.zeros(1, 1, 6, 6, dtype=torch.uint8)
    mask[0, 0, :2, :2] = 1  # 4 pixels
    mask[0, 0, 3, 3] = 1  # diagonal neighbours: one 8-connected component of 3 pixels
    mask[0, 0, 4, 4] = mask[0, 0, 5, 5] = 1
    labels, counts = CpuPostprocessing.cc_2d(mask, get_counts=True)
    assert counts[0, 0, 0, 0] == 4 and counts[0, 0, 4, 4] == 3 and counts[0, 0, 0, 5] == 0
    assert labels[0, 0, 0, 0] != labels[0, 0, 3, 3] == labels[0, 0, 5, 5]


def test_videos_need_a_video_model(models, video_models, clip):
    with pytest.raises(VitsamError, match="without the memory weights"):
        VideoSegmenter.from_pretrained(None, models["sam2"], device="cpu")
    with pytest.raises(VitsamError, match="cannot track"):
        VideoSegmenter.from_pretrained(None, models["sam"], device="cpu")


def test_class_maps_negatives_and_thresholds_hold_on_every_key_frame(models, video_models, clip, tmp_path):
    """A video takes the image's request: the class map names the labels, a negative phrase
    removes what it describes on each key frame (counted per frame), a per-class threshold
    filters that class."""
    from vitsam.seg.request import Prompt

    video = VideoSegmenter.from_pretrained(
        models["grounding_dino"], video_models["sam2_video"], device="cpu", redetect=6
    )
    FollowTheSquares(video.tracker)
    request = Prompt.parse("", classes={"block": ["square"]}, negative="other square")
    result = video.segment(clip, request, tmp_path, formats=("json",))
    doc = json.loads((tmp_path / "clip.json").read_text())
    assert doc["classes"] == {"block": ["square"]} and doc["negatives"] == ["other square"]
    labels = {(d["track_id"], d["label"]) for f in doc["frames"] for d in f["detections"]}
    assert labels == {(1, "block")} and result.track_ids == {1}  # the blue square never tracked
    removed = {f["frame"]: f["removed"]["other square"] for f in doc["frames"]}
    assert removed[12] == removed[18] == 1 and removed[6] == 0 and removed[13] == 0

    strict = Prompt.parse("", classes={"block": ["square"]}, box_thresholds={"block": 0.95})
    assert all(not tracks for _, tracks in video.track(clip, strict, max_frames=3))


def test_sam3_video_takes_a_class_map_and_negatives(video_models, clip, tmp_path):
    out = tmp_path / "out"
    classes = tmp_path / "classes.yaml"
    classes.write_text("pet: [cat, kitten]\n")
    code = segment(video_models, clip, "--classes", classes, "--negative", "dog",
                   "--box-threshold", "0", "--max-frames", "3", "--format", "json", "--out", out,
                   segmenter="sam3")  # fmt: skip
    assert code == 0
    doc = json.loads((out / "clip.json").read_text())
    assert doc["classes"] == {"pet": ["cat", "kitten"]} and doc["negatives"] == ["dog"]
    assert {d["label"] for f in doc["frames"] for d in f["detections"]} <= {"pet"}
    assert all(set(f["removed"]) == {"dog"} for f in doc["frames"])


def test_clicks_on_the_first_frame_track_one_object(video_models, clip, tmp_path):
    out = tmp_path / "out"
    code = segment(video_models, clip, "--point", "25,55", "--neg-point", "100,20",
                   "--max-frames", "3", "--format", "json", "--out", out)  # fmt: skip
    assert code == 0
    doc = json.loads((out / "clip.json").read_text())
    assert doc["points"] == [[25.0, 55.0, 1.0], [100.0, 20.0, 0.0]] and doc["detector"] == ""
    for f in doc["frames"]:
        assert {d["track_id"] for d in f["detections"]} <= {1}
        assert all(d["label"] == "object" for d in f["detections"])


def test_video_prompt_refusals_are_one_line(video_models, clip, tmp_path, capsys):
    ref = tmp_path / "ref.png"
    Image.new("RGB", (40, 40), RED).save(ref)
    for args, segmenter, message, code in (
        (["--exemplar", f"{ref}:0,0,30,30"], "sam3", "exemplars in a video need", 2),
        (["--point", "25,55"], "sam3", "box prompts need a SAM or SAM 2", 2),
        (["--prompt", "cat", "--negative", "cat"], "sam3", "both a phrase and a negative", 2),
        (["--point", "500,55"], "sam2_video", "lies outside the 160x120 image", 1),  # per video
        (["--box", "200,10,300,50"], "sam2_video", "lies wholly outside the 160x120", 1),
    ):
        out = tmp_path / "refused"
        assert segment(video_models, clip, *args, "--out", out, segmenter=segmenter) == code, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not out.exists()


def test_an_owlv2_exemplar_labels_a_video_track_with_its_class(models, video_models, clip, tmp_path):
    ref = tmp_path / "ref.png"
    Image.fromarray(frame(0)).save(ref)
    out = tmp_path / "out"
    code = main(["segment", str(clip), "--detector", models["owlv2"], "--segmenter",
                 video_models["sam2_video"], "--exemplar", f"block={ref}:10,40,40,70",
                 "--box-threshold", "0", "--max-detections", "2", "--max-frames", "3",
                 "--format", "json", "--out", str(out), "--device", "cpu", "--quiet"])  # fmt: skip
    assert code == 0
    doc = json.loads((out / "clip.json").read_text())
    assert doc["exemplars"] == [{"box": [10.0, 40.0, 40.0, 70.0], "label": "block", "image": str(ref)}]
    labels = {d["label"] for f in doc["frames"] for d in f["detections"]}
    assert labels == {"block"}
