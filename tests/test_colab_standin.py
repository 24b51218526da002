"""Colab, tested without Colab.

A notebook is copied alone into an empty folder and executed by a kernel that has a
stand-in `google.colab` imported at start-up (as Colab does). The repository is served on
127.0.0.1 over http and the setup cell's URL points at it (LATENTSEG_URL). The checks: the
setup cell fetched the module and nothing else, installed nothing that was already there,
and the notebook ran to the end on the fetched module. The setup cell's own errors (a 404,
a page that is not the module) are checked by running that cell alone.
"""
import functools
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest
from nbconvert.preprocessors import ExecutePreprocessor

REPO = Path(__file__).resolve().parents[1]
SETUP_CELL = REPO / "notebooks" / ".setup_cell.txt"
SETUP_SOURCE = SETUP_CELL.read_text() if SETUP_CELL.exists() else None


# Two gaps of the setup cell as committed in dc71e5a (notebooks/.setup_cell.txt), reported to
# its owners with a fix: while the cell is exactly that text, the tests below that catch them
# report xfail; once the text changes they assert for real.
KNOWN_GAPS_SETUP_SHA256 = "55f45ae6c6e908df8b8cee6666918117862f2effcaadc47aa6df913af9a46afe"


def known_gap(reason: str) -> None:
    if SETUP_SOURCE and hashlib.sha256(SETUP_SOURCE.encode()).hexdigest() == \
            KNOWN_GAPS_SETUP_SHA256:
        pytest.xfail(reason)


def series_notebooks():
    """The series' notebooks in order (scratch files starting with '_' or '.' left out)."""
    return sorted(p for p in (REPO / "notebooks").glob("*.ipynb")
                  if not p.name.startswith(("_", ".")))


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def colab_url(base: str) -> str:
    """LATENTSEG_URL for a server at `base`, in the form the setup cell's default has
    (the module's own URL, or a folder URL ending in '/')."""
    default = re.search(r'"LATENTSEG_URL",\s*"([^"]+)"', SETUP_SOURCE).group(1)
    return f"{base}/{default.rsplit('/', 1)[1]}"


# ---- the pieces: a server, a stand-in google.colab, a pip that refuses ----------------------

class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list = []

    def do_GET(self):
        if self.path.startswith("/html-page/"):   # what a wrong URL on a web host returns
            body = b"<!DOCTYPE html><html><body>Not the module</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_request(self, code="-", size="-"):
        self.requests.append((self.path, int(code)))

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    """The repository served on 127.0.0.1; yields (base URL, list of (path, status))."""
    requests = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(REPO)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()


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
STANDIN_PIP = '''"""Stand-in pip (tests only): records the call and installs nothing."""
import os
import sys

with open(os.environ["COLAB_STANDIN_LOG"], "a") as log:
    log.write("pip " + " ".join(sys.argv[1:]) + "\\n")
sys.exit("stand-in pip: this test installs nothing")
'''


