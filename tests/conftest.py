import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitsam.vit.config import ModelConfig, TrainConfig

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


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
        precision="fp32",
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
def video_models(tmp_path_factory):
    """Tiny SAM 3 (detector + tracker, as facebook/sam3) and SAM 2 video models (no network)."""
    from tests import seg_models

    root = tmp_path_factory.mktemp("video-models")
    return {name: str(getattr(seg_models, name)(root / name)) for name in ("sam3", "sam2_video")}
