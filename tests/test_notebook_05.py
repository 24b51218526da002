"""Notebook 05's GPU branches: on a GPU the notebook reruns the multi-seed ablation and the
distance grid itself. No GPU here, so each branch's own source is run on the CPU at a tiny
budget (1 step, batches of 2, 4 evaluation images), which checks that the code a GPU user
runs works and gives every row with 3 seeds."""
import json
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import pytest  # noqa: E402
import torch  # noqa: E402

import latentseg_utils as u  # noqa: E402
from notebook_cells import code_cells, source  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "05_training.ipynb"


def gpu_cell(marker: str) -> str:
    cells = [source(c) for c in code_cells(json.loads(NOTEBOOK.read_text())) if marker in source(c)]
    assert len(cells) == 1, marker
    assert 'if RERUN_GRIDS_ON_GPU and device.type == "cuda":' in cells[0]
    return cells[0].replace('if RERUN_GRIDS_ON_GPU and device.type == "cuda":',
                            "if True:  # the GPU branch, on the CPU")


@pytest.fixture
def tiny_run_seeds(monkeypatch):
    real = u.run_seeds

    def tiny(*args, **kwargs):
        kwargs.update(steps=1, batch_size=2, eval_images=4, progress=False)
        return real(*args, **kwargs)
    monkeypatch.setattr(u, "run_seeds", tiny)


@pytest.mark.parametrize("marker, grid", [("ABLATION_RESULTS", "ablation_grid"),
                                          ("DISTANCE_RESULTS", "distance_grid")])
def test_the_gpu_branch_runs_every_row_over_three_seeds(tiny_run_seeds, marker, grid):
    import matplotlib.pyplot as plt
    namespace = {"u": u, "torch": torch, "plt": plt, "os": __import__("os"),
                 "device": torch.device("cpu"), "ABLATION_STEPS": 1, "FINAL_STEPS": 1}
    exec(gpu_cell(marker), namespace)
    rows = namespace[grid]
    if grid == "ablation_grid":
        assert [r["model"] for r in rows] == [name for name, _, _ in u.ablation_rows()]
    else:
        assert {(r["data"], r["model"]) for r in rows} == \
            {(v, m) for v in u.LONG_RANGE_VARIANTS for m in ("final", "twin")}
        assert all(len(r["measured"]) == 3 for r in rows)
    assert all(len(r["miou"]) == 3 for r in rows)
    plt.close("all")


def test_rerunning_the_grids_on_a_gpu_is_opt_in():
    """63 trainings are not started by a GPU alone: one named flag, off by default."""
    cells = [source(c) for c in code_cells(json.loads(NOTEBOOK.read_text()))]
    flags = [line for c in cells for line in c.splitlines() if line.startswith("RERUN_GRIDS_ON_GPU =")]
    assert len(flags) == 1 and flags[0].split("=")[1].split("#")[0].strip() == "False"
    assert sum('if RERUN_GRIDS_ON_GPU and device.type == "cuda":' in c for c in cells) == 2
