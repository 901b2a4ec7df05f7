"""Data-parallel training: 2 CPU processes (gloo) against one process, and resume."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import tiny_config
from vitsam.errors import VitsamError
from vitsam.vit import distributed
from vitsam.vit import train as training

SRC = Path(__file__).resolve().parents[1] / "src"
# No random augmentation: one process and two then see the same global batches in the same
# order, so the curves differ only by the order of float sums (the gradient is averaged
# over ranks instead of over one batch): measured equal to 6 decimals in fp32; allowed 1e-4.
PLAIN = dict(crop_padding=0, flip=False, loader="device", workers=0, precision="fp32")  # numbers: fp32
TOLERANCE = 1e-4
# The linear tokenizer: the conv one's BatchNorm statistics would be per rank (DDP does not
# sync them), so two processes would not follow one process's curve.
FLAGS = ["--preset", "quick", "--dataset", "shapes", "--train-subset", "384", "--test-subset",
         "100", "--epochs", "2", "--batch-size", "48", "--dim", "32", "--depth", "2", "--heads",
         "2", "--mlp-dim", "64", "--patch-size", "4", "--tokenizer", "patch", "--dropout", "0", "--lr", "1e-3", "--warmup-epochs", "0.5",
         "--crop-padding", "0", "--no-flip", "--loader", "device", "--device", "cpu",
         "--precision", "fp32", "--quiet"]  # fmt: skip


def curve(rows: list[dict]) -> list[float]:
    return [v for r in rows for v in (r["train_loss"], r["train_acc"], r["test_loss"])]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_follow_the_one_process_curve(tmp_path):
    """`torchrun --nproc-per-node 2 -m vitsam train` as a user runs it."""
    one = training.train(tiny_config(tmp_path / "one", **PLAIN))
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "vitsam", "train", *FLAGS, "--out", str(tmp_path / "two")]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("done: 2 epochs") == 1  # rank 0 alone reports
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in rows] == [1, 2]  # rank 0 alone writes
    assert curve(rows) == pytest.approx(curve(one), abs=TOLERANCE)
    state = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state["model"])  # the bare model's keys


def _ranks(rank: int, world: int, port: int, root: str) -> None:
    """One rank: an uninterrupted run, and a run stopped after epoch 1 then resumed."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    augmented = dict(loader="device", epochs=2, mixup=0.8, cutmix=1.0, policy="randaugment")
    full = training.train(tiny_config(Path(root) / "full", **augmented))

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    cfg = tiny_config(Path(root) / "stopped", **augmented)
    try:
        training.train(cfg, on_epoch_end=stop_after_first)
    except KeyboardInterrupt:
        pass
    resumed = training.resume(cfg.out)
    if rank == 0:
        (Path(root) / "histories.json").write_text(json.dumps({"full": full, "resumed": resumed}))
    distributed.shutdown()


def test_two_ranks_resume_to_the_uninterrupted_run(tmp_path):
    """With augmentation, MixUp and CutMix on: per-rank streams are seeded per epoch, the
    order comes from the checkpoint, so the resumed run matches the uninterrupted one."""
    mp.spawn(_ranks, args=(2, free_port(), str(tmp_path)), nprocs=2)
    runs = json.loads((tmp_path / "histories.json").read_text())
    assert [r["epoch"] for r in runs["resumed"]] == [1, 2]
    assert curve(runs["resumed"]) == pytest.approx(curve(runs["full"]), abs=1e-6)
    lines = (tmp_path / "stopped" / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_uneven_global_batch_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    d = distributed.from_env()
    assert d == distributed.Dist(0, 2, 0) and d.enabled and d.is_main
    assert distributed.local_batch(48, d) == 24
    with pytest.raises(VitsamError, match="batch size 49 does not split over 2 processes"):
        distributed.local_batch(49, d)


def test_ranks_split_each_global_batch(tmp_path):
    """Rank slices of the DeviceLoader's batches put together are the one-process batches."""
    from vitsam.vit.loaders import DeviceLoader, Normalize

    cfg = tiny_config(tmp_path, **PLAIN)
    data = training.prepare_data(cfg)
    norm = Normalize(data.mean, data.std, torch.device("cpu"))

    def batches(rank, world):
        gen = torch.Generator().manual_seed(0)
        loader = DeviceLoader(
            data.train, cfg, norm, torch.device("cpu"), gen, rank=rank, world=world
        )
        return [y for _, y in loader]

    one = batches(0, 1)
    two = list(zip(batches(0, 2), batches(1, 2)))
    assert len(one) == len(two) == 384 // 48
    for y, (a, b) in zip(one, two):
        assert len(a) == len(b) == 24 and torch.equal(torch.cat([a, b]), y)


def test_dataloader_ranks_take_disjoint_shards(tmp_path):
    from vitsam.vit.loaders import TextbookLoader

    cfg = tiny_config(tmp_path, **{**PLAIN, "loader": "dataloader"})
    data = training.prepare_data(cfg)
    ranks = [
        TextbookLoader(data.train, cfg, data.mean, data.std, torch.device("cpu"), 0, r, 2)
        for r in (0, 1)
    ]
    for loader in ranks:
        loader.set_epoch(3)
    shards = [list(loader.sampler) for loader in ranks]
    assert not set(shards[0]) & set(shards[1]) and len(set(shards[0] + shards[1])) == 384
    assert [len(loader) for loader in ranks] == [384 // 48] * 2
    x, y = next(iter(ranks[1]))
    assert x.shape[0] == y.shape[0] == 24  # batch_size / world
