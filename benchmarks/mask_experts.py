"""Latents that become segments: the mask head against the series' final model, over seeds.

    python benchmarks/mask_experts.py            # 3 seeds, 800 steps, the shapes test set
    python benchmarks/mask_experts.py --threads 1 --models final --out /tmp/a   # part of it
    python benchmarks/mask_experts.py --merge a.json b.json   # one results file from the parts
    python benchmarks/mask_experts.py --smoke    # a tiny run (what the tests run)

`u.MaskLatentSegNet()` (each latent predicts a class and a mask, MaskFormer's head on the
series' encoder and latents) and `u.LatentSegNet()` train with the same recipe, steps and
seeds (`u.run_seeds`) and are scored on the shapes test set: semantic mIoU for both; for the
mask head also panoptic quality (PQ = SQ x RQ), the share of test objects claimed by exactly
one latent (`u.claims`), the number of latents that claim anything, and for both models
the share of "which shape" that the owning latent tells (`u.specialisation`). Writes
mask_experts.json, .md and .png to --out and prints PASS/MISS lines. Nothing asserts on time.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

import latentseg_utils as u
from latentseg import benchmarking as bm

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = {"mask-head": lambda: u.MaskLatentSegNet(), "final": lambda: u.LatentSegNet()}


def _token_classes(labels: torch.Tensor, stride: int = 4) -> torch.Tensor:
    """Each stride x stride block's majority class (notebook 06's token classes)."""
    one_hot = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    return F.avg_pool2d(one_hot, stride).argmax(1)


def mask_measures(model, images, labels) -> dict:
    """Both models: the mutual-information share of "which shape" carried by which latent a
    pixel belongs to (`u.specialisation`; for LatentSegNet a token's main expert, as notebook 06
    measures it). The mask head also: PQ, claims and latents used."""
    device = next(model.parameters()).device
    n = len(images)
    model.eval()
    if not hasattr(model, "predict_masks"):
        with torch.no_grad():
            experts = torch.cat([model(images[s:s + 64].to(device), return_attention=True)[1]
                                 ["pixel"].mean(1).argmax(-1).cpu() for s in range(0, n, 64)])
        classes = _token_classes(labels)
        return {"mi_which_shape": u.specialisation(classes.flatten(1), experts, 4,
                                                   model.config["num_latents"])["which shape"]}
    _, _, instances = u.make_split("shapes", "test", num_images=n, instances=True)
    pred_instances, pred_classes = u.predict_instances(model, images)
    pq = u.panoptic_quality(pred_instances, pred_classes, instances, labels)
    owners, used, owner_maps = [], set(), []
    with torch.no_grad():
        for start in range(0, n, 64):
            classes, masks = model.predict_masks(images[start:start + 64].to(device))
            classes, masks = classes.cpu(), masks.cpu()
            owner_maps.append(u.mask_owner(classes, masks))
            for claim in u.claims(classes, masks, instances[start:start + 64]):
                owners += list(claim.values())
                used |= {k for k in claim.values() if k >= 0}
    mi = u.specialisation(labels, torch.cat(owner_maps), 4, model.config["num_latents"])
    return {"pq": pq["pq"], "sq": pq["sq"], "rq": pq["rq"],
            "claimed_once": sum(k >= 0 for k in owners) / max(1, len(owners)),
            "latents_used": len(used), "mi_which_shape": mi["which shape"]}


def targets(rows) -> "list[tuple[bool, str]]":
    mask = next(r for r in rows if r["model"] == "mask-head")
    final = next(r for r in rows if r["model"] == "final")
    mean = {k: sum(m[k] for m in mask["measured"]) / len(mask["measured"])
            for k in ("pq", "sq", "rq", "claimed_once", "latents_used", "mi_which_shape")}
    final_mi = sum(m["mi_which_shape"] for m in final["measured"]) / len(final["measured"])
    return [
        (mask["mean"] >= final["mean"] - 0.03,
         f"semantic test mIoU at least LatentSegNet()'s minus 0.03: {mask['mean']:.3f} vs "
         f"{final['mean']:.3f}"),
        (mean["pq"] >= 0.75, f"PQ at least 0.75: {mean['pq']:.3f} (SQ {mean['sq']:.3f}, "
                              f"RQ {mean['rq']:.3f})"),
        (mean["claimed_once"] >= 0.90, f"at least 90% of test objects claimed by exactly one "
                                        f"latent: {100 * mean['claimed_once']:.1f}%"),
        (mean["mi_which_shape"] >= 0.3, f"MI share for which shape at least 0.3: "
                                         f"{mean['mi_which_shape']:.3f} (LatentSegNet()'s main "
                                         f"expert: {final_mi:.3f})"),
    ]


def plot(rows):
    """One dot per seed: semantic mIoU of the models, and the mask head's PQ. Returns the figure."""
    plt = bm.pyplot()
    columns = [(f"{r['model']}\nmIoU", r["miou"]) for r in rows]
    columns += [("mask-head\nPQ", [m["pq"] for m in r["measured"]])
                for r in rows if r["model"] == "mask-head"]
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=80)
    for i, (name, values) in enumerate(columns):
        ax.scatter([i] * len(values), values, color="#0072B2", s=16)
        ax.hlines(sum(values) / len(values), i - 0.25, i + 0.25, color="#0072B2")
    ax.set_xticks(range(len(columns)), [c[0] for c in columns])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score on the shapes test set")
    ax.set_title("Mask head against LatentSegNet(), one dot per seed")
    fig.tight_layout()
    return fig


