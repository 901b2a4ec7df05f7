"""COCO and YOLO datasets from per-image results, and labelled folder runs that resume."""

import json
import logging
import os
import shutil

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from vitsam.cli import main
from vitsam.errors import VitsamError
from vitsam.seg.exports import (
    DatasetEntry,
    join_polygons,
    mask_polygons,
    write_coco,
    write_yolo,
    yolo_polygon,
)
from vitsam.seg.labelset import LabelSet, LabelSettings, named_images
from vitsam.seg.results import Detection, Segmentation

H, W = 80, 120


def coco_decode(polygons: list[list[float]], h: int, w: int) -> tuple[int, np.ndarray]:
    """COCO polygons -> (area, mask) as pycocotools rasterises them (a union)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    return int(mask_utils.area(rle)), mask_utils.decode(rle).astype(bool)


def yolo_fill(line: str, h: int, w: int, truncate: bool = False) -> np.ndarray:
    """A YOLO segmentation line -> its mask as Ultralytics draws it (cv2.fillPoly of the
    denormalised vertices, rounded, or truncated as `polygon2mask`'s int32 cast does)."""
    xy = np.array(line.split()[1:], dtype=np.float64).reshape(-1, 2) * [w, h]
    drawn = np.zeros((h, w), np.uint8)
    cv2.fillPoly(drawn, [(xy if truncate else np.round(xy)).astype(np.int32)], 1)
    return drawn.astype(bool)


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
def items(tmp_path) -> list[DatasetEntry]:
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
    return [DatasetEntry("a.png", first.to_json()), DatasetEntry("b.png", second.to_json())]


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
    assert [len(a["segmentation"]) for a in anns[:2]] == [1, 1]  # one polygon each
    assert set(anns[2]["segmentation"]) == {"size", "counts"}  # a hole: RLE
    for ann, name in zip(anns, ("rect", "disc", "parts")):
        assert np.array_equal(coco.annToMask(ann).astype(bool), masks()[name])
        assert ann["area"] == masks()[name].sum()


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
        drawn, mask = yolo_fill(line, H, W), masks()[name]
        assert (drawn >= mask).all() and not drawn[60:64, 15:19].any()  # parts' hole stays
        assert (drawn & ~mask).sum() <= (0 if name != "parts" else W)  # parts: one seam


def test_joined_parts_cover_every_part_and_add_only_seams():
    parts = np.zeros((H, W), bool)
    parts[5:20, 5:20] = parts[5:20, 60:75] = parts[50:70, 30:50] = True
    polygons = mask_polygons(parts, corners=False)
    assert [len(p) for p in polygons] == [1, 1, 1]  # three parts, no holes
    drawn = np.zeros((H, W), np.uint8)
    cv2.fillPoly(drawn, [join_polygons([p[0] for p in polygons]).astype(np.int32)], 1)
    drawn = drawn.astype(bool)
    assert (drawn >= parts).all()  # every part inside
    assert (drawn & ~parts).sum() < 2 * (W + H)  # the rest is two one-pixel seams


SH, SW = 100, 140  # the canvas of the polygon shapes below


def shapes() -> dict[str, np.ndarray]:
    """Shapes polygons used to get wrong (issue 22): pixel-centre vertices shrank them by
    half a pixel all round, holes were filled, thin masks were dropped."""
    yy, xx = np.mgrid[:SH, :SW]
    out = {k: np.zeros((SH, SW), bool) for k in ("square", "holed", "parts", "pixel", "wire")}
    out["square"][10:30, 40:60] = True  # 400 px
    out["holed"][10:90, 30:110] = True
    out["holed"][30:70, 50:90] = False  # 6400 - 1600 = 4800 px
    out["disc"] = (yy - 50) ** 2 + (xx - 70) ** 2 <= 20**2
    out["parts"][5:25, 5:35] = out["parts"][60:95, 100:130] = True
    out["pixel"][50, 70] = True
    out["wire"][np.arange(20, 80), np.arange(30, 90)] = True  # 1 px wide, 8-connected
    return out


@pytest.fixture
def shape_items() -> list[DatasetEntry]:
    seg = Segmentation("s.png", SW, SH, "thing", "det", "seg")
    for mask in shapes().values():
        seg.detections.append(Detection("thing", 0.9, box_of(mask), mask=mask))
    return [DatasetEntry("s.png", seg.to_json())]


def test_coco_polygons_decode_to_the_masks_area(shape_items, tmp_path):
    """pycocotools' `frPyObjects` + `merge` + `area` of each written polygon set is the
    mask's area; a mask with a hole is written as RLE; thin masks are kept."""
    from pycocotools.coco import COCO

    summary = write_coco(shape_items, ["thing"], tmp_path / "a.json", polygons=True)
    assert (summary.annotations, summary.left_out) == (len(shapes()), 0)
    coco = COCO(str(tmp_path / "a.json"))
    for ann, (name, mask) in zip(coco.loadAnns(coco.getAnnIds()), shapes().items()):
        assert ann["area"] == mask.sum(), name
        assert np.array_equal(coco.annToMask(ann).astype(bool), mask), name
        if name == "holed":
            assert set(ann["segmentation"]) == {"size", "counts"} and ann["area"] == 4800
            continue
        assert len(ann["segmentation"]) == (2 if name == "parts" else 1), name
        assert coco_decode(ann["segmentation"], SH, SW)[0] == mask.sum(), name
    square = coco.loadAnns(coco.getAnnIds())[0]["segmentation"][0]
    corners = {tuple(square[i : i + 2]) for i in range(0, len(square), 2)}
    assert corners == {(40, 10), (60, 10), (60, 30), (40, 30)}  # on pixel corners


def test_yolo_polygons_fill_back_to_the_masks(shape_items, tmp_path):
    """cv2.fillPoly of each denormalised line (as Ultralytics' polygon2mask draws it) gives
    the mask: the hole stays empty, the pixel and the wire are kept."""
    summary = write_yolo(shape_items, ["thing"], tmp_path)
    assert (summary.annotations, summary.left_out) == (len(shapes()), 0)
    lines = (tmp_path / "labels" / "s.txt").read_text().splitlines()
    for line, (name, mask) in zip(lines, shapes().items()):
        assert len(line.split()) >= 7, name  # 3 points at least: a polygon, not a box
        for truncate in (False, True):
            drawn = yolo_fill(line, SH, SW, truncate)
            if name == "parts":  # one ring through both parts: a one-pixel seam between
                assert (drawn >= mask).all() and (drawn & ~mask).sum() < SW
                continue
            assert np.array_equal(drawn, mask), (name, truncate)
    assert yolo_fill(lines[1], SH, SW).sum() == yolo_fill(lines[1], SH, SW, True).sum() == 4800


def test_polygons_on_pixel_corners_decode_exactly_even_with_holes():
    """Random blobs: every ring of `mask_polygons` rasterised by pycocotools, combined
    even-odd (outer rings add, holes cut), is the mask, pixel for pixel; YOLO's ring of a
    blob in one part fills back to it within a pixel or two (a seam between holes may
    cross a corner of one)."""
    rng = np.random.default_rng(0)
    for _ in range(100):
        h, w = rng.integers(5, 40, 2)
        smooth = cv2.GaussianBlur(rng.random((h, w)), (0, 0), rng.uniform(0.5, 2))
        mask = smooth > rng.uniform(0.4, 0.6)
        xor = np.zeros((h, w), bool)
        for rings in mask_polygons(mask):
            for ring in rings:
                xor ^= coco_decode([ring.ravel().astype(float).tolist()], h, w)[1]
        assert np.array_equal(xor, mask)
        if len(mask_polygons(mask, corners=False)) == 1:
            drawn = np.zeros((h, w), np.uint8)
            cv2.fillPoly(drawn, [yolo_polygon(mask).astype(np.int32)], 1)
            assert (drawn.astype(bool) >= mask).all() and (drawn.astype(bool) & ~mask).sum() <= 2


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
    placed = tmp_path / "out" / "images" / "plain.png"
    assert not placed.is_symlink() and placed.read_bytes() == plain.read_bytes()


def labelled_folder(tmp_path, n=8):
    """n images in photos/ (two in a subfolder) with finished results in out/, no models."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = [folder / ("sub" if i < 2 else "") / f"{i}.png" for i in range(n)]
    labels = LabelSet(tmp_path / "out", LabelSettings(prompt="cat"))
    for path in paths:
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(path)
    entries = named_images([folder])
    mask = np.zeros((30, 40), bool)
    mask[5:20, 10:30] = True
    for path, name in entries:
        det = Detection("cat", 0.9, (10, 5, 30, 20), mask=mask, mask_score=0.8)
        labels.add(name, Segmentation(str(path), 40, 30, "cat", "d", "s", [det]).to_json())
    return labels, entries


def test_the_default_dataset_is_self_contained_and_opens_after_a_move(tmp_path):
    """supervision refuses images/ entries that resolve outside images/ (supervision #1114):
    the default puts hard links or copies there, which also survive `cp -r` and a move."""
    import supervision as sv

    labels, entries = labelled_folder(tmp_path)
    labels.export(entries, ("coco", "yolo"))
    images = labels.root / "images"
    assert len(list(images.iterdir())) == 8
    assert not any(p.is_symlink() for p in images.iterdir())
    moved = tmp_path / "elsewhere" / "dataset"
    shutil.copytree(labels.root, moved, symlinks=True)  # cp -r: links would stay links
    shutil.rmtree(tmp_path / "photos")
    ds = sv.DetectionDataset.from_coco(str(moved / "images"), str(moved / "annotations.json"))
    assert len(ds) == 8 and all(len(d) == 1 for _, _, d in ds)
    yolo = sv.DetectionDataset.from_yolo(str(moved / "images"), str(moved / "labels"),
                                         str(moved / "data.yaml"), force_masks=True)  # fmt: skip
    assert len(yolo) == 8 and all(d.mask[0].sum() == 300 for _, _, d in yolo)


def test_links_on_request_and_a_rerun_converts_what_is_there(tmp_path, caplog):
    labels, entries = labelled_folder(tmp_path)
    images = labels.root / "images"
    labels.export(entries, ("coco",), image_mode="link")
    links = sorted(images.iterdir())
    assert len(links) == 8 and all(p.is_symlink() for p in links)
    assert not any(os.path.isabs(os.readlink(p)) for p in links)  # relative: they move together
    assert all(p.resolve() == loc.resolve() for p, (loc, _) in zip(links, sorted(entries)))
    with caplog.at_level(logging.INFO, logger="vitsam"):
        labels.export(entries, ("coco",), image_mode="copy")
    assert not any(p.is_symlink() for p in images.iterdir())  # all 8, not 7 of 8
    assert not any(os.path.samefile(p, loc) for p, (loc, _) in zip(sorted(images.iterdir()), sorted(entries)))
    assert "8 images from an earlier run made copies" in caplog.text
    labels.export(entries, ("coco",), image_mode="link")
    assert all(p.is_symlink() for p in images.iterdir())
    labels.export(entries, ("coco",))  # auto: hard links (or copies) in place of the links
    assert not any(p.is_symlink() for p in images.iterdir())
    with pytest.raises(VitsamError, match="image mode 'symlink'"):
        labels.export(entries, ("coco",), image_mode="symlink")


LEFTOVERS = {  # every kind of NAME.tmp a kill can leave between the steps of a write
    "partial file": lambda tmp, original: tmp.write_bytes(b"\\x89PNG half"),
    "link to an original": lambda tmp, original: os.symlink(original, tmp),
    "dangling link": lambda tmp, original: os.symlink(original.with_name("gone.png"), tmp),
    "folder": lambda tmp, original: tmp.mkdir(),
}


@pytest.mark.parametrize("leftover", LEFTOVERS)
@pytest.mark.parametrize("mode", ["auto", "copy", "link"])
def test_a_rerun_survives_any_temp_file_a_kill_left(tmp_path, leftover, mode):
    labels, entries = labelled_folder(tmp_path, n=3)
    labels.export(entries, ("coco", "yolo"), image_mode=mode)
    out, make = labels.root, LEFTOVERS[leftover]
    originals = {loc: loc.read_bytes() for loc, _ in entries}
    written = [*(out / "images").iterdir(), *(out / "labels").iterdir(), *(out / "results").iterdir(),
               out / "annotations.json", out / "data.yaml", out / "run.json"]  # fmt: skip
    for path in [*(w.with_name(w.name + ".tmp") for w in written),
                 out / "annotations.json.annotations.tmp"]:  # fmt: skip
        make(path, entries[0][0])
    # killed before the rename: the image of one and the result of another never landed
    (out / "images" / f"{entries[0][1]}.png").unlink()
    (out / "results" / f"{entries[1][1]}.json").unlink()
    labels = LabelSet(out, LabelSettings(prompt="cat"))  # the rerun opens the folder again
    assert not list(out.rglob("*.tmp"))
    assert [name for _, name in labels.pending(entries)] == [entries[1][1]]
    doc = labels.read(entries[0][1])
    make(labels.result_path(entries[1][1]).with_name(f"{entries[1][1]}.json.tmp"), entries[1][0])
    labels.add(entries[1][1], doc)  # over a leftover of this very write
    make(out / "images" / f"{entries[0][1]}.png.tmp", entries[0][0])  # and of the next
    labels.export(entries, ("coco", "yolo"), image_mode=mode)
    assert not list(out.rglob("*.tmp"))
    assert {loc: loc.read_bytes() for loc, _ in entries} == originals  # never written through
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == 3
    for loc, name in entries:
        assert (out / "images" / f"{name}.png").read_bytes() == originals[loc]


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
    assert (out / "images" / "sub__c.png").read_bytes() == (folder / "sub" / "c.png").read_bytes()
    assert not list(out.rglob("*.tmp"))
    doc = json.loads((out / "results" / "b.json").read_text())
    assert doc["image"] == str(folder / "b.jpg") and len(doc["detections"]) == 2

    changed = [str(folder), "--prompt", "cat", "--export", "coco", "--out", str(out)]
    assert run_cli(models, *changed) == 2
    err = capsys.readouterr().err
    assert "labelled with other settings (prompt 'cat. dog' -> 'cat')" in err
    assert err.count("\n") == 1
