"""Small helpers to write notebooks with nbformat (used by make_01_03.py)."""
import os

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))
NOTEBOOKS = os.path.dirname(HERE)


def setup_cell_source() -> str:
    """The series' shared first code cell, word for word."""
    with open(os.path.join(NOTEBOOKS, ".setup_cell.txt")) as f:
        return f.read()


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
        nbformat.validate(nb)
        path = os.path.join(NOTEBOOKS, name)
        with open(path, "w") as f:
            nbformat.write(nb, f)
        return path
