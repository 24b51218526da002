"""Colab, tested without Colab.

A notebook is copied alone into an empty folder and executed by a kernel that has a
stand-in `google.colab` imported at start-up (as Colab does). The setup cell's package
(LATENTSEG_PACKAGE) points at a local copy of this repository, which pip installs the way
Colab's does (`%pip install --no-deps`), into a folder of the stand-in's. The checks: the
setup cell installed the series' modules and nothing else, and the notebook ran to the end
on the installed modules. The setup cell's own error (a package pip cannot install) is
checked by running that cell alone.
"""
import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbconvert.preprocessors import ExecutePreprocessor

REPO = Path(__file__).resolve().parents[1]
SETUP_CELL = REPO / "notebooks" / ".setup_cell.txt"
SETUP_SOURCE = SETUP_CELL.read_text().rstrip("\n") if SETUP_CELL.exists() else None
# What a release of the repository holds that pip needs to build the package.
RELEASE_FILES = ("pyproject.toml", "README.md", "LICENSE", "latentseg_utils.py",
                 "latentseg_widgets.py", "latentseg")     # latentseg: the package, a folder


def series_notebooks():
    """The series' notebooks in order (scratch files starting with '_' or '.' left out)."""
    return sorted(p for p in (REPO / "notebooks").glob("*.ipynb")
                  if not p.name.startswith(("_", ".")))


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def stream_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


# ---- the pieces: a stand-in google.colab, a pip that installs only the series' package --------

STANDIN_COLAB = '''"""Stand-in for Colab's google.colab (tests only): records what a notebook asks of it."""
import os


def _record(what):
    with open(os.environ["COLAB_STANDIN_LOG"], "a") as log:
        log.write(what + "\\n")
'''
STANDIN_OUTPUT = '''"""Stand-in for google.colab.output."""
from google.colab import _record


def enable_custom_widget_manager():
    _record("enable_custom_widget_manager")


def disable_custom_widget_manager():
    _record("disable_custom_widget_manager")
'''
STANDIN_PIP = '''"""Stand-in pip (tests only): records the call; runs the real pip for an install with
--no-deps (into the stand-in's site folder, which is on PYTHONPATH), refuses anything else."""
import os
import subprocess
import sys

args = sys.argv[1:]
with open(os.environ["COLAB_STANDIN_LOG"], "a") as log:
    log.write("pip " + " ".join(args) + "\\n")
if args[:1] != ["install"] or "--no-deps" not in args:
    sys.exit("stand-in pip: this test installs nothing but the series' package (--no-deps)")
env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}   # the real pip
sys.exit(subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check",
                         "--target", os.environ["COLAB_STANDIN_SITE"]], env=env).returncode)
'''


@pytest.fixture
def colab(tmp_path, monkeypatch):
    """A stand-in Colab: `google.colab` imported when the kernel starts (an IPython start-up
    file), a `pip` that records and installs only the series' package into a site folder,
    all first on the kernel's PYTHONPATH, and an empty working folder.
    Yields (working folder, site folder, log file)."""
    if SETUP_SOURCE is None:
        pytest.fail(f"{SETUP_CELL.relative_to(REPO)} is missing")
    standin = tmp_path / "standin"
    (standin / "google" / "colab").mkdir(parents=True)
    (standin / "google" / "__init__.py").write_text("")
    (standin / "google" / "colab" / "__init__.py").write_text(STANDIN_COLAB)
    (standin / "google" / "colab" / "output.py").write_text(STANDIN_OUTPUT)
    (standin / "pip").mkdir()
    (standin / "pip" / "__init__.py").write_text("")
    (standin / "pip" / "__main__.py").write_text(STANDIN_PIP)
    site = tmp_path / "site-packages"
    site.mkdir()
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text("import google.colab  # as in Colab's kernels\n")
    log = tmp_path / "colab.log"
    workdir = tmp_path / "content"                 # Colab's working folder, empty
    workdir.mkdir()
    env = {"PYTHONPATH": os.pathsep.join([str(standin), str(site)]),
           "IPYTHONDIR": str(tmp_path / "ipython"), "COLAB_STANDIN_LOG": str(log),
           "COLAB_STANDIN_SITE": str(site), "MPLBACKEND": "Agg"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield workdir, site, log


@pytest.fixture
def local_release(tmp_path):
    """A copy of the repository's package files, standing in for the tagged release."""
    release = tmp_path / "release"
    release.mkdir()
    for name in RELEASE_FILES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, release / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, release / name)
    return release


