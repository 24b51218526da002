"""benchmarks/mask_inference.py: a smoke run scores the mask head's plain and panoptic inference
and connected components on both splits, chooses the settings on the validation split only,
and writes its results, table and plot."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mask_inference.py"


def load_script():
    spec = importlib.util.spec_from_file_location("mask_inference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_run_writes_results(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "mask_inference_smoke.json").read_text())
    rows = data["results"]
    assert [r["model"] for r in rows] == ["mask-head", "final"]
    assert all(len(r["measured"]) == 3 for r in rows)
    assert {"validation plain", "test plain"} <= set(rows[0]["measured"][0])
    assert {"validation components", "test components"} == set(rows[1]["measured"][0])
    for line in ("plain inference", "panoptic inference", "components of the true class map"):
        assert line in result.stdout
    assert (tmp_path / "mask_inference_smoke.png").stat().st_size > 1000


def test_the_setting_is_chosen_on_validation_only():
    """Planted: the best test PQ sits on another setting than the best validation PQ."""
    script = load_script()
    keys = [script.setting_key(*s) for s in script.GRID]
    measured = {f"validation {k}": {"pq": 0.1} for k in keys}
    measured.update({f"test {k}": {"pq": 0.1} for k in keys})
    measured[f"validation {keys[3]}"] = {"pq": 0.9}
    measured[f"test {keys[7]}"] = {"pq": 0.99}
    row = {"measured": [measured, measured, measured]}
    assert script.chosen_setting(row) == keys[3]
