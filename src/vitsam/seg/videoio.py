"""Video in and out as streams: frames decoded one at a time (PyAV, FFmpeg underneath) or
read from a folder of images, the overlay encoded as it is drawn, and the per-frame JSON
written so that the file on disk is a valid document after every frame.

Nothing here holds more than one frame: a ten-minute 1080p clip costs one frame of memory.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from vitsam.errors import VitsamError
from vitsam.images import list_images, open_image

VIDEO_SUFFIXES = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"}
FOLDER_FPS = 30.0  # frame rate assumed for a folder of frames unless told
TRUNCATION_SLACK = 0.05  # decoding may end this share of the declared frames early (VFR)


def is_video_path(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


@dataclass
class VideoInfo:
    path: str
    width: int  # pixels
    height: int
    fps: float  # frames per second
    frame_count: int | None  # as the container declares it (None: it does not say)
    # Clockwise degrees (0 90 180 270) applied to decoded frames to show them upright, as
    # the display matrix says (a phone's portrait clip: 90), then a left-right flip where
    # `mirrored`. width and height are those of the upright frames.
    rotation: int = 0
    mirrored: bool = False

    def frames_to_process(self, stride: int = 1, max_frames: int | None = None) -> int | None:
        """How many frames `frames(stride, max_frames)` should give (None: unknown)."""
        total = -(-self.frame_count // stride) if self.frame_count else None
        if total is None or max_frames is None:
            return total or max_frames
        return min(total, max_frames)


@dataclass
class Frame:
    index: int  # position in the source, counting every frame (before --stride)
    time: float  # seconds from the start
    image: Image.Image  # RGB


def _av():
    try:
        import av
    except ImportError:
        raise VitsamError(
            "video needs PyAV: pip install 'vitsam[video]' (or pip install av)"
        ) from None
    return av


class VideoReader:
    """A video file (.mp4 .mov .webm .mkv ...) or a folder of frames, one frame at a time.

    Frames come upright, as a player shows them: a display matrix (rotation, mirroring;
    what phones write) is applied, as EXIF orientation is for images.

    Raises VitsamError, naming the file, when it is missing, not a video, has no video
    stream, a codec FFmpeg cannot decode or a first frame it cannot decode; `frames()`
    raises it for a corrupt or truncated stream at the frame where decoding stopped.
    """

    def __init__(self, source: str | Path, fps: float | None = None) -> None:
        self.source = Path(source)
        if not self.source.exists():
            raise VitsamError(f"{self.source}: no such file or folder")
        self._files: list[Path] = []
        self._container = None
        self._first = None  # the first decoded frame, read ahead for its display matrix
        self._upright: Image.Transpose | None = None
        if self.source.is_dir():
            self.info = self._open_folder(fps or FOLDER_FPS)
        else:
            self.info = self._open_file()

    def _open_folder(self, fps: float) -> VideoInfo:
        files = list_images([self.source])
        self._files = sorted(files, key=lambda p: _natural(str(p.relative_to(self.source))))
        if not self._files:
            raise VitsamError(f"{self.source}: a folder of frames with no image files in it")
        first = open_image(self._files[0])
        return VideoInfo(str(self.source), first.width, first.height, fps, len(self._files))

    def _open_file(self) -> VideoInfo:
        av = _av()
        try:
            self._container = av.open(str(self.source))
        except av.error.FFmpegError as e:
            raise VitsamError(
                f"{self.source}: not a readable video: corrupt, truncated or empty ({_reason(e)})"
            ) from None
        streams = self._container.streams.video
        if not streams:
            self.close()
            raise VitsamError(f"{self.source}: has no video stream")
        stream = self._stream = streams[0]
        if stream.codec_context is None:
            self.close()
            raise VitsamError(
                f"{self.source}: unsupported codec (this FFmpeg build cannot decode it): "
                "convert it first, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4"
            )
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 0) or FOLDER_FPS
        count = stream.frames or None
        if count is None:  # containers such as Matroska declare a duration, not a count
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = (self._container.duration or 0) / 1_000_000
            count = round(seconds * fps) or None
        # The display matrix is side data of the stream, which PyAV hands out only on
        # decoded frames: the first one is decoded now, and handed out first by _decoded.
        self._decoder = self._container.decode(stream)
        self._first = self._next_frame(0)
        rotation, mirrored = _orientation(self._first, stream)
        self._upright = _TRANSPOSE[rotation, mirrored]
        ctx = stream.codec_context
        width, height = ctx.width, ctx.height
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(str(self.source), width, height, fps, count, rotation, mirrored)

    def _next_frame(self, index: int):
        """The next decoded av.VideoFrame (None at the end); `index`: its place, for errors."""
        av = _av()
        try:
            return next(self._decoder, None)
        except av.error.FFmpegError as e:
            self.close()
            raise VitsamError(
                f"{self.source}: corrupt video: decoding failed at frame {index} ({_reason(e)})"
            ) from None

    def frames(self, stride: int = 1, max_frames: int | None = None) -> Iterator[Frame]:
        """Every `stride`-th frame, at most `max_frames` of them, decoded as they are needed."""
        if stride < 1:
            raise VitsamError("--stride must be 1 or more")
        yielded = 0
        for index, time, image in self._decoded():
            if index % stride:
                continue
            if max_frames is not None and yielded >= max_frames:
                return
            yielded += 1
            yield Frame(index, time, image)

    def _decoded(self) -> Iterator[tuple[int, float, Image.Image]]:
        if self._files:
            for index, path in enumerate(self._files):
                image = open_image(path)
                if image.size != (self.info.width, self.info.height):
                    raise VitsamError(
                        f"{path}: {image.width}x{image.height}, but the first frame is "
                        f"{self.info.width}x{self.info.height}: frames must share one size"
                    )
                yield index, index / self.info.fps, image
            return
        index, frame, self._first = 0, self._first, None
        while frame is not None:
            time = float(frame.time) if frame.time is not None else index / self.info.fps
            image = frame.to_image()
            yield index, time, image if self._upright is None else image.transpose(self._upright)
            index += 1
            frame = self._next_frame(index)
        expected = self.info.frame_count
        if index == 0 and not expected:
            raise VitsamError(f"{self.source}: the video has no frames")
        if expected and index < expected * (1 - TRUNCATION_SLACK) - 1:
            raise VitsamError(
                f"{self.source}: truncated video: decoding stopped after {index} of the "
                f"{expected} frames it declares"
            )

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class OverlayWriter:
    """Frames encoded into an H.264 .mp4 (MPEG-4 Part 2 where libx264 is absent) as they come.

    4:2:0 chroma needs even sides: an odd width or height is padded by one edge pixel.
    """

    def __init__(self, path: Path, width: int, height: int, fps: float) -> None:
        av = _av()
        self.path = path
        self._container = av.open(str(path), "w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self._stream = self._container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt = "yuv420p"
        self.frames = 0

    def write(self, image: Image.Image) -> None:
        av = _av()
        rgb = np.asarray(image.convert("RGB"))
        pad_h, pad_w = self._stream.height - rgb.shape[0], self._stream.width - rgb.shape[1]
        if pad_h or pad_w:
            rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():  # flush the encoder's delayed frames
            self._container.mux(packet)
        self._container.close()
        self._container = None


class FramesJson:
    """NAME.json written frame by frame, a valid JSON document after every frame.

    Layout: the header fields, then "frames": [...], then "frames_processed", "complete"
    and "stopped" (why it stopped early, else null). Each frame appends its entry and
    rewrites the short tail, so a run that dies mid-way leaves a readable file that says
    how far it got.
    """

    def __init__(self, path: Path, header: dict) -> None:
        self.path = path
        self._file = path.open("w")
        head = json.dumps(header, indent=1)[:-2]  # drop the closing "\n}"
        self._file.write(head + ',\n "frames": [\n')
        self._end = self._file.tell()
        self.frames = 0
        self._tail(complete=False, stopped=None)

    def add(self, entry: dict) -> None:
        self._file.seek(self._end)
        self._file.write((",\n" if self.frames else "") + "  " + json.dumps(entry))
        self._end = self._file.tell()
        self.frames += 1
        self._tail(complete=False, stopped=None)

    def close(self, stopped: str | None = None) -> None:
        if self._file.closed:
            return
        self._tail(complete=stopped is None, stopped=stopped)
        self._file.close()

    def _tail(self, complete: bool, stopped: str | None) -> None:
        tail = {"frames_processed": self.frames, "complete": complete, "stopped": stopped}
        self._file.seek(self._end)
        self._file.write("\n ],\n" + json.dumps(tail, indent=1)[2:] + "\n")
        self._file.truncate()
        self._file.flush()


# (clockwise degrees, then mirrored left-right) -> the PIL transpose that does both
_TRANSPOSE = {
    (0, False): None,
    (90, False): Image.Transpose.ROTATE_270,  # PIL's ROTATE_* turn counter-clockwise
    (180, False): Image.Transpose.ROTATE_180,
    (270, False): Image.Transpose.ROTATE_90,
    (0, True): Image.Transpose.FLIP_LEFT_RIGHT,
    (90, True): Image.Transpose.TRANSPOSE,
    (180, True): Image.Transpose.FLIP_TOP_BOTTOM,
    (270, True): Image.Transpose.TRANSVERSE,
}


def _orientation(frame, stream) -> tuple[int, bool]:
    """(clockwise degrees 0 90 180 270, mirrored) that show `frame` (av.VideoFrame) upright.

    From the frame's DISPLAYMATRIX side data (FFmpeg attaches the stream's to every decoded
    frame), as ffplay and ffmpeg -autorotate read it; else from the `rotate` tag (clockwise
    degrees) that older FFmpeg builds put in the stream's metadata. The matrix is 3x3 int32,
    a b u / c d v / x y w, a-d in 16.16 fixed point, mapping a coded pixel (p, q) to
    (a p + c q, b p + d q): a rotation by t clockwise is cos t, sin t / -sin t, cos t, and
    mirroring after it negates a and c. An angle that is not a multiple of 90 degrees is
    taken to the nearest one: ffplay rotates by it exactly, corners cut, which would not
    keep the frame's size.
    """
    from av.sidedata.sidedata import Type

    data = frame.side_data.get(Type.DISPLAYMATRIX) if frame is not None else None
    if data is not None and len(data := bytes(data)) >= 36:
        a, b, _, c, d = np.frombuffer(data, dtype=np.int32, count=5).tolist()  # native-endian
        if a * d == b * c:  # singular: FFmpeg finds no angle in it either
            return 0, False
        degrees, mirrored = math.degrees(math.atan2(b, d)), a * d < b * c
    else:
        try:
            degrees, mirrored = float(stream.metadata.get("rotate") or 0), False
        except ValueError:
            return 0, False
    return round(degrees / 90) % 4 * 90, mirrored


def _natural(text: str) -> list:
    """'frame_10.png' after 'frame_9.png': digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)
