"""Copy notebooks/.setup_cell.txt into the first code cell of every notebook, word for word,
and put the Open-in-Colab badge (same repository and ref as the setup cell) atop the first
markdown cell. Outputs are kept.

Outside Colab the setup cell prints nothing, so its committed (empty) output stays valid:
    python notebooks/build/sync_setup_cell.py
"""
import glob
import os
import sys

import nbformat

from nbtools import NOTEBOOKS, setup_cell_source, with_colab_badge

source = setup_cell_source()
names = sys.argv[1:]  # optional: only these notebooks
for path in sorted(glob.glob(os.path.join(NOTEBOOKS, "[0-9]*.ipynb"))):
    if names and os.path.basename(path) not in names:
        continue
    nb = nbformat.read(path, as_version=4)
    name = os.path.basename(path)
    first = next(c for c in nb.cells if c.cell_type == "code")
    title = next(c for c in nb.cells if c.cell_type == "markdown")
    badged = with_colab_badge(title.source, name)
    if first.source != source or title.source != badged:
        first.source = source
        title.source = badged
        nbformat.write(nb, path)
        print("updated", name)
