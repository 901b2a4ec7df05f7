"""Precision choice on CPUs with and without bf16 matrix units (capabilities faked)."""

import pytest
import torch

from vitsam import devices
from vitsam.errors import VitsamError

CPU = torch.device("cpu")
XEON_NO_BF16 = frozenset("fpu sse avx2 avx512f avx512bw avx512vl avx512_vnni".split())
EPYC_BF16 = frozenset("fpu sse avx2 avx512f avx512bw avx512_bf16".split())
SAPPHIRE_RAPIDS = frozenset("fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile".split())
ZEN3 = frozenset("fpu sse avx avx2 fma".split())


@pytest.fixture
def cpu(monkeypatch):
    """Fake the CPU: flags, architecture, and matmul speeds (GFLOP/s per dtype)."""

    def fake(flags=frozenset(), machine="x86_64", gflops=None):
        monkeypatch.delenv(devices.BF16_ENV, raising=False)  # pytest --precision sets it
        devices.cpu_bf16_support.cache_clear()
        monkeypatch.setattr(devices, "cpu_flags", lambda: flags)
        monkeypatch.setattr(devices.platform, "machine", lambda: machine)

        def timed(dtype, *a, **k):
            if gflops is None:
                raise AssertionError("the flags should have decided without timing")
            return gflops[dtype]

        monkeypatch.setattr(devices, "matmul_gflops", timed)

    yield fake
    devices.cpu_bf16_support.cache_clear()


@pytest.mark.parametrize(
    ("flags", "dtype", "why"),
    [
        (XEON_NO_BF16, torch.float32, "no bf16 matrix units"),
        (ZEN3, torch.float32, "no bf16 matrix units"),
        (EPYC_BF16, torch.bfloat16, "bf16 matrix units (avx512_bf16)"),
        (SAPPHIRE_RAPIDS, torch.bfloat16, "(avx512_bf16, amx_bf16)"),
    ],
)
def test_auto_follows_the_cpus_bf16_units(cpu, flags, dtype, why):
    cpu(flags)
    p = devices.choose_precision("auto", CPU)
    assert p.dtype == dtype and why in p.reason
    assert str(p) == f"{p.name}: {p.reason}"


def test_without_flags_a_timing_decides_once(cpu, monkeypatch):
    """No flags to read (macOS, Arm): a matmul timed in both precisions, once a process."""
    cpu(frozenset(), machine="arm64", gflops={torch.float32: 100.0, torch.bfloat16: 400.0})
    calls, timed = [], devices.matmul_gflops
    monkeypatch.setattr(devices, "matmul_gflops", lambda d: calls.append(d) or timed(d))
    assert devices.choose_precision("auto", CPU).dtype == torch.bfloat16
    assert devices.choose_precision("auto", CPU).dtype == torch.bfloat16
    assert calls == [torch.float32, torch.bfloat16]
    cpu(frozenset(), machine="arm64", gflops={torch.float32: 100.0, torch.bfloat16: 110.0})
    p = devices.choose_precision("auto", CPU)
    assert p.dtype == torch.float32 and "110 GFLOP/s against 100" in p.reason


def test_named_precisions_and_fp16_on_the_cpu(cpu):
    cpu(XEON_NO_BF16)
    assert devices.choose_precision("bf16", CPU).dtype == torch.bfloat16  # asked for: obeyed
    assert devices.resolve_precision("fp32", CPU) == torch.float32
    with pytest.raises(VitsamError, match="fp16 needs a GPU: on the CPU use --precision bf16"):
        devices.choose_precision("fp16", CPU)
    with pytest.raises(VitsamError, match="unknown precision"):
        devices.choose_precision("int8", CPU)


def test_training_and_segmentation_choose_alike(cpu, tmp_path, caplog):
    """The same rule for both halves, and the run's first line says what and why."""
    from tests.conftest import tiny_config
    from vitsam.seg.pipeline import seg_precision
    from vitsam.vit.train import Trainer

    for flags, dtype in ((XEON_NO_BF16, torch.float32), (EPYC_BF16, torch.bfloat16)):
        cpu(flags)
        caplog.clear()
        with caplog.at_level("INFO", logger="vitsam"):
            trainer = Trainer(tiny_config(tmp_path, precision="auto"))
        assert trainer.dtype == seg_precision("auto", CPU) == dtype
        assert caplog.records[0].getMessage().startswith(
            f"precision {'bf16' if dtype == torch.bfloat16 else 'fp32'}: this CPU has"
        )


def test_cpu_flags_reads_proc_cpuinfo():
    flags = devices.cpu_flags()
    assert isinstance(flags, frozenset)  # empty off Linux; never raises


def test_segment_fp16_on_the_cpu_says_so_for_segmentation(tmp_path, capsys):
    """The message fits the command: no word of training in `vitsam segment`."""
    from PIL import Image

    from vitsam.cli import main

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    args = ["segment", str(tmp_path / "a.png"), "--prompt", "cat", "--device", "cpu"]
    assert main([*args, "--precision", "fp16", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "fp16 needs a GPU" in err and "training" not in err


def test_the_environment_overrides_the_cpus_decision(cpu, monkeypatch):
    cpu(ZEN3)
    monkeypatch.setenv(devices.BF16_ENV, "1")
    p = devices.choose_precision("auto", CPU)
    assert p.dtype == torch.bfloat16 and "VITSAM_CPU_BF16=1" in p.reason
    devices.cpu_bf16_support.cache_clear()
    monkeypatch.setenv(devices.BF16_ENV, "yes")
    with pytest.raises(VitsamError, match="set it to 1 .bf16. or 0"):
        devices.choose_precision("auto", CPU)
