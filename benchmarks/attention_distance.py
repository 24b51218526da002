"""Where latent attention pays: accuracy by distance from the cue, with and without attention,
over seeds, on both long-range variants.

    python benchmarks/attention_distance.py                # 3 seeds, 800 steps, test sets
    python benchmarks/attention_distance.py --threads 1 --variants frame_key --out /tmp/a
    python benchmarks/attention_distance.py --merge a.json b.json   # parts run side by side
    python benchmarks/attention_distance.py --smoke        # a tiny run (what the tests run)

The final model (`u.LatentSegNet()`) and its twin without attention
(`u.LatentSegNet(attention=False)`) train with the same recipe (`u.run_seeds`, 800 steps, seeds
0, 1, 2) on each variant of `u.LONG_RANGE_VARIANTS`: a frame (`frame_key`) or a small square in
the top-left corner (`corner_key`) whose colour names the one kind of shape that counts. Each is
scored on that variant's test set, and its accuracy on object pixels (truth or prediction not
background) is measured in bands of distance from the cue (`u.cue_distance`,
`u.accuracy_by_distance`). In each band, final against twin gets the series' verdict
(`u.is_finding`).

Writes attention_distance.json, .md and .png (`u.plot_accuracy_by_distance`) to --out.
Nothing here asserts on time.
"""
from __future__ import annotations

import math
import os
import sys

import torch

import latentseg_utils as u
from latentseg import benchmarking as bm

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = {"final": lambda: u.LatentSegNet(), "twin": lambda: u.LatentSegNet(attention=False)}


def write_outputs(rows, stem, meta) -> str:
    edges = meta["edges"]
    lines = [f"Accuracy on object pixels by distance from the cue, test sets, {meta['steps']} "
             f"steps, seeds {meta['seeds']} (`python benchmarks/attention_distance.py`)", "",
             "| data | distance (px) | final, per seed | twin, per seed | final mean | twin mean | verdict |",
             "|---|---|---|---|---:|---:|---|"]
    for variant in dict.fromkeys(r["data"] for r in rows):
        by = {r["model"]: r for r in rows if r["data"] == variant}
        if set(by) != set(MODELS):
            continue
        final = [m["accuracy_by_distance"] for m in by["final"]["measured"]]
        twin = [m["accuracy_by_distance"] for m in by["twin"]["measured"]]
        for band, (lo, hi) in enumerate(zip(edges, edges[1:])):
            a, b = [s[band] for s in final], [s[band] for s in twin]
            if any(math.isnan(v) for v in a + b):
                continue
            gap = sum(a) / len(a) - sum(b) / len(b)
            verdict = (f"{gap:+.3f}, a finding" if len(a) >= 3 and u.is_finding(a, b)
                       else f"{gap:+.3f}, no measurable difference")
            lines.append(f"| {variant} | {lo}-{hi} | {', '.join(f'{v:.3f}' for v in a)} | "
                         f"{', '.join(f'{v:.3f}' for v in b)} | {sum(a) / len(a):.3f} | "
                         f"{sum(b) / len(b):.3f} | {verdict} |")
    lines += ["", "mIoU on the same test sets:", "",
              "| data | model | mIoU per seed | mean | spread |", "|---|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['data']} | {r['model']} | {', '.join(f'{s:.3f}' for s in r['miou'])} | "
                     f"{r['mean']:.3f} | {r['spread']:.3f} |")
    bm.pyplot()
    fig = u.plot_accuracy_by_distance(rows, tuple(edges))
    return bm.write_results(stem, meta, rows, "\n".join(lines) + "\n", fig)


def main(argv=None) -> int:
    parser = bm.make_parser(__doc__, os.path.join(HERE, "results"), steps=800,
                            smoke="2 steps, batch 2, 8 images")
    parser.add_argument("--variants", nargs="+", default=list(u.LONG_RANGE_VARIANTS),
                        choices=list(u.LONG_RANGE_VARIANTS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args(argv)
    stem = bm.results_stem(args, "attention_distance")
    if args.merge:
        order = [(v, m) for v in u.LONG_RANGE_VARIANTS for m in MODELS]
        meta, rows = bm.merge_results(args.merge, lambda r: order.index((r["data"], r["model"])))
        print(write_outputs(rows, stem, meta))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    options = {"steps": 2, "batch_size": 2, "eval_images": 8} if args.smoke else {"steps": args.steps}
    meta = bm.run_metadata("attention_distance", argv, u.get_device(), split="test",
                           steps=options["steps"], seeds=args.seeds, edges=list(u.DISTANCE_EDGES))
    rows = []
    for variant in args.variants:
        rows += u.run_seeds({m: MODELS[m] for m in args.models}, [variant], seeds=tuple(args.seeds),
                            split="test", measure=u.distance_measure(variant), **options)
    print(write_outputs(rows, stem, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
