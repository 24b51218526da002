"""latentseg.experiments: the series' rules for evidence. run_seeds (every model on every
variant with every seed, one recipe), seed_summary, is_finding and seed_table (when a
difference is a finding), and the distance measures of the long-range variants
(accuracy_by_distance, distance_measure).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from latentseg.checks import check_positive
from latentseg.data import DISTANCE_EDGES, cue_distance, make_split, variant_data
from latentseg.training import evaluate, predict, train

__all__ = ["seed_summary", "is_finding", "seed_table", "run_seeds", "accuracy_by_distance",
           "distance_measure"]


def seed_summary(scores: "list[float]") -> dict:
    """Mean, spread (max - min) and worst of one model's scores over seeds: the words
    "mean", "spread" and "worst seed" mean this everywhere in the series.

    Taught in notebook 05, section "1. One budget for every model".
    """
    if not scores:
        raise ValueError("seed_summary needs at least one score.")
    return {"mean": sum(scores) / len(scores), "spread": max(scores) - min(scores),
            "worst": min(scores)}


def is_finding(scores_a: "list[float]", scores_b: "list[float]") -> bool:
    """Whether a differs from b measurably: the same sign on every seed (paired by seed) and a
    gap of the means larger than the larger of the two spreads. Otherwise: "no measurable
    difference".

    Taught in notebook 05, section "1. One budget for every model".
    """
    if len(scores_a) != len(scores_b) or len(scores_a) < 3:
        raise ValueError("compare the same seeds, at least 3 of them "
                         f"(got {len(scores_a)} and {len(scores_b)}).")
    gaps = [a - b for a, b in zip(scores_a, scores_b)]
    same_sign = all(g > 0 for g in gaps) or all(g < 0 for g in gaps)
    a, b = seed_summary(scores_a), seed_summary(scores_b)
    return same_sign and abs(a["mean"] - b["mean"]) > max(a["spread"], b["spread"])


def seed_table(rows: "list[dict]", against: "dict[str, str] | None" = None) -> str:
    """run_seeds's rows as a markdown table: mIoU per seed, mean, spread and, for a row named
    in `against` (row name -> the name of the row it is compared with), the gap of the means
    and is_finding's verdict ("a finding" or "no measurable difference").

    Taught in notebook 05, section "4. The fixes, one at a time".
    """
    by_name, against = {r["model"]: r for r in rows}, against or {}
    lines = ["| row | mIoU per seed | mean | spread | against | verdict |",
             "|---|---|---:|---:|---|---|"]
    for r in rows:
        other, verdict = against.get(r["model"]), ""
        if other in by_name:
            gap = r["mean"] - by_name[other]["mean"]
            verdict = (f"{gap:+.3f}, a finding" if is_finding(r["miou"], by_name[other]["miou"])
                       else f"{gap:+.3f}, no measurable difference")
        lines.append(f"| {r['model']} | {', '.join(f'{s:.3f}' for s in r['miou'])} | "
                     f"{r['mean']:.3f} | {r['spread']:.3f} | {other or ''} | {verdict} |")
    return "\n".join(lines)


def run_seeds(models: "dict[str, Callable[[], nn.Module]]", variants: "list[str]",
              seeds: "tuple[int, ...]" = (0, 1, 2), split: str = "validation",
              steps: int = 800, on_row: Optional[Callable] = None, progress: bool = True,
              device: "torch.device | str | None" = None, measure: Optional[Callable] = None,
              eval_images: int = 256, **train_options) -> "list[dict]":
    """The series' multi-seed runner: every model on every data variant with every seed,
    the same recipe (`train` with `steps` and train_options) for all, scored on the first
    `eval_images` images of the variant's `split` set (make_split).

    models: name -> a function that builds a fresh model (called after torch.manual_seed(seed)).
    Returns one row per (variant, model): {"model", "data", "split", "steps", "seeds",
    "miou" (per seed), "mean", "spread", "worst", "seconds"}; on_row(row) is called as each
    row is done (to save partial results). measure(model, images, labels) -> dict, if given,
    is called on each trained model with the evaluation set; its results go to row["measured"].

    Taught in notebook 05, section "1. One budget for every model".
    """
    from tqdm.auto import tqdm
    check_positive(steps=steps)
    if not seeds:
        raise ValueError("seeds is empty; give at least one (3 or more for a finding).")
    for variant in variants:
        variant_data(variant)       # an unknown variant fails here, before any training
    rows = []
    bar = tqdm(total=len(variants) * len(models) * len(seeds), desc="trainings",
               disable=not progress)
    for variant in variants:
        evaluation = make_split(variant, split, num_images=eval_images)
        for name, build in models.items():
            scores, seconds, measured = [], 0.0, []
            for seed in seeds:
                torch.manual_seed(seed)
                model = build()
                data = variant_data(variant, instances=getattr(model, "wants_instances", False))
                history = train(model, steps=steps, seed=seed, data=data,
                                progress=False, device=device, **train_options)
                scores.append(evaluate(model, *evaluation)["miou"])
                seconds += history["seconds"]
                if measure is not None:
                    measured.append(measure(model, *evaluation))
                bar.update(1)
                bar.set_postfix(data=variant, model=name, miou=f"{scores[-1]:.3f}")
            row = {"model": name, "data": variant, "split": split, "steps": steps,
                   "seeds": list(seeds), "miou": scores, **seed_summary(scores),
                   "seconds": seconds}
            if measure is not None:
                row["measured"] = measured
            rows.append(row)
            if on_row is not None:
                on_row(row)
    bar.close()
    return rows


def accuracy_by_distance(prediction: torch.Tensor, labels: torch.Tensor, distance: torch.Tensor,
                         edges: "tuple[float, ...]" = DISTANCE_EDGES) -> "list[float]":
    """Accuracy on object pixels (truth or prediction not background) in each distance band
    [edges[i], edges[i+1]) of `distance` [H, W] (cue_distance); nan where a band has none.

    Taught in notebook 05, section "6. Does the latent attention earn its place?".
    """
    objects = (labels > 0) | (prediction > 0)
    correct = prediction == labels
    accuracy = []
    for lo, hi in zip(edges, edges[1:]):
        band = ((distance >= lo) & (distance < hi)).expand_as(labels) & objects
        accuracy.append(float(correct[band].float().mean()) if band.any() else float("nan"))
    return accuracy


def distance_measure(variant: str, edges: "tuple[float, ...]" = DISTANCE_EDGES) -> Callable:
    """A `measure` for run_seeds on a long-range variant: the trained model's
    accuracy_by_distance on the evaluation set, as {"accuracy_by_distance": [...]}.

    Taught in notebook 05, section "6. Does the latent attention earn its place?".
    """
    def measure(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
        distance = cue_distance(variant, labels.shape[-1])
        return {"accuracy_by_distance": accuracy_by_distance(predict(model, images), labels,
                                                             distance, edges)}
    return measure
