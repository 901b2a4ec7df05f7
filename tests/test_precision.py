"""bf16 against fp32 on the tiny models: boxes, scores and masks agree, whatever the CPU.

Every test here runs both precisions explicitly (bf16 is emulated on a CPU without bf16
units: slower, the same numbers), on the CPU or on the device `pytest --device` names
(`scripts/gpu_check.sh bf16` runs them on CUDA). Tolerances follow from bf16's 8-bit mantissa: a
network's outputs carry a relative error of about 1%, so a box is within 1 px and a
score within 0.02; what is computed from positions (the boxes themselves, the prompt
encoders) runs in fp32 (vitsam.seg.mixed_precision.FP32_PARTS).
"""

import numpy as np
import pytest
import torch
from PIL import Image

from vitsam.seg import TextSegmenter
from vitsam.seg.masks import MaskPredictor
from vitsam.seg.mixed_precision import FP32_PARTS, keep_fp32


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8))


def both(make):
    """{precision: make(precision)} for fp32 and bf16."""
    return {p: make(p) for p in ("fp32", "bf16")}


def matched(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each box of `a` (N, 4), the index of the nearest box of `b` and the distance
    (largest coordinate difference, px)."""
    dist = np.abs(a[:, None] - b[None]).max(-1)
    return dist.argmin(1), dist.min(1)


@pytest.mark.parametrize("detector", ["grounding_dino", "owlv2", "clipseg"])
def test_detector_boxes_and_scores_agree(models, photo, detector, device):
    """All boxes (threshold 0): each fp32 box has its bf16 twin within 1 px, and the
    scores, highest first, are within 0.02. Grounding DINO picks its queries as the top-k
    of many random-weight proposals, where near-ties can swap one query for another, and
    its logits are dot products of near-orthogonal random vectors (a small difference of
    large terms, so bf16's relative error moves the low scores a lot): at most 1 box in 10
    may have no twin, and the median score is within 0.02 (the full-size benchmark checks
    the top box on a real-size model)."""
    from vitsam.seg.detect import Detector

    loaded = both(lambda p: Detector.from_pretrained(
        models[detector], device, torch.bfloat16 if p == "bf16" else torch.float32
    ))  # fmt: skip
    found = {p: d.detect(photo, ["cat", "dog"], 0.0, 0.0) for p, d in loaded.items()}
    assert loaded["bf16"].dtype == torch.bfloat16  # ran in bf16: no fallback to fp32
    a, b = (np.array([d.box for d in found[p]]) for p in ("fp32", "bf16"))
    assert len(a) and len(a) == len(b) and np.isfinite(b).all()
    gdino = detector == "grounding_dino"
    assert (matched(a, b)[1] <= 1.0).mean() >= (0.9 if gdino else 1.0)
    sa, sb = (np.array([d.score for d in found[p]]) for p in ("fp32", "bf16"))  # sorted
    if gdino:
        assert np.median(np.abs(sa - sb)) <= 0.02
    else:
        assert np.abs(sa - sb).max() <= 0.02


@pytest.mark.parametrize("segmenter", ["sam", "sam2"])
def test_segmenter_masks_agree_on_the_same_boxes(models, photo, segmenter, device):
    """The same boxes in both precisions: mask logits within 3% (relative L2), masks'
    IoU >= 0.98 where the fp32 logit is clear of the threshold, and IoU scores within
    0.02. The random-weight models draw their masks where logits of about +-0.004 cross
    0, so the raw IoU of such a mask says little of precision; the margin keeps the
    pixels that a model decides."""
    boxes = np.array([[10, 20, 90, 100], [60, 5, 150, 70], [0, 0, 160, 120]], np.float32)
    logits, masks, scores = {}, {}, {}
    for p in ("fp32", "bf16"):
        sam = MaskPredictor.from_pretrained(
            models[segmenter], device, torch.bfloat16 if p == "bf16" else torch.float32
        )
        seen = []  # the low-res logits, as post-processing receives them

        def post(low, *a, real=sam.processor.post_process_masks, seen=seen, **k):
            seen.append(low[0])
            return real(low, *a, **k)

        sam.processor.post_process_masks = post
        sam.set_image(photo)
        masks[p], scores[p] = sam.predict(boxes)
        logits[p] = torch.cat(seen).cpu()
        assert sam.dtype == (torch.bfloat16 if p == "bf16" else torch.float32)  # no fallback
    a, b = logits["fp32"], logits["bf16"]
    assert ((a - b).norm() / a.norm()).item() <= 0.03
    sure = (a.abs() > 0.05 * a.std()).numpy()
    inter = ((a > 0) & (b > 0)).numpy() & sure
    union = ((a > 0) | (b > 0)).numpy() & sure
    assert inter.sum() / max(union.sum(), 1) >= 0.98
    assert np.abs(scores["fp32"] - scores["bf16"]).max() <= 0.02
    assert masks["bf16"].dtype == bool and masks["bf16"].shape == (3, 120, 160)


def test_sam3_instances_agree(video_models, photo, device):
    """SAM 3 (boxes from its own fp32 box head): every fp32 instance has a bf16 twin within
    1 px with a score within 0.02 and a mask IoU >= 0.98."""
    found = both(lambda p: TextSegmenter.from_pretrained(
        segmenter=video_models["sam3"], device=str(device), precision=p, box_threshold=0.0,
        max_detections=12).segment(photo, "cat. dog").detections)  # fmt: skip
    a, b = (np.array([d.box for d in found[p]]) for p in ("fp32", "bf16"))
    index, dist = matched(a, b)
    assert len(a) and dist.max() <= 1.0
    for d, j in zip(found["fp32"], index):
        twin = found["bf16"][j]
        assert abs(d.score - twin.score) <= 0.02
        iou = (d.mask & twin.mask).sum() / max((d.mask | twin.mask).sum(), 1)
        assert iou >= 0.98


def test_box_coordinates_are_not_on_the_bf16_grid(video_models, photo, device):
    """In bf16 SAM 3's boxes come from its fp32 box head: not all multiples of 1/8 px, as
    a box head in bf16 gives them on a 1024-wide input (and 1/16 px on this one)."""
    seg = TextSegmenter.from_pretrained(
        segmenter=video_models["sam3"], device=str(device), precision="bf16", box_threshold=0.0
    )
    coords = np.array([d.box for d in seg.segment(photo, "cat").detections]).ravel()
    inside = coords[(coords > 0) & (coords < 120)]  # not clipped to the image's edges
    assert len(inside) and not np.allclose(inside * 16, np.round(inside * 16))


def test_fp32_parts_name_real_submodules(models, video_models):
    """Each model class's FP32_PARTS names submodules it has: a renamed module in a new
    transformers release would otherwise silently run in bf16."""
    from vitsam.seg.detect import Detector
    from vitsam.seg.sam3 import Sam3Segmenter

    cpu = torch.device("cpu")
    loaded = [Detector.from_pretrained(models[n], cpu).model for n in ("grounding_dino", "owlv2")]
    loaded += [MaskPredictor.from_pretrained(models[n], cpu).model for n in ("sam", "sam2")]
    loaded.append(Sam3Segmenter.from_pretrained(video_models["sam3"], cpu).model)
    for model in loaded:
        parts = FP32_PARTS[type(model).__name__]
        names = [n for n, _ in model.named_modules()]
        for part in parts:
            assert any(n == part or n.endswith("." + part) for n in names), (type(model), part)
        assert keep_fp32(model) == 0  # wrapped once, at load


def test_sam3_video_tracks_agree(video_models, tmp_path, device):
    """SAM 3's video model over 4 frames of a clip: in bf16 the same track ids on each
    frame, boxes within 1 px and masks with IoU >= 0.98 of fp32's."""
    from tests.test_video import write_clip
    from vitsam.seg.video import VideoSegmenter

    clip = write_clip(tmp_path / "clip.mp4", n=4)
    tracks = both(lambda p: [t for _, t in VideoSegmenter.from_pretrained(
        segmenter=video_models["sam3"], device=str(device), precision=p, max_detections=3
    ).track(clip, "cat")])  # fmt: skip
    assert len(tracks["fp32"]) == len(tracks["bf16"]) == 4
    assert any(tracks["fp32"])
    for a, b in zip(tracks["fp32"], tracks["bf16"]):
        assert [t.track_id for t in a] == [t.track_id for t in b]
        for x, y in zip(a, b):
            assert np.abs(np.subtract(x.box, y.box)).max() <= 1.0
            assert (x.mask & y.mask).sum() / max((x.mask | y.mask).sum(), 1) >= 0.98
