"""benchmarks/robustness.py: a smoke run (in a subprocess, as a user runs it) writes its
results, table and plot and prints gate lines; the gates read the rows as the issue states
them; bad flags are refused with a message."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "robustness.py"


def load_script():
    spec = importlib.util.spec_from_file_location("robustness", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_run_writes_results_table_plot_and_gates(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "robustness_test_smoke.json").read_text())
    rows = data["results"]
    assert {(r["model"], r["data"]) for r in rows} == {
        ("final", "shapes"), ("twin", "shapes"), ("tutorial", "shapes"),
        ("final", "corner_key"), ("twin", "corner_key")}       # the tutorial: shapes only
    assert all(len(r["miou"]) == 3 and r["steps"] == 2 for r in rows)
    final = next(r for r in rows if r["model"] == "final")
    assert "mean_ablated_miou" in final["measured"][0]
    assert (tmp_path / "robustness_test_smoke.png").stat().st_size > 1000
    assert "| shapes | final |" in (tmp_path / "robustness_test_smoke.md").read_text()
    assert "corner_key: final at least its twin + 0.10" in result.stdout
    assert data["device"] and data["machine"] and data["command"]


def row(model, data, scores):
    return {"model": model, "data": data, "miou": scores, "mean": sum(scores) / len(scores),
            "spread": max(scores) - min(scores), "worst": min(scores)}


def test_gates_follow_the_issue():
    script = load_script()
    rows = [row("final", "shapes", [0.92, 0.93, 0.91]), row("twin", "shapes", [0.93, 0.93, 0.94]),
            row("final", "small", [0.80, 0.70, 0.81]), row("twin", "small", [0.80, 0.80, 0.80]),
            row("final", "frame_key", [0.90, 0.90, 0.90]),
            row("twin", "frame_key", [0.85, 0.85, 0.85])]
    lines = {line.split(":")[0] + ":" + line.split(":")[1]: ok for ok, line in script.gates(rows)}
    assert lines["shapes: final at least its twin - 0.02"] is True
    assert lines["shapes: final mIoU at least 0.90"] is True
    assert lines["small: no seed more than 0.05 below the final's mean"] is False   # 0.70
    assert lines["frame_key: final at least its twin + 0.10"] is False              # +0.05


@pytest.mark.parametrize("args, words", [
    (["--steps", "0"], "--steps"),
    (["--seeds", "1", "1"], "repeats a seed"),
    (["--variants", "sharp"], "invalid choice"),
])
def test_bad_flags_are_refused(args, words, capsys):
    with pytest.raises(SystemExit):
        load_script().parse_args(args)
    assert words in capsys.readouterr().err
