"""Data-parallel training over processes started by torchrun: one process per device.

    torchrun --nproc-per-node 2 -m vitsam train --preset quick

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address) for each
process; without them training is the one-process run. With them, each rank joins the
process group (gloo on CPUs, NCCL on CUDA GPUs, one GPU per local rank), wraps the model
in DistributedDataParallel (gradients averaged over ranks after each backward), takes
batch_size / world of every global batch, and sums its epoch metrics with the others.
Rank 0 alone writes logs and checkpoints.

Random streams: the epoch order comes from the trainer's generator, seeded alike on every
rank and drawn only for the order, so ranks agree on it and a checkpoint carries it. Each
rank's augmentation, MixUp/CutMix and dropout draw from streams seeded from (seed, rank,
epoch) at the start of each epoch, so ranks differ from each other and a resumed run
draws what the uninterrupted run drew.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from vitsam.errors import VitsamError


@dataclass(frozen=True)
class Dist:
    rank: int = 0  # this process, 0..world-1
    world: int = 1  # processes in the job
    local_rank: int = 0  # this process on its machine (its GPU index)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """The process that writes logs, checkpoints and plots."""
        return self.rank == 0


def from_env() -> Dist:
    """This process's place in a torchrun job (RANK, WORLD_SIZE, LOCAL_RANK); Dist() if none."""
    env = os.environ
    if "WORLD_SIZE" not in env:
        return Dist()
    return Dist(int(env.get("RANK", 0)), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group once (gloo for CPUs, NCCL for CUDA); -> (place, this rank's
    device: cuda:LOCAL_RANK on GPUs). One process: (Dist(), device) unchanged."""
    d = from_env()
    if not d.enabled:
        return d, device
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise VitsamError(
            f"multi-process training runs on CPUs (gloo) or CUDA GPUs (NCCL), not {device.type}"
        )
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return d, device


def local_batch(batch_size: int, d: Dist) -> int:
    """This rank's share of the global batch; the global batch must split evenly."""
    if batch_size % d.world:
        raise VitsamError(
            f"batch size {batch_size} does not split over {d.world} processes: "
            f"use a multiple of {d.world} (the batch size is the global batch)"
        )
    return batch_size // d.world


def wrap(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """The model as each step should call it: DistributedDataParallel across ranks."""
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def all_reduce_sum(d: Dist, *values: torch.Tensor) -> list[torch.Tensor]:
    """Each value summed over all ranks (one collective); unchanged in one process."""
    if not d.enabled:
        return list(values)
    flat = torch.stack([v.detach().double().reshape(()) for v in values])
    dist.all_reduce(flat)
    return list(flat.unbind())


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def seed_rank(d: Dist, seed: int, epoch: int, gen: torch.Generator) -> np.random.Generator:
    """Seed this rank's streams for `epoch`: `gen` (augmentation) in place, torch's and
    NumPy's global generators (dropout), and a new NumPy generator for Beta draws."""
    entropy = np.random.SeedSequence([seed, d.rank, epoch])
    torch_seed, numpy_seed, beta_seed = entropy.generate_state(3, dtype=np.uint64)
    gen.manual_seed(int(torch_seed))
    torch.manual_seed(int(torch_seed) ^ 0x5EED)
    np.random.seed(int(numpy_seed) % 2**32)
    return np.random.default_rng(int(beta_seed))


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
