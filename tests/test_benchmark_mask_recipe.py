"""benchmarks/mask_recipe.py: a smoke run trains its rows on the validation set, writes the
results, table and plot, and compares each row with the default head by the finding rule."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mask_recipe.py"


@pytest.mark.slow
def test_smoke_run_writes_results_on_validation(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "mask_recipe_smoke.json").read_text())
    assert data["split"] == "validation"
    rows = data["results"]
    assert [r["model"] for r in rows] == ["default", "deep", "deep + heatmap"]
    assert {"pq", "claimed_once", "class_accuracy", "merged", "split"} <= set(rows[0]["measured"][0])
    # every object is claimed once or has a reason why not
    shares = [rows[0]["measured"][0][k] for k in ("claimed_once", "several", "missed", "merged",
                                                  "split", "rough")]
    assert sum(shares) == pytest.approx(1.0)
    assert "merged " in (tmp_path / "mask_recipe_smoke.md").read_text()
    assert "no measurable difference" in result.stdout or "a finding" in result.stdout
    assert (tmp_path / "mask_recipe_smoke.png").stat().st_size > 1000


def test_an_unknown_row_is_refused():
    result = subprocess.run([sys.executable, str(SCRIPT), "--rows", "nonsense", "--smoke"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "invalid choice: 'nonsense'" in result.stderr


def test_stacked_rows_are_compared_with_deep_and_change_one_option():
    import importlib.util
    spec = importlib.util.spec_from_file_location("mask_recipe", SCRIPT)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    for name, options in recipe.ROWS.items():
        base = recipe.base_of(name)
        if name not in (base, "plain"):            # plain: the control, MaskFormer's own head
            extra = set(options.items()) - set(recipe.ROWS[base].items())
            assert len(extra) == 1 and set(recipe.ROWS[base].items()) <= set(options.items()), name
        assert name in recipe.MEANING
    assert recipe.base_of("deep + coords") == "deep" and recipe.base_of("coords") == "default"


def test_a_longer_budget_is_compared_with_the_committed_800_step_rows(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("mask_recipe", SCRIPT)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    committed = json.loads((SCRIPT.parent / "results" / "mask_recipe.json").read_text())
    rows = [r for r in committed["results"] if r["model"] in ("default", "deep")]
    longer = [dict(r, measured=[dict(m, pq=m["pq"] + 0.5) for m in r["measured"]]) for r in rows]
    text = recipe.write_outputs(longer, str(tmp_path / "longer"), dict(committed, steps=2000))
    assert "| against 800 steps |" in text
    assert "+0.500, a finding" in text.splitlines()[-1]       # deep, 0.5 above itself on every seed
    text = recipe.write_outputs(rows, str(tmp_path / "same"), committed)
    assert "against 800 steps" not in text


def test_merging_parts_keeps_every_row_and_counts_the_processes(tmp_path):
    """--merge of a merged file and a new part: all rows, sorted as ROWS lists them, and the
    processes of the earlier merge counted; parts of another grid are refused."""
    committed = json.loads((SCRIPT.parent / "results" / "mask_recipe.json").read_text())
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    deep = next(r for r in committed["results"] if r["model"] == "deep")
    first.write_text(json.dumps(dict(committed, run="2 processes side by side, merged",
                                     results=[r for r in committed["results"] if r is not deep])))
    second.write_text(json.dumps(dict(committed, run="", results=[deep])))
    out = tmp_path / "merged"
    result = subprocess.run([sys.executable, str(SCRIPT), "--merge", str(second), str(first),
                             "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    merged = json.loads((out / "mask_recipe.json").read_text())
    assert [r["model"] for r in merged["results"]] == [r["model"] for r in committed["results"]]
    assert merged["run"] == "3 processes side by side, merged"
    second.write_text(json.dumps(dict(committed, steps=2000, results=[deep])))
    result = subprocess.run([sys.executable, str(SCRIPT), "--merge", str(first), str(second),
                             "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "another split or steps" in result.stderr


def test_merging_one_process_per_seed_joins_each_row_seed_by_seed(tmp_path):
    """--merge of parts that each ran other seeds of the same rows (one process per seed):
    every row gets all seeds in order, its per-seed lists and summary follow;
    a seed in two parts, or a row short of a seed, is refused."""
    committed = json.loads((SCRIPT.parent / "results" / "mask_recipe.json").read_text())
    rows = [r for r in committed["results"] if r["model"] in ("default", "deep")]

    def part(seed_indices, name, rows=rows):
        keep = [dict(r, seeds=[r["seeds"][i] for i in seed_indices],
                     miou=[r["miou"][i] for i in seed_indices],
                     measured=[r["measured"][i] for i in seed_indices]) for r in rows]
        path = tmp_path / name
        path.write_text(json.dumps(dict(committed, seeds=keep[0]["seeds"], run="", results=keep)))
        return str(path)

    def merge(*paths):
        return subprocess.run([sys.executable, str(SCRIPT), "--merge", *paths, "--out",
                               str(tmp_path / "merged")], capture_output=True, text=True,
                              timeout=120)

    result = merge(part([2], "c.json"), part([0], "a.json"), part([1], "b.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    merged = json.loads((tmp_path / "merged" / "mask_recipe.json").read_text())
    assert merged["seeds"] == [0, 1, 2] and merged["run"] == "3 processes side by side, merged"
    for joined, original in zip(merged["results"], rows):
        assert joined["seeds"] == original["seeds"]
        assert joined["miou"] == original["miou"] and joined["measured"] == original["measured"]
        assert abs(joined["mean"] - sum(original["miou"]) / 3) < 1e-12
    result = merge(part([0, 1], "a.json"), part([1, 2], "b.json"))
    assert result.returncode == 2 and "each seed of a row may come from one part" in result.stderr
    result = merge(part([0], "a.json"), part([1], "b.json", rows=rows[:1]))
    assert result.returncode == 2 and "give every row all the seeds" in result.stderr
