"""Feeding an ArrayDataset to training: on the device with batched augmentation, or the
textbook way (per-image torchvision transforms in DataLoader workers).

Both yield `(x, y)`: x normalised float (B, C, H, W) on the training device, y int64 (B,).
MixUp/CutMix come after, in the training loop, for both.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from vitsam.vit import augment
from vitsam.vit.config import TrainConfig
from vitsam.vit.data import ArrayDataset


class Normalize:
    """uint8 or [0, 1] float (B, C, H, W) -> zero mean, unit std per channel."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        return (x - self.mean) / self.std


class DeviceLoader:
    """The whole uint8 dataset on the device; batches are augmented with tensor ops.

    Each epoch visits every example once in a fresh random order (the last partial batch
    is dropped when `drop_last`). Randomness comes from `gen`, a generator on `device`.
    Data-parallel: every rank draws the same order from `gen` and takes its slice,
    `batch_size / world`, of each global batch; it augments with its own `aug_gen`.
    """

    def __init__(
        self,
        data: ArrayDataset,
        cfg: TrainConfig,
        normalize: Normalize,
        device: torch.device,
        gen: torch.Generator,
        train: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world: int = 1,
        aug_gen: torch.Generator | None = None,
    ) -> None:
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.cfg, self.normalize, self.gen = cfg, normalize, gen
        self.train, self.drop_last = train, drop_last
        self.batch_size = cfg.batch_size  # the global batch
        self.rank, self.world, self.aug_gen = rank, world, aug_gen or gen
        self.epoch = 0
        self.flip_parity = None
        if cfg.alternate_flip and cfg.flip:
            g = torch.Generator().manual_seed(cfg.seed)  # from the config: resumes exactly
            self.flip_parity = (torch.rand(len(self.labels), generator=g) < 0.5).to(device)

    def set_epoch(self, epoch: int) -> None:
        """The epoch about to run (alternating flips follow it); the order and the other
        augmentation come from `gen`, which checkpoints carry."""
        self.epoch = epoch

    def flips(self, idx: torch.Tensor) -> torch.Tensor | None:
        """Which of the examples at `idx` are mirrored this epoch with alternating flips,
        else None (a coin toss per image).

        Alternating ("derandomised") flips, from airbench (Jordan, "94% on CIFAR-10 in 3.29
        seconds on a single GPU", 2024): each example is mirrored in every other epoch,
        starting from a random half, so two consecutive epochs show both views of each
        image where random flips repeat one view in a quarter of the cases.
        """
        if self.flip_parity is None:
            return None
        return self.flip_parity[idx] ^ bool(self.epoch % 2)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def augment(self, x: torch.Tensor, flipped: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 batch -> augmented, normalised float batch; `flipped` as in crop_flip."""
        cfg, gen = self.cfg, self.aug_gen
        x = augment.crop_flip(x, cfg.crop_padding, cfg.flip, gen, flipped).float().div_(255)
        if cfg.policy == "randaugment":
            x = augment.randaugment(x, cfg.randaug_ops, cfg.randaug_magnitude, gen)
        elif cfg.policy == "autoaugment":
            x = augment.autoaugment(x, gen)
        x = self.normalize(x)
        if cfg.erasing > 0:
            x = augment.random_erasing(x, cfg.erasing, gen)
        return x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = torch.randperm(n, generator=self.gen, device=self.gen.device)
        b = self.batch_size // self.world  # this rank's share of each global batch
        for i in range(len(self)):
            start = i * self.batch_size + self.rank * b
            idx = order[start : start + b]
            yield self.augment(self.images[idx], self.flips(idx)), self.labels[idx]


class _TransformDataset(torch.utils.data.Dataset):
    def __init__(self, data: ArrayDataset, transform) -> None:
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.transform(self.data.images[i]), int(self.data.labels[i])


def textbook_transform(cfg: TrainConfig, mean: list[float], std: list[float], size: int):
    """The same augmentations as DeviceLoader, per image, with torchvision.transforms.v2."""
    from torchvision.transforms import v2

    steps = []
    if cfg.crop_padding:
        steps.append(v2.RandomCrop(size, padding=cfg.crop_padding))
    if cfg.flip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.policy == "randaugment":
        steps.append(v2.RandAugment(cfg.randaug_ops, cfg.randaug_magnitude))
    elif cfg.policy == "autoaugment":
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if cfg.erasing > 0:
        steps.append(v2.RandomErasing(cfg.erasing, value="random"))
    return v2.Compose(steps)


class TextbookLoader:
    """A torch DataLoader over per-image transforms, batches moved to the device.

    Data-parallel: a DistributedSampler gives each rank its share of every epoch's order
    (the order seeded from the seed and epoch), in batches of `batch_size / world`.
    """

    def __init__(
        self,
        data: ArrayDataset,
        cfg: TrainConfig,
        mean: list[float],
        std: list[float],
        device: torch.device,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        transform = textbook_transform(cfg, mean, std, data.images.shape[-1])
        self.device, self.seed, self.rank, self.world = device, seed, rank, world
        self.generator = torch.Generator()
        dataset = _TransformDataset(data, transform)
        self.sampler = None
        if world > 1:
            self.sampler = torch.utils.data.DistributedSampler(
                dataset, world, rank, shuffle=True, seed=seed, drop_last=True
            )
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=cfg.batch_size // world,
            shuffle=self.sampler is None,
            sampler=self.sampler,
            drop_last=True,
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            generator=self.generator,
        )

    def set_epoch(self, epoch: int) -> None:
        """Seed this epoch's order and worker seeds from (seed, epoch), so a resumed run
        sees the same batches. With workers=0 the transforms draw from torch's global RNG,
        which the trainer's checkpoints carry."""
        self.generator.manual_seed((self.seed * 100_003 + epoch) * self.world + self.rank)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def fits_on_device(data: ArrayDataset, device: torch.device) -> bool:
    """Whether the uint8 dataset fits comfortably (under a quarter of free memory)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return data.images.numel() * 4 < free


def eval_batches(
    data: ArrayDataset, normalize: Normalize, device: torch.device, batch_size: int = 1000
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised, un-augmented batches in dataset order."""
    for i in range(0, len(data), batch_size):
        x = data.images[i : i + batch_size].to(device, non_blocking=True)
        yield normalize(x), data.labels[i : i + batch_size].to(device, non_blocking=True)
