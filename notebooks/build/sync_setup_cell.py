"""Copy notebooks/.setup_cell.txt into the first code cell of every notebook, word for word,
and put the Open-in-Colab badge (same repository and ref as the setup cell) atop the first
markdown cell; point the README's badges at the same repository and ref. Outputs are kept.

Outside Colab the setup cell prints nothing, so its committed (empty) output stays valid:
    python notebooks/build/sync_setup_cell.py
"""
import glob
import os
import re
import sys

import nbformat

from nbtools import NOTEBOOKS, repository_and_ref, setup_cell_source, with_colab_badge

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

readme_path = os.path.join(os.path.dirname(NOTEBOOKS), "README.md")
with open(readme_path) as f:
    readme = f.read()
repo, ref = repository_and_ref()
badged = re.sub(r"https://colab\.research\.google\.com/github/[^/\s]+/[^/\s]+/blob/[^/\s]+/notebooks/",
                f"https://colab.research.google.com/github/{repo}/blob/{ref}/notebooks/", readme)
if badged != readme:
    with open(readme_path, "w") as f:
        f.write(badged)
    print("updated README.md")
