"""The test suite's three rules that span files.

1. The `slow` marker: nbval of notebooks 04 onwards (they train), the browser test, the
   benchmarks' smoke runs and the ipywidgets 7.7.1 rerun. `python -m pytest -m "not slow"`
   is the fast tier; `python -m pytest` (CI) runs everything.
2. Each notebook under test gets its own copy of the committed checkpoints
   (`LATENTSEG_CHECKPOINT_DIR`, read by `u.checkpoint_path`), in a temporary folder: a notebook
   that saves a checkpoint never rewrites a committed file, and notebooks 06, 08 and 09 analyse the
   committed checkpoint, not what notebook 05 retrained on this machine a minute earlier.
3. The notebook time guard: when nbval ran every cell of a notebook, the cells' execution
   time must stay within TIME_GUARD_FACTOR times the time the reference machine measured for
   it (tools/reference_times.json), scaled by how much slower this machine is. The scale comes
   from a fixed PyTorch workload (tools/nbtools.py) timed once per run here and recorded on the
   reference machine: a slower machine, or one thread instead of two, slows the workload and
   the notebooks alike and still passes; a notebook that doubled its own work fails.
"""
import importlib.util
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
FIRST_SLOW_NOTEBOOK = 4          # 01-03 build and check parts; 04 onwards train
COMMITTED_CHECKPOINTS = ROOT / "notebooks" / "checkpoints"
# A notebook may take 1.5 times its reference time (scaled to this machine) plus a few seconds
# for the kernel's first imports; doubling a notebook's work exceeds that.
TIME_GUARD_FACTOR = float(os.environ.get("LATENTSEG_TIME_GUARD_FACTOR", "1.5"))
TIME_GUARD_SLACK_SECONDS = float(os.environ.get("LATENTSEG_TIME_GUARD_SLACK", "3.0"))

_cells_collected: Counter = Counter()
_cells_run: Counter = Counter()
_seconds: defaultdict = defaultdict(float)
_guard_lines: list = []
_checkpoint_root: "list[str]" = []


def _nbtools():
    """tools/nbtools.py, loaded by path (nothing edits sys.path)."""
    spec = importlib.util.spec_from_file_location("nbtools", ROOT / "tools" / "nbtools.py")
    nbtools = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nbtools)
    return nbtools


def _notebook_of(item) -> "Path | None":
    path = Path(str(item.path))
    return path.resolve() if path.suffix == ".ipynb" else None


@pytest.hookimpl(tryfirst=True)   # before -m deselects, so the counts are of whole notebooks
def pytest_collection_modifyitems(config, items):
    for item in items:
        notebook = _notebook_of(item)
        if notebook is None:
            continue
        _cells_collected[notebook] += 1
        if notebook.name[:2].isdigit() and int(notebook.name[:2]) >= FIRST_SLOW_NOTEBOOK:
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(tryfirst=True)   # before nbval starts the notebook's kernel, which inherits it
def pytest_runtest_setup(item):
    notebook = _notebook_of(item)
    if notebook is None:
        return
    if not _checkpoint_root:
        _checkpoint_root.append(tempfile.mkdtemp(prefix="latentseg-checkpoints-"))
    folder = Path(_checkpoint_root[0]) / notebook.stem
    if not folder.exists():
        if COMMITTED_CHECKPOINTS.is_dir():
            shutil.copytree(COMMITTED_CHECKPOINTS, folder)
        else:
            folder.mkdir(parents=True)
    os.environ["LATENTSEG_CHECKPOINT_DIR"] = str(folder)


def pytest_runtest_logreport(report):
    if report.when != "call" or ".ipynb::" not in report.nodeid:
        return
    notebook = (ROOT / report.nodeid.split("::", 1)[0]).resolve()
    _cells_run[notebook] += 1
    _seconds[notebook] += report.duration


def guard_limit(reference_seconds: float, slowdown: float) -> float:
    """Seconds a notebook may take here: TIME_GUARD_FACTOR times what it took on the reference
    machine, times how much slower this machine is (never less than 1: a faster machine is held
    to the reference times), plus TIME_GUARD_SLACK_SECONDS."""
    return TIME_GUARD_FACTOR * reference_seconds * max(1.0, slowdown) + TIME_GUARD_SLACK_SECONDS


def pytest_sessionfinish(session, exitstatus):
    if _checkpoint_root:
        shutil.rmtree(_checkpoint_root[0], ignore_errors=True)
    whole = {nb: s for nb, s in _seconds.items() if _cells_run[nb] == _cells_collected[nb]}
    if not whole:
        return                             # part of a notebook ran (-k, -x): no verdict
    nbtools = _nbtools()
    reference = nbtools.read_reference_times()
    here = nbtools.time_reference_workload()
    slowdown = here / reference["workload_seconds"]
    _guard_lines.append(f"yardstick workload: {here:.2f} s here, {reference['workload_seconds']:.2f}"
                        f" s on the reference machine: {slowdown:.2f}x")
    too_slow = []
    for notebook, seconds in sorted(whole.items()):
        measured = reference["notebooks"].get(notebook.name)
        if measured is None:
            _guard_lines.append(f"{notebook.name:<32} {seconds:7.1f} s: no reference time "
                                "(run python tools/execute_notebooks.py --record): TOO SLOW")
            too_slow.append(notebook.name)
            continue
        limit = guard_limit(measured, slowdown)
        verdict = "ok" if seconds <= limit else "TOO SLOW"
        _guard_lines.append(f"{notebook.name:<32} {seconds:7.1f} s, reference {measured:6.1f} s "
                            f"(limit here {limit:.0f} s): {verdict}")
        if verdict != "ok":
            too_slow.append(notebook.name)
    if too_slow and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _guard_lines:
        terminalreporter.section("notebook time guard (nbval cell time vs the reference machine's)")
        for line in _guard_lines:
            terminalreporter.write_line(line)
        if any(line.endswith("TOO SLOW") for line in _guard_lines):
            terminalreporter.write_line(
                "A notebook took longer than its reference time allows on this machine: make it "
                "faster, or measure it again on a quiet 2-core CPU and record it "
                "(python tools/execute_notebooks.py --record NAME.ipynb).", red=True)
