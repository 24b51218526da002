"""Smoke test of benchmarks/scaling.py: a tiny run (in a subprocess, as a user runs it)
writes its table, markdown and plot; a bad flag is refused with a message that names it.
No assertions on time."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "scaling.py")
METHODS = ("latent cross-attention", "self-attention, written out", "self-attention, fused SDPA")


def run(*args, timeout=120):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_tiny_run_writes_table_markdown_and_plot(tmp_path):
    done = run("--sizes", "32", "64", "--repeats", "1", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for method in METHODS:
        assert method in out
    assert "fwd+bwd ms" in out and "peak MiB" in out
    assert "log-log slope of time vs N" in out
    assert "failed" not in out
    markdown = (tmp_path / "scaling.md").read_text()
    for method in METHODS:
        assert markdown.count(f"| {method}") == 2          # one table row per size
    for heading in ("## Targets", "## Machine", "torch ", "| 64 | 256 |"):
        assert heading in markdown
    png = (tmp_path / "scaling.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_scaling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("flag, value, words", [
    ("--sizes", "30", "30 must be a multiple of 4"),
    ("--sizes", "big", "not a whole number"),
    ("--sizes", "4", "at least 8"),
    ("--repeats", "0", "at least 1"),
    ("--batch", "-2", "at least 1"),
    ("--threads", "x", "not a whole number"),
])
def test_bad_flag_is_refused_with_a_message_that_names_it(flag, value, words, capsys, tmp_path):
    script = load_script()
    with pytest.raises(SystemExit) as exit_info:
        script.main([flag, value, "--out", str(tmp_path)])
    assert exit_info.value.code == 2                      # argparse's usage error
    assert not (tmp_path / "scaling.md").exists()
    error = capsys.readouterr().err
    assert f"argument {flag}" in error and words in error


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script().parse_args(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--sizes", "--repeats", "--batch", "--threads", "--out"):
        assert flag in help_text
    assert "--worker" not in help_text


def test_written_out_and_fused_self_attention_compute_the_same():
    import torch
    script = load_script()
    torch.manual_seed(0)
    written = script.build("written")
    fused = script.build("fused")
    fused.load_state_dict(written.state_dict())
    tokens = script.make_tokens(32, 2, torch.device("cpu"))           # [2, 64, 64]
    assert tokens.shape == (2, 64, 64)
    torch.testing.assert_close(written(tokens), fused(tokens), rtol=1e-4, atol=1e-5)
    latent = script.build("latent")
    assert latent(tokens).shape == (2, 16, 64)                         # K=16 latents
