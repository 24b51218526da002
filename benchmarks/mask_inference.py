"""Inference first: how much of the mask head's low panoptic quality is its inference rule?
And what does the simplest instance method, connected components, reach on the same data?

    python benchmarks/mask_inference.py                 # 3 seeds, 800 steps, shapes
    python benchmarks/mask_inference.py --variants shapes crowded
    python benchmarks/mask_inference.py --smoke         # a tiny run (what the tests run)

For each seed it trains `u.MaskLatentSegNet(**RECIPE)` (the options benchmarks/mask_recipe.py
chose on validation, as in benchmarks/mask_experts.py) and `u.LatentSegNet()` with the series' recipe
(`u.run_seeds`, scored on the validation split) and measures, with no retraining:
- the mask head with its plain inference (`u.predict_instances`), and with Mask2Former's
  panoptic inference (`u.panoptic_inference`: keep a latent only if its class is not "no
  object" and its score is above a threshold, give each pixel to the kept latent with the
  highest score x mask probability, drop a segment that keeps less than a share of its own
  mask, and one smaller than a minimum area) over a grid of the three settings;
- connected components of `u.LatentSegNet()`'s per-pixel prediction
  (`u.connected_component_instances`), and of the true class map: the ceiling of that method,
  which says how often objects of one class touch.
The settings are chosen on the validation split (the mean PQ over the seeds); the test split
only reports, for the chosen settings. Writes mask_inference.json, .md and .png.
"""
from __future__ import annotations

import itertools
import os
import sys

import torch

import latentseg_utils as u
from latentseg import benchmarking as bm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from mask_experts import (GRID, MIN_AREAS, OVERLAP_THRESHOLDS,  # noqa: E402  (one place for the
                          PLAIN, RECIPE, SCORE_THRESHOLDS,        # recipe, the grid and how it
                          inference_scores, setting_key)          # is scored)

MODELS = {"mask-head": lambda: u.MaskLatentSegNet(**RECIPE), "final": lambda: u.LatentSegNet()}


def pq_of(instances, classes, variant: str, split: str, n: int) -> dict:
    _, labels, true_instances = u.make_split(variant, split, num_images=n, instances=True)
    result = u.panoptic_quality(instances, classes, true_instances, labels)
    return {k: result[k] for k in ("pq", "sq", "rq")}


def measures_for(variant: str, n: int):
    """measure(model, images, labels) for u.run_seeds: PQ on validation and test, keyed
    "SPLIT SETTING": the mask head's with every inference setting (mask_experts'
    `inference_scores`), LatentSegNet()'s connected components ("SPLIT components")."""
    def measure(model, images, labels) -> dict:
        if hasattr(model, "predict_masks"):
            return {f"{split} {key}": by_split[split]
                    for key, by_split in inference_scores(model, variant, n).items()
                    for split in ("validation", "test")}
        out = {}
        for split in ("validation", "test"):
            prediction = u.predict(model, u.make_split(variant, split, num_images=n)[0])
            out[f"{split} components"] = pq_of(*u.connected_component_instances(prediction),
                                               variant, split, n)
        return out
    return measure


def mean_pq(row: dict, key: str) -> float:
    return sum(m[key]["pq"] for m in row["measured"]) / len(row["measured"])


def chosen_setting(row: dict) -> str:
    """The grid setting with the best mean validation PQ over the seeds (test never looked at)."""
    return max((setting_key(*s) for s in GRID), key=lambda k: mean_pq(row, f"validation {k}"))


def ceiling(variant: str, n: int) -> dict:
    """Connected components of the true class map, on the test split: the method's ceiling."""
    _, labels, _ = u.make_split(variant, "test", num_images=n, instances=True)
    return pq_of(*u.connected_component_instances(labels), variant, "test", n)


