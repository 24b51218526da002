"""Restart & Run All, in place, for the series' notebooks (all, or those named), then rewrite
each .py pair; print each notebook's wall time beside the run time its title states.

    python tools/execute_notebooks.py                             # every notebook, in order
    python tools/execute_notebooks.py 05_training.ipynb           # only these
    python tools/execute_notebooks.py --record 05_training.ipynb  # and record its time

The outputs are kept as a learner sees them: execution counts 1..n, no timing metadata, no
widget state, and no saved output under a hidden solution (a learner who opens the notebook
does not see the answer before trying). nbclient (0.11) raises a KeyError and nbconvert then
hangs when a cell draws into an ipywidgets.Output (`with out: display(...)`) while
store_widget_state=False, so the notebook runs with the widget state kept and the state is
dropped before writing.

Before the notebooks it times the time guard's yardstick workload (tools/nbtools.py), so each
wall time is also given as the reference machine's equivalent. With --record those equivalents
go into tools/reference_times.json, which the test suite's time guard reads (conftest.py); the
first recording on a machine without that file makes it the reference machine. Record on a
quiet machine: nothing else training at the same time.
Exit status 1 when a notebook took more than 1.25 times its stated run time (reference machine).
"""
import datetime
import json
import os
import platform
import sys
import time

import nbformat
from nbconvert.preprocessors import ExecutePreprocessor

from nbtools import (REFERENCE_FILE, series_notebooks, stated_run_time, time_reference_workload,
                     write_with_pair)


def is_solution(cell) -> bool:
    """A hidden solution: a code cell whose source is collapsed (jupyter.source_hidden)."""
    return cell.cell_type == "code" and cell.metadata.get("jupyter", {}).get("source_hidden", False)


def execute(path: str) -> float:
    """Run one notebook top to bottom in a fresh kernel and write it with its pair; seconds."""
    nb = nbformat.read(path, as_version=4)
    env_dir = os.environ.pop("LATENTSEG_CHECKPOINT_DIR", None)   # a learner's run: checkpoints/
    try:
        start = time.perf_counter()
        ExecutePreprocessor(timeout=3600, kernel_name="python3", record_timing=False,
                            store_widget_state=True).preprocess(
            nb, {"metadata": {"path": os.path.dirname(path)}})
        seconds = time.perf_counter() - start
    finally:
        if env_dir is not None:
            os.environ["LATENTSEG_CHECKPOINT_DIR"] = env_dir
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if is_solution(cell):
            cell.outputs = []
    write_with_pair(nb, path)
    return seconds


def main(argv: "list[str]") -> int:
    record = "--record" in argv
    names = [a for a in argv if a != "--record"]
    paths = [p for p in series_notebooks() if not names or os.path.basename(p) in names]
    unknown = set(names) - {os.path.basename(p) for p in paths}
    if unknown:
        print(f"no such notebook: {sorted(unknown)}; the notebooks are "
              f"{[os.path.basename(p) for p in series_notebooks()]}", file=sys.stderr)
        return 2
    reference = {"workload_seconds": None, "notebooks": {}}
    if os.path.exists(REFERENCE_FILE):
        with open(REFERENCE_FILE) as f:
            reference = json.load(f)
    here = time_reference_workload()
    if reference["workload_seconds"] is None:
        reference["workload_seconds"] = here
    slowdown = here / reference["workload_seconds"]
    print(f"yardstick workload: {here:.2f} s here, {reference['workload_seconds']:.2f} s on the "
          f"reference machine ({slowdown:.2f}x)")
    print(f"{'notebook':<32} {'wall s':>8} {'reference s':>12} {'stated s':>9}")
    too_slow = []
    for path in paths:
        name = os.path.basename(path)
        seconds = execute(path)
        equivalent = seconds / slowdown
        stated = stated_run_time(nbformat.read(path, as_version=4))
        print(f"{name:<32} {seconds:8.1f} {equivalent:12.1f} {stated:9.0f}", flush=True)
        reference["notebooks"][name] = round(equivalent, 1)
        if equivalent > 1.25 * stated:
            too_slow.append(name)
    if record:
        reference.update(machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
                         python=platform.python_version(),
                         recorded=datetime.date.today().isoformat())
        with open(REFERENCE_FILE, "w") as f:
            json.dump(reference, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"recorded in {os.path.relpath(REFERENCE_FILE)}")
    if too_slow:
        print(f"over 1.25 times the stated run time: {too_slow} (a busy machine, or the title "
              "needs a new run time)", file=sys.stderr)
    return 1 if too_slow else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
