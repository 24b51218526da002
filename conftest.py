"""The test suite's two rules that span files.

1. The `slow` marker: nbval of notebooks 04 onwards (they train), the browser test, the
   benchmarks' smoke runs and the ipywidgets 7.7.1 rerun. `python -m pytest -m "not slow"`
   is the fast tier; `python -m pytest` (CI) runs everything.
2. The notebook time guard: when nbval ran every cell of a notebook, the cells' execution
   time must stay within twice the run time the notebook's title states; otherwise the run
   fails, so a notebook that grew slower gets a true title (or gets faster).
"""
import importlib.util
import os
from collections import Counter, defaultdict
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent
FIRST_SLOW_NOTEBOOK = 4          # 01-03 build and check parts; 04 onwards train
# Twice the stated time; the guard's own test lowers it to see it fail.
TIME_GUARD_FACTOR = float(os.environ.get("LATENTSEG_TIME_GUARD_FACTOR", "2.0"))

_cells_collected: Counter = Counter()
_cells_run: Counter = Counter()
_seconds: defaultdict = defaultdict(float)
_guard_lines: list = []


def _stated_run_time(path: Path) -> float:
    """tools/nbtools.py's reading of the title's run time (loaded by path, not via sys.path)."""
    spec = importlib.util.spec_from_file_location("nbtools", ROOT / "tools" / "nbtools.py")
    nbtools = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nbtools)
    return nbtools.stated_run_time(nbformat.read(path, as_version=4))


def _notebook_of(item_or_report) -> "Path | None":
    path = Path(str(item_or_report.fspath if hasattr(item_or_report, "fspath")
                    else item_or_report.location[0]))
    return path if path.suffix == ".ipynb" else None


@pytest.hookimpl(tryfirst=True)   # before -m deselects, so the counts are of whole notebooks
def pytest_collection_modifyitems(config, items):
    for item in items:
        notebook = _notebook_of(item)
        if notebook is None:
            continue
        _cells_collected[notebook.resolve()] += 1
        if int(notebook.name[:2]) >= FIRST_SLOW_NOTEBOOK:
            item.add_marker(pytest.mark.slow)


def pytest_runtest_logreport(report):
    if report.when != "call" or ".ipynb::" not in report.nodeid:
        return
    notebook = (ROOT / report.nodeid.split("::", 1)[0]).resolve()
    _cells_run[notebook] += 1
    _seconds[notebook] += report.duration


def pytest_sessionfinish(session, exitstatus):
    too_slow = []
    for notebook, cells in sorted(_cells_run.items()):
        if cells != _cells_collected[notebook]:
            continue                       # part of a notebook ran (-k, -x): no verdict
        stated = _stated_run_time(notebook)
        seconds = _seconds[notebook]
        verdict = "ok" if seconds <= TIME_GUARD_FACTOR * stated else "TOO SLOW"
        _guard_lines.append(f"{notebook.name:<32} {seconds:7.1f} s of {stated:5.0f} s stated "
                            f"(limit {TIME_GUARD_FACTOR * stated:.0f} s): {verdict}")
        if verdict != "ok":
            too_slow.append(notebook.name)
    if too_slow and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _guard_lines:
        terminalreporter.section("notebook time guard (nbval cell time vs the title's run time)")
        for line in _guard_lines:
            terminalreporter.write_line(line)
        if any(line.endswith("TOO SLOW") for line in _guard_lines):
            terminalreporter.write_line(
                "A notebook took more than twice the run time its title states: make it faster "
                "or state the time it takes on a quiet 2-core CPU (tools/execute_notebooks.py "
                "measures it).", red=True)