def report(rows: list, ceilings: dict, meta: dict) -> str:
    lines = [f"Mask head (`u.MaskLatentSegNet(**{meta.get('recipe', {})})`) inference and "
             f"connected components, {meta['steps']} steps, seeds "
             f"{meta['seeds']} (`python benchmarks/mask_inference.py`). Settings chosen on the "
             "validation split; the test split only reports.", "",
             "| data | method | validation PQ per seed | validation mean | test PQ per seed | "
             "test mean |", "|---|---|---|---:|---|---:|"]

    def line(variant, name, row, key):
        per = {s: [m[f"{s} {key}"]["pq"] for m in row["measured"]] for s in ("validation", "test")}
        return (f"| {variant} | {name} | {', '.join(f'{v:.3f}' for v in per['validation'])} | "
                f"{sum(per['validation']) / len(per['validation']):.3f} | "
                f"{', '.join(f'{v:.3f}' for v in per['test'])} | "
                f"{sum(per['test']) / len(per['test']):.3f} |")
    for variant in dict.fromkeys(r["data"] for r in rows):
        mask = next(r for r in rows if r["data"] == variant and r["model"] == "mask-head")
        final = next(r for r in rows if r["data"] == variant and r["model"] == "final")
        best = chosen_setting(mask)
        lines.append(line(variant, "mask head, plain inference (u.predict_instances)", mask, PLAIN))
        lines.append(line(variant, f"mask head, panoptic inference ({best})", mask, best))
        lines.append(line(variant, "components of LatentSegNet()'s prediction", final,
                          "components"))
        lines.append(f"| {variant} | components of the true class map (ceiling) | | | | "
                     f"{ceilings[variant]['pq']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list):
    plt = bm.pyplot()
    mask_rows = [r for r in rows if r["model"] == "mask-head"]
    fig, axes = plt.subplots(1, len(mask_rows), figsize=(4.5 * len(mask_rows), 3.2), dpi=80,
                             squeeze=False)
    for ax, row in zip(axes[0], mask_rows):
        for i, score in enumerate(SCORE_THRESHOLDS):
            values = [mean_pq(row, f"validation {setting_key(score, o, a)}")
                      for o, a in itertools.product(OVERLAP_THRESHOLDS, MIN_AREAS)]
            ax.scatter([i] * len(values), values, color="#0072B2", s=12)
        ax.axhline(mean_pq(row, f"validation {PLAIN}"), color="#D55E00", ls="--",
                   label="plain inference")
        ax.set_xticks(range(len(SCORE_THRESHOLDS)), [str(s) for s in SCORE_THRESHOLDS])
        ax.set(xlabel="score threshold (dots: overlap and area settings)",
               ylabel="validation PQ, mean of seeds", ylim=(0, 1), title=row["data"])
        ax.legend(fontsize=8)
    fig.suptitle("Mask2Former's panoptic inference on the mask head")
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    parser = bm.make_parser(__doc__, os.path.join(HERE, "results"), steps=800, merge=False,
                            smoke="2 steps, batch 2, 8 images")
    parser.add_argument("--variants", nargs="+", default=["shapes"], choices=list(u.DATA_VARIANTS))
    args = parser.parse_args(argv)
    stem = bm.results_stem(args, "mask_inference" if args.steps == 800
                           else f"mask_inference_{args.steps}")
    if args.threads:
        torch.set_num_threads(args.threads)
    n, options = 256, {"steps": args.steps}
    if args.smoke:
        n, options = 8, {"steps": 2, "batch_size": 2}
    rows = []
    for variant in args.variants:
        rows += u.run_seeds(MODELS, [variant], seeds=tuple(args.seeds), split="validation",
                            measure=measures_for(variant, n), eval_images=n, **options)
    ceilings = {v: ceiling(v, n) for v in args.variants}
    meta = bm.run_metadata("mask_inference", argv, u.get_device(), split="validation, test",
                           steps=options["steps"], seeds=args.seeds, ceilings=ceilings,
                           recipe=RECIPE)
    print(bm.write_results(stem, meta, rows, report(rows, ceilings, meta), plot(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
