"""What makes the mask head converge: one training change per row, measured on validation.

    python benchmarks/mask_recipe.py                       # every row, 3 seeds, 800 steps
    python benchmarks/mask_recipe.py --rows default coords --threads 1 --out /tmp/a   # part
    python benchmarks/mask_recipe.py --rows deep --seeds 1 --out /tmp/b   # one seed of a row
    python benchmarks/mask_recipe.py --merge a.json b.json # one results file from the parts
    python benchmarks/mask_recipe.py --rows default deep --steps 2000   # the longer budget
    python benchmarks/mask_recipe.py --rows deep --seeds 2 --steps 4000 --threads 1 --out /tmp/c
    python benchmarks/mask_recipe.py --smoke               # a tiny run (what the tests run)

Each row is `u.MaskLatentSegNet(**options)` with one option changed from the default head
(`default`), trained with the series' recipe and seeds (`u.run_seeds`) on the shapes data with
instance maps, and scored on the shapes VALIDATION set (design choices never look at the test
set): semantic mIoU, and `u.mask_head_scores` (PQ, SQ, RQ, objects claimed by exactly one
latent and why the others are not (`u.claim_outcomes`: merged, split, ...), class accuracy on
claimed objects, latents used). Each row is compared with `default`
by the series' finding rule (`u.is_finding` on PQ: the same sign on every seed and a gap of the
means above both spreads); otherwise "no measurable difference". The rows named "deep + ..."
add one change to `deep` (the one finding against `default`) and are compared with it; a row
named "A + B" is compared with the row A (`base_of`). The
rows come from the anchors: Mask2Former (deep supervision, masked attention), SOLO / CoordConv
(coordinates in the mask embedding), ReMaX / MaX-DeepLab (an auxiliary semantic loss, and classes read from it), DINO /
Panoptic-DeepLab (latents that start at the peaks of a centre heatmap), De Brabandere et al.
(a discriminative loss on the pixel embeddings, against merges), Slot Attention
(latents that compete for pixels: `plain` turns that and the pooled class off, the plain
MaskFormer head as a control). A run with another --steps also compares each row with itself
at 800 steps (the committed benchmarks/results/mask_recipe.json): slow, or wrong? Writes
mask_recipe[_STEPS].json, .md and .png to --out.
Nothing asserts on time.
"""
from __future__ import annotations

import json
import os
import sys

import torch

