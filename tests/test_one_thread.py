"""Another arithmetic path: a training notebook under one thread. Float reductions then run in
another order, as on another machine, so a trained model's numbers differ in their last digits;
what nbval compares must not (CONTRIBUTING.md: what a compared line may state). Notebook 04
trains three small models in about 15 seconds; the full suite under `OMP_NUM_THREADS=1` is the
wider version of this check."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_training_notebook_passes_nbval_under_one_thread():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                            text=True).stdout
    result = subprocess.run([sys.executable, "-m", "pytest", "-q",
                             "notebooks/04_synthetic_data.ipynb"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
    assert "04_synthetic_data.ipynb" in result.stdout and ": ok" in result.stdout   # time guard
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                           text=True).stdout
    assert after == before, "running the notebook changed files of the checkout"
