"""The notebook time guard (conftest.py) fails a run whose notebook took longer than the
allowed multiple of its stated run time, and passes it otherwise."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_nbval_on_notebook_03(factor: str):
    env = {**os.environ, "LATENTSEG_TIME_GUARD_FACTOR": factor}
    return subprocess.run([sys.executable, "-m", "pytest", "-q",
                           "notebooks/03_expert_segmentation.ipynb"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_notebook_over_its_time_fails_the_run():
    result = run_nbval_on_notebook_03("0.001")      # allow a thousandth of the stated time
    assert result.returncode == 1, result.stdout[-2000:]
    assert "03_expert_segmentation.ipynb" in result.stdout and "TOO SLOW" in result.stdout
    assert " passed" in result.stdout and " failed" not in result.stdout   # every cell passed


def test_a_notebook_within_its_time_passes():
    result = run_nbval_on_notebook_03("1000")
    assert result.returncode == 0, result.stdout[-2000:]
    assert "03_expert_segmentation.ipynb" in result.stdout and ": ok" in result.stdout
