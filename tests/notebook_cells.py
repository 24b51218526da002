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
