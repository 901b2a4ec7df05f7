"""Training datasets from per-image results: COCO instance segmentation and YOLO segmentation.

Both read the per-image JSON documents `vitsam segment` writes (`Segmentation.to_json()`:
boxes XYXY in pixels, masks COCO compressed RLE), one `DatasetEntry` per image, in order, and
stream them: memory holds one image's masks at a time (and, for COCO, the image list).

- COCO (`annotations.json`): categories 1..K in the order given; per detection `bbox` as
  XYWH pixels, `area` and RLE `segmentation` from pycocotools (or polygons from OpenCV's
  contours, `polygons=True`, for masks without holes: below), `iscrowd` 0, the detector's
  `score` and the segmenter's `mask_score`. Loads with `pycocotools.coco.COCO` and
  torchvision's `CocoDetection`.
- YOLO segmentation (Ultralytics' layout): `labels/NAME.txt`, one line per detection,
  `class x1 y1 x2 y2 ...` with the polygon normalised by the image's width and height;
  `data.yaml` with the class names. Images are placed by the caller in `images/`.

Polygons are drawn for each format's rasteriser, so that they decode back to the mask. COCO
polygons have their vertices on pixel corners, one polygon per part, and pycocotools'
`frPyObjects` gives the mask's pixels back; a mask with a hole is written as RLE, because
pycocotools merges an annotation's polygons by union, so no polygon can cut a hole.
`area` is what the written segmentation decodes to. YOLO polygons have their vertices on
the boundary pixels' centres, which `cv2.fillPoly` (Ultralytics' rasteriser) fills back:
one ring per detection through every part and hole, joined by zero-width seams (as
Ultralytics' `merge_multi_segment` joins parts), and fillPoly's even-odd fill keeps the
holes empty. Masks of one pixel or a 1-px line are kept. Detections whose mask is empty or
missing are left out of both and counted.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitsam.errors import VitsamError
from vitsam.files import remove, replacing, write_atomic
from vitsam.seg.results import decode_rle

KINDS = ("coco", "yolo", "label-studio")


@dataclass
class DatasetEntry:
    """One entry (labelset.Entry) as a dataset holds it: its file name in the dataset's
    images/ folder and its per-image JSON."""

    file_name: str  # e.g. "sub__cat.jpg"
    doc: dict  # the per-image document (Segmentation.to_json())


@dataclass
class ExportSummary:
    path: Path  # annotations.json, or data.yaml for YOLO
    images: int = 0
    annotations: int = 0
    left_out: int = 0  # detections without a (non-empty) mask


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """A (K, 2) closed ring without repeated points or vertices inside straight runs."""
    ring = ring[(ring != np.roll(ring, 1, axis=0)).any(axis=1)]
    if len(ring) < 3:
        return ring
    a, b = ring - np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0) - ring
    straight = (a[:, 0] * b[:, 1] == a[:, 1] * b[:, 0]) & ((a * b).sum(axis=1) > 0)
    return ring[~straight]


def mask_polygons(mask: np.ndarray, corners: bool = True) -> list[list[np.ndarray]]:
    """(H, W) bool mask -> per part (8-connected), its outer ring then its holes' rings, each
    (K, 2) int XY; outer rings run one way and holes the other, as cv2.findContours gives.

    corners=True: vertices on pixel corners ((col, row) of a pixel is its top-left corner),
    the outline along the pixels' edges, so a square of n x n pixels is (0, 0)..(n, n) and
    a lone pixel a unit square. pycocotools' polygon rasteriser (`frPyObjects`) and any
    exact even-odd fill give the mask back. Traced by OpenCV's border following
    (`cv2.findContours`, RETR_CCOMP) on the mask upsampled 2x by nearest neighbour: each
    traced pixel is a quadrant of a mask pixel, and (x + 1) // 2 is that pixel's corner in
    the quadrant.

    corners=False: vertices on the centres of the boundary pixels (`cv2.findContours` on
    the mask, CHAIN_APPROX_SIMPLE), a pixel a single point and a 1-px line two; what
    `cv2.fillPoly`, which Ultralytics rasterises YOLO polygons with, gives back exactly
    (it fills the pixels on the outline too), and what Ultralytics' own mask converter
    writes (`ultralytics/data/converter.py: convert_segment_masks_to_yolo_seg`).
    """
    import cv2

    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    left, top, w, h = cv2.boundingRect(mask)  # traced inside the mask's box, for speed
    if not w:
        return []
    crop = np.ascontiguousarray(mask[top : top + h, left : left + w])
    if corners:
        crop = cv2.resize(crop, (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    chain = cv2.CHAIN_APPROX_NONE if corners else cv2.CHAIN_APPROX_SIMPLE
    contours, hierarchy = cv2.findContours(crop, cv2.RETR_CCOMP, chain)
    rings = [c.reshape(-1, 2) for c in contours]
    if corners:
        rings = [_drop_collinear((r + 1) // 2) for r in rings]
    rings = [r + [left, top] for r in rings]
    parent = hierarchy[0][:, 3]  # RETR_CCOMP: outer rings have none, a hole its outer ring
    return [
        [rings[i], *(rings[j] for j in np.flatnonzero(parent == i))]
        for i in np.flatnonzero(parent < 0)
    ]


def join_polygons(rings: list[np.ndarray]) -> np.ndarray:
    """Several (K_i, 2) rings -> one (K, 2) ring through all, for formats with one polygon
    per object (YOLO).

    Each ring in turn is spliced into the ring so far at their closest pair of vertices,
    by a zero-width seam walked there and back (a keyhole). Under an even-odd fill (as
    `cv2.fillPoly` does) the seams add no area, so separate parts stay filled and holes
    stay empty; with outer rings and holes running opposite ways (`mask_polygons`) a
    nonzero-winding fill agrees. Ultralytics joins the parts of COCO polygons the same way
    (`ultralytics/data/converter.py: merge_multi_segment`). A rasteriser that also fills
    the pixels on the outline (cv2.fillPoly) fills a seam's pixels where it crosses the
    background: a one-pixel line between separate parts.
    """
    ring = rings[0]
    for other in rings[1:]:
        d = np.subtract.outer(ring[:, 0], other[:, 0]).astype(np.int64) ** 2
        d += np.subtract.outer(ring[:, 1], other[:, 1]).astype(np.int64) ** 2
        i, j = np.unravel_index(d.argmin(), d.shape)
        other = np.roll(other, -j, axis=0)
        ring = np.concatenate([ring[: i + 1], other, other[:1], ring[i:]])
    return ring


def category_ids(names: list[str]) -> dict[str, int]:
    if len(set(names)) != len(names) or not names:
        raise VitsamError(f"categories must be distinct and at least one: {names}")
    return {n: i for i, n in enumerate(names)}


def _category(label: str, ids: dict[str, int]) -> int:
    if label not in ids:
        raise VitsamError(
            f"a detection is labelled {label!r}, which is not among the categories "
            f"{list(ids)}: export with the prompt the results were made with"
        )
    return ids[label]


def coco_polygons(mask: np.ndarray) -> list[list[float]] | None:
    """(H, W) bool mask -> COCO polygons, [x1, y1, x2, y2, ...] pixel corners, one per part;
    None where polygons cannot say the mask: one with a hole, which pycocotools' union of an
    annotation's polygons would fill."""
    parts = mask_polygons(mask)
    if not parts or any(len(rings) > 1 or len(rings[0]) < 3 for rings in parts):
        return None
    return [rings[0].ravel().astype(float).tolist() for rings in parts]


