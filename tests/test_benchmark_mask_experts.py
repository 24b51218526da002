"""benchmarks/mask_experts.py: a smoke run writes its results, table and plot and prints the
targets as PASS/MISS lines."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mask_experts.py"


@pytest.mark.slow
def test_smoke_run_writes_results_and_targets(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "mask_experts_smoke.json").read_text())["results"]
    assert [(r["data"], r["model"]) for r in rows] == [
        ("shapes", "mask-head"), ("shapes", "final"), ("crowded", "mask-head"), ("crowded", "final")]
    assert all(len(r["miou"]) == 3 for r in rows)
    assert {"pq", "sq", "rq", "claimed_once", "class_accuracy", "latents_used"} <= set(
        rows[0]["measured"][0])
    assert "components_pq" in rows[1]["measured"][0]      # the baseline without latents
    shapes, crowded = result.stdout.split("crowded:")
    for target in ("semantic test mIoU at least", "PQ at least 0.75 and at least the connected "
                   "components", "claimed by exactly one"):
        assert target in shapes and ("**PASS**" in shapes or "**MISS**" in shapes)
    assert "**PASS**" not in crowded and "**MISS**" not in crowded   # reported, not judged
    assert (tmp_path / "mask_experts_smoke.png").stat().st_size > 1000
