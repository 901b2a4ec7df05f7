import json

import numpy as np
import pytest
from PIL import Image

from vitsam.cli import main

TINY = [
    "--dataset",
    "shapes",
    "--train-subset",
    "384",
    "--test-subset",
    "100",
    "--dim",
    "32",
    "--depth",
    "2",
    "--heads",
    "2",
    "--mlp-dim",
    "64",
    "--batch-size",
    "48",
    "--device",
    "cpu",
    "--precision",
    "fp32",
    "--quiet",
]


def test_print_config_is_the_seed_recipe(capsys):
    assert main(["train", "--preset", "seed", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    m = cfg["model"]
    assert (m["image_size"], m["patch_size"], m["dim"], m["depth"], m["heads"], m["mlp_dim"]) == (
        32,
        4,
        256,
        8,
        8,
        512,
    )
    assert m["dropout"] == 0.1
    assert (cfg["lr"], cfg["weight_decay"], cfg["epochs"], cfg["batch_size"]) == (
        3e-4,
        0.05,
        200,
        256,
    )
    assert cfg["warmup_epochs"] > 0 and cfg["min_lr"] == 0.0


def test_flags_override_one_field_each(capsys):
    assert main(["train", "--epochs", "5", "--depth", "6", "--no-flip", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["epochs"] == 5 and cfg["model"]["depth"] == 6 and cfg["flip"] is False
    assert cfg["model"]["dim"] == 256


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--preset", "quick", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    return out


def test_train_eval_predict_in_process(trained_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["eval", str(trained_run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "top-1 accuracy" in out and "disk" in out
    report = json.loads((trained_run / "confusion.json").read_text())
    assert np.array(report["confusion_matrix"]).sum() == 2000
    assert (trained_run / "confusion.png").stat().st_size > 0

    img = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 200, 4), np.uint8)).save(img)  # any size and mode
    gray = tmp_path / "gray.jpg"
    Image.fromarray(np.full((40, 50), 128, np.uint8)).save(gray)
    assert (
        main(
            ["predict", str(trained_run / "best.pt"), str(img), str(gray), "--json", "--top-k", "3"]
        )
        == 0
    )
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == [str(img), str(gray)]
    probs = [p["probability"] for p in results[0]["predictions"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0001


def test_predict_reports_a_bad_image_and_does_the_rest(trained_run, tmp_path, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    good = tmp_path / "ok.png"
    Image.new("RGB", (32, 32), "red").save(good)
    assert main(["predict", str(trained_run), str(bad), str(good)]) == 1
    captured = capsys.readouterr()
    assert f"{bad}: not an image file" in captured.err
    assert str(good) in captured.out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["eval", "nowhere/run"], "no such checkpoint"),
        (["predict", "nowhere.pt", "x.png"], "no such checkpoint"),
        (["train", "--dataset", "imagenet-xl", "--print-config"], None),
        (["train", "--dataset", "imagenet-xl", "--epochs", "1"], "unknown dataset"),
        (["train", "--resume", "nowhere"], "no last.pt"),
        (["train", "--device", "quantum", "--dataset", "shapes"], "unknown device"),
        (["train", "--patch-size", "5", "--print-config"], "multiple of patch size"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    if message is None:  # printing a config never touches the data
        assert code == 0
        return
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_corrupt_checkpoint_is_clear(tmp_path, capsys):
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"garbage")
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a readable vitsam checkpoint" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "vitsam", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("vitsam ")


def test_the_command_runs_without_the_extras():
    """The README's main job installs no extra: building the parser (every subcommand's
    defaults) must not import FastAPI, Gradio, transformers, Ray, PyAV or pycocotools."""
    import subprocess
    import sys

    extras = ["fastapi", "gradio", "uvicorn", "transformers", "ray", "av", "pycocotools",
              "cv2", "scipy", "yaml"]  # fmt: skip
    probe = (
        "import sys\n"
        f"for name in {extras!r}: sys.modules[name] = None  # import now raises ImportError\n"
        "from vitsam.cli import main\n"
        "raise SystemExit(main(['train', '--preset', 'quick', '--print-config']))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert '"epochs"' in run.stdout
