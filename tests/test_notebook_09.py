"""Notebook 09 (finer experts: DeepSeekMoE's fine-grained segmentation tried on our latents): the
committed notebook follows the series' anatomy, its trainings ignore their progress bars, and its
checks against the module are compared. nbval executes it separately (pytest.ini runs it over
notebooks/)."""
import json
import os
import re

import pytest

from notebook_cells import (check_hidden_solutions, check_opening, code_cells, is_checked,
                            is_ignored, source)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "09_finer_experts.ipynb")


@pytest.fixture(scope="module")
def committed():
    with open(NOTEBOOK) as f:
        return json.load(f)


def test_anatomy(committed):
    cells = committed["cells"]
    with open(os.path.join(ROOT, "notebooks", ".setup_cell.txt")) as f:
        check_opening(committed, "09", f.read())
    code = code_cells(committed)
    for line in ("import latentseg_utils as u", "torch.manual_seed(0)", "device = u.get_device()",
                 'plt.rcParams["figure.dpi"] = 72'):
        assert line in source(code[1]), f"imports cell lacks {line!r}"
    for c in code:
        for out in c["outputs"]:
            assert out["output_type"] != "error", source(c)[:80]
            assert out.get("name") != "stderr" or is_ignored(c), source(c)[:80]
            assert out["output_type"] != "execute_result", f"cell ends with an expression: {source(c)[:80]}"
    headings = [line for c in cells if c["cell_type"] == "markdown"
                for line in source(c).splitlines() if line.startswith("## ")]
    for heading in ("## Summary", "## Exercises"):
        assert heading in headings, heading
    text = json.dumps(committed)
    assert "/work/" not in text and "/tmp/" not in text, "no machine paths in the notebook"


def test_markdown_before_every_code_cell(committed):
    for before, cell in zip(committed["cells"], committed["cells"][1:]):
        if cell["cell_type"] == "code" and not source(cell).startswith("# @title Solution"):
            assert before["cell_type"] == "markdown", f"no markdown before:\n{source(cell)[:200]}"


def test_every_training_ignores_its_output(committed):
    trains = [c for c in code_cells(committed) if re.search(r"^(train_variant|u\.train)\(", source(c), re.M)]
    assert len(trains) == 3 and all(is_ignored(c) for c in trains), \
        "every cell that trains (progress bar) must be tagged nbval-ignore-output"


def test_the_checks_against_the_module_are_compared(committed):
    checked = "\n".join(source(c) for c in code_cells(committed) if is_checked(c))
    for line in ("16 x 64 is u.LatentSegNet()", "WidthBlock(64, 64, 64) is u.AttentionBlock(64)",
                 "combinations"):
        assert line in checked, f"{line!r} should be printed by a cell tagged nbval-check-output"


def test_solutions_are_hidden_and_keep_no_output(committed):
    check_hidden_solutions(committed, 2)
