"""The README's performance figures must be the ones the benchmark scripts wrote."""
import json
import re
import pytest
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
RESULTS = REPO / "benchmarks" / "results"


def test_train_budget_table_matches_the_results_file():
    results = json.loads((RESULTS / "train_budget.json").read_text())["results"]
    for row in results:
        line = f"| {row['params']:,} | {row['steps']:,} | {row['train_images_per_s']:,.0f} | " \
               f"{row['infer_images_per_s']:,.0f} | {row['miou']:.3f} |"
        assert line in README, f"README's row for {row['model']} differs from the results: {line}"


def test_scaling_figures_match_the_results_file():
    table = (RESULTS / "scaling.md").read_text()
    rows = re.findall(r"\| (latent cross-attention|self-attention, written out|self-attention, fused)"
                      r"[^|]*\| 256 \| 4096 \| [\d.]+ \| ([\d.]+) \| ([\d.]+) \|", table)
    assert len(rows) == 3
    for _, cpu_ms, peak in rows:
        assert peak in README, f"peak {peak} MiB at 256 px is not in the README"
        cpu = float(cpu_ms)
        shown = f"{cpu:,.0f}" if cpu >= 100 else f"{cpu:.1f}"
        assert shown in README, f"CPU time {shown} ms at 256 px is not in the README"


def test_readme_commands_exist():
    for path in ("benchmarks/train_budget.py", "benchmarks/scaling.py", "requirements.txt",
                 "docs/training_panel.png", "benchmarks/results/scaling.png"):
        assert (REPO / path).exists(), path
    assert "python -m pytest" in README
    assert "python -m pytest" in (REPO / ".ci" / "run").read_text()


def test_train_budget_targets_are_the_scripts_own_lines():
    targets = (RESULTS / "train_budget.md").read_text().split("## Targets")[1].split("\n## ")[0]
    verdicts = [line for line in targets.splitlines() if line.startswith(("- **PASS**", "- **MISS**"))]
    assert verdicts, "train_budget.md has no PASS/MISS lines"
    for line in verdicts:
        assert line in README, f"README's train_budget targets differ from the results: {line}"


def test_scaling_prose_numbers_come_from_the_results_file():
    """Every number in the README's paragraph under the scaling table is in scaling.md's targets."""
    targets = (RESULTS / "scaling.md").read_text().split("## Targets")[1].split("\n## ")[0]
    section = README.split("### Scaling:")[1]
    paragraph = section.split("| self-attention, fused |")[1].split("![Scaling plot]")[0]
    paragraph = paragraph.split("\n", 1)[1]                      # the text after the table
    numbers = re.findall(r"\d+/\d+|\d+\.\d+|\d+(?=×)", paragraph)
    assert len(numbers) >= 5, numbers
    for number in numbers:
        assert re.search(rf"(?<![\w.]){re.escape(number)}(?![\d])", targets), \
            f"README's scaling paragraph says {number}, which scaling.md's targets do not"


def test_robustness_table_is_the_results_file():
    table = (RESULTS / "robustness_validation.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) >= 10
    for line in rows:
        assert line in README, f"README lacks this row of robustness_validation.md: {line}"
    data = json.loads((RESULTS / "robustness_validation.json").read_text())
    assert all(len(r["miou"]) >= 3 for r in data["results"]), "every row needs 3 seeds or more"


def test_robustness_test_grid_and_its_gates_are_quoted():
    table = (RESULTS / "robustness_test.md").read_text()
    lines = [line for line in table.splitlines()
             if (line.startswith("| ") and "---" not in line) or line.startswith("- **")]
    assert any(line.startswith("- **") for line in lines), "the test grid prints its gates"
    for line in lines:
        assert line in README, f"README lacks this line of robustness_test.md: {line}"
    data = json.loads((RESULTS / "robustness_test.json").read_text())
    assert data["split"] == "test"
    assert all(len(r["miou"]) >= 3 for r in data["results"]), "every row needs 3 seeds or more"


@pytest.mark.parametrize("name", ["ablation.md", "mask_experts.md", "mask_inference.md",
                                  "mask_recipe.md", "mask_recipe_2000.md", "mask_recipe_4000.md",
                                  "mask_experts_2000.md", "mask_experts_4000.md"])
def test_benchmark_tables_are_quoted_from_their_results(name):
    lines = [line for line in (RESULTS / name).read_text().splitlines()
             if (line.startswith("| ") and "---" not in line) or line.startswith("- **")]
    assert lines
    for line in lines:
        assert line in README, f"README lacks this line of {name}: {line}"