import latentseg_utils as u
from latentseg import benchmarking as bm

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_STEPS = 800
ROWS = {
    "default": {},
    "plain": {"compete": False, "pooled_class": False},
    "coords": {"coords": True},
    "semantic": {"semantic_weight": 1.0},
    "deep": {"deep_supervision": True},
    "8 latents": {"num_latents": 8},
    "no-object 0.3": {"no_object_weight": 0.3},
    # on top of the one finding above: each row adds one change to `deep`
    "deep + coords": {"deep_supervision": True, "coords": True},
    "deep + heatmap": {"deep_supervision": True, "heatmap_queries": True},
    "deep + semantic": {"deep_supervision": True, "semantic_weight": 1.0},
    "deep + 8 latents": {"deep_supervision": True, "num_latents": 8},
    "deep + no-object 0.3": {"deep_supervision": True, "no_object_weight": 0.3},
    "deep + pixel positions": {"deep_supervision": True, "pixel_positions": True},
    "deep + query positions": {"deep_supervision": True, "query_positions": True},
    "deep + 3 rounds": {"deep_supervision": True, "rounds": 3},
    "deep + competing reads": {"deep_supervision": True, "competing_reads": True},
    "deep + semantic + classes": {"deep_supervision": True, "semantic_weight": 1.0,
                                  "semantic_classes": True},
    "deep + discriminative": {"deep_supervision": True, "discriminative_weight": 1.0},
    "deep + colours": {"deep_supervision": True, "colours": True},
    "deep + heatmap + colours": {"deep_supervision": True, "heatmap_queries": True,
                                 "colours": True},
}
MEANING = {
    "default": "u.MaskLatentSegNet(), its defaults",
    "plain": "control: MaskFormer's own head (compete=False, pooled_class=False)",
    "coords": "x, y channels in the per-pixel mask embedding (coords=True)",
    "semantic": "auxiliary per-pixel semantic loss (semantic_weight=1.0)",
    "deep": "loss after every round + masked attention (deep_supervision=True)",
    "8 latents": "8 latents instead of 16 (num_latents=8)",
    "no-object 0.3": "'no object' weighs 0.3 in the class loss instead of 0.1",
    "deep + coords": "deep, and x, y channels in the mask embedding",
    "deep + heatmap": "deep, and latents start at the peaks of a learned centre heatmap "
                      "(heatmap_queries=True)",
    "deep + semantic": "deep, and the auxiliary semantic loss",
    "deep + 8 latents": "deep, with 8 latents",
    "deep + no-object 0.3": "deep, with 'no object' weighing 0.3",
    "deep + pixel positions": "deep, and the keys' position code in the mask embedding "
                              "(pixel_positions=True)",
    "deep + query positions": "deep, and each latent starts at a point of a grid over the image "
                              "(query_positions=True)",
    "deep + 3 rounds": "deep, with three rounds of reading instead of two (rounds=3)",
    "deep + competing reads": "deep, and the latents compete for the pixels they read, Slot "
                              "Attention's softmax over the latents (competing_reads=True)",
    "deep + semantic + classes": "deep + semantic, and each latent's class also read from the "
                                 "semantic head inside its mask (semantic_classes=True)",
    "deep + discriminative": "deep, and a pull/push loss that keeps each object's pixel "
                             "embeddings together and two objects' apart "
                             "(discriminative_weight=1.0)",
    "deep + colours": "deep, and the image's colour channels in the mask embedding "
                      "(colours=True)",
    "deep + heatmap + colours": "deep + heatmap, and the image's colour channels in the mask "
                                "embedding",
}


def base_of(name: str) -> str:
    """The row a row is compared with: the row it adds its last " + ..." to (`deep` for
    "deep + coords", "deep + semantic" for "deep + semantic + classes"), else `default`."""
    return name.rsplit(" + ", 1)[0] if " + " in name else "default"


MEASURES = ("pq", "sq", "rq", "claimed_once", "class_accuracy", "latents_used")


def measure_on(variant: str, split: str, n: int):
    """measure(model, images, labels) for u.run_seeds: u.mask_head_scores on `split`."""
    instances = u.make_split(variant, split, num_images=n, instances=True)[2]

    def measure(model, images, labels) -> dict:
        return u.mask_head_scores(model, images, labels, instances)
    return measure


def builder(options: dict):
    return lambda: u.MaskLatentSegNet(**options)


def mean_of(row, key) -> float:
    values = [m[key] for m in row["measured"]]
    return sum(values) / len(values)


def compare(row, base) -> str:
    """PQ of `row` against `base` (a row, or None) by the series' finding rule."""
    if base is None or row is base or len(row["seeds"]) < 3 or row["seeds"] != base["seeds"]:
        return ""
    pq, base_pq = ([m["pq"] for m in r["measured"]] for r in (row, base))
    gap = sum(pq) / len(pq) - sum(base_pq) / len(base_pq)
    return f"{gap:+.3f}, " + ("a finding" if u.is_finding(pq, base_pq) else
                              "no measurable difference")


def default_budget_rows(steps: int) -> dict:
    """The committed rows at the default budget (benchmarks/results/mask_recipe.json) by name,
    for a run with another budget to be compared with, row by row; {} where there are none."""
    path = os.path.join(HERE, "results", "mask_recipe.json")
    if steps == DEFAULT_STEPS or not os.path.exists(path):
        return {}
    with open(path) as f:
        return {r["model"]: r for r in json.load(f)["results"]}


def plot(rows):
    """PQ per seed of every row (one dot per seed, a bar at the mean). Returns the figure."""
    plt = bm.pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(rows) + 1), 4), dpi=80)
    for i, r in enumerate(rows):
        values = [m["pq"] for m in r["measured"]]
        ax.scatter([i] * len(values), values, color="#0072B2", s=16)
        ax.hlines(sum(values) / len(values), i - 0.25, i + 0.25, color="#0072B2")
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=40, ha="right",
                  fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("PQ, shapes validation set")
    ax.set_title(f"Mask head, one change per row ({rows[0]['steps']} steps), one dot per seed")
    fig.tight_layout()
    return fig


