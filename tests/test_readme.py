"""The README's performance figures must be the ones the benchmark scripts wrote."""
import json
import re
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
