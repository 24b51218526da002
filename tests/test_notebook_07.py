"""Notebook 07 (beyond the tutorial): the committed notebook follows the series' anatomy. nbval executes it separately (pytest.ini runs it over notebooks/)."""
import json
import os
import re

import pytest

from notebook_cells import is_ignored, source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "07_beyond.ipynb")


@pytest.fixture(scope="module")
def committed():
    with open(NOTEBOOK) as f:
        return json.load(f)


def test_anatomy(committed):
    cells = committed["cells"]
    assert cells[0]["cell_type"] == "markdown" and source(cells[0]).startswith("[![Open In Colab]")
    assert source(cells[0]).split("\n\n", 1)[1].startswith("# 07 "), "the title follows the badge"
    assert "Run time" in source(cells[0])
    with open(os.path.join(ROOT, "notebooks", ".setup_cell.txt")) as f:
        assert source(cells[1]) == f.read().rstrip("\n")
    code = [c for c in cells if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), \
        "execute the notebook top to bottom once before committing"
    for c in code:
        for out in c["outputs"]:
            assert out["output_type"] != "error", source(c)[:80]
            assert out.get("name") != "stderr" or is_ignored(c), source(c)[:80]
            assert out["output_type"] != "execute_result", f"cell ends with an expression: {source(c)[:80]}"
    trains = [c for c in code if re.search(r"^(train_variant|u\.train)\(", source(c), re.M)]
    assert len(trains) == 3 and all(is_ignored(c) for c in trains), \
        "every cell that trains (progress bar) must be tagged nbval-ignore-output"
    text = json.dumps(committed)
    assert "/work/" not in text and "/tmp/" not in text, "no machine paths in the notebook"
