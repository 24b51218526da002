"""Structure of notebook 06 as committed (nbval, configured in pytest.ini, executes it).

Checks what a learner sees on GitHub or in Colab: the series' anatomy (title, shared setup
cell, imports), outputs from a clean Restart & Run All with figures and no errors, markdown
before every code cell, no machine paths, collapsed solutions, and a final check that nbval compares.
"""
import json
import pathlib

import pytest

from notebook_cells import code_cells, is_checked, is_ignored, source, text_of

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PATH = NOTEBOOKS / "06_visualization.ipynb"

FINAL_CHECK = [
    "model is LatentSegNet with 16 experts: True",
    "held-out mIoU at least 0.90: True",
    "attention shapes [B, heads, K, N] and [B, heads, N, K]: True",
    "experts do not separate the shapes: True",             # every seed (section 6)
    "the trained model depends on its attention: True",     # every seed (section 7)
]


@pytest.fixture(scope="module")
def nb():
    return json.loads(PATH.read_text())


def test_title_setup_and_imports(nb):
    title = source(nb["cells"][0])
    assert nb["cells"][0]["cell_type"] == "markdown" and title.startswith("[![Open In Colab]")
    assert title.split("\n\n", 1)[1].startswith("# 06 "), "the title follows the Colab badge"
    assert "Run time" in title and "What you will learn" in title
    cells = code_cells(nb)
    assert source(cells[0]) == (NOTEBOOKS / ".setup_cell.txt").read_text().rstrip("\n"), \
        "first code cell must be the shared setup cell, word for word"
    for line in ("import latentseg_utils as u", "torch.manual_seed(0)", "device = u.get_device()",
                 'plt.rcParams["figure.dpi"] = 72'):
        assert line in source(cells[1]), f"imports cell lacks {line!r}"


def test_markdown_before_every_code_cell(nb):
    for before, cell in zip(nb["cells"], nb["cells"][1:]):
        if cell["cell_type"] == "code" and not source(cell).startswith("# @title Solution"):
            assert before["cell_type"] == "markdown", f"no markdown before:\n{source(cell)[:200]}"


def test_committed_after_restart_and_run_all(nb):
    cells = code_cells(nb)
    assert [c["execution_count"] for c in cells] == list(range(1, len(cells) + 1)), \
        "run it with Restart & Run All (python tools/execute_notebooks.py 06_visualization.ipynb)"
    outputs = [o for c in cells for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"], "error outputs"
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 10, f"expected the notebook's figures, found {len(figures)}"
    assert not [o for o in outputs if o["output_type"] == "execute_result"
                and "<Figure" in text_of([o])], "a figure's repr leaked: end the cell with plt.show()"
    assert "widgets" not in nb["metadata"], "widget state is not committed"


def test_unstable_output_is_ignored(nb):
    for cell in code_cells(nb):
        src = source(cell)
        stderr = [o for o in cell["outputs"] if o.get("name") == "stderr"]
        if "u.train(" in src or "expert_browser(" in src or stderr:
            assert is_ignored(cell), \
                f"training, widgets and stderr need the tag nbval-ignore-output:\n{src[:200]}"


def test_no_machine_paths(nb):
    for cell in nb["cells"]:
        text = source(cell) + (text_of(cell.get("outputs", [])) if cell["cell_type"] == "code" else "")
        for marker in ("/work/", "/home/", "/root/", "/tmp/", "C:\\"):
            assert marker not in text, f"machine path {marker!r} in:\n{text[:300]}"


def test_checkpoint_is_loaded_or_trained_with_notebook_05s_recipe(nb):
    load = next(source(c) for c in code_cells(nb) if "u.load_checkpoint(" in source(c))
    assert 'u.checkpoint_path("latentsegnet.pt")' in load
    assert "except FileNotFoundError" in load and "except ValueError" in load
    assert "steps=800, batch_size=16, lr=3e-3, seed=0" in load
    assert "u.save_checkpoint(CHECKPOINT" in load


def test_solutions_are_collapsed_and_exercises_present(nb):
    solutions = [c for c in code_cells(nb) if source(c).startswith("# @title Solution")]
    assert 2 <= len(solutions) <= 3
    for cell in solutions:
        assert cell["metadata"].get("jupyter", {}).get("source_hidden") is True
    assert sum(source(c).count("### Exercise") for c in nb["cells"]
               if c["cell_type"] == "markdown") == len(solutions)


def test_final_check_is_compared_and_as_committed(nb):
    last = code_cells(nb)[-1]
    assert is_checked(last)
    assert text_of(last["outputs"]).splitlines() == FINAL_CHECK
