"""Every decimal number a notebook's prose states (0.922, 1.2e-03, 93.1%) appears in that
notebook's printed outputs, so a sentence cannot drift from what the cells print. Exempt:
section numbers ("### 2.3", "section 2.7"), maths ($...$), links, a short allowlist of
figures cited from papers or set by design, each with its reason, and table rows (or PASS/MISS lines) copied
verbatim from a committed benchmark results file (benchmarks/results/*.md), which are thereby
checked against that file instead."""
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
RESULT_ROWS = {line for path in (ROOT / "benchmarks" / "results").glob("*.md")
               for line in path.read_text().splitlines() if line.startswith(("| ", "- **"))}
NUMBER = re.compile(r"(?<![\w.])(\d+\.\d+(?:e-?\d+)?%?|\d+(?:\.\d+)?%)(?![\w.]*\d)")
SECTION = re.compile(r"(^#+ +[\d.]+)|(\b[Ss]ections? +[\d.]+)|(\bsteps? +[\d.]+)", re.M)
ALLOWED = {   # notebook -> {number: why it need not be printed}
    "04_synthetic_data.ipynb": {"63.5": "pixel centres 0.5 ... 63.5 of a 64-pixel row (design)"},
    "05_training.ipynb": {"1.0": "the normalised entropy's maximum (definition)",
                          "2.0": "an exercise's suggested setting"},
    "07_beyond.ipynb": {"93.3%": "DeepSeek-V2 paper: KV cache reduction",
                        "5.76": "DeepSeek-V2 paper: generation throughput"},
    "08_mask_experts.ipynb": {"55.6": "MaskFormer paper: ADE20K mIoU",
                              "57.7": "Mask2Former paper: ADE20K mIoU",
                              "57.8": "Mask2Former paper: COCO panoptic PQ"},
    "09_finer_experts.ipynb": {"1.808": "DeepSeekMoE paper: Pile loss", "1.867": "DeepSeekMoE paper: GShard",
                               "1.5": "DeepSeekMoE paper: GShard's expert compute"},
}


def printed_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.output_type == "stream":
                parts.append(out.text)
            elif "text/plain" in out.get("data", {}):
                parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


def unprinted_numbers(nb, allowed=()) -> list:
    """(cell index, number, context) for each number in the prose that no output prints."""
    printed, found = printed_text(nb), []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        text = "\n".join(line for line in cell.source.splitlines() if line not in RESULT_ROWS)
        text = re.sub(r"\$[^$]*\$|https?://\S+|\([^()\s]*\.ipynb\)", " ", text)
        text = SECTION.sub(" ", text)
        for match in NUMBER.finditer(text):
            number = match.group(1)
            if number.rstrip("%") not in printed and number not in allowed:
                context = text[max(0, match.start() - 60):match.end() + 20].replace("\n", " ")
                found.append((i, number, context))
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_number_in_the_prose_is_printed(path):
    nb = nbformat.read(path, as_version=4)
    assert unprinted_numbers(nb, ALLOWED.get(path.name, {})) == []


def test_a_planted_number_is_caught():
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    assert unprinted_numbers(nb, ALLOWED.get(NOTEBOOKS[0].name, {})) == []
    nb.cells.append(nbformat.v4.new_markdown_cell("The model reaches a mean IoU of 0.987 here."))
    assert [n for _, n, _ in unprinted_numbers(nb)] == ["0.987"]


def test_a_results_row_is_exempt_only_while_it_matches_the_results_file():
    row = sorted(r for r in RESULT_ROWS if re.search(r"\d\.\d", r))[0]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(row)])
    assert unprinted_numbers(nb) == []
    altered = re.sub(r"(\d)\.(\d)", r"\1.9\2", row, count=1)
    nb.cells[0].source = altered
    assert unprinted_numbers(nb) != []
