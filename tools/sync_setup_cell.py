"""Copy notebooks/.setup_cell.txt into the first code cell of every notebook (and its .py pair),
word for word; put the Open-in-Colab badge (same repository and ref as the setup cell) atop the
first markdown cell; point the README's badges at the same repository and ref. Outputs are kept.

Outside Colab the setup cell prints nothing, so its committed (empty) output stays valid:
    python tools/sync_setup_cell.py [NOTEBOOK.ipynb ...]
"""
import os
import re
import sys

import nbformat

from nbtools import ROOT, repository_and_ref, series_notebooks, setup_cell_source, \
    with_colab_badge, write_with_pair


def sync_notebook(path: str, source: str) -> bool:
    """Put the setup cell and the badge into one notebook; True if it changed."""
    nb = nbformat.read(path, as_version=4)
    name = os.path.basename(path)
    first = next(c for c in nb.cells if c.cell_type == "code")
    title = next(c for c in nb.cells if c.cell_type == "markdown")
    badged = with_colab_badge(title.source, name)
    if first.source == source and title.source == badged:
        return False
    first.source = source
    title.source = badged
    write_with_pair(nb, path)
    return True


def sync_readme() -> bool:
    """Point the README's Colab badges at the setup cell's repository and ref."""
    readme_path = os.path.join(ROOT, "README.md")
    with open(readme_path) as f:
        readme = f.read()
    repo, ref = repository_and_ref()
    badged = re.sub(r"https://colab\.research\.google\.com/github/[^/\s]+/[^/\s]+/blob/[^/\s]+/"
                    r"notebooks/",
                    f"https://colab.research.google.com/github/{repo}/blob/{ref}/notebooks/",
                    readme)
    if badged == readme:
        return False
    with open(readme_path, "w") as f:
        f.write(badged)
    return True


if __name__ == "__main__":
    names = sys.argv[1:]  # optional: only these notebooks
    source = setup_cell_source()
    for path in series_notebooks():
        if (not names or os.path.basename(path) in names) and sync_notebook(path, source):
            print("updated", os.path.basename(path))
    if sync_readme():
        print("updated README.md")
