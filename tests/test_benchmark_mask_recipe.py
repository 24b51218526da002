"""benchmarks/mask_recipe.py: a smoke run trains its rows on the validation set, writes the
results, table and plot, and compares each row with the default head by the finding rule."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mask_recipe.py"


@pytest.mark.slow
def test_smoke_run_writes_results_on_validation(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "mask_recipe_smoke.json").read_text())
    assert data["split"] == "validation"
    rows = data["results"]
    assert [r["model"] for r in rows] == ["default", "deep"]
    assert {"pq", "claimed_once", "class_accuracy"} <= set(rows[0]["measured"][0])
    assert "no measurable difference" in result.stdout or "a finding" in result.stdout
    assert (tmp_path / "mask_recipe_smoke.png").stat().st_size > 1000


def test_an_unknown_row_is_refused():
    result = subprocess.run([sys.executable, str(SCRIPT), "--rows", "nonsense", "--smoke"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "invalid choice: 'nonsense'" in result.stderr
