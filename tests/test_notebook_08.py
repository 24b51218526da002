"""Notebook 08 (latents that become segments): the committed notebook follows the series'
anatomy, prints its verdict and final check where nbval compares them, and the benchmark table
it quotes is the committed results file's, row for row. nbval executes it separately
(pytest.ini runs it over notebooks/)."""
import json
import re
from pathlib import Path

import pytest

from notebook_cells import code_cells, is_checked, is_ignored, source, text_of

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "08_mask_experts.ipynb"
RESULTS = ROOT / "benchmarks" / "results" / "mask_experts.md"
PLACEHOLDER = "<!-- MASK_EXPERTS_TABLE -->"

TARGETS = [   # section 4's verdict: one line per target, True or False as this run gives it
    "semantic test mIoU at least LatentSegNet()'s minus 0.03:",
    "PQ at least 0.75 and at least the connected components of LatentSegNet()'s class map:",
    "at least 90% of test objects claimed by exactly one latent:",
]
FINAL_CHECK = [  # what must hold whatever the training run gives
    "over the latents, latents compete for a pixel; over the pixels they do not: True",
    "the toy matching leaves the weaker duplicate to 'no object': True",
    "our block, mask head, segments, matching, loss and inference match the module: True",
    "mask head outputs [B, K, C + 1] and [B, K, H, W]: True",
    "every test object has a verdict (one latent, none, or several): True",
]


@pytest.fixture(scope="module")
def committed():
    return json.loads(NOTEBOOK.read_text())


def markdown_text(nb) -> str:
    return "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "markdown")


def test_anatomy(committed):
    cells = committed["cells"]
    title = source(cells[0])
    assert cells[0]["cell_type"] == "markdown" and title.startswith("[![Open In Colab]")
    assert title.split("\n\n", 1)[1].startswith("# 08 "), "the title follows the badge"
    assert "Run time" in title and "What you will learn" in title
    code = code_cells(committed)
    assert source(code[0]) == (ROOT / "notebooks" / ".setup_cell.txt").read_text().rstrip("\n")
    for line in ("import latentseg_utils as u", "torch.manual_seed(0)", "device = u.get_device()",
                 'plt.rcParams["figure.dpi"] = 72'):
        assert line in source(code[1]), f"imports cell lacks {line!r}"
    headings = [line for line in markdown_text(committed).splitlines() if line.startswith("## ")]
    for heading in ("## Summary", "## Exercises", "## Final check"):
        assert heading in headings, heading


def test_markdown_before_every_code_cell(committed):
    for before, cell in zip(committed["cells"], committed["cells"][1:]):
        if cell["cell_type"] == "code" and not source(cell).startswith("# @title Solution"):
            assert before["cell_type"] == "markdown", f"no markdown before:\n{source(cell)[:200]}"


def test_solutions_are_hidden(committed):
    solutions = [c for c in code_cells(committed) if source(c).startswith("# @title Solution")]
    assert len(solutions) >= 2
    for cell in solutions:
        assert cell["metadata"].get("jupyter", {}).get("source_hidden") is True
        assert cell["metadata"].get("cellView") == "form"


def test_training_and_widgets_ignore_their_output(committed):
    trains = [c for c in code_cells(committed) if "u.train(" in source(c)]
    assert len(trains) == 3, ("the comparison model's fallback, the mask head's training and "
                              "section 4.3's head without deep supervision")
    for cell in code_cells(committed):
        src = source(cell)
        if "u.train(" in src or "latent_masks(" in src:
            assert is_ignored(cell), \
                f"training and widgets need the tag nbval-ignore-output:\n{src[:200]}"
    assert "STEPS = " in "".join(source(c) for c in trains)


def test_committed_after_restart_and_run_all(committed):
    code = code_cells(committed)
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), \
        "run it with Restart & Run All (python tools/execute_notebooks.py 08_mask_experts.ipynb)"
    for c in code:
        for out in c["outputs"]:
            assert out["output_type"] != "error", source(c)[:80]
            assert out.get("name") != "stderr" or is_ignored(c), source(c)[:80]
            assert out["output_type"] != "execute_result", f"cell ends with an expression: {source(c)[:80]}"
    figures = [o for c in code for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert len(figures) >= 7, f"expected the notebook's figures, found {len(figures)}"
    assert "widgets" not in committed["metadata"], "widget state is not committed"


def test_verdict_and_final_check_are_compared(committed):
    checked = [c for c in code_cells(committed) if is_checked(c)]
    verdict = [c for c in checked if all(t in source(c) for t in ("PQ at least 0.75", "0.03"))]
    assert len(verdict) == 1, "section 4's verdict sits in one checked cell (tag nbval-check-output)"
    lines = text_of(verdict[0]["outputs"]).splitlines()
    assert len(lines) == len(TARGETS)
    for line, target in zip(lines, TARGETS):
        assert re.fullmatch(re.escape(target) + r" (True|False)", line), line
    assert text_of(checked[-1]["outputs"]).splitlines() == FINAL_CHECK


def test_no_machine_paths(committed):
    for cell in committed["cells"]:
        text = source(cell) + (text_of(cell.get("outputs", [])) if cell["cell_type"] == "code" else "")
        for marker in ("/work/", "/home/", "/root/", "/tmp/", "C:\\"):
            assert marker not in text, f"machine path {marker!r} in:\n{text[:300]}"


def test_section_5_names_the_benchmark_and_its_results_file(committed):
    text = markdown_text(committed)
    assert "`python benchmarks/mask_experts.py` (benchmarks/results/mask_experts.md)" in text


def test_benchmark_rows_are_the_results_file(committed):
    if not RESULTS.exists():
        pytest.skip("benchmarks/results/mask_experts.md does not exist yet: run "
                    "python benchmarks/mask_experts.py, then paste its table over "
                    f"{PLACEHOLDER} in notebook 08's section 5")
    text = markdown_text(committed)
    assert PLACEHOLDER not in text, \
        f"the results exist: paste the table of {RESULTS.name} over {PLACEHOLDER} in section 5"
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows, "section 5 quotes no table row"
    file_rows = {line for path in (RESULTS, RESULTS.with_name("mask_inference.md"))
                 for line in path.read_text().splitlines() if line.startswith("| ")}
    for row in rows:
        assert row in file_rows, \
            f"not a row of {RESULTS.name} or mask_inference.md (rerun or repaste): {row}"


def test_the_notebook_trains_the_benchmarks_recipe(committed):
    """Section 3's RECIPE is benchmarks/mask_experts.py's, the recipe chosen on validation."""
    import ast
    import importlib.util
    spec = importlib.util.spec_from_file_location("mask_experts",
                                                  ROOT / "benchmarks" / "mask_experts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lines = [line for c in code_cells(committed) for line in source(c).splitlines()
             if line.startswith("RECIPE = ")]
    assert len(lines) == 1
    assert eval(lines[0].split("=", 1)[1], {"dict": dict}) == module.RECIPE
    assert ast.parse(lines[0])          # a plain assignment
