"""Half two: text-prompted segmentation (text -> boxes -> masks).

from vitsam.seg import TextSegmenter
seg = TextSegmenter.from_pretrained(detector="grounding-dino-tiny", segmenter="sam2.1-tiny")
result = seg.segment("photo.jpg", "cat. remote control")
"""

from vitsam.seg.pipeline import TextSegmenter
from vitsam.seg.results import Detection, Segmentation

__all__ = ["Detection", "Segmentation", "TextSegmenter"]
