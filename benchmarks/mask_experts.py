"""Latents that become segments: the mask head against the series' final model, over seeds.

    python benchmarks/mask_experts.py            # 3 seeds, 800 steps, the shapes test set
    python benchmarks/mask_experts.py --smoke    # a tiny run (what the tests run)

`u.MaskLatentSegNet()` (each latent predicts a class and a mask, MaskFormer's head on the
series' encoder and latents) and `u.LatentSegNet()` train with the same recipe, steps and
seeds (`u.run_seeds`) and are scored on the shapes test set: semantic mIoU for both; for the
mask head also panoptic quality (PQ = SQ x RQ), the share of test objects claimed by exactly
one latent (`u.claims`) and the number of latents that claim anything. Writes
mask_experts.json, .md and .png to --out and prints PASS/MISS lines. Nothing asserts on time.
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
MODELS = {"mask-head": lambda: u.MaskLatentSegNet(), "final": lambda: u.LatentSegNet()}


def mask_measures(model, images, labels) -> dict:
    """PQ, claims and latents used on the evaluation set (mask head only)."""
    if not hasattr(model, "predict_masks"):
        return {}
    n = len(images)
    _, _, instances = u.make_split("shapes", "test", num_images=n, instances=True)
    pred_instances, pred_classes = u.predict_instances(model, images)
    pq = u.panoptic_quality(pred_instances, pred_classes, instances, labels)
    owners, used = [], set()
    with torch.no_grad():
        for start in range(0, n, 64):
            classes, masks = model.predict_masks(images[start:start + 64].to(
                next(model.parameters()).device))
            for claim in u.claims(classes.cpu(), masks.cpu(), instances[start:start + 64]):
                owners += list(claim.values())
                used |= {k for k in claim.values() if k >= 0}
    return {"pq": pq["pq"], "sq": pq["sq"], "rq": pq["rq"],
            "claimed_once": sum(k >= 0 for k in owners) / max(1, len(owners)),
            "latents_used": len(used)}


def targets(rows) -> "list[tuple[bool, str]]":
    mask = next(r for r in rows if r["model"] == "mask-head")
    final = next(r for r in rows if r["model"] == "final")
    mean = {k: sum(m[k] for m in mask["measured"]) / len(mask["measured"])
            for k in ("pq", "sq", "rq", "claimed_once", "latents_used")}
    return [
        (mask["mean"] >= final["mean"] - 0.03,
         f"semantic test mIoU at least LatentSegNet()'s minus 0.03: {mask['mean']:.3f} vs "
         f"{final['mean']:.3f}"),
        (mean["pq"] >= 0.75, f"PQ at least 0.75: {mean['pq']:.3f} (SQ {mean['sq']:.3f}, "
                              f"RQ {mean['rq']:.3f})"),
        (mean["claimed_once"] >= 0.90, f"at least 90% of test objects claimed by exactly one "
                                        f"latent: {100 * mean['claimed_once']:.1f}%"),
    ]


def write_plot(rows, path) -> None:
    """One dot per seed: semantic mIoU of both models, and the mask head's PQ."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    mask = next(r for r in rows if r["model"] == "mask-head")
    columns = [(f"{r['model']}\nmIoU", r["miou"]) for r in rows]
    columns.append(("mask-head\nPQ", [m["pq"] for m in mask["measured"]]))
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=80)
    for i, (name, values) in enumerate(columns):
        ax.scatter([i] * len(values), values, color="#0072B2", s=16)
        ax.hlines(sum(values) / len(values), i - 0.25, i + 0.25, color="#0072B2")
    ax.set_xticks(range(len(columns)), [c[0] for c in columns])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score on the shapes test set")
    ax.set_title("Mask head against LatentSegNet(), one dot per seed")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--smoke", action="store_true", help="2 steps, batch 2, 8 test images")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"argument --steps: {args.steps} must be at least 1")
    options = {"steps": args.steps, "eval_images": 256}
    if args.smoke:
        options = {"steps": 2, "eval_images": 8, "batch_size": 2}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "mask_experts" + ("_smoke" if args.smoke else ""))
    rows = u.run_seeds(MODELS, ["shapes"], seeds=tuple(args.seeds), split="test",
                       measure=mask_measures, **options)
    meta = {"command": "python benchmarks/mask_experts.py " + " ".join(argv or sys.argv[1:]),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "device": str(u.get_device()), "torch": torch.__version__}
    lines = [f"| {r['model']} | {', '.join(f'{s:.3f}' for s in r['miou'])} | {r['mean']:.3f} | "
             f"{r['spread']:.3f} |" for r in rows]
    checks = targets(rows)
    text = "\n".join(["| model | test mIoU per seed | mean | spread |", "|---|---|---:|---:|",
                      *lines, "", *(f"- **{'PASS' if ok else 'MISS'}** {line}"
                                    for ok, line in checks)]) + "\n"
    with open(stem + ".json", "w") as f:
        json.dump({**meta, "results": rows}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(text)
    write_plot(rows, stem + ".png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
