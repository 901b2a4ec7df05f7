"""A folder run: read the next image and write the last one's outputs while the models work.

    from vitsam.seg.local_runner import Outputs, segment_folder
    failed = segment_folder(named_images(["photos/"]), lambda im: seg.segment(im, "cat"),
                            Outputs(Path("segments")), on_result=print)

Per image the work is: decode the file (PIL), run the models (torch), write the outputs
(overlay and mask PNGs, JSON, the LabelSet's result). Decoding and PNG encoding spend most
of their time in C code that releases the GIL, so two helper threads do them beside the
models: while image i is in the models, image i+1 is decoded and image i-1's outputs are
written. The models stay on the calling thread (the helpers use no torch), at most one
read and one write are in flight (three decoded images held at most), and `on_result`
sees every image in input order, as a sequential loop would.

A bad image (unreadable, corrupt, a box outside it) or a failed write (disk full, no
permission) is reported at its place in the order and the run goes on. On
KeyboardInterrupt the write in flight is finished and the helper threads are joined
before it propagates, so every output already written is whole (a LabelSet's result file
is renamed into place last, so a rerun redoes an image whose write was cut short).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vitsam.errors import VitsamError
from vitsam.seg.labelset import Entry, LabelSet
from vitsam.seg.pipeline import as_image
from vitsam.seg.results import FORMATS, Segmentation, save


@dataclass
class EntryResult:
    """What became of one entry (labelset.Entry: an image and its output name) of a folder
    run, as reported to `on_result`."""

    location: Path | str  # the image file
    name: str  # its output name ('sub__cat' for sub/cat.jpg)
    result: Segmentation | None  # None when it failed
    error: str = ""  # one line naming the file, or "" when it was segmented and written


@dataclass
class Outputs:
    """Where and what a folder run writes per image: `save`'s files in `out`, and the
    result document into `labels` when given (then leave "json" out of `formats`)."""

    out: Path
    formats: tuple[str, ...] = FORMATS
    instance_masks: bool = False
    labels: LabelSet | None = None

    def write(self, name: str, image: Image.Image, result: Segmentation) -> None:
        """Raises OSError or VitsamError when a file cannot be written."""
        if self.formats:
            save(result, image, self.out, name, self.formats, self.instance_masks)
        if self.labels is not None:  # last: the renamed-in result marks the image done
            self.labels.add(name, result.to_json())


Segment = Callable[[Image.Image], Segmentation]  # RGB image -> its result; the models' work


def segment_folder(
    entries: Sequence[Entry],
    segment: Segment,
    outputs: Outputs,
    on_result: Callable[[EntryResult], None] | None = None,
    overlap: bool = True,
) -> int:
    """Segment and write every (path, output name) of `entries`; returns how many failed.

    `segment` runs on the calling thread; `on_result` is called there too, once per
    image in input order, after that image's outputs are written (or it failed).
    `overlap=False` does the same work one step at a time on the calling thread (for
    comparison). Errors other than VitsamError and OSError (bugs) propagate.
    """
    failed = 0

    def report(entry_result: EntryResult) -> None:
        nonlocal failed
        failed += bool(entry_result.error)
        if on_result is not None:
            on_result(entry_result)

    with ExitStack() as stack:  # on exit (also KeyboardInterrupt) the helpers are joined
        if overlap:
            reader = stack.enter_context(ThreadPoolExecutor(1, "vitsam-read"))
            writer = stack.enter_context(ThreadPoolExecutor(1, "vitsam-write"))
        else:
            reader = writer = _OnCaller()
        writing: tuple[Future[str], EntryResult] | None = None
        reading = reader.submit(_read, entries[0][0]) if entries else None
        for i, (location, name) in enumerate(entries):
            image = reading.result()
            reading = reader.submit(_read, entries[i + 1][0]) if i + 1 < len(entries) else None
            entry_result = EntryResult(location, name, None)
            if isinstance(image, VitsamError):
                entry_result.error = str(image)
            else:
                try:
                    entry_result.result = segment(image)
                    entry_result.result.image = str(location)
                except VitsamError as e:
                    entry_result.error = str(e)
            if writing is not None:  # the previous image's write, before this one's report
                report(_finished(*writing))
                writing = None
            if entry_result.error:
                report(entry_result)
            else:
                writing = writer.submit(_write, outputs, name, image, entry_result.result), entry_result
        if writing is not None:
            report(_finished(*writing))
    return failed


def _write(outputs: Outputs, name: str, image: Image.Image, result: Segmentation) -> str:
    """Write one image's outputs (on the writer thread); "" or the one-line error."""
    try:
        outputs.write(name, image, result)
    except (OSError, VitsamError) as e:
        return f"{result.image}: outputs not written ({e})"
    return ""


def _read(location: Path | str) -> Image.Image | VitsamError:
    """Decode one image (on the reader thread); the error is returned, to be reported in order."""
    try:
        return as_image(Path(location))[0]
    except VitsamError as e:
        return e


def _finished(write: Future[str], entry_result: EntryResult) -> EntryResult:
    entry_result.error = write.result()
    if entry_result.error:
        entry_result.result = None
    return entry_result


class _OnCaller:
    """An executor that runs each call at once on the calling thread (no overlap)."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future
