"""ruff over the modules, scripts, tools, tests and the notebooks' .py pairs, with the rules
and the one exception (E402 in the notebook pairs) set in pyproject.toml."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache",
                             "--output-format", "concise", "."],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_notebook_pairs_are_linted():
    """ruff sees every notebook's .py pair (so a lint error there fails the test above)."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--show-files", "."],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    linted = {Path(line.strip()).name for line in result.stdout.splitlines()}
    pairs = {p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py")}
    assert pairs and pairs <= linted, sorted(pairs - linted)
    assert not any(name.endswith(".ipynb") for name in linted)
