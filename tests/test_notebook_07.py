"""Notebook 07 (DeepSeek-V2's Multi-head Latent Attention): the committed notebook follows the
series' anatomy, trains nothing, and defines its MLA layer in one cell. nbval executes it
separately (pytest.ini runs it over notebooks/)."""
import json
import os
import re

import pytest

from notebook_cells import (check_hidden_solutions, check_opening, code_cells, is_checked,
                            is_ignored, source)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "07_beyond.ipynb")


@pytest.fixture(scope="module")
def committed():
    with open(NOTEBOOK) as f:
        return json.load(f)


def test_anatomy(committed):
    cells = committed["cells"]
    with open(os.path.join(ROOT, "notebooks", ".setup_cell.txt")) as f:
        check_opening(committed, "07", f.read())
    code = code_cells(committed)
    for c in code:
        for out in c["outputs"]:
            assert out["output_type"] != "error", source(c)[:80]
            assert out.get("name") != "stderr" or is_ignored(c), source(c)[:80]
            assert out["output_type"] != "execute_result", f"cell ends with an expression: {source(c)[:80]}"
    figures = [o for c in code for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert figures, "the notebook draws at least one figure"
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


def test_nothing_trains(committed):
    """Notebook 09 trains the fine-grained latents; this one only builds and checks layers."""
    trains = [c for c in code_cells(committed) if re.search(r"\b(train_variant|u\.train)\(", source(c))]
    assert trains == [], [source(c)[:80] for c in trains]


def test_the_mla_layer_is_defined_in_one_cell(committed):
    """Methods attached to the class from later cells break when cells run out of order."""
    code = code_cells(committed)
    defined = [c for c in code if "class MultiHeadLatentAttention(" in source(c)]
    assert len(defined) == 1, "MultiHeadLatentAttention is defined in exactly one cell"
    for name in ("explicit_scores", "rotary_scores", "compress", "absorbed_scores", "latent_scores",
                 "latent_outputs", "forward"):
        assert f"    def {name}(" in source(defined[0]), f"the class cell lacks {name}"
    attached = [c for c in code if re.search(r"^MultiHeadLatentAttention\.\w+\s*=", source(c), re.M)]
    assert attached == [], "no method is attached to the class after its cell"


def test_the_checks_are_compared(committed):
    checked = "\n".join(source(c) for c in code_cells(committed) if is_checked(c))
    for line in ("MLA without rotary part == nn.MultiheadAttention", "absorb == explicit",
                 "token-by-token with the latent cache == full pass", "cache/token"):
        assert line in checked, f"{line!r} should be printed by a cell tagged nbval-check-output"


def test_solutions_are_hidden_and_keep_no_output(committed):
    check_hidden_solutions(committed, 2)