def write_outputs(rows, stem, meta) -> str:
    shorter = default_budget_rows(meta["steps"])
    extra = f" Beside it, each row against itself at {DEFAULT_STEPS} steps " \
            "(benchmarks/results/mask_recipe.json)." if shorter else ""
    unrecorded = " \"Not claimed once, why\" (`u.claim_outcomes`, as shares of all objects) is " \
                 "blank for the rows run before it was recorded." \
        if any(not bm.unclaimed_breakdown(r["measured"]) for r in rows) else ""
    lines = [f"Mask head, one change per row: shapes **validation** set, {meta['steps']} steps, "
             f"seeds {meta['seeds']} (`python benchmarks/mask_recipe.py`). PQ compared with "
             "its base by the finding rule (`u.is_finding`): a row named \"A + B\" against the "
             "row A, the others against `default`." + extra + unrecorded, "",
             "| row | what changes | PQ per seed | PQ mean | spread | against its base | "
             + (f"against {DEFAULT_STEPS} steps | " if shorter else "") +
             "SQ | RQ | claimed once | not claimed once, why | class acc. on claimed | "
             "latents used | mIoU mean |",
             "|---|---|---|---:|---:|---|" + ("---|" if shorter else "") +
             "---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        pq = [m["pq"] for m in r["measured"]]
        base = next((b for b in rows if b["model"] == base_of(r["model"])), None)
        longer = f"{compare(r, shorter.get(r['model']))} | " if shorter else ""
        lines.append(
            f"| {r['model']} | {MEANING.get(r['model'], '')} | "
            f"{', '.join(f'{v:.3f}' for v in pq)} | {sum(pq) / len(pq):.3f} | "
            f"{max(pq) - min(pq):.3f} | {compare(r, base)} | {longer}"
            f"{mean_of(r, 'sq'):.3f} | {mean_of(r, 'rq'):.3f} | "
            f"{100 * mean_of(r, 'claimed_once'):.1f}% | {bm.unclaimed_breakdown(r['measured'])} | "
            f"{100 * mean_of(r, 'class_accuracy'):.1f}% | "
            f"{mean_of(r, 'latents_used'):.1f} | {r['mean']:.3f} |")
    return bm.write_results(stem, meta, rows, "\n".join(lines) + "\n", plot(rows))


def main(argv=None) -> int:
    parser = bm.make_parser(__doc__, os.path.join(HERE, "results"), steps=DEFAULT_STEPS,
                            smoke="2 steps, batch 2, 8 validation images, three rows")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    args = parser.parse_args(argv)
    name = "mask_recipe" if args.steps == DEFAULT_STEPS else f"mask_recipe_{args.steps}"
    stem = bm.results_stem(args, name)
    if args.merge:
        meta, rows = bm.merge_results(args.merge, lambda r: list(ROWS).index(r["model"]))
        print(write_outputs(rows, stem, meta))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    options = {"steps": args.steps, "eval_images": 256}
    rows_wanted = args.rows
    if args.smoke:
        options = {"steps": 2, "eval_images": 8, "batch_size": 2}
        rows_wanted = ["default", "deep", "deep + heatmap"]
    meta = bm.run_metadata("mask_recipe", argv, u.get_device(), split="validation",
                           steps=options["steps"], seeds=args.seeds)
    done = []

    def on_row(row):                      # partial results survive an interrupted run
        done.append(row)
        pq = ", ".join(f"{m['pq']:.3f}" for m in row["measured"])
        print(f"{row['model']}: PQ per seed {pq}", flush=True)
        write_outputs(done, stem, meta)

    u.run_seeds({r: builder(ROWS[r]) for r in rows_wanted}, ["shapes"], seeds=tuple(args.seeds),
                split="validation", measure=measure_on("shapes", "validation",
                                                       options["eval_images"]),
                on_row=on_row, **options)
    print(write_outputs(done, stem, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
