"""Every notebook is paired with a jupytext percent-format .py (notebooks/jupytext.toml), and the
two agree cell by cell: same cell types, same sources, same cell metadata (tags, hidden
solutions). Edit either side, then sync: `jupytext --sync notebooks/NN_name.py` (CONTRIBUTING.md).
New notebooks are picked up by the glob."""
import shutil
from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
IPYNBS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
PAIRS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
# Cell metadata that jupytext writes into the .py only to lay it out, not part of the notebook.
LAYOUT_ONLY = {"lines_to_next_cell", "lines_to_end_of_cell_marker"}


def cells_of(nb) -> list:
    return [(c.cell_type, c.source,
             {k: v for k, v in c.metadata.items() if k not in LAYOUT_ONLY}) for c in nb.cells]


def disagreements(ipynb: Path) -> list:
    """Where the notebook and its .py pair differ: a list of readable lines (empty if they agree)."""
    py = ipynb.with_suffix(".py")
    if not py.exists():
        return [f"{py.name} is missing: jupytext --set-formats ipynb,py:percent {ipynb.name}"]
    mine, theirs = cells_of(nbformat.read(ipynb, as_version=4)), cells_of(jupytext.read(py))
    if len(mine) != len(theirs):
        return [f"{ipynb.name} has {len(mine)} cells, {py.name} {len(theirs)}"]
    return [f"cell {i} ({a[0]}) differs: {a[1][:60]!r} vs {b[1][:60]!r}"
            for i, (a, b) in enumerate(zip(mine, theirs)) if a != b]


def test_the_series_is_paired():
    assert len(IPYNBS) >= 7
    assert (NOTEBOOKS / "jupytext.toml").read_text().strip() == 'formats = "ipynb,py:percent"'
    assert [p.stem for p in PAIRS] == [p.stem for p in IPYNBS], "every .py has its notebook"


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.name)
def test_pair_agrees(ipynb):
    assert disagreements(ipynb) == [], f"run: jupytext --sync notebooks/{ipynb.stem}.py"


@pytest.mark.parametrize("side", ["ipynb", "py"])
def test_an_edit_to_one_side_alone_is_caught(tmp_path, side):
    ipynb = tmp_path / IPYNBS[0].name
    shutil.copy(IPYNBS[0], ipynb)
    shutil.copy(IPYNBS[0].with_suffix(".py"), ipynb.with_suffix(".py"))
    assert disagreements(ipynb) == []
    if side == "ipynb":
        nb = nbformat.read(ipynb, as_version=4)
        nb.cells[-1].source += "\nprint('edited in Jupyter')"
        nbformat.write(nb, ipynb)
    else:
        py = ipynb.with_suffix(".py")
        py.write_text(py.read_text() + "print('edited in an editor')\n")
    assert disagreements(ipynb) != []
