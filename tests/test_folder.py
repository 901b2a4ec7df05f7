"""A folder run with reading and writing overlapped: order, bad images, failed writes, Ctrl-C."""

import json
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from tests.test_segment import run_cli
from vitsam.errors import VitsamError
from vitsam.images import open_image
from vitsam.seg import TextSegmenter
from vitsam.seg.labelset import LabelSet, LabelSettings, named_images
from vitsam.seg.local_runner import Outputs, segment_folder

PROMPT = ["--prompt", "cat. dog", "--box-threshold", "0.0", "--text-threshold", "0.0",
          "--max-detections", "3"]  # fmt: skip
BAD = 3  # the corrupt file's place among the six


@pytest.fixture
def folder(tmp_path):
    """Six images of different sizes, 0.png ... 5.png, with 3.png a truncated PNG."""
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        arr = rng.integers(0, 255, (60 + 8 * i, 90 - 6 * i, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"{i}.png")
    data = (root / f"{BAD}.png").read_bytes()
    (root / f"{BAD}.png").write_bytes(data[: len(data) // 3])
    return root


@pytest.fixture(scope="module")
def segmenter(models):
    return TextSegmenter.from_pretrained(
        models["grounding_dino"], models["sam2"], device="cpu", box_threshold=0.0,
        text_threshold=0.0, max_detections=3,
    )  # fmt: skip


def found_lines(text: str) -> list[str]:
    """The image of each "IMAGE: N detections (...)" line, in the order printed."""
    return [line.split(": ")[0] for line in text.splitlines() if " detections (" in line]


def test_overlapped_cli_run_matches_the_sequential_one_in_order(
    models, folder, segmenter, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "stderr", sys.stdout)  # one stream: the error's place shows
    assert run_cli(models, str(folder), *PROMPT, "--out", str(out)) == 1  # one image failed
    lines = capsys.readouterr().out.splitlines()
    expected = [str(folder / f"{i}.png") for i in range(6)]
    expected[BAD] = f"error: {expected[BAD]}"
    assert [": ".join(line.split(": ")[:2 if line.startswith("error") else 1])
            for line in lines[:6]] == expected  # fmt: skip
    assert "corrupt or truncated image" in lines[BAD]
    assert lines[6] == f"5 of 6 images segmented; outputs in {out}"

    seq, seen = tmp_path / "seq", []
    segment = lambda im: segmenter.segment(im, "cat. dog")  # noqa: E731
    failed = segment_folder(named_images([folder]), segment, Outputs(seq), seen.append, overlap=False)
    assert failed == 1 and [o.name for o in seen] == [str(i) for i in range(6)]
    for p in (folder / f"{i}.png" for i in range(6) if i != BAD):
        doc = json.loads((out / f"{p.stem}.json").read_text())
        assert doc == json.loads((seq / f"{p.stem}.json").read_text())
        assert doc["image"] == str(p) and doc["detections"]
        for kind in ("overlay", "masks"):
            a, b = (Image.open(d / f"{p.stem}.{kind}.png") for d in (out, seq))
            assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not list(out.glob(f"{BAD}.*"))


def test_a_failed_write_is_reported_and_the_others_are_written(
    models, folder, tmp_path, capsys, monkeypatch
):
    from vitsam.seg import local_runner as folder_run

    (folder / f"{BAD}.png").unlink()
    real, writers = folder_run.save, set()

    def save(result, image, out_dir, name, *args):
        writers.add(threading.current_thread().name)
        if name == "2":
            raise OSError(28, "No space left on device")
        return real(result, image, out_dir, name, *args)

    monkeypatch.setattr(folder_run, "save", save)
    out = tmp_path / "out"
    assert run_cli(models, str(folder), *PROMPT, "--out", str(out)) == 1
    captured = capsys.readouterr()
    assert f"error: {folder / '2.png'}: outputs not written ([Errno 28] No space left on device)" in captured.err
    assert found_lines(captured.out) == [str(folder / f"{i}.png") for i in (0, 1, 4, 5)]
    assert "4 of 5 images segmented" in captured.out
    assert sorted(p.name for p in out.glob("*.json")) == ["0.json", "1.json", "4.json", "5.json"]
    assert all(name.startswith("vitsam-write") for name in writers)  # off the models' thread


def test_ctrl_c_joins_the_helpers_and_the_labelset_resumes(folder, segmenter, tmp_path):
    (folder / f"{BAD}.png").unlink()
    entries = named_images([folder])  # 0, 1, 2, 4, 5
    labels = LabelSet(tmp_path / "labels", LabelSettings(prompt="cat. dog"))
    outputs = Outputs(labels.results, (), labels=labels)
    calls = []

    def interrupted(image):
        calls.append(threading.current_thread())
        if len(calls) == 4:
            raise KeyboardInterrupt
        return segmenter.segment(image, "cat. dog")

    with pytest.raises(KeyboardInterrupt):
        segment_folder(entries, interrupted, outputs)
    assert calls == [threading.main_thread()] * 4  # the models stay on the calling thread
    assert not [t for t in threading.enumerate() if t.name.startswith("vitsam-")]
    # the write in flight when Ctrl-C came (image 2's) was finished before the threads joined
    assert labels.pending(entries) == entries[3:]
    assert not list(labels.results.glob("*.tmp"))
    assert segment_folder(labels.pending(entries), lambda im: segmenter.segment(im, "cat. dog"),
                          outputs) == 0  # fmt: skip
    assert labels.pending(entries) == []

    whole = Outputs(tmp_path / "whole", ("json",))
    segment_folder(entries, lambda im: segmenter.segment(im, "cat. dog"), whole, overlap=False)
    for _, name in entries:
        assert labels.read(name) == json.loads((whole.out / f"{name}.json").read_text())


def test_an_unreadable_file_is_one_line(tmp_path, monkeypatch):
    from pathlib import Path

    path = tmp_path / "locked.png"
    Image.new("RGB", (4, 4)).save(path)

    def refuse(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(VitsamError, match=r"locked.png: cannot read \(Permission denied\)"):
        open_image(path)
