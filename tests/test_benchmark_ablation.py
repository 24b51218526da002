"""benchmarks/ablation.py and u.ABLATION_STEPS: every step changes exactly one option of
LatentSegNetAblation from the step before and ends at the final model's options; a smoke run writes
its results; the committed results hold at least 3 seeds per row."""
import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import latentseg_utils as u

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "ablation.py"


def load_script():
    spec = importlib.util.spec_from_file_location("ablation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_1a_turns_off_every_option_of_the_final_model_that_step_1_used_to_bundle():
    first = next(iter(u.ABLATION_STEPS.values()))
    for option in ("residual", "layer_norm", "mlp", "batchnorm", "stem", "fuse"):
        assert getattr(first, option) is False and getattr(u.AblationOptions(), option) is True


def test_each_step_changes_one_option_and_the_last_is_the_final_model():
    configs = [dataclasses.asdict(o) for o in u.ABLATION_STEPS.values()]
    for before, after in zip(configs, configs[1:]):
        changed = {k for k in after if after[k] != before.get(k)}
        assert len(changed) == 1, changed
    assert list(u.ABLATION_STEPS.values())[-1] == u.AblationOptions()   # the final model


def test_every_row_is_compared_with_a_row_that_differs_by_one_thing():
    script = load_script()
    spec = script.rows_spec()
    names = [name for name, _, _ in spec]
    for name, build, against in spec:
        if against in (None, "0 tutorial's model"):   # 1a rewrites row 0 in LatentSegNet's parts
            continue
        assert against in names
        mine = build().config
        other = next(b for n, b, _ in spec if n == against)().config
        assert len({k for k in mine if mine[k] != other[k]}) == 1, (name, against)


@pytest.mark.slow
def test_smoke_run_writes_results(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "ablation_smoke.json").read_text())
    assert all(len(r["miou"]) == 3 for r in data["results"])
    assert (tmp_path / "ablation_smoke.png").stat().st_size > 1000
    assert "| 0 tutorial's model |" in result.stdout


def test_committed_results_hold_three_seeds_per_row_and_every_row():
    path = ROOT / "benchmarks" / "results" / "ablation.json"
    data = json.loads(path.read_text())
    assert [r["model"] for r in data["results"]] == [n for n, _, _ in load_script().rows_spec()]
    assert all(len(r["miou"]) >= 3 for r in data["results"])
    assert len({r["steps"] for r in data["results"]}) == 1            # one budget for every row
