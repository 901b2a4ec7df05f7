import os
import tarfile

import pytest
import torch

from vitsam.errors import VitsamError
from vitsam.vit import data
from vitsam.vit.data import decoded_cache_path, load_dataset, make_shapes


def test_image_folder_loads_any_size_and_mode(image_folder):
    train, test = load_dataset(str(image_folder), image_size=16)
    assert train.images.shape == (18, 3, 16, 16) and train.images.dtype == torch.uint8
    assert len(test) == 9 and train.classes == ["ant", "bee", "cow"]
    assert train.labels.bincount().tolist() == [6, 6, 6]


def test_corrupt_image_is_reported_by_name_and_skipped(image_folder, caplog):
    bad = image_folder / "train" / "bee" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (image_folder / "train" / "bee" / "truncated.png").write_bytes(
        (image_folder / "train" / "bee" / "0.png").read_bytes()[:60]
    )
    train, _ = load_dataset(str(image_folder), image_size=16)
    assert len(train) == 18
    assert any("broken.png" in s for s in train.skipped)
    assert any("truncated.png" in s for s in train.skipped)
    assert "broken.png" in caplog.text


def test_tar_archive_is_an_image_folder(image_folder, tmp_path):
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(image_folder, arcname="mydata")
    train, test = load_dataset(str(archive), image_size=16)
    assert len(train) == 18 and len(test) == 9


def _archive(folder, path):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="mydata")
    return path


def test_an_archive_is_decoded_once_and_kept_decoded(image_folder, tmp_path, monkeypatch):
    (image_folder / "train" / "bee" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    archive, cache = _archive(image_folder, tmp_path / "data.tar.gz"), tmp_path / "cache"
    train, test = load_dataset(str(archive), cache, image_size=16)
    kept = decoded_cache_path(archive, 16, cache)
    assert kept.is_file() and kept.parent == cache / "decoded"

    decodes = []
    monkeypatch.setattr(data, "load_image_folder", lambda *a: decodes.append(a) or (train, test))
    again, again_test = load_dataset(str(archive), cache, image_size=16)
    assert not decodes  # read back, not decoded
    assert torch.equal(again.images, train.images) and torch.equal(again_test.labels, test.labels)
    assert again.classes == ["ant", "bee", "cow"] and any("broken.png" in s for s in again.skipped)

    load_dataset(str(archive), cache, image_size=24)  # another size is another copy
    os.utime(archive, ns=(1, 1))  # a changed archive is decoded again
    load_dataset(str(archive), cache, image_size=16)
    assert len(decodes) == 2 and decoded_cache_path(archive, 16, cache) != kept


def test_a_broken_or_unwritable_decoded_copy_costs_a_decode_not_the_run(
    image_folder, tmp_path, caplog
):
    archive, cache = _archive(image_folder, tmp_path / "data.tar"), tmp_path / "cache"
    train, _ = load_dataset(str(archive), cache, image_size=16)
    kept = decoded_cache_path(archive, 16, cache)
    kept.write_bytes(kept.read_bytes()[:100])  # truncated, as a full disk or a kill leaves it
    again, _ = load_dataset(str(archive), cache, image_size=16)
    assert torch.equal(again.images, train.images) and "is unreadable" in caplog.text
    assert load_dataset(str(archive), cache, image_size=16)[0].images.shape == (18, 3, 16, 16)

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would go")
    third, _ = load_dataset(str(archive), blocked, image_size=16)
    assert torch.equal(third.images, train.images)
    assert "could not keep a decoded copy" in caplog.text


def test_val_split_stands_in_for_test(image_folder):
    (image_folder / "test").rename(image_folder / "val")
    _, test = load_dataset(str(image_folder), image_size=16)
    assert len(test) == 9


def test_missing_split_and_unknown_dataset_are_clear(image_folder, tmp_path):
    import shutil

    shutil.rmtree(image_folder / "test")
    with pytest.raises(VitsamError, match="train/<class>/ and test/<class>/"):
        load_dataset(str(image_folder))
    with pytest.raises(VitsamError, match="unknown dataset 'imagenet-xl'"):
        load_dataset("imagenet-xl")
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    with pytest.raises(VitsamError, match="not a readable folder or tar"):
        load_dataset(str(tmp_path / "junk.tar"))


@pytest.mark.parametrize(
    "name,file", [("cifar10", "cifar-10-python.tar.gz"), ("mnist", "MNIST/raw")]
)
def test_offline_without_a_copy_says_what_to_place_where(tmp_path, monkeypatch, name, file):
    monkeypatch.setenv("VITSAM_OFFLINE", "1")
    with pytest.raises(VitsamError, match=f"place {file}.* in {tmp_path}"):
        load_dataset(name, tmp_path)


def test_download_failure_is_one_clear_line(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(tvu, "download_url", no_network)
    monkeypatch.setattr(tvu, "download_and_extract_archive", no_network)
    import torchvision.datasets.cifar as tvc

    monkeypatch.setattr(tvc, "download_and_extract_archive", no_network)
    with pytest.raises(VitsamError, match="could not be downloaded.*place cifar-10-python.tar.gz"):
        load_dataset("cifar10", tmp_path)


def test_torchvision_copy_in_place_is_used_offline(tmp_path, monkeypatch):
    """MNIST-style 28x28 grayscale in torchvision's raw layout loads without a network."""
    import gzip

    import numpy as np

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        images = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        head = lambda magic, *dims: np.array([magic, *dims], ">i4").tobytes()  # noqa: E731
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(head(2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(head(2049, n) + labels.tobytes())
    monkeypatch.setenv("VITSAM_OFFLINE", "1")
    train, test = load_dataset("mnist", tmp_path)
    assert train.images.shape == (20, 1, 28, 28) and len(test) == 10
    assert gzip  # raw files may also be the .gz archives torchvision downloads


def test_shapes_are_deterministic_and_balanced_subsets():
    a, b = make_shapes(100, seed=7), make_shapes(100, seed=7)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    sub = make_shapes(1000, seed=1).subset(100, seed=0)
    assert len(sub) == 100 and sub.labels.bincount().tolist() == [10] * 10
