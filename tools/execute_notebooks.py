"""Restart & Run All, in place, for the series' notebooks (all, or those named), then rewrite
each .py pair; print each notebook's wall time beside the run time its title states.

    python tools/execute_notebooks.py                    # every notebook, in order
    python tools/execute_notebooks.py 05_training.ipynb  # only these

The outputs are kept as a learner sees them: execution counts 1..n, no timing metadata and no
widget state. nbclient (0.11) raises a KeyError and nbconvert then hangs when a cell draws into
an ipywidgets.Output (`with out: display(...)`) while store_widget_state=False, so the
notebook runs with the widget state kept and the state is dropped before writing.
Exit status 1 when a notebook took more than twice its stated run time.
"""
import os
import sys
import time

import nbformat
from nbconvert.preprocessors import ExecutePreprocessor

from nbtools import series_notebooks, stated_run_time, write_with_pair


def execute(path: str) -> float:
    """Run one notebook top to bottom in a fresh kernel and write it with its pair; seconds."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    ExecutePreprocessor(timeout=3600, kernel_name="python3", record_timing=False,
                        store_widget_state=True).preprocess(
        nb, {"metadata": {"path": os.path.dirname(path)}})
    seconds = time.perf_counter() - start
    nb.metadata.pop("widgets", None)
    write_with_pair(nb, path)
    return seconds


def main(names: "list[str]") -> int:
    paths = [p for p in series_notebooks() if not names or os.path.basename(p) in names]
    unknown = set(names) - {os.path.basename(p) for p in paths}
    if unknown:
        print(f"no such notebook: {sorted(unknown)}; the notebooks are "
              f"{[os.path.basename(p) for p in series_notebooks()]}", file=sys.stderr)
        return 2
    print(f"{'notebook':<32} {'wall s':>8} {'stated s':>9} {'ratio':>6}")
    too_slow = []
    for path in paths:
        name = os.path.basename(path)
        seconds = execute(path)
        stated = stated_run_time(nbformat.read(path, as_version=4))
        print(f"{name:<32} {seconds:8.1f} {stated:9.0f} {seconds / stated:6.2f}", flush=True)
        if seconds > 2 * stated:
            too_slow.append(name)
    if too_slow:
        print(f"over twice the stated run time: {too_slow} (a busy machine, or the title needs "
              "a new run time)", file=sys.stderr)
    return 1 if too_slow else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
