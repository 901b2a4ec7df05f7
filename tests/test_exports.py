"""COCO and YOLO datasets from per-image results, and labelled folder runs that resume."""

import json

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from vitsam.cli import main
from vitsam.seg.exports import Item, join_polygons, mask_polygons, write_coco, write_yolo
from vitsam.seg.labelset import LabelSet, LabelSettings
from vitsam.seg.results import Detection, Segmentation

H, W = 80, 120
# Polygons are traced through the boundary pixels' centres: pycocotools' rasteriser then
# loses half a pixel all round (IoU 0.85-0.93 for these 25-50 px objects); OpenCV's
# fillPoly, which Ultralytics uses, gives the pixels back, less filled holes and seams.
COCO_POLYGON_IOU = 0.85
YOLO_POLYGON_IOU = 0.95


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def masks() -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:H, :W]
    rect = np.zeros((H, W), bool)
    rect[10:40, 20:70] = True
    disc = (yy - 55) ** 2 + (xx - 90) ** 2 <= 13**2
    parts = np.zeros((H, W), bool)  # two parts, one with a small hole
    parts[50:75, 5:30] = True
    parts[60:64, 15:19] = False
    parts[45:70, 45:65] = True
    return {"rect": rect, "disc": disc, "parts": parts}


def box_of(mask: np.ndarray) -> tuple[float, ...]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


@pytest.fixture
def items(tmp_path) -> list[Item]:
    """Two images' documents (one with an empty mask) and their image files."""
    m = masks()
    first = Segmentation("a.png", W, H, "cat. dog", "det", "seg")
    for label, name in (("cat", "rect"), ("dog", "disc"), ("dog", "parts")):
        first.detections.append(
            Detection(label, 0.9, box_of(m[name]), mask=m[name], mask_score=0.8)
        )
    second = Segmentation("b.png", W, H, "cat. dog", "det", "seg")
    empty = np.zeros((H, W), bool)
    second.detections.append(Detection("cat", 0.5, (1.0, 1.0, 9.0, 9.0), mask=empty))
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (W, H)).save(tmp_path / "images" / name)
    return [Item("a.png", first.to_json()), Item("b.png", second.to_json())]


