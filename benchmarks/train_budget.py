"""Time-budgeted training: every model gets the same wall-clock budget on the same data.

One run, same data stream, same machine, same seed, for:

  tutorial            u.SegmentationModel(num_classes=4), the tutorial's model as published
  final               u.LatentSegNet(), the series' final model (notebook 05)
  final-no-attention  u.LatentSegNet(attention=False), the same model, every attention layer removed
  step1               u.LatentSegNetAblation(encoder_depth=1, positions=False, refine=False, local_loss=0,
                      detach_attention=False, colour_tokens=False), notebook 05's ablation step 1g (every
                      option of step 1 on; positions, refinement, local loss and steps 5-7 off)
  pixel-1x1           u.PixelClassifier(), each pixel classified from its own colour (1x1 convs)
  unet                SmallUNet (latentseg/baselines.py), the baseline a practitioner would reach for:
                      4 levels (widths 8, 16, 32, 80; the bottleneck at stride 8) of
                      BatchNorm+ReLU double convolutions, bilinear upsampling with skip
                      concatenation, full-resolution output; a parameter count close to the
                      final model's (the table prints both)

The recipe is u.train's: AdamW (lr 3e-3, weight decay 1e-4), batch 16, 64x64 images, fresh
batches from u.make_shapes_batch drawn from a torch.Generator seeded 0 (so every model sees the
same batches in the same order), torch.manual_seed(0) before each model is built, and
model.training_loss(images, labels) where the model has one (LatentSegNet's local loss), else
cross-entropy. The loop is written out here because u.train counts steps, not seconds.

Learning rate: u.train's cosine schedule needs the number of steps in advance, which a time
budget does not give. Here the same shape runs on the clock instead: a linear warm-up over the
first 5% of the budget, then a cosine decay that reaches 0 when the budget is spent, with the
factor computed from the training seconds elapsed before each step (--schedule constant
switches it off). So every model ends its budget annealed, as u.train's runs end theirs.

The clock: training seconds = drawing each batch + forward + backward + optimizer step (what
a user waits for); the held-out evaluations in between are not counted. Before a model's
timed run, a throwaway instance does one forward+backward pass, so one-time library set-up is
not charged to whichever model happens to run first. Held-out mIoU: u.evaluate on
u.make_heldout_set() (256 images), at --evals evenly spaced points of the budget and at the
end. Inference images/s: u.predict over the same 256 images, median of 3 passes after a
warm-up pass. Mid-run points of the mIoU curve are taken at a high learning rate (the schedule
anneals to the end of the budget), so they are lower than what a run with that shorter budget
would reach.

Usage:
  python benchmarks/train_budget.py                          # all models, 60 s each (7-9 min)
  python benchmarks/train_budget.py --threads 1              # steadier on a CPU shared with other work
  python benchmarks/train_budget.py --budget 20 --models final unet --out /tmp/results
  python benchmarks/train_budget.py --smoke --out /tmp/smoke   # 1 s each for final and unet
Writes OUT/train_budget.md (table, targets, machine), OUT/train_budget.json (raw numbers and
the mIoU-vs-time curves) and OUT/train_budget.png (mIoU against training seconds).
Targets are reported as PASS/MISS lines; nothing here asserts on time.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import latentseg_utils as u
from latentseg import benchmarking as bm
from latentseg.baselines import SmallUNet

HERE = os.path.dirname(os.path.abspath(__file__))

BATCH_SIZE = 16
IMAGE_SIZE = 64
LR = 3e-3
WEIGHT_DECAY = 1e-4
SEED = 0
WARMUP = 0.05               # share of the budget spent warming the learning rate up
DEFAULT_BUDGET = 60.0       # seconds of training per model
DEFAULT_EVALS = 6           # held-out evaluations per run (every 10 s at the default budget)
TARGET_MIOU = 0.90          # the final model's target, stated for 60 s on a 2-core CPU
NOTEBOOK_STEPS = 800        # notebook 05 trains the final model for this many steps


# ---------------------------------------------------------------------------
# The models compared
# ---------------------------------------------------------------------------

STEP1 = dict(encoder_depth=1, positions=False, refine=False, local_loss=0,
             detach_attention=False, colour_tokens=False)
MODELS = {
    "tutorial": (lambda: u.SegmentationModel(num_classes=4),
                 "u.SegmentationModel(num_classes=4)", "the tutorial's model as published"),
    "final": (lambda: u.LatentSegNet(), "u.LatentSegNet()", "the series' final model"),
    "final-no-attention": (lambda: u.LatentSegNet(attention=False),
                           "u.LatentSegNet(attention=False)",
                           "the final model with every attention layer removed"),
    "step1": (lambda: u.LatentSegNetAblation(**STEP1),
              "u.LatentSegNetAblation(encoder_depth=1, positions=False, refine=False, local_loss=0, "
              "detach_attention=False, colour_tokens=False)",
              "notebook 05's ablation step 1g: every option of step 1 on; positions, refinement, "
              "local loss and steps 5-7 off"),
    "pixel-1x1": (lambda: u.PixelClassifier(), "u.PixelClassifier()",
                  "per-pixel baseline: 1x1 convolutions, a pixel's own colour only"),
    "unet": (lambda: SmallUNet(), "SmallUNet(widths=(8, 16, 32, 80)) (latentseg/baselines.py)",
             "small UNet baseline, 4 levels, parameter count close to the final model's"),
}
COLORS = {"tutorial": "#E69F00", "final": "#0072B2", "final-no-attention": "#56B4E9",
          "step1": "#CC79A7", "pixel-1x1": "#999999", "unet": "#D55E00"}   # Okabe-Ito
STYLES = {"final-no-attention": "--", "step1": ":", "pixel-1x1": "-."}


def build(name: str) -> nn.Module:
    return MODELS[name][0]()


def loss_of(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The training loss as u.train computes it."""
    if hasattr(model, "training_loss"):
        return model.training_loss(images, labels)
    return F.cross_entropy(model(images), labels)


