"""Notebook 05's ablation over seeds: every step of `u.ABLATION_STEPS`, each changing one option
of `u.LatentSegNet` from the step before, trained with the same recipe and budget.

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

import argparse
import datetime
import json
import os
import platform
import sys

import torch

import latentseg_utils as u

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
    text = "\n".join(lines) + "\n"
    with open(stem + ".md", "w") as f:
        f.write(text)
    with open(stem + ".json", "w") as f:
        json.dump({**meta, "results": rows}, f, indent=1)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = u.plot_seed_strip(rows, title="Notebook 05's ablation, one dot per seed",
                            xlabel="ablation row (notebook 05)", ylabel="validation mIoU (dot = seed)")
    fig.savefig(stem + ".png", dpi=80)
    plt.close(fig)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rows", nargs="+", type=int, help="indices of the rows to run")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--merge", nargs="+", metavar="JSON")
    parser.add_argument("--smoke", action="store_true", help="2 steps, batch 2, 8 images, 3 rows")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"argument --steps: {args.steps} must be at least 1")
    spec = rows_spec()
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "ablation" + ("_smoke" if args.smoke else ""))
    if args.merge:
        parts = [json.load(open(p)) for p in args.merge]
        order = [name for name, _, _ in spec]
        rows = sorted((r for p in parts for r in p["results"]), key=lambda r: order.index(r["model"]))
        meta = {**parts[0], "command": " + ".join(p["command"] for p in parts),
                "run": f"{len(parts)} processes side by side, merged"}
        meta.pop("results")
        print(write_outputs(rows, stem, meta))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    options = {"steps": args.steps}
    chosen = [spec[i] for i in (args.rows if args.rows is not None else range(len(spec)))]
    if args.smoke:
        options = {"steps": 2, "batch_size": 2, "eval_images": 8}
        chosen = [spec[0], spec[1], spec[-1]]
    meta = {"command": "python benchmarks/ablation.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "device": str(u.get_device()), "torch": torch.__version__, "split": "validation",
            "steps": options["steps"], "seeds": args.seeds, "threads": torch.get_num_threads()}
    rows = []
    for name, build, _ in chosen:
        measure = test_score if name == FINAL else None
        rows += u.run_seeds({name: build}, ["shapes"], seeds=tuple(args.seeds), split="validation",
                            measure=measure, **options)
    print(write_outputs(rows, stem, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
