"""Robustness of the series' final model: every model on every data variant, over seeds.

    python benchmarks/robustness.py                       # the full grid on the test sets
    python benchmarks/robustness.py --split validation    # the grid that design choices use
    python benchmarks/robustness.py --models final twin attached --variants shapes small
    python benchmarks/robustness.py --smoke               # a tiny run (what the tests run)
    python benchmarks/robustness.py --merge a.json b.json # one results file from parallel runs

Every model trains with the same recipe (`u.run_seeds`: `u.train`'s AdamW, cosine schedule,
batch 16, 64 px, the same steps) on each data variant of `u.DATA_VARIANTS`, once per seed, and
is scored on that variant's fixed validation or test set (`u.make_split`). The tutorial's model
and the 1x1 baseline run on the shapes data only. For models with attention the script also
measures a mean-ablation (each attention output replaced by its mean over the evaluation set)
and, where the model has one, the learned attention scale.

It writes robustness_<split>.json (per-seed scores, mean, spread = max - min, worst seed, the
machine), robustness_<split>.md and robustness_<split>.png (a strip plot) to --out, saving the
JSON after every row so an interrupted run keeps what it measured, and prints the gates as
PASS/MISS lines. Nothing here asserts on time.
"""
from __future__ import annotations

import os
import sys

import torch

import latentseg_utils as u
from latentseg import benchmarking as bm
from latentseg.baselines import SmallUNet

HERE = os.path.dirname(os.path.abspath(__file__))

MODELS = {
    "final": (lambda: u.LatentSegNet(), "u.LatentSegNet()"),
    "twin": (lambda: u.LatentSegNet(attention=False), "u.LatentSegNet(attention=False)"),
    "unet": (lambda: SmallUNet(), "SmallUNet() of latentseg/baselines.py"),
    "tutorial": (lambda: u.SegmentationModel(num_classes=4), "u.SegmentationModel(num_classes=4)"),
    "pixel-1x1": (lambda: u.PixelClassifier(), "u.PixelClassifier()"),
    # The candidates the validation grid compared (options of LatentSegNetAblation, named by
    # what differs from today's final model):
    "attached": (lambda: u.LatentSegNetAblation(detach_attention=False, colour_tokens=False),
                 "u.LatentSegNetAblation(detach_attention=False, colour_tokens=False): the final model "
                 "before this grid"),
    "attached-scale0": (lambda: u.LatentSegNetAblation(detach_attention=False, colour_tokens=False,
                                                       attention_scale=0.0),
                        "u.LatentSegNetAblation(detach_attention=False, colour_tokens=False, "
                        "attention_scale=0.0)"),
    "no-colour": (lambda: u.LatentSegNetAblation(colour_tokens=False),
                  "u.LatentSegNetAblation(colour_tokens=False)"),
}
SHAPES_ONLY = ("tutorial", "pixel-1x1")
DEFAULT_MODELS = ("final", "twin", "unet", "tutorial", "pixel-1x1")
COLORS = {"final": "#0072B2", "twin": "#56B4E9", "unet": "#D55E00", "tutorial": "#E69F00",
          "pixel-1x1": "#999999", "attached": "#CC79A7", "attached-scale0": "#F0E442",
          "no-colour": "#009E73"}   # Okabe-Ito


def attention_measures(model, images, labels) -> dict:
    """mIoU with every write block's attention output replaced by its mean over the
    evaluation set (per token position), and the learned attention scales' mean |value|."""
    if not getattr(model, "config", {}).get("attention", False):
        return {}
    layers = [block.attention for block in model.writes]
    sums, count = [None] * len(layers), [0]

    def collect(i):
        def hook(module, inputs, output):
            total = output[0].sum(0)
            sums[i] = total if sums[i] is None else sums[i] + total
            if i == 0:
                count[0] += output[0].shape[0]
        return hook

    def replace(i):
        def hook(module, inputs, output):
            return (sums[i].div(count[0]).expand_as(output[0]), output[1])
        return hook

    handles = [layer.register_forward_hook(collect(i)) for i, layer in enumerate(layers)]
    try:
        u.predict(model, images)
    finally:
        for h in handles:
            h.remove()
    handles = [layer.register_forward_hook(replace(i)) for i, layer in enumerate(layers)]
    try:
        ablated = u.evaluate(model, images, labels)["miou"]
    finally:
        for h in handles:
            h.remove()
    scales = [block.attention_scale.detach().abs().mean().item() for block in model.writes
              if hasattr(block, "attention_scale")]
    return {"mean_ablated_miou": ablated, "attention_scale": scales or None}


