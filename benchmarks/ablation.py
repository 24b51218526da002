"""Notebook 05's ablation over seeds: every step of `u.ABLATION_STEPS`, each changing one option
of `u.LatentSegNetAblation` from the step before, trained with the same recipe and budget.

    python benchmarks/ablation.py                 # 3 seeds, 300 steps (notebook 05's budget)
    python benchmarks/ablation.py --threads 1 --rows 0 1 2 4 --out /tmp/a   # part of it
    python benchmarks/ablation.py --merge a.json b.json  # one results file from parallel parts
    python benchmarks/ablation.py --smoke         # a tiny run (what the tests run)

Rows: the tutorial's model, the steps (1a-1g, then 2-7), and two twins without attention (step 3's and
the final step's), each over seeds 0, 1, 2 on the shapes data, scored on the validation set
(the one choices look at); the final step is also scored on the test set. `u.run_seeds` is
the runner, so "mean", "spread" and "worst" mean what they mean everywhere in the series, and
each row's verdict against the row it changes uses `u.is_finding` (same sign on every seed and
a gap larger than both spreads; otherwise "no measurable difference").

Writes ablation.json, ablation.md and ablation.png (one dot per seed) to --out. Nothing asserts
on time.
"""
from __future__ import annotations

import os
import sys

import torch

import latentseg_utils as u
from latentseg import benchmarking as bm

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = list(u.ABLATION_STEPS)
FINAL = STEPS[-1]


def rows_spec() -> "list[tuple[str, callable, str | None]]":
    """(row name, model builder, the row it is compared with): the module's u.ablation_rows."""
    return u.ablation_rows()


def test_score(model, images, labels) -> dict:
    """The final step's test-set score (every other row is scored on validation only)."""
    return {"test_miou": u.evaluate(model, *u.make_split("shapes", "test",
                                                          num_images=len(images)))["miou"]}


def write_outputs(rows, stem, meta) -> str:
    by = {r["model"]: r for r in rows}
    compare = {name: against for name, _, against in rows_spec() if against}
    lines = [f"Notebook 05's ablation over seeds, shapes validation set, {meta['steps']} steps, "
             f"seeds {meta['seeds']} (`python benchmarks/ablation.py`)", "",
             u.seed_table(rows, compare)]
    if FINAL in by and by[FINAL].get("measured"):
        tests = [m["test_miou"] for m in by[FINAL]["measured"]]
        lines += ["", f"Final step on the test set: {', '.join(f'{t:.3f}' for t in tests)} "
                      f"(mean {sum(tests) / len(tests):.3f})"]
    bm.pyplot()
    fig = u.plot_seed_strip(rows, title="Notebook 05's ablation, one dot per seed",
                            xlabel="ablation row (notebook 05)", ylabel="validation mIoU (dot = seed)")
    return bm.write_results(stem, meta, rows, "\n".join(lines) + "\n", fig)


def main(argv=None) -> int:
    parser = bm.make_parser(__doc__, os.path.join(HERE, "results"), steps=300,
                            smoke="2 steps, batch 2, 8 images, 3 rows")
    parser.add_argument("--rows", nargs="+", type=int, help="indices of the rows to run")
    args = parser.parse_args(argv)
    spec = rows_spec()
    stem = bm.results_stem(args, "ablation")
    if args.merge:
        order = [name for name, _, _ in spec]
        meta, rows = bm.merge_results(args.merge, lambda r: order.index(r["model"]))
        print(write_outputs(rows, stem, meta))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    options = {"steps": args.steps}
    chosen = [spec[i] for i in (args.rows if args.rows is not None else range(len(spec)))]
    if args.smoke:
        options = {"steps": 2, "batch_size": 2, "eval_images": 8}
        chosen = [spec[0], spec[1], spec[-1]]
    meta = bm.run_metadata("ablation", argv, u.get_device(), split="validation",
                           steps=options["steps"], seeds=args.seeds)
    rows = []
    for name, build, _ in chosen:
        measure = test_score if name == FINAL else None
        rows += u.run_seeds({name: build}, ["shapes"], seeds=tuple(args.seeds), split="validation",
                            measure=measure, **options)
    print(write_outputs(rows, stem, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
