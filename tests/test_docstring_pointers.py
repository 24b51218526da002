"""Every public object of the two modules names, in its docstring, the notebook and section
that teach it ('Taught in notebook NN, section "HEADING".'), and that section exists: a
renamed heading or a moved notebook fails here until the pointer is updated."""
import inspect
import re
from pathlib import Path

import latentseg_utils
import latentseg_widgets
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
POINTER = re.compile(r'Taught in notebook (\d\d), section "(.+?)"(?:\.|\s*\()', re.S)


def public_objects():
    for module in (latentseg_utils, latentseg_widgets):
        for name, obj in vars(module).items():
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)) \
                    and obj.__module__ == module.__name__:
                yield f"{module.__name__}.{name}", obj


def headings(number: str) -> set:
    """The '## ' section headings of notebook NN."""
    (path,) = NOTEBOOKS.glob(f"{number}_*.ipynb")
    nb = nbformat.read(path, as_version=4)
    return {line[3:].strip() for c in nb.cells if c.cell_type == "markdown"
            for line in c.source.splitlines() if line.startswith("## ")}


OBJECTS = sorted(public_objects())


def test_there_are_public_objects():
    assert len(OBJECTS) >= 30


@pytest.mark.parametrize("name, obj", OBJECTS, ids=[n for n, _ in OBJECTS])
def test_docstring_points_at_an_existing_section(name, obj):
    pointers = POINTER.findall(inspect.getdoc(obj) or "")
    assert pointers, f'{name}: add \'Taught in notebook NN, section "HEADING".\' to its docstring'
    for number, section in pointers:
        assert list(NOTEBOOKS.glob(f"{number}_*.ipynb")), f"{name}: no notebook {number}"
        assert section in headings(number), \
            f"{name}: notebook {number} has no section '## {section}'"
