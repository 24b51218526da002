"""Copy notebooks/.setup_cell.txt into the first code cell of every notebook, word for word.

Outside Colab the setup cell prints nothing, so its committed (empty) output stays valid:
    python notebooks/build/sync_setup_cell.py
"""
import glob
import os
import sys

import nbformat

from nbtools import NOTEBOOKS, setup_cell_source

source = setup_cell_source()
names = sys.argv[1:]  # optional: only these notebooks
for path in sorted(glob.glob(os.path.join(NOTEBOOKS, "[0-9]*.ipynb"))):
    if names and os.path.basename(path) not in names:
        continue
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    if first.source != source:
        first.source = source
        nbformat.write(nb, path)
        print("updated", os.path.basename(path))
