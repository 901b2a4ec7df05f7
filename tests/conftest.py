import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitsam import devices
from vitsam.vit.config import ModelConfig, TrainConfig

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
# Fixtures whose tests run a model (segmentation models, a trained ViT): marked `models`.
MODEL_FIXTURES = {"models", "video_models", "edge_models", "trained_run"}


def pytest_addoption(parser):
    parser.addoption(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto",
        help="what --precision auto means on the CPU in this run: the CPU's choice (auto), "
        "or fp32 / bf16 on any CPU (bf16 is emulated, slowly, where the CPU has no bf16 "
        "units). Model-running tests are marked `models`: -m models runs only those.",
    )  # fmt: skip
    parser.addoption(
        "--device", default="cpu",
        help="the device of the tests that take the `device` fixture (tests/test_precision.py): "
        "cpu, or cuda on a GPU machine (scripts/gpu_check.sh bf16)",
    )  # fmt: skip


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """The device --device names (cpu by default)."""
    return devices.resolve_device(request.config.getoption("--device"))


def pytest_configure(config):
    # Decoded copies of archives (vitsam.vit.data.load_archive) go to a folder of this run,
    # not the user's ~/.cache; subprocesses inherit it.
    os.environ["VITSAM_DATA"] = tempfile.mkdtemp(prefix="vitsam-test-data-")
    config.addinivalue_line(
        "markers", "models: runs a model (training steps, a detector, segmenter or tracker)"
    )
    config.addinivalue_line(
        "markers", "fp32_only: runs its models in fp32 whatever --precision says (not `models`)"
    )
    chosen = config.getoption("--precision")
    if chosen != "auto":  # through the environment, so subprocesses (torchrun, Ray) follow
        os.environ[devices.BF16_ENV] = "1" if chosen == "bf16" else "0"
        devices.cpu_bf16_support.cache_clear()


def pytest_unconfigure(config):
    shutil.rmtree(os.environ.get("VITSAM_DATA", ""), ignore_errors=True)


def pytest_report_header(config):
    return f"vitsam precision auto on this CPU: {devices.choose_precision('auto', torch.device('cpu'))}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            if not item.get_closest_marker("fp32_only"):  # the other precision changes nothing
                item.add_marker(pytest.mark.models)


@pytest.fixture
def cifar_path() -> Path:
    """The shared CIFAR-10 copy: skipped where absent, required where VITSAM_REQUIRE_CIFAR=1."""
    path = Path(os.environ.get("VITSAM_CIFAR", CIFAR))
    if not path.exists():
        if os.environ.get("VITSAM_REQUIRE_CIFAR") == "1":
            pytest.fail(f"VITSAM_REQUIRE_CIFAR=1 but {path} is missing")
        pytest.skip(f"{path} not present")
    return path


def tiny_config(tmp_path: Path, **overrides) -> TrainConfig:
    """A small, fast run on a slice of the synthetic shapes."""
    cfg = TrainConfig(
        model=ModelConfig(dim=32, depth=2, heads=2, mlp_dim=64, dropout=0.0),
        dataset="shapes",
        train_subset=384,
        test_subset=100,
        epochs=2,
        batch_size=48,
        lr=1e-3,
        warmup_epochs=0.5,
        device="cpu",
        precision="auto",  # the run's precision (pytest --precision); numeric tests pin fp32
        out=str(tmp_path / "run"),
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A 3-class image-folder dataset with odd sizes and modes."""
    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    for split, n in (("train", 6), ("test", 3)):
        for c, cls in enumerate(["ant", "bee", "cow"]):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = (rng.uniform(0, 1, (20 + i, 24, 3)) * 80 + c * 80).astype(np.uint8)
                im = Image.fromarray(arr)
                (im.convert("L") if i % 2 else im).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Tiny random-weight detectors and segmenters saved with save_pretrained (no network)."""
    from tests import seg_models

    root = tmp_path_factory.mktemp("models")
    names = ("grounding_dino", "sam2", "sam", "owlv2", "clipseg")
    return {name: str(getattr(seg_models, name)(root / name)) for name in names}


@pytest.fixture(scope="session")
def edge_models(tmp_path_factory):
    """The edge set (--models fast) as tiny random-weight folders: OmDet-Turbo and EdgeTAM
    (image and video), both on their real timm backbones."""
    pytest.importorskip("timm", reason="the edge models' backbones need timm (.[edge])")
    from tests import seg_models

    root = tmp_path_factory.mktemp("edge-models")
    return {
        name: str(getattr(seg_models, name)(root / name))
        for name in ("omdet_turbo", "edgetam_video")
    }


@pytest.fixture(scope="session")
def video_models(tmp_path_factory):
    """Tiny SAM 3 (detector + tracker, as facebook/sam3), SAM 3 LiteText (image model alone,
    as yonigozlan/sam3-litetext-s0) and SAM 2 video models (no network)."""
    from tests import seg_models

    root = tmp_path_factory.mktemp("video-models")
    names = ("sam3", "sam3_lite", "sam2_video")
    return {name: str(getattr(seg_models, name)(root / name)) for name in names}