def lr_factor(elapsed: float, budget: float, schedule: str) -> float:
    """Learning-rate factor from the share of the budget spent: linear warm-up over the first
    WARMUP of it (starting at 1/20, as u.train's first step), then cosine decay to 0."""
    if schedule == "constant":
        return 1.0
    share = min(max(elapsed / budget, 0.0), 1.0)
    if share < WARMUP:
        return max(share / WARMUP, 1 / 20)
    return 0.5 * (1 + math.cos(math.pi * (share - WARMUP) / (1 - WARMUP)))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------
# One model, one budget
# ---------------------------------------------------------------------------

def warm_up(name: str, device: torch.device) -> None:
    """One forward+backward of a throwaway instance: library set-up happens here, untimed."""
    model = build(name).to(device).train()
    images, labels = u.make_shapes_batch(BATCH_SIZE, IMAGE_SIZE, seed=12345)
    loss_of(model, images.to(device), labels.to(device)).backward()
    sync(device)


def run_model(name: str, budget: float, evals: int, schedule: str, heldout: tuple,
              device: torch.device, log=print) -> dict:
    """Train model `name` for `budget` training seconds; returns its numbers and curve."""
    warm_up(name, device)
    torch.manual_seed(SEED)
    model = build(name).to(device).train()
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    result = {"model": name, "built_as": MODELS[name][1], "params": u.count_parameters(model),
              "load_at_start": bm.load_average()}
    curve = {"seconds": [0.0], "steps": [0], "miou": [u.evaluate(model, *heldout)["miou"]]}
    marks = [budget * k / evals for k in range(1, evals)] + [budget]   # in training seconds
    elapsed = data_seconds = cpu_seconds = 0.0
    steps, losses = 0, []
    while elapsed < budget:
        for group in optimizer.param_groups:
            group["lr"] = LR * lr_factor(elapsed, budget, schedule)
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        images, labels = u.make_shapes_batch(BATCH_SIZE, IMAGE_SIZE, seed=generator)
        images, labels = images.to(device), labels.to(device)
        drawn = time.perf_counter()
        loss = loss_of(model, images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        elapsed += time.perf_counter() - start
        data_seconds += drawn - start
        cpu_seconds += time.process_time() - cpu_start
        steps += 1
        losses.append(loss.item())
        if elapsed >= marks[0]:                    # evaluate, off the clock
            while marks and elapsed >= marks[0]:   # (a slow step may pass several marks)
                marks.pop(0)
            scores = u.evaluate(model, *heldout)
            curve["seconds"].append(elapsed)
            curve["steps"].append(steps)
            curve["miou"].append(scores["miou"])
            log(f"    {name:<19} {elapsed:6.1f} s  step {steps:>5}  "
                f"loss {loss.item():.3f}  held-out mIoU {scores['miou']:.3f}")
    # The loop ends as soon as elapsed >= budget, the last mark: `scores` is the final model's.
    result.update(
        steps=steps, train_seconds=elapsed, data_seconds=data_seconds,
        cpu_seconds=cpu_seconds if device.type == "cpu" else None,
        train_images_per_s=steps * BATCH_SIZE / elapsed,
        miou=scores["miou"], pixel_accuracy=scores["pixel_accuracy"],
        per_class_iou=[None if math.isnan(v) else float(v) for v in scores["per_class_iou"]],
        final_loss=statistics.mean(losses[-10:]), curve=curve,
        seconds_to_target=next((s for s, m in zip(curve["seconds"], curve["miou"])
                                if m >= TARGET_MIOU), None))
    result["infer_images_per_s"] = inference_speed(model, heldout[0], device)
    result["load_at_end"] = bm.load_average()
    return result


def inference_speed(model: nn.Module, images: torch.Tensor, device: torch.device) -> float:
    """Held-out images per second through u.predict: median of 3 passes after a warm-up."""
    u.predict(model, images[:64])
    times = []
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        u.predict(model, images)
        sync(device)
        times.append(time.perf_counter() - start)
    return len(images) / statistics.median(times)


# ---------------------------------------------------------------------------
# Report: table, targets, machine, plot
# ---------------------------------------------------------------------------

def header(results: list) -> tuple:
    cpu = all(r.get("cpu_seconds") is not None for r in results)
    return (("model", "params", "steps", "train s") + (("CPU s",) if cpu else ())
            + ("train img/s", "infer img/s", "held-out mIoU", f"s to {TARGET_MIOU:.2f}"))


def table_rows(results: list) -> list:
    cpu = all(r.get("cpu_seconds") is not None for r in results)
    return [(r["model"], f"{r['params']:,}", f"{r['steps']}", f"{r['train_seconds']:.1f}")
            + ((f"{r['cpu_seconds']:.1f}",) if cpu else ())
            + (f"{r['train_images_per_s']:.0f}", f"{r['infer_images_per_s']:.0f}",
               f"{r['miou']:.3f}",
               "-" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.0f}")
            for r in results]


def targets(results: list, budget: float) -> list:
    """(PASS/MISS/----/info, text) lines for the issue's two targets and their context."""
    by = {r["model"]: r for r in results}
    final, unet = by.get("final"), by.get("unet")
    note = "" if budget == DEFAULT_BUDGET else f" (the target is stated for {DEFAULT_BUDGET:.0f} s)"
    lines = []
    if final:
        lines.append(("PASS" if final["miou"] >= TARGET_MIOU else "MISS",
                      f"final model reaches held-out mIoU >= {TARGET_MIOU:.2f} within the "
                      f"{budget:g} s budget{note}: {final['miou']:.3f} after {final['steps']} "
                      f"steps"))
    else:
        lines.append(("----", f"mIoU >= {TARGET_MIOU:.2f} target needs the final model "
                               "(not run)"))
    if final and unet:
        lines.append(("PASS" if final["miou"] >= unet["miou"] else "MISS",
                      f"final model at least the UNet baseline's mIoU at the same budget: "
                      f"{final['miou']:.3f} vs {unet['miou']:.3f} "
                      f"({final['miou'] - unet['miou']:+.3f}; parameters {final['params']:,} vs "
                      f"{unet['params']:,})"))
    else:
        lines.append(("----", "final vs UNet target needs both models (not run)"))
    if final:
        rate = final["steps"] / final["train_seconds"]
        lines.append(("info", f"final model: {rate:.1f} steps/s here, so notebook 05's "
                              f"{NOTEBOOK_STEPS}-step recipe would take "
                              f"{NOTEBOOK_STEPS / rate:.0f} s of training on this machine"))
        if final["miou"] < TARGET_MIOU and final["data_seconds"] > 0.2 * final["train_seconds"]:
            lines.append(("info", f"drawing batches took {final['data_seconds']:.0f} s of the "
                                  f"final model's {final['train_seconds']:.0f} s"))
    plain = by.get("final-no-attention")
    if final and plain:
        lines.append(("info", f"attention adds {final['miou'] - plain['miou']:+.3f} mIoU at this "
                              f"budget ({final['miou']:.3f} with, {plain['miou']:.3f} without; "
                              f"{final['steps']} vs {plain['steps']} steps)"))
    tutorial = by.get("tutorial")
    if final and tutorial:
        lines.append(("info", f"final vs the tutorial's model: {final['miou']:.3f} vs "
                              f"{tutorial['miou']:.3f} ({final['miou'] - tutorial['miou']:+.3f})"))
    pixel = by.get("pixel-1x1")
    if pixel:
        lines.append(("info", f"per-pixel 1x1 baseline (colour alone, no context): "
                              f"{pixel['miou']:.3f}"))
    return lines


def command_line(args) -> str:
    return (f"python benchmarks/train_budget.py --budget {args.budget:g} --models "
            f"{' '.join(args.models)} --evals {args.evals} --schedule {args.schedule} "
            f"--threads {args.threads}")


def load_summary(data: dict) -> str:
    """The 1-minute load averages recorded during the run, in words."""
    results = data["results"]
    loads = [x for r in results for x in (r["load_at_start"], r["load_at_end"]) if x is not None]
    if not loads or not data["load"] or data["load_at_end"] is None:
        return "n/a"
    return (f"{data['load'][0]:.1f} when the run started, {data['load_at_end']:.1f} when it "
            f"ended, {min(loads):.1f} to {max(loads):.1f} (mean {statistics.mean(loads):.1f}) "
            f"at the start and end of each model's run")


def write_markdown(path: str, data: dict) -> None:
    """train_budget.md from the run's record (the same dict train_budget.json holds)."""
    results, info, recipe = data["results"], data, data["recipe"]
    budget, cols = data["budget_seconds"], header(results)
    threads = (f"torch threads {info['threads']}, set by {info['threads_setting']}"
               + (f", torch's default here is {info['default_threads']}"
                  if info["threads_setting"] != "torch's default" else ""))
    md = ["# Time-budgeted training", "",
          f"Each model trained for the same wall-clock budget, **{budget:g} s** of training "
          f"(batches drawn + forward + backward + optimizer step; held-out evaluations not "
          f"counted), on the same data stream (`u.make_shapes_batch`, batch "
          f"{recipe['batch_size']}, {recipe['image_size']}x{recipe['image_size']}, a "
          f"`torch.Generator` seeded {recipe['seed']}), with the same recipe as `u.train` "
          f"(AdamW lr {recipe['lr']:g}, weight decay {recipe['weight_decay']:g}, "
          f"`torch.manual_seed({recipe['seed']})` before each model, `model.training_loss` "
          f"where the model has one). Learning rate: "
          + ("constant." if recipe["schedule"] == "constant" else
             f"u.train's warm-up + cosine shape run on the clock: linear warm-up over the first "
             f"{recipe['warmup_share']:.0%} of the budget, then cosine decay to 0 when the "
             f"budget is spent (a time budget gives no step count in advance).")
          + f" Held-out mIoU: `u.evaluate` on `u.make_heldout_set()` "
          f"({recipe['heldout_images']} images). Inference: `u.predict` over those images, "
          f"median of 3 passes after a warm-up. "
          + ("`CPU s`: CPU time the process used during the training seconds (all its threads; "
             "below `train s` x threads when it waited for the CPU). " if "CPU s" in cols else "")
          + f"`s to {TARGET_MIOU:.2f}`: training seconds at the first held-out evaluation "
          f"(one at the start, then {recipe['evals']} evenly spaced over the budget) to reach "
          f"{TARGET_MIOU:.2f} mIoU.", ""]
    md += [f"- **{r['model']}**: `{r['built_as']}`, {MODELS[r['model']][2]}" for r in results]
    md += [""] + bm.markdown_table(cols, table_rows(results))
    md += ["", "## Targets", ""] + bm.verdict_lines((t["verdict"], t["text"]) for t in data["targets"])
    md += ["", "## Held-out mIoU during training", "",
           "Training seconds (steps) and mIoU at each evaluation. Mid-run points are taken at "
           "a high learning rate (the schedule anneals to the end of the budget), so they "
           "understate what a run with that shorter budget would reach.", ""]
    for r in results:
        points = ", ".join(f"{s:.0f} s ({n}): {m:.3f}" for s, n, m in
                           zip(r["curve"]["seconds"], r["curve"]["steps"], r["curve"]["miou"]))
        md.append(f"- {r['model']}: {points}")
    md += ["", "## Machine", "",
           f"- device: {info['device']}",
           f"- CPU: {info['machine']} ({threads})",
           f"- torch {info['torch']}, Python {info['python']}, {info['platform']}",
           f"- 1-minute load average: {load_summary(data)}. The machine is shared with other "
           f"work: a load above the number of CPUs means the models' threads waited for the "
           f"CPU, so steps, throughput and the mIoU reached in the budget are pessimistic, and "
           f"two runs can differ",
           f"- command: `{data['command']}`, {data['wall_seconds']:.0f} s wall time, "
           f"{info['date']}",
           "", f"![mIoU against training seconds]({os.path.basename(path)[:-3]}.png)", ""]
    with open(path, "w") as f:
        f.write("\n".join(md))


def write_plot(path: str, data: dict) -> None:
    """train_budget.png from the run's record: held-out mIoU against training seconds."""
    results, info, budget = data["results"], data, data["budget_seconds"]
    plt = bm.pyplot()
    fig, ax = plt.subplots(figsize=(8, 6))
    for r in results:
        c = r["curve"]
        ax.plot(c["seconds"], c["miou"], marker="o", ms=4, color=COLORS[r["model"]],
                ls=STYLES.get(r["model"], "-"),
                label=f"{r['model']} ({r['params']:,} params, {r['steps']} steps): "
                      f"{r['miou']:.3f}")
    ax.axhline(TARGET_MIOU, color="black", lw=0.8, ls=":", label=f"target {TARGET_MIOU:.2f}")
    ax.set(xlabel="training seconds (held-out evaluation not counted)", ylabel="held-out mIoU",
           title=f"Held-out mIoU vs training time, {budget:g} s budget per model\n"
                 f"({info['device']}, {info['threads']} torch thread(s), "
                 f"torch {info['torch']})",
           xlim=(0, budget * 1.02), ylim=(0, 1))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
              frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Train each model for the same wall-clock budget on the same data and "
                    "report held-out mIoU, parameters, steps, training and inference "
                    "images/s; writes train_budget.md, .json and .png.")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET, metavar="SECONDS",
                        help=f"training seconds per model (default: {DEFAULT_BUDGET:g})")
    parser.add_argument("--models", nargs="+", default=list(MODELS), metavar="NAME",
                        help=f"models to train, in this order (default: all: "
                             f"{' '.join(MODELS)})")
    parser.add_argument("--evals", type=bm.positive, default=DEFAULT_EVALS,
                        help="held-out evaluations during each run, evenly spaced over the "
                             f"budget, the last at its end (default: {DEFAULT_EVALS})")
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                        help="learning-rate schedule on the clock (default: cosine: 5%% warm-up, "
                             "then cosine decay to 0 at the end of the budget)")
    bm.add_common_flags(parser, os.path.join(HERE, "results"), merge=False,
                        smoke="a tiny run: 1 s each for final and unet, 1 evaluation (writes "
                              "train_budget_smoke.*)")
    args = parser.parse_args(argv)
    if not (args.budget > 0 and math.isfinite(args.budget)):
        parser.error(f"argument --budget: {args.budget:g} must be a positive number of seconds, "
                     f"e.g. {DEFAULT_BUDGET:g}")
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"argument --models: unknown model {', '.join(map(repr, unknown))}; "
                     f"choose from {' '.join(MODELS)}")
    args.models = list(dict.fromkeys(args.models))           # drop repeats, keep the order
    if args.smoke:
        args.budget, args.evals, args.models = 1.0, 1, ["final", "unet"]
    return args


