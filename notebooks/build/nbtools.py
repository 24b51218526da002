"""Small helpers to write notebooks with nbformat (used by the make_*.py scripts)."""
import os
import re

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))
NOTEBOOKS = os.path.dirname(HERE)


def setup_cell_source() -> str:
    """The series' shared first code cell, word for word."""
    with open(os.path.join(NOTEBOOKS, ".setup_cell.txt")) as f:
        return f.read()


COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def repository_and_ref() -> "tuple[str, str]":
    """("owner/name", "ref") of the release the setup cell fetches the modules from.

    The repository URL is set in one place, the setup cell's LATENTSEG_URL; the Colab badges
    open the notebooks from the same repository and the same ref, so notebook and module match.
    """
    match = re.search(r"https://raw\.githubusercontent\.com/([^/]+/[^/]+)/([^/]+)/latentseg_utils\.py",
                      setup_cell_source())
    if match is None:
        raise ValueError("notebooks/.setup_cell.txt: LATENTSEG_URL is not a raw.githubusercontent.com "
                         "URL of latentseg_utils.py; fix it there, then run sync_setup_cell.py")
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


SEED_AND_DEVICE = """
torch.manual_seed(0)
device = u.get_device()
print(f"torch {torch.__version__}, device: {device}")
plt.rcParams["figure.dpi"] = 72   # small committed figures
"""


def imports_cell(imports: str) -> str:
    """A notebook's imports cell: its own imports, then the series' seed, device and figure size
    (every notebook runs alone, so each one shows these lines)."""
    return imports.strip("\n") + "\n" + SEED_AND_DEVICE


class Notebook:
    """Collect cells in order; write() gives them stable ids (prefix-00, prefix-01, ...)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.cells = []

    def md(self, text: str) -> None:
        self.cells.append(nbformat.v4.new_markdown_cell(text.strip("\n")))

    def code(self, text: str, hidden: bool = False, verbatim: bool = False,
             tags: list = None) -> None:
        cell = nbformat.v4.new_code_cell(text if verbatim else text.strip("\n"))
        if tags:
            cell.metadata["tags"] = list(tags)
        if hidden:  # collapsed in JupyterLab; shown as a titled form in Colab
            cell.metadata["jupyter"] = {"source_hidden": True}
            cell.metadata["cellView"] = "form"
        self.cells.append(cell)

    def write(self, name: str) -> str:
        nb = nbformat.v4.new_notebook()
        nb.metadata = {
            "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                           "name": "python3"},
            "language_info": {"name": "python"},
        }
        for i, cell in enumerate(self.cells):
            cell["id"] = f"{self.prefix}-{i:02d}"
        nb.cells = self.cells
        first_markdown = next(c for c in nb.cells if c.cell_type == "markdown")
        first_markdown.source = with_colab_badge(first_markdown.source, name)
        nbformat.validate(nb)
        path = os.path.join(NOTEBOOKS, name)
        with open(path, "w") as f:
            nbformat.write(nb, f)
        return path
