"""Datasets as uint8 tensors in memory: torchvision ones, image folders, synthetic shapes.

Every dataset becomes an `ArrayDataset` (images (N, C, H, W) uint8, labels (N,) int64,
class names); the loaders in `loaders.py` feed it to training.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitsam.errors import VitsamError
from vitsam.images import decode_image, is_image_path

log = logging.getLogger("vitsam")

TORCHVISION = {
    # name: (torchvision class name, files a user can place in --data-dir to work offline)
    "cifar10": ("CIFAR10", "cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/)"),
    "cifar100": ("CIFAR100", "cifar-100-python.tar.gz (or its extracted cifar-100-python/)"),
    "mnist": ("MNIST", "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz"),
    "fashion-mnist": (
        "FashionMNIST",
        "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz",
    ),
}
SPLIT_NAMES = {"train": "train", "test": "test", "val": "test"}


@dataclass
class ArrayDataset:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list[str]
    skipped: list[str] = field(default_factory=list)  # files that could not be read

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int, seed: int = 0) -> ArrayDataset:
        """A class-balanced random subset of n examples (all of them when n is 0 or too big)."""
        if n <= 0 or n >= len(self):
            return self
        return self.take(self._balanced(n, seed))

    def split(self, n: int, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
        """(the rest, n held-out examples): a class-balanced random split, disjoint by index.

        Raises VitsamError when n leaves fewer than one example per class to train on.
        """
        if n > len(self) - len(self.classes):
            raise VitsamError(
                f"a validation split of {n} leaves too few of the {len(self)} training images: "
                "lower --val-split"
            )
        held = self._balanced(n, seed)
        rest = torch.ones(len(self), dtype=torch.bool)
        rest[held] = False
        return self.take(rest.nonzero().squeeze(1)), self.take(held)

    def take(self, idx: torch.Tensor) -> ArrayDataset:
        """The examples at `idx` (int64 indices), in that order."""
        return ArrayDataset(self.images[idx], self.labels[idx], self.classes, self.skipped)

    def _balanced(self, n: int, seed: int) -> torch.Tensor:
        """Sorted indices of n examples, as even over the classes as they allow."""
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=g)
        per_class = -(-n // len(self.classes))
        counts = torch.zeros(len(self.classes), dtype=torch.long)
        keep = []
        for i in order.tolist():
            c = int(self.labels[i])
            if counts[c] < per_class:
                counts[c] += 1
                keep.append(i)
                if len(keep) == n:
                    break
        return torch.tensor(sorted(keep), dtype=torch.long)

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std in [0, 1] units, for normalisation."""
        x = self.images[: min(len(self), 20_000)].float().div_(255)
        return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()


@functools.lru_cache(maxsize=1)
def _shapes() -> tuple[ArrayDataset, ArrayDataset]:
    """The built-in synthetic dataset: generated once per process (read-only tensors)."""
    return make_shapes(10_000, seed=1), make_shapes(2_000, seed=2)


def default_data_dir() -> Path:
    env = os.environ.get("VITSAM_DATA")
    return Path(env) if env else Path.home() / ".cache" / "vitsam" / "data"


