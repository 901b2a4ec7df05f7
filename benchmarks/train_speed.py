"""Training throughput of the seed ViT: the step alone, and end to end with data and augmentation.

Prints the CPU (model, bf16 units), the matmul ceiling at the model's shapes in fp32 and
bf16 (GFLOP/s), and a markdown table of images/s with the step's achieved GFLOP/s:
  - the training step (forward, backward, AdamW) of our ViT per attention path and precision,
    and of timm's VisionTransformer built with the same config in the same loop;
  - end to end (data + augmentation + step) with the device-resident loader and with the
    textbook torchvision DataLoader pipeline, for the seed recipe's augmentation (crop+flip)
    and the best recipe's (RandAugment, random erasing, MixUp/CutMix, EMA), at the
    precision `--precision auto` picks on this machine.

    python benchmarks/train_speed.py                 # CPU, batch 256
    python benchmarks/train_speed.py --device cuda --steps 50 --compile
    python benchmarks/train_speed.py --profile       # where the step's time goes (auto precision)
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F

from vitsam.devices import (
    cpu_description,
    cpu_has_fast_bf16,
    matmul_gflops,
    resolve_device,
    resolve_precision,
)
from vitsam.vit.analysis import flops_per_image
from vitsam.vit.config import preset
from vitsam.vit.data import ArrayDataset
from vitsam.vit.evaluate import autocast
from vitsam.vit.model import ViT
from vitsam.vit.train import Data, Trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timm_vit(cfg):
    from timm.models.vision_transformer import VisionTransformer

    m = cfg.model
    return VisionTransformer(
        img_size=m.image_size,
        patch_size=m.patch_size,
        in_chans=m.channels,
        num_classes=m.num_classes,
        embed_dim=m.dim,
        depth=m.depth,
        num_heads=m.heads,
        mlp_ratio=m.mlp_dim / m.dim,
        drop_rate=m.dropout,
        proj_drop_rate=m.dropout,
    )


def step_speed(model, device, dtype, batch: int, steps: int, warmup: int) -> float:
    """Images/s of forward + backward + AdamW on a fixed batch."""
    model.to(device).train()
    opt = torch.optim.AdamW(
        model.parameters(), 3e-4, weight_decay=0.05, fused=device.type == "cuda"
    )
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        with autocast(device, dtype):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - t)


def end_to_end_speed(recipe: str, loader: str, device, dtype, batch: int, steps: int, workers: int):
    """Images/s of the real training epoch (Trainer.train_epoch) over steps batches."""
    cfg = preset(recipe)
    cfg.batch_size, cfg.loader, cfg.workers, cfg.device = batch, loader, workers, str(device)
    cfg.precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    n = batch * steps
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    ds = ArrayDataset(images, torch.arange(n) % 10, [str(i) for i in range(10)])
    trainer = Trainer(cfg, data=Data(ds, ds, [0.5] * 3, [0.25] * 3))
    trainer.train_epoch()  # warm-up epoch (and DataLoader worker start-up)
    sync(device)
    t = time.perf_counter()
    _, _, seen = trainer.train_epoch()
    sync(device)
    return seen / (time.perf_counter() - t)


def profile(device, dtype, batch: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    for impl in ("sdpa", "plain"):
        model = ViT(preset("seed").model)
        model.set_attention(impl)
        step_speed(model, device, dtype, batch, 1, 1)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            step_speed(model, device, dtype, batch, 2, 0)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"\n### {impl} attention, {dtype}, batch {batch}: top ops by self time (2 steps)\n")
        print(prof.key_averages().table(sort_by=key, row_limit=12))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--workers", type=int, default=2, help="DataLoader workers for the textbook path"
    )
    p.add_argument("--profile", action="store_true")
    p.add_argument("--skip-timm", action="store_true")
    p.add_argument("--bf16", action="store_true", help="time bf16 steps on a CPU without bf16 units")
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd step")
    args = p.parse_args()
    device = resolve_device(args.device)
    low = torch.bfloat16
    if args.profile:  # at the precision training would use here
        profile(device, resolve_precision("auto", device), args.batch)
        return
    seed_cfg = preset("seed")
    where = cpu_description() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(
        f"device {device} ({where}), torch {torch.__version__}, "
        f"batch {args.batch}, {args.steps} timed steps\n"
    )
    # a training step is about 3x the forward's FLOPs (forward, and two products backward)
    step_gflop = 3 * flops_per_image(seed_cfg.model) / 1e9
    if device.type == "cpu":
        m = 4096  # tokens: a slice of a batch (256 images are 16,640), enough to fill the cores
        print("matmul ceiling at the model's shapes (GFLOP/s):\n")
        print("| shape | fp32 | bf16 |\n|---|---|---|")
        for k, n in ((256, 768), (256, 512), (512, 256)):
            f32, b16 = (matmul_gflops(d, m, k, n) for d in (torch.float32, torch.bfloat16))
            print(f"| ({m}, {k}) @ ({k}, {n}) | {f32:.0f} | {b16:.0f} |")
        print()
    dtypes = [torch.float32, low]
    if device.type == "cpu" and not cpu_has_fast_bf16() and not args.bf16:
        dtypes = [torch.float32]
        print("(bf16 step rows skipped: this CPU emulates bf16; --bf16 times them anyway)\n")
    print("| what | precision | images/s | step GFLOP/s |\n|---|---|---|---|")

    def row(what: str, dtype: torch.dtype, r: float) -> None:
        print(f"| {what} | {str(dtype)[6:]} | {r:.0f} | {r * step_gflop:.0f} |", flush=True)

    for dtype in dtypes:
        for impl in ("sdpa", "plain"):
            torch.manual_seed(0)
            model = ViT(dataclasses.replace(seed_cfg.model))
            model.set_attention(impl)
            r = step_speed(model, device, dtype, args.batch, args.steps, args.warmup)
            row(f"step: vitsam ViT, {impl} attention", dtype, r)
        if not args.skip_timm:
            r = step_speed(timm_vit(seed_cfg), device, dtype, args.batch, args.steps, args.warmup)
            row("step: timm VisionTransformer (fused attention)", dtype, r)
    dtype = resolve_precision("auto", device)  # what training would use here
    if args.compile:
        impl = "plain" if device.type == "cpu" else "sdpa"
        torch.manual_seed(0)
        model = ViT(dataclasses.replace(seed_cfg.model))
        model.set_attention(impl)
        compiled = torch.compile(model)
        t = time.perf_counter()
        step_speed(compiled, device, dtype, args.batch, 1, 1)  # compiles forward and backward
        compile_s = time.perf_counter() - t
        r = step_speed(compiled, device, dtype, args.batch, args.steps, args.warmup)
        row(f"step: vitsam ViT, {impl} attention, torch.compile ({compile_s:.0f} s)", dtype, r)
    best = ViT(preset("best").model)  # no dropout, stochastic depth, mean pooling
    best.set_attention("plain" if device.type == "cpu" else "sdpa")
    r = step_speed(best, device, dtype, args.batch, args.steps, args.warmup)
    row("step: vitsam ViT, best recipe's model settings", dtype, r)
    for recipe in ("seed", "best"):
        for loader in ("device", "dataloader"):
            r = end_to_end_speed(
                recipe, loader, device, dtype, args.batch, args.steps, args.workers
            )
            name = (
                "device-resident, batched aug"
                if loader == "device"
                else f"textbook DataLoader ({args.workers} workers)"
            )
            row(f"end to end, {recipe} recipe aug: {name}", dtype, r)


if __name__ == "__main__":
    main()