def test_coco_loads_with_pycocotools_and_torchvision_and_round_trips(items, tmp_path):
    from pycocotools.coco import COCO
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

    summary = write_coco(items, ["cat", "dog"], tmp_path / "annotations.json")
    assert (summary.images, summary.annotations, summary.left_out) == (2, 3, 1)
    coco = COCO(str(tmp_path / "annotations.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "dog"]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    for ann, (label, name) in zip(anns, (("cat", "rect"), ("dog", "disc"), ("dog", "parts"))):
        mask = masks()[name]
        x1, y1, x2, y2 = box_of(mask)
        assert ann["category_id"] == ("cat", "dog").index(label) + 1
        assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1]  # XYWH pixels
        assert ann["area"] == mask.sum() and ann["iscrowd"] == 0 and ann["score"] == 0.9
        assert np.array_equal(coco.annToMask(ann).astype(bool), mask)  # RLE: exact
    assert coco.getAnnIds(imgIds=[2]) == []  # the empty mask is left out

    ds = wrap_dataset_for_transforms_v2(
        CocoDetection(str(tmp_path / "images"), str(tmp_path / "annotations.json")),
        target_keys=("boxes", "masks", "labels"),
    )
    image, target = ds[0]
    assert image.size == (W, H) and target["labels"].tolist() == [1, 2, 2]
    for box, mask, name in zip(target["boxes"], target["masks"], ("rect", "disc", "parts")):
        assert box.tolist() == list(box_of(masks()[name]))  # back to XYXY
        assert np.array_equal(mask.numpy().astype(bool), masks()[name])


def test_coco_polygons_rasterise_back_to_the_masks(items, tmp_path):
    from pycocotools.coco import COCO

    write_coco(items, ["cat", "dog"], tmp_path / "annotations.json", polygons=True)
    coco = COCO(str(tmp_path / "annotations.json"))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert [len(a["segmentation"]) for a in anns] == [1, 1, 2]  # one polygon per part
    for ann, name in zip(anns, ("rect", "disc", "parts")):
        assert iou(coco.annToMask(ann).astype(bool), masks()[name]) >= COCO_POLYGON_IOU


def test_yolo_labels_parse_and_rasterise_back_to_the_masks(items, tmp_path):
    summary = write_yolo(items, ["cat", "dog"], tmp_path)
    assert (summary.images, summary.annotations, summary.left_out) == (2, 3, 1)
    spec = yaml.safe_load((tmp_path / "data.yaml").read_text())
    assert spec["names"] == {0: "cat", 1: "dog"} and spec["nc"] == 2
    assert spec["train"] == spec["val"] == "images" and spec["path"] == str(tmp_path.resolve())
    assert (tmp_path / "labels" / "b.txt").read_text() == ""  # a background image
    lines = (tmp_path / "labels" / "a.txt").read_text().splitlines()
    assert len(lines) == 3
    for line, (cls, name) in zip(lines, ((0, "rect"), (1, "disc"), (1, "parts"))):
        values = line.split()
        xy = np.array(values[1:], dtype=np.float64).reshape(-1, 2)
        assert int(values[0]) == cls and ((xy >= 0) & (xy <= 1)).all()
        drawn = np.zeros((H, W), np.uint8)
        cv2.fillPoly(drawn, [np.round(xy * [W, H]).astype(np.int32)], 1)  # as Ultralytics
        assert iou(drawn.astype(bool), masks()[name]) >= YOLO_POLYGON_IOU


def test_joined_parts_cover_every_part_and_add_only_seams():
    parts = np.zeros((H, W), bool)
    parts[5:20, 5:20] = parts[5:20, 60:75] = parts[50:70, 30:50] = True
    polygons = mask_polygons(parts)
    assert len(polygons) == 3
    drawn = np.zeros((H, W), np.uint8)
    cv2.fillPoly(drawn, [join_polygons(polygons).astype(np.int32)], 1)
    drawn = drawn.astype(bool)
    assert (drawn >= parts).all()  # every part inside
    assert (drawn & ~parts).sum() < 2 * (W + H)  # the rest is two one-pixel seams


def test_exif_rotated_original_becomes_an_upright_copy(tmp_path):
    """The masks are made on the upright image; the dataset's image must be that one."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    src = tmp_path / "phone.jpg"
    Image.new("RGB", (40, 30), (200, 0, 0)).save(src, exif=exif)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (40, 30)).save(plain)
    labels = LabelSet(tmp_path / "out", LabelSettings(prompt="cat"))
    for path, (w, h) in ((src, (30, 40)), (plain, (40, 30))):
        labels.add(path.stem, Segmentation(str(path), w, h, "cat", "d", "s").to_json())
    labels.export([(src, "phone"), (plain, "plain")], ("coco",))
    upright = tmp_path / "out" / "images" / "phone.jpg"
    assert not upright.is_symlink() and Image.open(upright).size == (30, 40)
    link = tmp_path / "out" / "images" / "plain.png"
    assert link.is_symlink() and link.resolve() == plain.resolve()


def run_cli(models, *args):
    argv = ["segment", *args, "--detector", models["grounding_dino"], "--segmenter",
            models["sam2"], "--device", "cpu", "--quiet", "--box-threshold", "0",
            "--text-threshold", "0", "--max-detections", "2"]  # fmt: skip
    return main(argv)


def test_interrupted_folder_run_resumes_without_redoing_images(
    models, tmp_path, monkeypatch, capsys
):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "sub/c.png"):
        Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(folder / name)
    out = tmp_path / "dataset"
    done, stop = [], {"at": 1}  # stopped while segmenting the second image
    real = LabelSettings.segment

    def counted(self, segmenter, image):
        if len(done) == stop["at"]:
            raise KeyboardInterrupt
        done.append(image.size)
        return real(self, segmenter, image)

    monkeypatch.setattr(LabelSettings, "segment", counted)
    args = [str(folder), "--prompt", "cat. dog", "--export", "coco,yolo", "--out", str(out)]
    assert run_cli(models, *args) == 130
    assert [p.name for p in (out / "results").iterdir()] == ["a.json"]  # whole files only
    stop["at"] = None
    assert run_cli(models, *args) == 0
    assert len(done) == 3  # a.png was not segmented again
    assert "1 of 3 images already done" in capsys.readouterr().out
    coco = json.loads((out / "annotations.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == ["a.png", "b.jpg", "sub__c.png"]
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["a.txt", "b.txt", "sub__c.txt"]
    assert (out / "images" / "sub__c.png").resolve() == (folder / "sub" / "c.png").resolve()
    assert not list(out.rglob("*.tmp"))
    doc = json.loads((out / "results" / "b.json").read_text())
    assert doc["image"] == str(folder / "b.jpg") and len(doc["detections"]) == 2

    changed = [str(folder), "--prompt", "cat", "--export", "coco", "--out", str(out)]
    assert run_cli(models, *changed) == 2
    err = capsys.readouterr().err
    assert "labelled with other settings (prompt 'cat. dog' -> 'cat')" in err
    assert err.count("\n") == 1