@pytest.fixture
def colab(tmp_path, monkeypatch):
    """A stand-in Colab: `google.colab` imported when the kernel starts (an IPython start-up
    file), a `pip` that records and refuses, both first on the kernel's PYTHONPATH, and an
    empty working folder. Yields (folder, environment for a subprocess, log file)."""
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
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-colab.py").write_text("import google.colab  # as in Colab's kernels\n")
    log = tmp_path / "colab.log"
    workdir = tmp_path / "content"                 # Colab's working folder, empty
    workdir.mkdir()
    env = {"PYTHONPATH": str(standin), "IPYTHONDIR": str(tmp_path / "ipython"),
           "COLAB_STANDIN_LOG": str(log), "MPLBACKEND": "Agg"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield workdir, dict(os.environ), log


def run_setup_cell_alone(workdir, env, url):
    """The setup cell in a fresh Python that has imported the stand-in google.colab."""
    env = {**env, "LATENTSEG_URL": url}
    return subprocess.run([sys.executable, "-c", "import google.colab\n" + SETUP_SOURCE],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=120)


# ---- the tests -------------------------------------------------------------------------

def test_every_notebook_starts_with_the_setup_cell():
    notebooks = series_notebooks()
    if not notebooks:
        pytest.skip("no notebooks in notebooks/ yet")
    assert SETUP_SOURCE is not None, f"{SETUP_CELL.relative_to(REPO)} is missing"
    differ = []
    for path in notebooks:
        cells = code_cells(nbformat.read(path, as_version=4))
        # Word for word; only a trailing newline (which editors drop) may differ.
        if not cells or cells[0].source.rstrip("\n") != SETUP_SOURCE.rstrip("\n"):
            differ.append(path.name)
    assert differ == [], (f"first code cell differs from notebooks/.setup_cell.txt in {differ}; "
                          "paste the file's text unchanged")


def test_first_notebook_runs_alone_in_a_standin_colab(colab, server, monkeypatch):
    notebooks = series_notebooks()
    if not notebooks:
        pytest.skip("no notebooks in notebooks/ yet")
    source = notebooks[0]
    workdir, _, log = colab
    base, requests = server
    url = colab_url(base)
    monkeypatch.setenv("LATENTSEG_URL", url)
    shutil.copy(source, workdir / source.name)
    nb = nbformat.read(workdir / source.name, as_version=4)
    # One cell added at the end: which module file the notebook really used.
    nb.cells.append(nbformat.v4.new_code_cell(
        "import os, latentseg_utils\nprint('module:', os.path.abspath(latentseg_utils.__file__))"))
    requests.clear()
    ExecutePreprocessor(timeout=600, kernel_name="python3", record_timing=False,
                        store_widget_state=False).preprocess(
        nb, {"metadata": {"path": str(workdir)}})

    cells = code_cells(nb)
    setup_out = "".join(o.get("text", "") for o in cells[0].outputs if o.output_type == "stream")
    assert re.search(r"fetched latentseg_utils\.py from http://127\.0\.0\.1:\d+/", setup_out), \
        setup_out
    assert "installed: nothing (all present)" in setup_out, setup_out
    # It fetched the module once, got HTTP 200, and the file is the repository's, unchanged.
    fetched = [(path, status) for path, status in requests if path.endswith(".py")]
    assert ("/latentseg_utils.py", 200) in fetched and len(fetched) >= 1, requests
    assert all(status == 200 for _, status in fetched), requests
    assert (workdir / "latentseg_utils.py").read_bytes() == \
        (REPO / "latentseg_utils.py").read_bytes()
    # Nothing was installed: the stand-in pip was never called.
    calls = log.read_text() if log.exists() else ""
    assert "pip" not in calls, calls
    # It ran to the end, on the fetched module.
    assert all(c.execution_count for c in cells), source.name
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]
    last = "".join(o.get("text", "") for o in cells[-1].outputs)
    assert last.strip() == f"module: {workdir / 'latentseg_utils.py'}", last


def test_modules_the_notebooks_import_are_fetched_in_colab(colab, server):
    """Every latentseg_* module a notebook imports must reach Colab through the setup cell."""
    workdir, env, _ = colab
    base, _ = server
    pattern = re.compile(r"^\s*(?:import|from)\s+(latentseg_\w+)", re.M)
    needed = {"latentseg_utils"}
    for path in series_notebooks():
        for cell in code_cells(nbformat.read(path, as_version=4)):
            needed |= set(pattern.findall(cell.source))
    result = run_setup_cell_alone(workdir, env, colab_url(base))
    assert result.returncode == 0, result.stderr
    missing = sorted(m for m in needed if not (workdir / f"{m}.py").exists())
    if missing == ["latentseg_widgets"]:
        known_gap("the setup cell fetches latentseg_utils.py only, so `import latentseg_widgets` "
                  "fails in Colab; fetch latentseg_widgets.py beside it")
    assert missing == [], (f"notebooks import {missing}, but in Colab the setup cell does not "
                           "fetch them (it fetched "
                           f"{sorted(p.name for p in workdir.glob('*.py'))})")


def test_a_404_gives_the_setup_cells_clear_error(colab, server):
    workdir, env, _ = colab
    base, _ = server
    result = run_setup_cell_alone(workdir, env, colab_url(base + "/no/such/folder"))
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0
    if last_line.startswith("urllib.error.HTTPError"):
        known_gap("urllib.request.urlopen raises its own HTTPError on a 404 before the cell's "
                  "status check can raise its clear RuntimeError; catch urllib.error.HTTPError")
    assert last_line.startswith("RuntimeError:") and "404" in last_line, result.stderr
    assert not (workdir / "latentseg_utils.py").exists()


def test_a_page_that_is_not_the_module_gives_a_clear_error(colab, server):
    workdir, env, _ = colab
    base, _ = server
    result = run_setup_cell_alone(workdir, env, colab_url(base + "/html-page"))
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0
    assert last_line.startswith("RuntimeError:") and "did not return" in last_line, \
        result.stderr
    assert not (workdir / "latentseg_utils.py").exists()


def test_outside_colab_the_setup_cell_fetches_and_installs_nothing(tmp_path):
    """Locally (no google.colab) the cell only puts the repository folder on sys.path."""
    shutil.copy(REPO / "latentseg_utils.py", tmp_path / "latentseg_utils.py")
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    code = SETUP_SOURCE + "\nimport sys; print('google.colab' in sys.modules, sys.path[0])"
    result = subprocess.run([sys.executable, "-c", code], cwd=notebooks, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", str(tmp_path)], result.stdout
    assert list(notebooks.iterdir()) == []