def load_dataset(
    name: str, data_dir: str | Path = "", image_size: int = 32
) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) for a dataset name or an image-folder path (folder or .tar/.tar.gz)."""
    if name == "shapes":
        return _shapes()
    root = Path(data_dir) if data_dir else default_data_dir()
    if name in TORCHVISION:
        return load_torchvision(name, root)
    path = Path(name)
    if path.is_file():
        return load_archive(path, image_size, root)
    if path.exists():
        return load_image_folder(path, image_size)
    known = ", ".join([*TORCHVISION, "shapes"])
    raise VitsamError(
        f"unknown dataset {name!r}: use one of {known}, or the path of an image folder "
        "with train/<class>/ and test/<class>/ (or val/) sub-folders"
    )


DECODED_FORMAT = 1  # bump when what load_image_folder returns changes


def decoded_cache_path(archive: Path, image_size: int, cache_dir: Path) -> Path:
    """Where the decoded copy of `archive` at `image_size` px lives under `cache_dir`.

    The name carries a digest of the archive's resolved path, size in bytes and
    modification time (ns), so a changed or replaced archive gets a new copy.
    """
    st = archive.stat()
    key = f"{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}|{image_size}|{DECODED_FORMAT}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    stem = archive.name.split(".")[0]
    return cache_dir / "decoded" / f"{stem}-{image_size}px-{digest}.pt"


def load_archive(
    path: Path, image_size: int = 32, cache_dir: Path | None = None
) -> tuple[ArrayDataset, ArrayDataset]:
    """`load_image_folder` for a .tar/.tar.gz archive, decoded once and kept decoded.

    The first load decodes every image (6.3 s for CIFAR-10's 60,000 JPEGs on a 2-core
    EPYC) and writes the uint8 arrays to `decoded_cache_path` (184 MB for CIFAR-10 at
    32 px); later loads read them back (0.10 s there), as torchvision keeps CIFAR as
    arrays. A copy that cannot be read is decoded again and rewritten; one that
    cannot be written (a read-only or full disk) is skipped with a warning. Delete
    `<cache_dir>/decoded/` to take the space back. Raises VitsamError as
    load_image_folder does.
    """
    cached = decoded_cache_path(path, image_size, cache_dir or default_data_dir())
    if cached.exists():
        try:
            d = torch.load(cached, weights_only=True)
            splits = tuple(
                ArrayDataset(d[f"{s}_images"], d[f"{s}_labels"], d["classes"], d[f"{s}_skipped"])
                for s in ("train", "test")
            )
            if splits[0].skipped or splits[1].skipped:
                n = len(splits[0].skipped) + len(splits[1].skipped)
                log.warning("%s: %d unreadable images were skipped (listed in %s)", path, n, cached)
            return splits
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file: decode again
            log.warning("decoded copy %s is unreadable (%s); decoding %s again", cached, e, path)
    train, test = load_image_folder(path, image_size)
    d = {"classes": train.classes}
    for s, ds in (("train", train), ("test", test)):
        d |= {f"{s}_images": ds.images, f"{s}_labels": ds.labels, f"{s}_skipped": ds.skipped}
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(d, tmp)
        os.replace(tmp, cached)  # atomic: a reader never sees half a file
    except (OSError, RuntimeError) as e:  # torch.save raises RuntimeError on a full disk
        with contextlib.suppress(OSError):
            tmp.unlink()
        log.warning("could not keep a decoded copy of %s at %s (%s)", path, cached, e)
    return train, test


def load_torchvision(name: str, root: Path) -> tuple[ArrayDataset, ArrayDataset]:
    import torchvision.datasets as tvd

    cls_name, files = TORCHVISION[name]
    cls = getattr(tvd, cls_name)
    offline = os.environ.get("VITSAM_OFFLINE", "") not in ("", "0")

    def build(train: bool):
        try:
            return cls(str(root), train=train, download=False)
        except RuntimeError:
            pass  # not there yet: download below
        if offline:
            raise VitsamError(
                f"{name} is not in {root} and VITSAM_OFFLINE is set: place {files} in {root} "
                "(or point --data-dir / VITSAM_DATA at a copy)"
            )
        try:
            root.mkdir(parents=True, exist_ok=True)
            return cls(str(root), train=train, download=True)
        except (OSError, RuntimeError, ValueError) as e:
            raise VitsamError(
                f"{name} is not in {root} and could not be downloaded ({type(e).__name__}): "
                f"place {files} in {root} (or point --data-dir / VITSAM_DATA at a copy)"
            ) from None

    out = []
    for train in (True, False):
        ds = build(train)
        data = torch.as_tensor(np.asarray(ds.data))
        data = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
        labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)
        out.append(ArrayDataset(data.contiguous(), labels, list(ds.classes)))
    return out[0], out[1]


def _decode(data: bytes, name: str, image_size: int) -> np.ndarray:
    """Image bytes -> (image_size, image_size, 3) uint8, upright as displayed (EXIF
    orientation applied, as `predict` and `segment` read images)."""
    im = decode_image(data, name)
    if im.size != (image_size, image_size):
        im = im.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def _read(read) -> bytes | Exception:
    try:
        return read()
    except (OSError, tarfile.TarError) as e:
        return e


def _folder_entries(path: Path):
    """Yield (split, class, name, bytes or the read error) for each image of a folder or tar."""
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            parts = f.relative_to(path).parts
            if f.is_file() and is_image_path(f) and len(parts) >= 3:
                yield parts[-3], parts[-2], str(f), _read(f.read_bytes)
        return
    try:
        tar = tarfile.open(path)
    except (tarfile.TarError, OSError) as e:
        raise VitsamError(f"{path}: not a readable folder or tar archive ({e})") from None
    entries = []
    with tar:
        for m in tar:  # archive order: a compressed tar cannot seek backwards cheaply
            p = Path(m.name)
            if m.isfile() and is_image_path(p) and len(p.parts) >= 3:
                data = _read(tar.extractfile(m).read)
                entries.append((p.parts[-3], p.parts[-2], f"{path}:{m.name}", data))
    yield from sorted(entries, key=lambda e: e[2])


def load_image_folder(path: Path, image_size: int = 32) -> tuple[ArrayDataset, ArrayDataset]:
    """Decode an image-folder dataset (train/<class>/*, test/<class>/* or val/) into memory.

    Images are converted to RGB and resized to image_size; a file that cannot be read is
    logged by name, skipped, and listed in `skipped`.
    """
    found: dict[str, list[tuple[str, str, bytes | Exception]]] = {"train": [], "test": []}
    for split, cls, name, data in _folder_entries(path):
        if split in SPLIT_NAMES:
            found[SPLIT_NAMES[split]].append((cls, name, data))
    if not found["train"] or not found["test"]:
        raise VitsamError(
            f"{path}: expected images in train/<class>/ and test/<class>/ (or val/<class>/); "
            f"found {len(found['train'])} train and {len(found['test'])} test images"
        )
    classes = sorted({c for c, _, _ in found["train"]})
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for split in ("train", "test"):
        arrays, labels, skipped = [], [], []
        for cls, name, data in found[split]:
            if cls not in index:
                raise VitsamError(f"{path}: class {cls!r} is in {split}/ but not in train/")
            try:
                if isinstance(data, Exception):
                    raise data
                arrays.append(_decode(data, name, image_size))
                labels.append(index[cls])
            except Exception as e:  # noqa: BLE001 - any decoder failure means a bad file
                log.warning("skipping unreadable image %s (%s)", name, e)
                skipped.append(name)
        if not arrays:
            raise VitsamError(f"{path}: no readable images in {split}/")
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        out.append(ArrayDataset(images, torch.tensor(labels), classes, skipped))
    return out[0], out[1]


SHAPE_CLASSES = [
    "disk", "square", "ring", "cross", "triangle",
    "h-stripes", "v-stripes", "diagonal", "checker", "diamond",
]  # fmt: skip


def make_shapes(n: int, seed: int = 0, size: int = 32) -> ArrayDataset:
    """A synthetic 10-class dataset of coloured shapes and textures on noisy backgrounds.

    Position, scale, colours, stripe frequency and phase vary per image, so a model has
    to learn shape, not a pixel template. Deterministic for a given seed.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx = rng.uniform(10, size - 10, (n, 1, 1))
    cy = rng.uniform(10, size - 10, (n, 1, 1))
    r = rng.uniform(5, 9, (n, 1, 1))
    freq = rng.uniform(0.5, 1.2, (n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    mask = np.zeros((n, size, size, 1), dtype=bool)
    for c in range(10):
        i = labels == c
        mask[i, ..., 0] = _shape_mask(c, xx - cx[i], yy - cy[i], r[i], xx, yy, freq[i], phase[i])
    fg = rng.uniform(0, 255, (n, 1, 1, 3))
    bg = rng.uniform(0, 255, (n, 1, 1, 3))
    close = np.abs(fg - bg).sum(-1, keepdims=True) < 150  # keep shapes visible
    bg = np.where(close, 255 - fg, bg)
    noise = rng.standard_normal((n, size, size, 3), dtype=np.float32) * 12
    img = np.where(mask, fg.astype(np.float32), bg.astype(np.float32)) + noise
    images = torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8)).permute(0, 3, 1, 2)
    return ArrayDataset(images.contiguous(), torch.from_numpy(labels).long(), list(SHAPE_CLASSES))


def _shape_mask(c, dx, dy, r, xx, yy, freq, phase) -> np.ndarray:
    """Foreground of class c: dx, dy offsets from the centre, r the size, (n, H, W)."""
    d = np.sqrt(dx**2 + dy**2)
    stripes = lambda t: np.sin(t * freq + phase) > 0  # noqa: E731
    return [
        lambda: d < r,
        lambda: np.maximum(abs(dx), abs(dy)) < r * 0.85,
        lambda: abs(d - r) < r * 0.3,
        lambda: ((abs(dx) < r / 3) & (abs(dy) < r)) | ((abs(dy) < r / 3) & (abs(dx) < r)),
        lambda: (dy < r * 0.8) & (abs(dx) < (dy + r) * 0.55),
        lambda: stripes(yy),
        lambda: stripes(xx),
        lambda: stripes((xx + yy) * 0.7),
        lambda: stripes(xx) ^ stripes(yy),
        lambda: abs(dx) + abs(dy) < r * 1.2,
    ][c]()
