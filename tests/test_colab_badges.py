"""Every notebook, and the README, has an Open-in-Colab badge that opens that very notebook
from the same repository and release as the setup cell's LATENTSEG_PACKAGE (the one place the
repository URL is set), so the notebook Colab opens and the modules it installs always match."""
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
BADGE = re.compile(r"\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
                   r"\((https://colab\.research\.google\.com/github/[^)\s]+)\)")


def setup_cell_release():
    """(owner/name, ref) parsed from the setup cell's default LATENTSEG_PACKAGE."""
    text = (REPO / "notebooks" / ".setup_cell.txt").read_text()
    match = re.search(r'"git\+https://github\.com/([^/"]+/[^/@"]+)@([^"]+)"', text)
    assert match, "LATENTSEG_PACKAGE is not git+https://github.com/OWNER/NAME@TAG"
    return match.group(1), match.group(2)


def expected_url(notebook: Path) -> str:
    repo, ref = setup_cell_release()
    return f"https://colab.research.google.com/github/{repo}/blob/{ref}/notebooks/{notebook.name}"


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 7


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_opens_with_its_own_badge(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    first_markdown = next(c for c in cells if c["cell_type"] == "markdown")
    text = "".join(first_markdown["source"])
    match = BADGE.match(text)
    assert match, f"{notebook.name}: the first markdown cell must start with the Colab badge " \
                  "(run python tools/sync_setup_cell.py)"
    assert match.group(1) == expected_url(notebook), \
        f"{notebook.name}: badge opens {match.group(1)}, expected {expected_url(notebook)}"


def test_readme_has_a_badge_for_every_notebook():
    readme = (REPO / "README.md").read_text()
    urls = set(BADGE.findall(readme))
    for notebook in NOTEBOOKS:
        assert expected_url(notebook) in urls, f"README lacks the Colab badge of {notebook.name}"
    stray = {u for u in urls if u not in {expected_url(n) for n in NOTEBOOKS}}
    assert not stray, f"README badges that open no notebook of this release: {stray}"
