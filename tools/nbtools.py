"""What the notebook tools share: where the notebooks are, the setup cell, the Colab badges,
the run time a notebook's title states, and writing a notebook together with its .py pair."""
import os
import re

import jupytext
import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def series_notebooks() -> "list[str]":
    """Paths of the series' notebooks in order (01_..., 02_..., ...)."""
    return sorted(os.path.join(NOTEBOOKS, name) for name in os.listdir(NOTEBOOKS)
                  if re.fullmatch(r"\d\d_\w+\.ipynb", name))


def pair_of(ipynb_path: str) -> str:
    """The jupytext percent-format .py paired with a notebook."""
    return ipynb_path[: -len(".ipynb")] + ".py"


def write_with_pair(nb, ipynb_path: str) -> None:
    """Write the notebook and its .py pair (same cells; the .py holds no outputs)."""
    nbformat.validate(nb)
    nbformat.write(nb, ipynb_path)
    jupytext.write(nb, pair_of(ipynb_path), fmt="py:percent")


def setup_cell_source() -> str:
    """The series' shared first code cell, word for word (no trailing newline)."""
    with open(os.path.join(NOTEBOOKS, ".setup_cell.txt")) as f:
        return f.read().rstrip("\n")


def repository_and_ref() -> "tuple[str, str]":
    """("owner/name", "ref") of the release the setup cell installs the modules from.

    The repository is set in one place, the setup cell's LATENTSEG_PACKAGE; the Colab badges
    open the notebooks from the same repository and ref, so notebook and module match.
    """
    match = re.search(r'"git\+https://github\.com/([^/"]+/[^/@"]+)@([^"]+)"', setup_cell_source())
    if match is None:
        raise ValueError("notebooks/.setup_cell.txt: LATENTSEG_PACKAGE is not of the form "
                         "git+https://github.com/OWNER/NAME@TAG; fix it there, then run "
                         "python tools/sync_setup_cell.py")
    return match.group(1), match.group(2)


def colab_badge(name: str) -> str:
    """Markdown for an Open-in-Colab badge that opens notebooks/<name> of the pinned release."""
    repo, ref = repository_and_ref()
    url = f"https://colab.research.google.com/github/{repo}/blob/{ref}/notebooks/{name}"
    return f"[![Open In Colab]({COLAB_BADGE_IMAGE})]({url})"


def with_colab_badge(markdown: str, name: str) -> str:
    """The notebook's first markdown cell with its badge as the first line (replacing an old one)."""
    lines = markdown.split("\n")
    if lines and lines[0].startswith("[![Open In Colab]"):
        lines = lines[1:]
        while lines and not lines[0].strip():
            lines = lines[1:]
    return colab_badge(name) + "\n\n" + "\n".join(lines)


_NUMBERS = {"a": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
            "seven": 7, "eight": 8, "nine": 9, "ten": 10, "a few": 3}


def stated_run_time(nb) -> float:
    """Seconds that the notebook's title cell states as its run time on a quiet 2-core CPU:
    the first "under N" or "about N" seconds/minutes after "**Run time:**"."""
    title = next(c for c in nb.cells if c.cell_type == "markdown").source
    match = re.search(r"\*\*Run time:\*\*.*?\b(?:under|about|at most)\s+"
                      r"(\d+(?:\.\d+)?|a few|[a-z]+)\s+(seconds?|minutes?)", title, re.S)
    if match is None:
        raise ValueError("the title cell states no run time: write '**Run time:** about N "
                         "seconds (or minutes) on a quiet 2-core CPU'")
    amount, unit = match.groups()
    value = float(amount) if amount[0].isdigit() else _NUMBERS[amount]
    return value * (60 if unit.startswith("minute") else 1)
