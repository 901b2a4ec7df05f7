"""Half two: text-prompted segmentation (text -> boxes -> masks).

from vitsam.seg import TextSegmenter, VideoSegmenter
seg = TextSegmenter.from_pretrained(detector="grounding-dino-tiny", segmenter="sam2.1-tiny")
result = seg.segment("photo.jpg", "cat. remote control")
video = VideoSegmenter.from_pretrained(segmenter="sam3")
for frame, tracks in video.track("clip.mp4", "person. dog"): ...
"""

from vitsam.seg.pipeline import TextSegmenter
from vitsam.seg.results import Detection, Segmentation
from vitsam.seg.tracking import Track
from vitsam.seg.video import VideoSegmenter

__all__ = ["Detection", "Segmentation", "TextSegmenter", "Track", "VideoSegmenter"]
