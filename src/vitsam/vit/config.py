"""Typed configs for the model and the training run, and the named presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from vitsam.errors import VitsamError


@dataclass
class ModelConfig:
    image_size: int = 32  # pixels, square input
    channels: int = 3  # 3 for RGB, 1 for grayscale
    patch_size: int = 4  # pixels per patch (token) side
    tokenizer: str = "patch"  # "patch" (linear, non-overlapping) or "conv" (3x3 conv stages)
    dim: int = 256  # embedding width
    depth: int = 8  # transformer blocks
    heads: int = 8
    mlp_dim: int = 512  # hidden width of each block's MLP
    num_classes: int = 10
    dropout: float = 0.1  # on embeddings, attention output and MLP
    attn_dropout: float = 0.0  # on attention weights
    drop_path: float = 0.0  # stochastic depth rate of the last block (linear from 0)
    pool: str = "cls"  # "cls" token or "mean" of patch tokens
    attn_impl: str = "auto"  # "sdpa" (fused), "plain" (softmax(q k^T) v) or "auto" per device
    attn_init: str = "default"  # "default" (truncated normal) or "mimetic" (Trockman & Kolter)
    stem_init: str = "default"  # first conv: "default" (He normal) or "whiten" (patch PCA)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise VitsamError(
                f"image size {self.image_size} is not a multiple of patch size {self.patch_size}"
            )
        if self.tokenizer not in ("patch", "conv"):
            raise VitsamError(f"unknown tokenizer {self.tokenizer!r}: choose patch or conv")
        if self.tokenizer == "conv" and (
            self.patch_size < 2 or self.patch_size & (self.patch_size - 1)
        ):
            raise VitsamError(
                f"the conv tokenizer halves the image per stage: patch size {self.patch_size} "
                "must be a power of two (2, 4, 8, ...)"
            )
        if self.dim % self.heads:
            raise VitsamError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.pool not in ("cls", "mean"):
            raise VitsamError(f"unknown pool {self.pool!r}: choose cls or mean")
        if self.attn_impl not in ("auto", "sdpa", "plain"):
            raise VitsamError(f"unknown attn_impl {self.attn_impl!r}: choose auto, sdpa or plain")
        if self.attn_init not in ("default", "mimetic"):
            raise VitsamError(f"unknown attn_init {self.attn_init!r}: choose default or mimetic")
        if self.stem_init not in ("default", "whiten"):
            raise VitsamError(f"unknown stem_init {self.stem_init!r}: choose default or whiten")
        if self.stem_init == "whiten" and self.tokenizer != "conv":
            raise VitsamError(
                "stem_init whiten sets the first conv of the conv tokenizer: "
                "add --tokenizer conv, or leave --stem-init default"
            )


OPTIMIZERS = ("adamw", "sgd", "muon")
SCHEDULES = ("warmup-cosine", "warmup-linear", "warmup-constant")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    # data
    dataset: str = "cifar10"  # cifar10|cifar100|mnist|fashion-mnist|shapes|PATH (folder or .tar.gz)
    data_dir: str = ""  # torchvision sets and decoded archives; "" = $VITSAM_DATA or ~/.cache
    train_subset: int = 0  # use only this many training images (0 = all), class-balanced
    val_split: int = 0  # hold out this many training images to evaluate on (0 = test set)
    test_subset: int = 0  # likewise for the test set
    loader: str = "auto"  # "device" (uint8 tensor on the device), "dataloader" or "auto"
    workers: int = 2  # DataLoader workers (dataloader path only)
    # optimisation
    epochs: int = 200
    max_steps: int = 0  # training steps of the whole run, the last epoch cut short (0 = off)
    time_budget: float = 0.0  # minutes for the whole run; > 0 sets `max_steps` (and `epochs`)
    batch_size: int = 256
    optimizer: str = (  # "muon": Muon for the blocks' 2-D weights, AdamW for the rest
        "adamw"  # "adamw" (decoupled weight decay) or "sgd" (Nesterov, momentum betas[0])
    )
    schedule: str = (
        "warmup-cosine"  # linear warmup, then "cosine", "linear" or "constant" to the end
    )
    lr: float = 3e-4  # peak learning rate after warmup
    min_lr: float = 0.0  # learning rate at the end of the schedule
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0  # linear warmup from 0, in epochs (fractions allowed)
    betas: tuple[float, float] = (0.9, 0.999)
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max global gradient norm (0 = off)
    ema: float = 0.0  # weight EMA decay per step (0 = off), evaluated instead of the raw weights
    # augmentation
    crop_padding: int = 4  # random crop with this much zero padding (0 = off)
    flip: bool = True  # random horizontal flip
    alternate_flip: bool = False  # each image's flip alternates per epoch (airbench), not random
    policy: str = "none"  # "none", "randaugment" or "autoaugment"
    randaug_ops: int = 2  # RandAugment: operations per image
    randaug_magnitude: int = 9  # RandAugment: magnitude, 0..30
    mixup: float = 0.0  # MixUp Beta(alpha, alpha); 0 = off
    cutmix: float = 0.0  # CutMix Beta(alpha, alpha); 0 = off
    mix_prob: float = 1.0  # chance that a sample is mixed at all (when mixup or cutmix is on)
    mix_off_epochs: int = 0  # switch MixUp/CutMix off for the last N epochs
    erasing: float = 0.0  # random erasing probability per image
    tta_flip: bool = False  # evaluate on the image and its mirror, averaging the logits
    tta_translate: bool = False  # also on the image shifted 1 px up-left and down-right
    tta_at_end: bool = False  # the TTA views only after the last epoch (the others: 1 view)
    # machine
    device: str = "auto"
    precision: str = "auto"  # of training: auto = bf16 where the hardware runs it fast
    eval_precision: str = (
        "fp32"  # of test-set evaluation (also `vitsam eval`'s default); auto = as trained
    )
    compile: bool = False  # torch.compile the model
    seed: int = 0
    out: str = "runs/vit"  # run directory

    def __post_init__(self) -> None:
        if self.time_budget < 0:
            raise VitsamError(f"--time-budget is {self.time_budget}: give minutes > 0 (0 = off)")
        if self.optimizer not in OPTIMIZERS:
            raise VitsamError(
                f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}"
            )
        if self.max_steps < 0:
            raise VitsamError(f"--max-steps is {self.max_steps}: give a count of steps (0 = off)")
        if self.val_split < 0:
            raise VitsamError(f"--val-split is {self.val_split}: give a count of images (0 = off)")
        if self.schedule not in SCHEDULES:
            raise VitsamError(
                f"unknown schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}"
            )


def _preset_seed() -> TrainConfig:
    """The starting recipe, exactly: it reached 80.81% on CIFAR-10."""
    return TrainConfig()


def _preset_best() -> TrainConfig:
    """Same plain ViT size as the seed; the recipe of the best small from-scratch ViTs.

    Each choice and its reason is documented in docs/BENCHMARKS.md.
    """
    return TrainConfig(
        model=ModelConfig(dropout=0.0, drop_path=0.1, pool="mean"),
        lr=1e-3,
        min_lr=1e-5,
        warmup_epochs=10,
        label_smoothing=0.1,
        grad_clip=1.0,
        ema=0.9998,
        policy="randaugment",
        randaug_ops=2,
        randaug_magnitude=9,
        mixup=0.8,
        cutmix=1.0,
        mix_prob=1.0,
        mix_off_epochs=15,
        erasing=0.25,
        tta_flip=True,
    )


def _preset_quick() -> TrainConfig:
    """A small model on the built-in synthetic shapes: a real run in a few CPU minutes.

    The fast preset's convolutional tokenizer (three 3x3 conv stages to 16 tokens of width
    128) under four width-128 blocks: 627,242 parameters. It learns the shapes in 6 epochs
    (99.9%) where the linear 8x8 patch embedding needed 20 for 93-94%, so the README's main
    job fits in 3 minutes on a 2-core CPU without bf16 units (see docs/BENCHMARKS.md).
    """
    return TrainConfig(
        model=ModelConfig(
            tokenizer="conv", patch_size=8, dim=128, depth=4, heads=4, mlp_dim=256, dropout=0.0
        ),
        dataset="shapes",
        epochs=6,
        batch_size=64,
        lr=1e-3,
        warmup_epochs=1,
        out="runs/quick",
    )


def _preset_fast() -> TrainConfig:
    """CIFAR-10 past the seed's 80.81% within an hour on a 2-core CPU without bf16 units.

    A convolutional tokenizer (three 3x3 conv stages, 32 -> 64 -> 128 channels: 16 tokens
    that overlap) under six transformer blocks of width 128, mean-pooled; 0.89 M parameters,
    47 MFLOPs per image forward, against the seed's 4.2 M and 581 MFLOPs (its 64 tokens
    of width 256 through eight blocks). Short-run recipe: a high learning rate with one epoch
    of warmup and a straight line to zero at the end, label smoothing 0.1, crop + flip only
    (heavier augmentation underfits in a few epochs), flip TTA at evaluation. Measured
    figures in docs/BENCHMARKS.md; `--time-budget MINUTES` fits the epochs to a deadline.
    """
    return TrainConfig(
        model=ModelConfig(
            tokenizer="conv",
            patch_size=8,
            dim=128,
            depth=6,
            heads=4,
            mlp_dim=256,
            dropout=0.0,
            pool="mean",
        ),
        epochs=FAST_EPOCHS,
        batch_size=128,
        lr=2e-3,
        warmup_epochs=1,
        schedule="warmup-linear",
        label_smoothing=0.1,
        tta_flip=True,
        out="runs/fast",
    )


FAST_EPOCHS = 22  # about 54 minutes on a 2-core CPU without bf16 units (EPYC-AVX2)


def _preset_speedrun() -> TrainConfig:
    """CIFAR-10 as far as an hour of a 2-core CPU takes a ViT: the ViT speedrun.

    The fast preset's model (conv tokenizer, six width-128 blocks) with the levers of the
    CNN speedruns and of small-data ViTs: Muon on the blocks' 2-D weights (Jordan et al.,
    2024, as in airbench and modded-nanogpt) with AdamW for the rest, mimetic
    initialisation of attention (Trockman & Kolter, 2023), alternating flips and flip +
    translate test-time augmentation (airbench, Jordan 2024) after the last epoch only (the
    epochs before are evaluated on one view, six times faster), label smoothing 0.2. The
    run is fitted to `time_budget` minutes (60; `--time-budget 10` or `20` for the short
    rows), its last epoch cut short to end on time. What each lever gains is measured on `--val-split 5000` in docs/BENCHMARKS.md.
    """
    cfg = _preset_fast()
    cfg.model.attn_init = "mimetic"
    return dataclasses.replace(
        cfg,
        optimizer="muon",
        time_budget=60.0,
        epochs=FAST_EPOCHS,  # the run's length before the time budget fits it
        label_smoothing=0.2,
        alternate_flip=True,
        tta_translate=True,
        tta_at_end=True,
        out="runs/speedrun",
    )


PRESETS = {
    "seed": _preset_seed,
    "best": _preset_best,
    "quick": _preset_quick,
    "fast": _preset_fast,
    "speedrun": _preset_speedrun,
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise VitsamError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


MODEL_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelConfig))
TRAIN_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig)) - {"model"}


def override(cfg: TrainConfig, fields: dict[str, Any]) -> TrainConfig:
    """A copy of `cfg` with fields set by their flat names (`depth`, `epochs`, ...)."""
    unknown = set(fields) - MODEL_FIELDS - TRAIN_FIELDS
    if unknown:
        raise VitsamError(f"not config fields: {sorted(unknown)} (see vitsam train --help)")
    model = {k: v for k, v in fields.items() if k in MODEL_FIELDS}
    train = {k: tuple(v) if k == "betas" else v for k, v in fields.items() if k in TRAIN_FIELDS}
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model), **train)


def eval_precision_name(eval_precision: str, precision: str) -> str:
    """The precision test-set evaluation runs in: `eval_precision`, where 'auto' means the
    training precision (so `vitsam eval` measures what training reported)."""
    return precision if eval_precision == "auto" else eval_precision


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any]) -> TrainConfig:
    d = dict(d)
    model = ModelConfig(**d.pop("model", {}))
    if "betas" in d:
        d["betas"] = tuple(d["betas"])
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(model=model, **{k: v for k, v in d.items() if k in known})


def to_json(cfg: TrainConfig) -> str:
    return json.dumps(to_dict(cfg), indent=2)
