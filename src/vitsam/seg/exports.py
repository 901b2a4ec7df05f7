"""Training datasets from per-image results: COCO instance segmentation and YOLO segmentation.

Both read the per-image JSON documents `vitsam segment` writes (`Segmentation.to_json()`:
boxes XYXY in pixels, masks COCO compressed RLE), one `Item` per image, in order, and
stream them: memory holds one image's masks at a time (and, for COCO, the image list).

- COCO (`annotations.json`): categories 1..K in the order given; per detection `bbox` as
  XYWH pixels, `area` and RLE `segmentation` from pycocotools (or polygons from OpenCV's
  contours, `polygons=True`), `iscrowd` 0, the detector's `score` and the segmenter's
  `mask_score`. Loads with `pycocotools.coco.COCO` and torchvision's `CocoDetection`.
- YOLO segmentation (Ultralytics' layout): `labels/NAME.txt`, one line per detection,
  `class x1 y1 x2 y2 ...` with the polygon normalised by the image's width and height;
  `data.yaml` with the class names. Images are placed by the caller in `images/`.

Polygons lose holes (neither format's polygons hold them); a mask in several parts is one
polygon per part in COCO and, in YOLO, one ring through all parts joined by zero-width
seams, as Ultralytics' own COCO converter does (`merge_multi_segment`). Detections whose
mask is empty or missing are left out of both and counted.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitsam.errors import VitsamError
from vitsam.seg.results import decode_rle

KINDS = ("coco", "yolo")


@dataclass
class Item:
    """One labelled image: its file name in the dataset's images/ folder and its JSON."""

    file_name: str  # e.g. "sub__cat.jpg"
    doc: dict  # the per-image document (Segmentation.to_json())


@dataclass
class ExportSummary:
    path: Path  # annotations.json, or data.yaml for YOLO
    images: int = 0
    annotations: int = 0
    left_out: int = 0  # detections without a (non-empty) mask


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path` and rename it over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """(H, W) bool mask -> the outer contour of each part as (K, 2) int XY pixel centres.

    OpenCV's border following (`cv2.findContours`, RETR_EXTERNAL, CHAIN_APPROX_SIMPLE);
    parts under 3 points (a pixel or a line) are dropped. `cv2.fillPoly` of the result
    gives the mask back with its holes filled.
    """
    import cv2

    contours, _ = cv2.findContours(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    return [c.reshape(-1, 2) for c in contours if len(c) >= 3]


def join_polygons(parts: list[np.ndarray]) -> np.ndarray:
    """Several (K_i, 2) rings -> one (K, 2) ring visiting all, joined by zero-width seams.

    Consecutive parts are linked at their closest pair of points; the ring goes out
    through each part to the last and comes back, so each seam is walked once each way
    and adds no area (Ultralytics, `ultralytics/data/converter.py: merge_multi_segment`).
    """
    if len(parts) == 1:
        return parts[0]
    links = []  # (index leaving part i, index entering part i + 1)
    for a, b in zip(parts, parts[1:]):
        d = ((a[:, None, :].astype(np.int64) - b[None, :, :]) ** 2).sum(-1)
        links.append(np.unravel_index(d.argmin(), d.shape))
    out, back = [], []
    for i, part in enumerate(parts):
        start = links[i - 1][1] if i else links[0][0]  # where the ring enters this part
        ring = np.roll(part, -start, axis=0)
        if i in (0, len(parts) - 1):  # an end part: all the way round, back to its link
            out.append(np.concatenate([ring, ring[:1]]))
            continue
        leave = (links[i][0] - start) % len(part)  # out along one arc, back along the other
        out.append(ring[: leave + 1])
        back.append(np.concatenate([ring[leave:], ring[:1]]))
    return np.concatenate(out + back[::-1])


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


def coco_annotation(det: dict, category_id: int, polygons: bool) -> dict | None:
    """One detection of a per-image document -> a COCO annotation without ids, or None
    when it has no mask pixels."""
    from pycocotools import mask as mask_utils

    if not det.get("mask"):
        return None
    rle = {"size": det["mask"]["size"], "counts": det["mask"]["counts"]}
    area = int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))
    if area == 0:
        return None
    if polygons:
        parts = mask_polygons(decode_rle(rle))
        if not parts:
            return None
        segmentation = [[round(float(v), 2) for v in p.ravel()] for p in parts]
    else:
        segmentation = rle
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
    items: Iterable[Item], names: list[str], path: Path, polygons: bool = False
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
                f.write(("," if summary.annotations > 1 else "") + json.dumps(ann) + "\n")
    summary.images = len(images)
    head = {
        "info": {"description": "auto-labelled by vitsam", "version": __version__},
        "licenses": [],
        "categories": [{"id": i, "name": n, "supercategory": ""} for n, i in ids.items()],
        "images": images,
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as out, open(spool) as anns:
        out.write(json.dumps(head)[:-1] + ',\n"annotations": [\n')
        shutil.copyfileobj(anns, out)
        out.write("]}\n")
    os.replace(tmp, path)
    spool.unlink()
    return summary


def yolo_lines(doc: dict, ids: dict[str, int]) -> tuple[list[str], int]:
    """A per-image document -> YOLO segmentation lines, and how many detections had no
    mask to write."""
    w, h = doc["width"], doc["height"]
    lines, left_out = [], 0
    for det in doc["detections"]:
        parts = mask_polygons(decode_rle(det["mask"])) if det.get("mask") else []
        if not parts:
            left_out += 1
            continue
        xy = join_polygons(parts) / np.array([w, h], dtype=np.float64)  # normalised
        coords = " ".join(f"{v:.6f}" for v in xy.ravel())
        lines.append(f"{_category(det['label'], ids)} {coords}")
    return lines, left_out


def write_yolo(items: Iterable[Item], names: list[str], root: Path) -> ExportSummary:
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
    for item in items:
        lines, left_out = yolo_lines(item.doc, ids)
        write_atomic(labels / f"{Path(item.file_name).stem}.txt", "".join(f"{s}\n" for s in lines))
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