def gates(rows: "list[dict]") -> "list[tuple[bool, str]]":
    """The robustness issue's gates, as (passed, line), from rows of one split."""
    by = {(r["model"], r["data"]): r for r in rows}
    out = []
    for variant in u.DATA_VARIANTS:
        final, twin = by.get(("final", variant)), by.get(("twin", variant))
        if final is None or twin is None:
            continue
        gap = final["mean"] - twin["mean"]
        if variant in u.LONG_RANGE_VARIANTS:
            out.append((gap >= 0.10, f"{variant}: final at least its twin + 0.10: "
                                     f"{final['mean']:.3f} vs {twin['mean']:.3f} ({gap:+.3f})"))
        else:
            out.append((gap >= -0.02, f"{variant}: final at least its twin - 0.02: "
                                      f"{final['mean']:.3f} vs {twin['mean']:.3f} ({gap:+.3f})"))
            low = final["mean"] - final["worst"]
            out.append((low <= 0.05, f"{variant}: no seed more than 0.05 below the final's mean: "
                                     f"worst {final['worst']:.3f}, mean {final['mean']:.3f} "
                                     f"({low:.3f} below)"))
    if ("final", "shapes") in by:
        mean = by[("final", "shapes")]["mean"]
        out.append((mean >= 0.90, f"shapes: final mIoU at least 0.90: {mean:.3f}"))
    return out


def markdown(rows, meta) -> str:
    """robustness_<split>.md: the table of every row and the gates."""
    lines = [f"Robustness grid, {meta['split']} sets, {meta['steps']} steps, seeds {meta['seeds']} "
             f"(`python benchmarks/robustness.py --split {meta['split']}`)", "",
             "| data | model | mIoU per seed | mean | spread | worst | mean-ablated |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ablated = [m.get("mean_ablated_miou") for m in r.get("measured", []) if m]
        ablated_text = f"{sum(ablated) / len(ablated):.3f}" if ablated else ""
        lines.append(f"| {r['data']} | {r['model']} | {', '.join(f'{s:.3f}' for s in r['miou'])} "
                     f"| {r['mean']:.3f} | {r['spread']:.3f} | {r['worst']:.3f} | {ablated_text} |")
    return "\n".join(lines + ["", "Gates:", ""] + bm.verdict_lines(gates(rows))) + "\n"


def plot(rows):
    """The strip plot: one dot per seed, a line at the mean, per model and data variant."""
    plt = bm.pyplot()
    variants = [v for v in u.DATA_VARIANTS if any(r["data"] == v for r in rows)]
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, ax = plt.subplots(figsize=(1.4 * len(variants) + 2, 3.6), dpi=80)
    width = 0.8 / max(1, len(models))
    for j, model in enumerate(models):
        for i, variant in enumerate(variants):
            row = next((r for r in rows if r["model"] == model and r["data"] == variant), None)
            if row is None:
                continue
            x = i - 0.4 + width * (j + 0.5)
            ax.scatter([x] * len(row["miou"]), row["miou"], s=14, color=COLORS.get(model, "k"),
                       label=model if i == variants.index(row["data"]) and
                       not any(line.get_label() == model for line in ax.collections[:-1]) else None)
            ax.hlines(row["mean"], x - width / 2, x + width / 2, color=COLORS.get(model, "k"))
    ax.set_xticks(range(len(variants)), variants, rotation=20)
    ax.set_ylabel("mIoU (one dot per seed, line = mean)")
    ax.set_ylim(0, 1)
    ax.set_title("Every model on every data variant, over seeds")
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    return fig


def parse_args(argv=None):
    parser = bm.make_parser(__doc__, os.path.join(HERE, "results"), steps=800,
                            smoke="a tiny run: 2 steps, seeds 0 1 2, batch 2, 8 evaluation "
                                  "images, final, twin and tutorial on shapes and corner_key")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(MODELS))
    parser.add_argument("--variants", nargs="+", default=list(u.DATA_VARIANTS),
                        choices=list(u.DATA_VARIANTS))
    parser.add_argument("--split", choices=["validation", "test"], default="test")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.seeds = 2, [0, 1, 2]
        args.models, args.variants = ["final", "twin", "tutorial"], ["shapes", "corner_key"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.merge:
        variants, models = list(u.DATA_VARIANTS), list(MODELS)
        meta, rows = bm.merge_results(
            args.merge, lambda r: (variants.index(r["data"]), models.index(r["model"])))
        args.split = meta["split"]
        print(bm.write_results(bm.results_stem(args, f"robustness_{args.split}"), meta, rows,
                               markdown(rows, meta), plot(rows)))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    stem = bm.results_stem(args, f"robustness_{args.split}")
    device = u.get_device()
    meta = bm.run_metadata("robustness", argv, device, split=args.split, steps=args.steps,
                           seeds=args.seeds, run="sequential, one process",
                           models={m: MODELS[m][1] for m in args.models})
    rows: list = []

    def save(row):
        rows.append(row)
        bm.write_json(stem + ".json", meta, rows)

    train_options = {"batch_size": 2, "eval_images": 8} if args.smoke else {}
    for variant in args.variants:
        models = {m: MODELS[m][0] for m in args.models
                  if variant == "shapes" or m not in SHAPES_ONLY}
        u.run_seeds(models, [variant], seeds=tuple(args.seeds), split=args.split,
                    steps=args.steps, on_row=save, device=device, measure=attention_measures,
                    **train_options)
    print(bm.write_results(stem, meta, rows, markdown(rows, meta), plot(rows)))
    print("wrote", stem + ".json,", stem + ".md,", stem + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
