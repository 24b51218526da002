"""Smoke test of benchmarks/train_budget.py: a tiny run (in a subprocess, as a user runs it)
writes its table, markdown, JSON and plot with every model asked for; bad flags are refused
with a message that names them. No assertions on time or on the mIoU reached."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "train_budget.py")
MODELS = ("tutorial", "final", "pixel-1x1")


def run(*args, timeout=120):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_train_budget", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tiny_run_writes_table_markdown_json_and_plot(tmp_path):
    # One thread: on a CPU shared with other work it is the quickest setting.
    done = run("--budget", "1", "--models", *MODELS, "--evals", "1", "--threads", "1",
               "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for words in ("params", "steps", "train img/s", "infer img/s", "held-out mIoU",
                  "final model reaches held-out mIoU >= 0.90", "load average"):
        assert words in out
    assert "final vs UNet target needs both models" in out          # unet not asked for
    table = out[out.index("held-out mIoU"):]
    for model in MODELS:
        assert f"\n{model} " in table

    markdown = (tmp_path / "train_budget.md").read_text()
    for model in MODELS:
        assert markdown.count(f"| {model} |") == 1                    # one table row each
    for heading in ("## Targets", "## Machine", "load average", "--budget 1 ", "torch "):
        assert heading in markdown
    assert "MISS" in markdown or "PASS" in markdown

    data = json.loads((tmp_path / "train_budget.json").read_text())
    assert [r["model"] for r in data["results"]] == list(MODELS)
    for r in data["results"]:
        assert r["steps"] >= 1 and r["train_seconds"] >= 1
        assert 0 <= r["miou"] <= 1 and r["params"] > 0
        assert r["train_images_per_s"] > 0 and r["infer_images_per_s"] > 0
        curve = r["curve"]
        assert curve["seconds"][0] == 0 and curve["steps"][-1] == r["steps"]
        assert curve["miou"][-1] == r["miou"]
        assert len(curve["seconds"]) == len(curve["miou"]) == 2       # start and end
    assert data["load"] is not None and data["machine"] and data["command"]

    png = (tmp_path / "train_budget.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


@pytest.mark.parametrize("args, words", [
    (["--budget", "0"], "argument --budget: 0 must be a positive number"),
    (["--budget", "-5"], "argument --budget: -5 must be a positive number"),
    (["--budget", "soon"], "argument --budget: invalid float value"),
    (["--models", "final", "resnet"], "argument --models: unknown model 'resnet'"),
    (["--evals", "0"], "argument --evals: 0 must be at least 1"),
    (["--threads", "-1"], "argument --threads: -1 must be 0"),
    (["--schedule", "linear"], "argument --schedule: invalid choice"),
])
def test_bad_flag_is_refused_with_a_message_that_names_it(args, words, capsys, tmp_path):
    script = load_script()
    with pytest.raises(SystemExit) as exit_info:
        script.main(args + ["--out", str(tmp_path)])
    assert exit_info.value.code == 2                               # argparse's usage error
    assert not (tmp_path / "train_budget.md").exists()
    assert words in capsys.readouterr().err


def test_help_lists_the_flags_and_models(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script().parse_args(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--budget", "--models", "--evals", "--schedule", "--threads", "--out"):
        assert flag in help_text
    for model in ("tutorial", "final", "final-no-attention", "step1", "pixel-1x1", "unet"):
        assert model in help_text


def test_unet_baseline_shapes_size_and_gradients():
    import torch
    import latentseg_utils as u
    script = load_script()
    unet = script.build("unet")
    final = script.build("final")
    ratio = u.count_parameters(unet) / u.count_parameters(final)
    assert 0.9 < ratio < 1.1                                    # a like-for-like baseline
    images, labels = u.make_shapes_batch(2, 64, seed=0)
    logits = unet(images)
    assert logits.shape == (2, 4, 64, 64)                       # full resolution, 4 classes
    script.loss_of(unet, images, labels).backward()
    assert all(p.grad is not None for p in unet.parameters())
    with pytest.raises(ValueError, match="multiples of 8"):
        unet(torch.zeros(1, 3, 60, 60))


def test_learning_rate_schedule_runs_on_the_clock():
    script = load_script()
    f = script.lr_factor
    assert f(0, 60, "cosine") == pytest.approx(1 / 20)           # u.train's first-step factor
    assert f(0.05 * 60, 60, "cosine") == pytest.approx(1.0)      # warm-up over the first 5%
    assert f(60, 60, "cosine") == pytest.approx(0.0, abs=1e-12)  # annealed when the budget ends
    assert f(30, 60, "cosine") < 1
    assert f(30, 60, "constant") == 1.0
