"""Smoke tests of the headless command `python train.py` (README: "Run it without Jupyter").

Each run is a real subprocess from the repository root, as a user would type it, with a tiny
budget so the whole file takes well under a minute on a CPU.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train.py")
OUTPUTS = ("checkpoint.pt", "curves.png", "predictions.png", "metrics.json")


def run(*args, timeout=300):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, TRAIN, *args], cwd=ROOT, env=env, timeout=timeout,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    result = run("--steps", "3", "--batch-size", "2", "--device", "cpu", "--out", str(out))
    return out, result


def test_tiny_run_writes_the_four_files(tiny_run):
    out, result = tiny_run
    assert result.returncode == 0, result.stderr[-2000:]
    for name in OUTPUTS:
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, f"{name} missing"
    assert "held-out mIoU" in result.stdout
    assert "Traceback" not in result.stderr


def test_metrics_json_parses_and_describes_the_run(tiny_run):
    out, _ = tiny_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0 and 0.0 <= metrics["pixel_accuracy"] <= 1.0
    assert set(metrics["per_class_iou"]) == {"background", "circle", "square", "triangle"}
    assert metrics["steps"] == metrics["steps_done"] == 3 and metrics["interrupted"] is False
    assert metrics["seconds"] >= 0 and metrics["training"]["batch_size"] == 2
    assert metrics["config"]["num_latents"] == 16 and metrics["config"]["attention"] is True


def test_checkpoint_loads_back_with_the_module(tiny_run):
    out, _ = tiny_run
    import latentseg_utils as u
    model, extra = u.load_checkpoint(str(out / "checkpoint.pt"), device="cpu")
    assert type(model).__name__ == "LatentSegNet" and extra["steps_done"] == 3


def test_help_explains_the_flags():
    result = run("--help", timeout=60)
    assert result.returncode == 0
    for flag in ("--out", "--steps", "--batch-size", "--lr", "--seed", "--num-latents",
                 "--num-heads", "--feature-dim", "--no-attention", "--key-variant", "--device"):
        assert flag in result.stdout, flag


@pytest.mark.parametrize("args, flag", [
    (["--num-heads", "5"], "--num-heads"),
    (["--steps", "0"], "--steps"),
    (["--lr", "-1"], "--lr"),
    (["--batch-size", "0"], "--batch-size"),
    (["--num-latents", "0"], "--num-latents"),
    (["--steps", "many"], "--steps"),
    (["--device", "tpu"], "--device"),
    (["--no-such-flag"], "--no-such-flag"),
])
def test_bad_flags_fail_with_one_clear_line(tmp_path, args, flag):
    result = run(*args, "--out", str(tmp_path / "bad"), timeout=120)
    assert result.returncode == 2
    assert flag in result.stderr and "error:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bad").exists(), "a rejected run must not create its folder"