def coco_annotation(det: dict, category_id: int, polygons: bool) -> dict | None:
    """One detection of a per-image document -> a COCO annotation without ids, or None
    when it has no mask pixels.

    polygons=True: polygons where they can say the mask (`coco_polygons`), else its RLE;
    `area` is pycocotools' area of the written segmentation (the mask's, both ways).
    """
    from pycocotools import mask as mask_utils

    if not det.get("mask"):
        return None
    rle = {"size": det["mask"]["size"], "counts": det["mask"]["counts"]}
    area = int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))
    if area == 0:
        return None
    segmentation = coco_polygons(decode_rle(rle)) if polygons else None
    if segmentation is None:
        segmentation = rle
    else:
        h, w = rle["size"]
        area = int(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))))
    x1, y1, x2, y2 = det["box"]
    return {
        "category_id": category_id,
        "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],  # XYWH
        "area": area,
        "segmentation": segmentation,
        "iscrowd": 0,
        "score": det["score"],
        "mask_score": det.get("mask_score", 0.0),
    }


def write_coco(
    items: Iterable[DatasetEntry], names: list[str], path: Path, polygons: bool = False
) -> ExportSummary:
    """COCO instance segmentation to `path` (written whole, then renamed into place).

    Category ids are 1..K in `names` order; image ids 1..N in item order; annotation
    ids 1..M. Annotations are streamed through a temporary file, so memory holds the
    image list but not every mask.
    """
    from vitsam import __version__

    ids = {n: i + 1 for n, i in category_ids(names).items()}
    summary = ExportSummary(path)
    images = []
    spool = path.with_name(path.name + ".annotations.tmp")
    remove(spool)  # a kill's leftover, maybe a link: never written through
    with open(spool, "w") as f:
        for image_id, item in enumerate(items, start=1):
            doc = item.doc
            images.append(
                {
                    "id": image_id,
                    "file_name": item.file_name,
                    "width": doc["width"],
                    "height": doc["height"],
                }
            )
            for det in doc["detections"]:
                ann = coco_annotation(det, _category(det["label"], ids), polygons)
                if ann is None:
                    summary.left_out += 1
                    continue
                summary.annotations += 1
                ann = {"id": summary.annotations, "image_id": image_id, **ann}
                if "track_id" in det:  # a video frame's: the object across frames
                    ann["track_id"] = det["track_id"]
                f.write(("," if summary.annotations > 1 else "") + json.dumps(ann) + "\n")
    summary.images = len(images)
    head = {
        "info": {"description": "auto-labelled by vitsam", "version": __version__},
        "licenses": [],
        "categories": [{"id": i, "name": n, "supercategory": ""} for n, i in ids.items()],
        "images": images,
    }
    with replacing(path) as tmp, open(tmp, "w") as out, open(spool) as anns:
        out.write(json.dumps(head)[:-1] + ',\n"annotations": [\n')
        shutil.copyfileobj(anns, out)
        out.write("]}\n")
    spool.unlink()
    return summary


