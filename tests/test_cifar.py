"""Real data: a small model trained for about a minute on a slice of the shared CIFAR-10."""

from vitsam.vit import train as training
from vitsam.vit.config import ModelConfig, TrainConfig


def test_short_cifar10_run_clearly_beats_chance(cifar_path, tmp_path):
    cfg = TrainConfig(
        model=ModelConfig(dim=128, depth=4, heads=4, mlp_dim=256, dropout=0.0),
        dataset=str(cifar_path),
        train_subset=10_000,
        test_subset=2_000,
        epochs=4,
        batch_size=128,
        lr=1e-3,
        warmup_epochs=0.5,
        device="cpu",
        precision="auto",
        out=str(tmp_path / "cifar"),
    )
    history = training.train(cfg)
    assert history[-1]["test_acc"] > 0.25  # chance is 0.10; measured 0.34 in bf16 and fp32
