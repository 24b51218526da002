"""Reading committed notebooks (as JSON) in the notebook tests: one place for these helpers."""


def source(cell) -> str:
    """A cell's source as one string (nbformat stores it as a string or a list of lines)."""
    return "".join(cell["source"])


def code_cells(nb) -> list:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def text_of(outputs) -> str:
    """The text a learner sees in a cell's outputs: streams and text/plain results."""
    parts = []
    for o in outputs:
        if o["output_type"] == "stream":
            parts.append("".join(o["text"]))
        elif "data" in o and "text/plain" in o["data"]:
            parts.append("".join(o["data"]["text/plain"]))
    return "".join(parts)


def tags(cell) -> list:
    """A cell's tags (nbval reads `nbval-check-output` and `nbval-ignore-output` among them)."""
    return list(cell.get("metadata", {}).get("tags", []))


def is_checked(cell) -> bool:
    """Whether nbval compares this cell's output with the committed one."""
    return "nbval-check-output" in tags(cell)


def is_ignored(cell) -> bool:
    """Whether nbval runs this cell without comparing its output (timings, progress, widgets)."""
    return "nbval-ignore-output" in tags(cell)


def check_opening(nb, number: str, setup_cell: str) -> None:
    """The series' first cells: the Colab badge, then the title "# NN ..." with its run time and
    what the learner will learn; the setup cell (setup_cell, the text of notebooks/.setup_cell.txt);
    a top-to-bottom run (execution counts 1..n)."""
    cells = nb["cells"]
    title = source(cells[0])
    assert cells[0]["cell_type"] == "markdown" and title.startswith("[![Open In Colab]")
    assert title.split("\n\n", 1)[1].startswith(f"# {number} "), "the title follows the badge"
    assert "Run time" in title and "What you will learn" in title
    assert source(cells[1]) == setup_cell.rstrip("\n")
    code = code_cells(nb)
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), \
        "execute the notebook top to bottom once before committing"


def check_hidden_solutions(nb, count: int) -> None:
    """`count` solution cells, collapsed, with no saved output (the answer is not shown before
    the learner tries)."""
    solutions = [c for c in code_cells(nb) if source(c).startswith("# @title Solution")]
    assert len(solutions) == count
    for cell in solutions:
        assert cell["metadata"].get("jupyter", {}).get("source_hidden") is True
        assert cell["outputs"] == []
