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


def test_fast_preset_clearly_beats_the_seed_at_the_same_time_budget(cifar_path, tmp_path):
    """Issue: the fast preset against the seed on real data, one minute of wall time each.

    Both see the same 4,000 training and 1,000 test images; `--time-budget` fits each
    one's epochs to the minute on this machine (at least one epoch: the seed, at ~40
    img/s in fp32, gets exactly one).
    """
    from vitsam.vit.config import preset
    from vitsam.vit.data import load_dataset

    loaded = load_dataset(str(cifar_path))
    accuracy = {}
    for name in ("fast", "seed"):
        cfg = preset(name)
        cfg.dataset, cfg.train_subset, cfg.test_subset = str(cifar_path), 4_000, 1_000
        cfg.time_budget, cfg.device, cfg.out = 1.0, "cpu", str(tmp_path / name)
        trainer = training.Trainer(cfg, data=training.prepare_data(cfg, loaded))
        accuracy[name] = trainer.run()[-1]["test_acc"]
    assert accuracy["fast"] > accuracy["seed"] + 0.1, accuracy  # measured: see BENCHMARKS


def test_speedrun_preset_one_epoch_on_a_validation_split(cifar_path, tmp_path):
    """The speedrun preset's whole path on real data (Muon, mimetic init, alternating
    flips, translate TTA, the validation split), one short epoch."""
    from vitsam.vit.config import preset

    cfg = preset("speedrun")
    cfg.dataset, cfg.train_subset, cfg.test_subset = str(cifar_path), 4_000, 1_000
    cfg.val_split, cfg.epochs, cfg.time_budget = 1_000, 2, 0.0
    cfg.device, cfg.out = "cpu", str(tmp_path / "speedrun")
    history = training.train(cfg)
    assert [("test_acc" in r) for r in history] == [False, True]  # the test set, once
    assert history[-1]["val_acc"] > 0.2 and history[-1]["test_acc"] > 0.2  # chance: 0.1
