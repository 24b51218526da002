"""Every public object of the series' modules (the two top-level modules and every module of
the package latentseg/ but its benchmark tooling) names, in its docstring, the notebook and
section that teach it ('Taught in notebook NN, section "HEADING".'), and that section exists: a
renamed heading or a moved notebook fails here until the pointer is updated."""
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import latentseg
import latentseg_utils
import latentseg_widgets
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
POINTER = re.compile(r'Taught in notebook (\d\d), section "(.+?)"(?:\.|\s*\()', re.S)


# Not taught in a notebook, so no pointer: the benchmark scripts' shared tooling, and the UNet
# baseline only the benchmarks train.
UNTAUGHT = {"latentseg.benchmarking", "latentseg.baselines.SmallUNet",
            "latentseg.baselines.double_conv"}


def series_modules():
    yield latentseg_utils
    yield latentseg_widgets
    for info in pkgutil.iter_modules(latentseg.__path__):
        if f"latentseg.{info.name}" not in UNTAUGHT:
            yield importlib.import_module(f"latentseg.{info.name}")


def public_objects():
    for module in series_modules():
        for name, obj in vars(module).items():
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)) \
                    and obj.__module__ == module.__name__ \
                    and f"{module.__name__}.{name}" not in UNTAUGHT:
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
    assert {name.split(".")[1] for name, _ in OBJECTS if name.startswith("latentseg.")} >= {
        "tutorial", "blocks", "model", "ablation", "data", "metrics", "training", "experiments",
        "plotting", "mask_head", "panoptic", "checks", "baselines"}


def test_no_module_imports_a_private_name_from_another():
    """A helper one file needs from another is public (and so taught); `u._name` or
    `from latentseg.x import _name` would reach past that."""
    root = Path(__file__).resolve().parents[1]
    files = [*root.glob("*.py"), *root.glob("latentseg/*.py"), *root.glob("benchmarks/*.py"),
             *root.glob("notebooks/*.py")]
    private = re.compile(r"\bu\._[a-z]|from latentseg\.\w+ import [^\n]*\b_[a-z]")
    offenders = [f"{p.name}: {m.group(0)}" for p in files for m in private.finditer(p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("name, obj", OBJECTS, ids=[n for n, _ in OBJECTS])
def test_docstring_points_at_an_existing_section(name, obj):
    pointers = POINTER.findall(inspect.getdoc(obj) or "")
    assert pointers, f'{name}: add \'Taught in notebook NN, section "HEADING".\' to its docstring'
    for number, section in pointers:
        assert list(NOTEBOOKS.glob(f"{number}_*.ipynb")), f"{name}: no notebook {number}"
        assert section in headings(number), \
            f"{name}: notebook {number} has no section '## {section}'"
