"""The notebook time guard (conftest.py): a notebook over its reference time, scaled to this
machine, fails the run; within it, passes. The scale holds up where it matters: one thread
instead of two (a slower machine, with other float reductions) still passes, and a notebook
that doubled its own work on the same machine fails."""
import json
import os
import subprocess
import sys
from pathlib import Path

import importlib.util

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path, name: str):
    """A module by its file path (nothing edits sys.path)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


nbtools = load(ROOT / "tools" / "nbtools.py", "nbtools")
guard_limit = load(ROOT / "conftest.py", "root_conftest").guard_limit


def run_nbval_on_notebook_03(tmp_path, reference_seconds: float):
    """nbval of notebook 03 with a reference file that gives 03 `reference_seconds`."""
    times = tmp_path / "reference_times.json"
    measured = json.loads((ROOT / "tools" / "reference_times.json").read_text())
    measured["notebooks"] = {"03_expert_segmentation.ipynb": reference_seconds}
    times.write_text(json.dumps(measured))
    env = {**os.environ, "LATENTSEG_REFERENCE_TIMES": str(times), "LATENTSEG_TIME_GUARD_SLACK": "0"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q",
                           "notebooks/03_expert_segmentation.ipynb"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_notebook_over_its_time_fails_the_run(tmp_path):
    result = run_nbval_on_notebook_03(tmp_path, 0.001)     # as if 03 once took a millisecond
    assert result.returncode == 1, result.stdout[-2000:]
    assert "03_expert_segmentation.ipynb" in result.stdout and "TOO SLOW" in result.stdout
    assert " passed" in result.stdout and " failed" not in result.stdout   # every cell passed


def test_a_notebook_within_its_time_passes(tmp_path):
    result = run_nbval_on_notebook_03(tmp_path, 1000)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "03_expert_segmentation.ipynb" in result.stdout and ": ok" in result.stdout
    assert "yardstick workload" in result.stdout


def test_the_committed_checkpoint_is_not_rewritten_by_a_notebook_run():
    """Notebook 05 saves into the folder that conftest.py gives each notebook under test."""
    committed = (ROOT / "notebooks" / "checkpoints" / "latentsegnet.pt").read_bytes()
    code = ("import os, latentseg_utils as u; print(u.checkpoint_path('latentsegnet.pt'))")
    env = {**os.environ, "LATENTSEG_CHECKPOINT_DIR": "/elsewhere"}
    printed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
    assert printed == os.path.join("/elsewhere", "latentsegnet.pt")
    assert (ROOT / "notebooks" / "checkpoints" / "latentsegnet.pt").read_bytes() == committed


# A stand-in notebook: training the series' final model for PROBE_STEPS steps (what notebooks
# 05-08 spend their time on), timed in a fresh process, with the yardstick timed beside it.
PROBE_STEPS = 240
PROBE = f"""
import importlib.util, json, sys, time
import torch
import latentseg_utils as u
spec = importlib.util.spec_from_file_location("nbtools", {str(ROOT / 'tools' / 'nbtools.py')!r})
nbtools = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nbtools)
if len(sys.argv) > 2:
    torch.set_num_threads(int(sys.argv[2]))
yardstick = nbtools.time_reference_workload()
torch.manual_seed(0)
u.train(u.LatentSegNet(), steps=5, batch_size=16, lr=3e-3, seed=0, progress=False)   # warm-up
torch.manual_seed(0)
start = time.perf_counter()
u.train(u.LatentSegNet(), steps=int(sys.argv[1]), batch_size=16, lr=3e-3, seed=0, progress=False)
print(json.dumps({{"yardstick": yardstick, "seconds": time.perf_counter() - start}}))
"""


def probe(steps: int, threads: "int | None" = None) -> dict:
    """The stand-in notebook in a fresh process, with `threads` threads (default: all cores,
    whatever OMP_NUM_THREADS this run has, so that one thread is a real slowdown)."""
    threads = threads or os.cpu_count()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    args = [sys.executable, "-c", PROBE, str(steps), str(threads)]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: no slower thread count to try")
def test_the_guard_scales_to_a_slower_machine_and_catches_doubled_work():
    reference = probe(PROBE_STEPS)                 # this machine, as the reference machine
    one_thread = probe(PROBE_STEPS, threads=1)     # a slower machine: the same work, one thread
    doubled = probe(2 * PROBE_STEPS)               # the notebook doubled its work, same machine
    report = (f"reference {reference}, one thread {one_thread}, doubled {doubled}, limit here "
              f"{guard_limit(reference['seconds'], 1.0):.1f} s")
    slowdown = one_thread["yardstick"] / reference["yardstick"]
    assert one_thread["seconds"] > 1.1 * reference["seconds"], "one thread did not slow it: " + report
    assert one_thread["seconds"] <= guard_limit(reference["seconds"], slowdown), report
    # Same machine by construction: its slowdown is 1. (The yardstick's own run-to-run noise,
    # 0.76 to 1.16 s between processes here, can only loosen the guard, never fail a run.)
    assert doubled["seconds"] > guard_limit(reference["seconds"], 1.0), report


def test_every_title_states_at_least_its_reference_time():
    """The learner-facing run time in each title is not below what the reference machine took
    (within a quarter: a title says "about five minutes", not "312 seconds")."""
    measured = nbtools.read_reference_times()["notebooks"]
    for path in nbtools.series_notebooks():
        name = os.path.basename(path)
        assert name in measured, f"{name}: no reference time; python tools/execute_notebooks.py --record {name}"
        stated = nbtools.stated_run_time(nbformat.read(path, as_version=4))
        assert measured[name] <= 1.25 * stated, f"{name}: took {measured[name]} s, title says {stated} s"