def execute(nb, workdir):
    """Run a notebook in a fresh kernel (the environment as set); errors stay in the outputs."""
    ExecutePreprocessor(timeout=600, kernel_name="python3", record_timing=False,
                        store_widget_state=False, allow_errors=True).preprocess(
        nb, {"metadata": {"path": str(workdir)}})
    return nb


def run_setup_cell_alone(workdir):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP_SOURCE)]
    return execute(nb, workdir).cells[0]


def pip_calls(log) -> list:
    return [line for line in (log.read_text().splitlines() if log.exists() else [])
            if line.startswith("pip ")]


# ---- the tests -------------------------------------------------------------------------

def test_every_notebook_starts_with_the_setup_cell():
    notebooks = series_notebooks()
    if not notebooks:
        pytest.skip("no notebooks in notebooks/ yet")
    assert SETUP_SOURCE is not None, f"{SETUP_CELL.relative_to(REPO)} is missing"
    differ = [path.name for path in notebooks
              if code_cells(nbformat.read(path, as_version=4))[0].source != SETUP_SOURCE]
    assert differ == [], (f"first code cell differs from notebooks/.setup_cell.txt in {differ}; "
                          "run python tools/sync_setup_cell.py")


def test_first_notebook_runs_alone_in_a_standin_colab(colab, local_release, monkeypatch):
    source = series_notebooks()[0]
    workdir, site, log = colab
    monkeypatch.setenv("LATENTSEG_PACKAGE", str(local_release))
    shutil.copy(source, workdir / source.name)
    nb = nbformat.read(workdir / source.name, as_version=4)
    # One cell added at the end: which module file the notebook really used.
    nb.cells.append(nbformat.v4.new_code_cell(
        "import os, latentseg_utils\nprint('module:', os.path.abspath(latentseg_utils.__file__))"))
    cells = code_cells(execute(nb, workdir))

    assert f"installed {local_release}; nothing else needed (all present)" in \
        stream_text(cells[0]), cells[0].outputs
    # pip was asked once, for the series' package without its dependencies (never torch).
    assert pip_calls(log) == [f"pip install -q --no-deps {local_release}"], pip_calls(log)
    for name in ("latentseg_utils.py", "latentseg_widgets.py",
                 *(f"latentseg/{p.name}" for p in (REPO / "latentseg").glob("*.py"))):
        assert (site / name).read_bytes() == (REPO / name).read_bytes(), name
    # It ran to the end, on the installed module.
    assert all(c.execution_count for c in cells), source.name
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0]
    assert stream_text(cells[-1]).strip() == f"module: {site / 'latentseg_utils.py'}"


def test_modules_the_notebooks_import_are_installed_in_colab(colab, local_release, monkeypatch):
    """Every latentseg_* module a notebook imports must reach Colab through the setup cell."""
    workdir, site, _ = colab
    monkeypatch.setenv("LATENTSEG_PACKAGE", str(local_release))
    pattern = re.compile(r"^\s*(?:import|from)\s+(latentseg_\w+)", re.M)
    needed = {"latentseg_utils"}
    for path in series_notebooks():
        for cell in code_cells(nbformat.read(path, as_version=4)):
            needed |= set(pattern.findall(cell.source))
    cell = run_setup_cell_alone(workdir)
    assert not [o for o in cell.outputs if o.output_type == "error"], cell.outputs
    missing = sorted(m for m in needed if not (site / f"{m}.py").exists())
    assert missing == [], (f"notebooks import {missing}, but the package the setup cell installs "
                           "lacks them: add them to py-modules in pyproject.toml")


def test_a_package_pip_cannot_install_gives_the_setup_cells_clear_error(colab, tmp_path,
                                                                         monkeypatch):
    workdir, site, _ = colab
    monkeypatch.setenv("LATENTSEG_PACKAGE", str(tmp_path / "no-such-release"))
    cell = run_setup_cell_alone(workdir)
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].ename == "RuntimeError", cell.outputs
    assert "pip could not install" in errors[0].evalue and "no-such-release" in errors[0].evalue
    assert "LATENTSEG_PACKAGE" in errors[0].evalue
    assert list(site.iterdir()) == []


def test_outside_colab_the_setup_cell_installs_nothing(tmp_path):
    """Locally (no google.colab) the cell prints nothing and leaves sys.path alone: the
    modules come from `pip install -e .`."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import sys\nbefore = list(sys.path)"),
                nbformat.v4.new_code_cell(SETUP_SOURCE),
                nbformat.v4.new_code_cell("import latentseg_utils\n"
                                          "print(sys.path == before, 'google.colab' in sys.modules)")]
    cells = execute(nb, tmp_path).cells
    assert cells[1].outputs == []
    assert stream_text(cells[2]).split() == ["True", "False"], cells[2].outputs
    assert list(tmp_path.iterdir()) == []