def write_report(stem: str, data: dict) -> dict:
    """Write stem.md, .json and .png from the run's record; returns their paths."""
    paths = {ext: f"{stem}.{ext}" for ext in ("md", "json", "png")}
    bm.write_json(paths["json"], data, data["results"])
    write_markdown(paths["md"], data)
    write_plot(paths["png"], data)
    return paths


def main(argv=None) -> int:
    args = parse_args(argv)
    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    device = u.get_device()
    info = bm.run_metadata(
        "train_budget", argv, device, command=command_line(args),
        load=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        default_threads=default_threads,
        threads_setting=f"--threads {args.threads}" if args.threads else "torch's default")
    load = f"{info['load'][0]:.1f}" if info["load"] else "n/a"
    print(f"device {info['device']}, CPU {info['machine']} (torch threads {info['threads']}), "
          f"torch {info['torch']}, load average {load}")
    print(f"budget {args.budget:g} s of training per model, batch {BATCH_SIZE}, "
          f"{IMAGE_SIZE} px, lr {LR:g} ({args.schedule}), models: {' '.join(args.models)}")
    sizes = {name: u.count_parameters(build(name)) for name in args.models}
    if "final" in sizes and "unet" in sizes:
        print(f"parameters: final {sizes['final']:,}, unet {sizes['unet']:,} "
              f"({sizes['unet'] / sizes['final']:.2f}x)")
    heldout = u.make_heldout_set()        # on the CPU; u.predict moves each batch to the device
    results = []
    for name in args.models:
        print(f"  training {name} ({sizes[name]:,} parameters) for {args.budget:g} s", flush=True)
        results.append(run_model(name, args.budget, args.evals, args.schedule, heldout, device,
                                 log=lambda text: print(text, flush=True)))
    lines = targets(results, args.budget)
    data = {**info, "budget_seconds": args.budget,
            "recipe": {"batch_size": BATCH_SIZE, "image_size": IMAGE_SIZE, "lr": LR,
                       "weight_decay": WEIGHT_DECAY, "seed": SEED, "schedule": args.schedule,
                       "warmup_share": WARMUP, "evals": args.evals,
                       "heldout_images": len(heldout[0])},
            "load_at_end": bm.load_average(), "wall_seconds": time.perf_counter() - start,
            "targets": [{"verdict": v, "text": t} for v, t in lines], "results": results}

    print()
    bm.print_table(header(results), table_rows(results))
    print()
    for verdict, text in lines:
        print(f"{verdict:<4}  {text}")
    print(f"1-minute load average: {load_summary(data)}")
    paths = write_report(bm.results_stem(args, "train_budget"), data)
    print(f"\nwrote {paths['md']}, {paths['json']} and {paths['png']} "
          f"({data['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
