"""benchmarks/attention_distance.py: a smoke run writes its results; the committed results hold
both long-range variants, both models and at least 3 seeds, and their table is the one the
script writes from them."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import latentseg_utils as u

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "attention_distance.py"
RESULTS = ROOT / "benchmarks" / "results" / "attention_distance"


def load_script():
    spec = importlib.util.spec_from_file_location("attention_distance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_run_writes_results(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "attention_distance_smoke.json").read_text())
    assert {(r["data"], r["model"]) for r in data["results"]} == \
        {(v, m) for v in u.LONG_RANGE_VARIANTS for m in ("final", "twin")}
    assert (tmp_path / "attention_distance_smoke.png").stat().st_size > 1000
    assert "| corner_key | 64-91 |" in result.stdout


def test_committed_results_cover_both_variants_both_models_three_seeds():
    data = json.loads(RESULTS.with_suffix(".json").read_text())
    rows = data["results"]
    assert {(r["data"], r["model"]) for r in rows} == \
        {(v, m) for v in u.LONG_RANGE_VARIANTS for m in ("final", "twin")}
    assert all(len(r["miou"]) >= 3 and len(r["measured"]) == len(r["miou"]) for r in rows)
    assert {r["steps"] for r in rows} == {800} and data["split"] == "test"


def test_committed_table_is_what_the_script_writes_from_the_committed_json(tmp_path):
    data = json.loads(RESULTS.with_suffix(".json").read_text())
    meta = {k: v for k, v in data.items() if k != "results"}
    text = load_script().write_outputs(data["results"], str(tmp_path / "t"), meta)
    assert text == RESULTS.with_suffix(".md").read_text()