def yolo_polygon(mask: np.ndarray) -> np.ndarray | None:
    """(H, W) bool mask -> one (K, 2) int XY ring of boundary pixel centres through all its
    parts and holes (`join_polygons`), or None when the mask is empty.

    A pixel (1 vertex) or a 1-px line (2) has its vertices repeated to 3, so that
    Ultralytics reads the line as a polygon (it takes a line of 5 numbers for a box).
    """
    rings = [ring for part in mask_polygons(mask, corners=False) for ring in part]
    if not rings:
        return None
    ring = join_polygons(rings)
    return np.resize(ring, (max(len(ring), 3), 2))


def yolo_lines(doc: dict, ids: dict[str, int]) -> tuple[list[str], int]:
    """A per-image document -> YOLO segmentation lines, and how many detections had no
    mask pixels to write.

    Coordinates are normalised by the image's width and height, rounded to 6 decimals and
    raised by one in the last: denormalised, each is its pixel centre plus 0.5-1.5
    millionths of the image's size (under 0.02 px up to 10,000 px), never a hair below
    it, so a reader that truncates (Ultralytics' `polygon2mask` casts to int32) gets the
    same pixels as one that rounds.
    """
    w, h = doc["width"], doc["height"]
    lines, left_out = [], 0
    for det in doc["detections"]:
        ring = yolo_polygon(decode_rle(det["mask"])) if det.get("mask") else None
        if ring is None:
            left_out += 1
            continue
        xy = (np.round(ring / np.array([w, h], dtype=np.float64) * 1e6) + 1) / 1e6
        coords = " ".join(f"{v:.6f}" for v in xy.ravel())
        lines.append(f"{_category(det['label'], ids)} {coords}")
    return lines, left_out


def write_yolo(items: Iterable[DatasetEntry], names: list[str], root: Path) -> ExportSummary:
    """YOLO segmentation labels into root/labels/ and root/data.yaml (Ultralytics' layout).

    Every image gets a label file, empty when nothing was found (a background image).
    `data.yaml` names root by its absolute path, because Ultralytics resolves a relative
    or missing `path` against its own datasets folder; train and val are the same
    images (no split is made).
    """
    import yaml

    ids = category_ids(names)
    labels = root / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(root / "data.yaml")
    for item in items:  # images/NAME.jpg -> labels/NAME.txt, images/V/000012.jpg -> labels/V/000012.txt
        lines, left_out = yolo_lines(item.doc, ids)
        dest = labels / Path(item.file_name).with_suffix(".txt")
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(dest, "".join(f"{s}\n" for s in lines))
        summary.images += 1
        summary.annotations += len(lines)
        summary.left_out += left_out
    spec = {
        "path": str(root.resolve()),
        "train": "images",
        "val": "images",
        "nc": len(names),
        "names": dict(enumerate(names)),
    }
    note = "# YOLO segmentation labels by vitsam; train and val are the same images: split them.\n"
    write_atomic(summary.path, note + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return summary
