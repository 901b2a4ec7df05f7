"""`vitsam segment --engine ray`: a labelling run spread over a Ray cluster with Ray Data.

    from vitsam.seg.labelset import LabelSettings
    from vitsam.seg.ray_runner import label_with_ray

    report = label_with_ray(["s3://bucket/photos/"], "dataset", LabelSettings(prompt="cat. dog"),
                            exports=("coco",), workers=8)

Ray Data reads the image files (`read_binary_files`: local files and folders, or URIs that
pyarrow's filesystems open, such as s3:// or gs://); `map_batches` runs `SegmentWorker`, a
callable class, so each worker (a Ray actor) loads the models once and then segments
batch after batch; the driver receives one JSON document per image and writes it into the
same LabelSet as the local engine (so reruns skip finished images and the datasets are
built the same way). The driver joins the cluster named by RAY_ADDRESS, else starts a
local one for the run. Workers must be able to import vitsam and load the models (a
shared model cache or hub access on every node). Ray is the optional extra `.[scale]`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from vitsam.errors import VitsamError
from vitsam.images import decode_image, is_image_path, max_pixels
from vitsam.seg.exports import ExportSummary
from vitsam.seg.labelset import Entry, LabelSet, LabelSettings, named_images, output_name

OnResult = Callable[[str, "dict | None", str], None]  # (location, document or None, error)


@dataclass
class LabelReport:
    images: int  # listed in the sources
    skipped: int  # already done in an earlier run
    failed: int  # unreadable images (each reported through on_result)
    results: Path  # the per-image JSON folder
    exports: list[ExportSummary] = field(default_factory=list)


class SegmentWorker:
    """One Ray actor: the models, loaded once; batches of image files in, JSON documents out.

    Input batch (numpy format): `path` (str) and `bytes` (the file's contents). Output:
    `path`, `doc` (the per-image JSON as text, "" on error), `error` ("" or one line),
    and `bytes` passed through when `keep_bytes` (for copying remote images).
    """

    def __init__(
        self,
        settings: dict,
        device: str = "auto",
        precision: str = "auto",
        keep_bytes: bool = False,
        max_pixels: int | None = None,  # the driver's limit: a remote node has its own env
        runtime: str = "torch",
    ):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.settings = LabelSettings(**settings)
        self.segmenter = self.settings.load(device, precision, runtime)
        self.keep_bytes, self.max_pixels = keep_bytes, max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        docs, errors = [], []
        for path, data in zip(batch["path"], batch["bytes"]):
            try:
                image = decode_image(bytes(data), path, limit=self.max_pixels)
                result = self.settings.segment(self.segmenter, image)
                docs.append(json.dumps(result.to_json()))
                errors.append("")
            except VitsamError as e:
                docs.append("")
                errors.append(str(e))
        docs, errors = np.array(docs, dtype=object), np.array(errors, dtype=object)
        out = {"path": batch["path"], "doc": docs, "error": errors}  # object: no fixed width
        if self.keep_bytes:
            out["bytes"] = batch["bytes"]
        return out


def list_sources(inputs: list[str]) -> tuple[list[Entry], list[str], object]:
    """Local paths or URIs -> (entries, the paths Ray reads, the pyarrow filesystem or None).

    Entries are (location, output name) as for the local engine; a URI's images are named
    by their path below it. Raises VitsamError for a missing source or a mix of kinds.
    """
    uris = [s for s in map(str, inputs) if "://" in s]
    if not uris:
        entries = named_images(inputs)
        return entries, [os.path.abspath(loc) for loc, _ in entries], None
    if len(uris) != len(inputs):
        raise VitsamError("give local paths or URIs, not a mix of both")
    import pyarrow.fs as pafs

    entries, paths, fs = [], [], None
    for uri in uris:
        try:
            this, root = pafs.FileSystem.from_uri(uri)
        except Exception as e:  # pyarrow's errors vary by filesystem
            raise VitsamError(f"{uri}: cannot open ({str(e).splitlines()[0]})") from None
        if fs is not None and this.type_name != fs.type_name:
            raise VitsamError("all URIs must be on one filesystem (one scheme)")
        fs, info = this, this.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise VitsamError(f"{uri}: no such file or folder")
        if info.type != pafs.FileType.Directory:
            entries.append((uri, output_name(PurePosixPath(PurePosixPath(root).name))))
            paths.append(root)
            continue
        root = root.rstrip("/")
        found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        for f in sorted(f.path for f in found if f.is_file and is_image_path(Path(f.path))):
            rel = PurePosixPath(f).relative_to(root)
            entries.append((f"{uri.rstrip('/')}/{rel}", output_name(rel)))
            paths.append(f)
    return entries, paths, fs


def label_with_ray(
    inputs: list[str],
    out: str | Path,
    settings: LabelSettings,
    exports: tuple[str, ...] = (),
    workers: int = 1,
    device: str = "auto",
    precision: str = "auto",
    gpus_per_worker: float | None = None,
    cpus_per_worker: float = 1.0,
    batch_size: int = 1,
    polygons: bool = False,
    image_mode: str = "auto",
    progress: bool = False,
    on_result: OnResult | None = None,
    runtime: str = "torch",
) -> LabelReport:
    """Label every image of `inputs` into the LabelSet `out` with `workers` Ray actors.

    `runtime` as for TextSegmenter ("openvino": each worker converts or loads the cached
    graphs of its node). `gpus_per_worker` defaults to 1 where the cluster has GPUs, else 0. `batch_size` is
    images per call of a worker (they are segmented one by one; larger batches only
    amortise Ray's per-batch overhead). Images already done in `out` are skipped; the
    datasets in `exports` ('coco', 'yolo') are rebuilt at the end. Raises VitsamError for
    bad settings or sources, before any worker starts.
    """
    if workers < 1:
        raise VitsamError(f"--workers must be at least 1, got {workers}")
    settings.check()
    entries, paths, fs = list_sources(inputs)
    if not entries:
        raise VitsamError(f"no image files in {' '.join(map(str, inputs))}")
    labels = LabelSet(out, settings)
    todo = {name for _, name in labels.pending(entries)}
    by_path = {p: e for p, e in zip(paths, entries) if e[1] in todo}
    failed = 0
    if by_path:
        worker = {
            "settings": settings.to_json(),
            "device": device,
            "precision": precision,
            "runtime": runtime,
            "keep_bytes": bool(exports) and fs is not None,  # remote images are copied in
            "max_pixels": max_pixels(),
        }
        with _cluster():
            ds = _segment_dataset(
                list(by_path), fs, worker, workers, gpus_per_worker, cpus_per_worker, batch_size
            )
            for path, doc, error, data in _rows(ds, len(by_path), progress):
                location, name = by_path[path]
                if error:
                    failed += 1
                else:
                    doc["image"] = str(location)
                    labels.add(name, doc, data, PurePosixPath(str(location)).suffix)
                if on_result is not None:
                    on_result(str(location), doc, error)
    summaries = labels.export(entries, exports, polygons, image_mode)
    return LabelReport(len(entries), len(entries) - len(todo), failed, labels.results, summaries)


@contextmanager
def _cluster():
    """Use the Ray this process is connected to; else join RAY_ADDRESS's cluster, or start
    a local one, for the duration."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


def _segment_dataset(paths, fs, worker: dict, workers: int, gpus, cpus: float, batch_size: int):
    """The Ray Dataset: files read by Ray Data, segmented by an actor pool of SegmentWorkers."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    # Reading is light I/O and asks for no CPU: workers may hold every CPU of the cluster
    # (N workers on N cores) without starving the reads that feed them.
    read = ray.data.read_binary_files(paths, include_paths=True, filesystem=fs, num_cpus=0)
    return read.map_batches(
        SegmentWorker,
        fn_constructor_kwargs=worker,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus,
        num_gpus=gpus,
    )


def _rows(ds, total: int, progress: bool):
    """Yield (path, document or None, error, bytes or None) per image as workers finish."""
    from tqdm import tqdm

    with tqdm(total=total, desc="segment", unit="image", disable=not progress) as bar:
        try:
            for row in ds.iter_rows():
                bar.update()
                doc = json.loads(row["doc"]) if row["doc"] else None
                yield row["path"], doc, row["error"], row.get("bytes")
        except Exception as e:  # a worker that failed to start: show its own error
            cause = _vitsam_cause(e)
            if cause is None:
                raise
            raise VitsamError(str(cause)) from None


def _vitsam_cause(error: BaseException | None) -> VitsamError | None:
    """The VitsamError a worker raised, from under Ray's wrapping, if that is what failed."""
    for _ in range(10):
        if error is None or isinstance(error, VitsamError):
            return error
        error = getattr(error, "cause", None) or error.__cause__
    return None


class VideoWorker:
    """One Ray actor for videos: the video models, loaded once; a batch of (path, name)
    rows in, each video tracked into the VideoDataset at `root` (which every worker must
    see: a local cluster, or a shared filesystem), one summary row out per video."""

    def __init__(self, settings: dict, root: str, run: dict, categories: list[str],
                 kinds: tuple[str, ...], options: dict, redetect: int, device: str = "auto",
                 precision: str = "auto"):  # fmt: skip
        from transformers.utils import logging as hf_logging

        from vitsam.seg.video_dataset import VideoDataset

        hf_logging.disable_progress_bar()
        self.settings = LabelSettings(**settings)
        self.segmenter = self.settings.load_video(device, precision, redetect)
        self.dataset = VideoDataset(root, run, categories)  # the driver's run.json: it matches
        self.kinds, self.options = tuple(kinds), options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = []
        for path, name in zip(batch["path"], batch["name"]):
            try:
                result = self.dataset.track(self.settings, self.segmenter, Path(path), str(name),
                                            self.kinds, **self.options)  # fmt: skip
                errors.append(result.stopped or "")
            except VitsamError as e:
                errors.append(str(e))
        return {"name": batch["name"], "error": np.array(errors, dtype=object)}


def track_with_ray(
    entries: list[tuple[Path, str]],
    dataset,
    settings: LabelSettings,
    kinds: tuple[str, ...],
    options: dict,
    redetect: int = 20,
    workers: int = 1,
    device: str = "auto",
    precision: str = "auto",
    gpus_per_worker: float | None = None,
    cpus_per_worker: float = 1.0,
    on_result: Callable[[str, str], None] | None = None,
) -> int:
    """Track each video of `entries` ((path, output name), local files every worker can
    read) into `dataset` (video_dataset.VideoDataset) with `workers` Ray actors, one video
    per task; `options` as VideoSegmenter.segment takes them. Returns how many failed or
    stopped early (each said through `on_result(name, error)`). The datasets are the
    caller's to export."""
    if workers < 1:
        raise VitsamError(f"--workers must be at least 1, got {workers}")
    if not entries:
        return 0
    import ray

    failed = 0
    with _cluster():
        ray.data.DataContext.get_current().enable_progress_bars = False
        if gpus_per_worker is None:
            gpus_per_worker = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        rows = [{"path": str(Path(p).resolve()), "name": n} for p, n in entries]
        worker = {
            "settings": settings.to_json(), "root": str(dataset.root.resolve()),
            "run": json.loads((dataset.root / "run.json").read_text()),
            "categories": dataset.categories, "kinds": tuple(kinds), "options": options,
            "redetect": redetect, "device": device, "precision": precision,
        }  # fmt: skip
        ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            VideoWorker, fn_constructor_kwargs=worker, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
        )  # fmt: skip
        try:
            for row in ds.iter_rows():
                failed += bool(row["error"])
                if on_result is not None:
                    on_result(row["name"], row["error"])
        except Exception as e:  # a worker that failed to start: show its own error
            cause = _vitsam_cause(e)
            if cause is None:
                raise
            raise VitsamError(str(cause)) from None
    return failed