def per_seed(r, key, scale=1.0, digits=3) -> str:
    """A row's measure `key` per seed, comma-separated ("" where a seed lacks it)."""
    values = [m.get(key) for m in r.get("measured", [])]
    if not values or any(v is None for v in values):
        return ""
    return ", ".join(f"{scale * v:.{digits}f}" for v in values)


def write_outputs(rows, stem, meta) -> str:
    """mask_experts.json, .md and .png at `stem`; returns the markdown (table and targets)."""
    lines = [f"Mask head against LatentSegNet(), shapes test set, {meta['steps']} steps, seeds "
             f"{meta['seeds']} (`python benchmarks/mask_experts.py`)", "",
             "| model | test mIoU per seed | mean | spread | PQ per seed | "
             "% objects claimed once | latents used | MI share, which shape |",
             "|---|---|---:|---:|---|---|---|---|"]
    lines += [f"| {r['model']} | {', '.join(f'{s:.3f}' for s in r['miou'])} | {r['mean']:.3f} | "
              f"{r['spread']:.3f} | {per_seed(r, 'pq')} | {per_seed(r, 'claimed_once', 100, 1)} | "
              f"{per_seed(r, 'latents_used', 1, 0)} | {per_seed(r, 'mi_which_shape')} |"
              for r in rows]
    if {r["model"] for r in rows} == set(MODELS):
        lines += [""] + bm.verdict_lines(targets(rows))
    return bm.write_results(stem, meta, rows, "\n".join(lines) + "\n", plot(rows))


def main(argv=None) -> int:
    parser = bm.make_parser(__doc__, os.path.join(HERE, "results"), steps=800,
                            smoke="2 steps, batch 2, 8 test images")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args(argv)
    stem = bm.results_stem(args, "mask_experts")
    if args.merge:
        meta, rows = bm.merge_results(args.merge, lambda r: list(MODELS).index(r["model"]))
        print(write_outputs(rows, stem, meta))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    options = {"steps": args.steps, "eval_images": 256}
    if args.smoke:
        options = {"steps": 2, "eval_images": 8, "batch_size": 2}
    rows = u.run_seeds({m: MODELS[m] for m in args.models}, ["shapes"], seeds=tuple(args.seeds),
                       split="test", measure=mask_measures, **options)
    meta = bm.run_metadata("mask_experts", argv, u.get_device(), split="test",
                           steps=options["steps"], seeds=args.seeds)
    print(write_outputs(rows, stem, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
