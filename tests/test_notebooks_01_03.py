"""Structure of notebooks 01-03 as committed (nbval, configured in pytest.ini, executes them).

Checks what a learner sees on GitHub or in Colab: the shared setup cell first, outputs from a
clean Restart & Run All with at least one figure, no errors, and, last, the check against
latentseg_utils, marked for nbval so that drift between notebook and module fails the tests.
"""
import json
import pathlib
import re

import pytest

from notebook_cells import code_cells, is_checked, is_ignored, source, text_of

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"

# The lines each notebook's final check prints (compared by nbval on every run).
FINAL_CHECKS = {
    "01_encoder.ipynb": [
        "same parameter names and shapes: True",
        "matches latentseg_utils.SimpleEncoder: True",
    ],
    "02_latent_attention.ipynb": [
        "same parameter names and shapes: True",
        "hand-written multi-head attention reproduces it: True",
        "matches latentseg_utils.LatentAttention: True",
    ],
    "03_expert_segmentation.ipynb": [
        "same parameter names and shapes: True",
        "matches latentseg_utils.ExpertSegmentation: True",
        "matches latentseg_utils.SegmentationModel: True",
    ],
}
NAMES = sorted(FINAL_CHECKS)


def load(name):
    return json.loads((NOTEBOOKS / name).read_text())


@pytest.mark.parametrize("name", NAMES)
def test_title_then_shared_setup_cell(name):
    nb = load(name)
    title = source(nb["cells"][0])
    assert nb["cells"][0]["cell_type"] == "markdown" and title.startswith("[![Open In Colab]")
    assert title.split("\n\n", 1)[1].startswith(f"# {name[:2]} "), "the title follows the badge"
    assert "Run time" in title and "What you will learn" in title
    setup = source(code_cells(nb)[0])
    assert setup == source(code_cells(load(NAMES[0]))[0]), "notebooks must share one setup cell"
    shared = NOTEBOOKS / ".setup_cell.txt"
    if shared.exists():
        assert setup == shared.read_text().rstrip("\n"), f"{name}: first code cell differs from {shared.name}"
    imports = source(code_cells(nb)[1])
    for line in ("import latentseg_utils as u", "torch.manual_seed(0)", "device = u.get_device()",
                 'plt.rcParams["figure.dpi"] = 72'):
        assert line in imports, f"{name}: second code cell lacks {line!r}"


@pytest.mark.parametrize("name", NAMES)
def test_committed_after_restart_and_run_all(name):
    cells = code_cells(load(name))
    counts = [c["execution_count"] for c in cells]
    assert counts == list(range(1, len(cells) + 1)), f"{name}: run it with Restart & Run All"
    outputs = [o for c in cells for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"], f"{name}: error outputs"
    assert not [o for o in outputs if o.get("name") == "stderr"], f"{name}: stderr output"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}: no figure"
    for o in outputs:   # a figure's repr as a cell's value would be compared as text by nbval
        assert o["output_type"] != "execute_result" or "<Figure" not in text_of([o]), name


@pytest.mark.parametrize("name", NAMES)
def test_ends_with_the_check_against_latentseg_utils(name):
    last = code_cells(load(name))[-1]
    text = source(last)
    assert is_checked(last) and "assert " in text and "u." in text
    printed = text_of(last["outputs"])
    for line in FINAL_CHECKS[name]:
        assert line in printed, f"{name}: the final check does not print {line!r}"
    assert "False" not in printed


@pytest.mark.parametrize("name", NAMES)
def test_checked_cells_hold_no_timings(name):
    for cell in code_cells(load(name)):
        text = source(cell)
        if is_checked(cell):
            assert "perf_counter" not in text and "best_time(" not in text, text[:80]
        if "best_time(" in text and "def best_time" not in text and not is_ignored(cell):
            pytest.fail(f"{name}: a timing cell is not tagged nbval-ignore-output: {text[:80]}")


@pytest.mark.parametrize("name", NAMES)
def test_exercises_have_hidden_solutions(name):
    solutions = [c for c in code_cells(load(name)) if "Solution" in source(c).split("\n")[0]]
    assert 2 <= len(solutions) <= 3
    for cell in solutions:
        assert cell["metadata"].get("jupyter", {}).get("source_hidden") is True


@pytest.mark.parametrize("name", NAMES)
def test_no_paths_of_this_machine(name):
    raw = (NOTEBOOKS / name).read_text()
    assert not re.search(r"(?<![\w:/.])/(?:work|tmp|root|home|mnt|Users)/[\w.-]+/", raw)


def test_parameter_total_is_computed_not_typed():
    nb = load("03_expert_segmentation.ipynb")
    for cell in code_cells(nb):
        assert not re.search(r"70[,_]?504", source(cell)), "compute the total; do not type it"
    table = [c for c in code_cells(nb) if "reference_total" in source(c)]
    assert table and "equal: True" in text_of(table[0]["outputs"])
