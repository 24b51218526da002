#!/usr/bin/env python
"""Train the series' final model headless: no Jupyter, one command.

    python train.py --out runs/demo

trains `LatentSegNet` (latentseg_utils.py) on the synthetic shapes data with a progress
bar, evaluates it on the fixed held-out set, and writes into the --out folder:

    checkpoint.pt    weights + config (load with latentseg_utils.load_checkpoint)
    curves.png       training loss per step and held-out mIoU
    predictions.png  four held-out images: image, truth, prediction, errors
    metrics.json     held-out mIoU, per-class IoU, pixel accuracy, steps, seconds, config

Ctrl-C stops training early; what was trained so far is still evaluated and written.
Run `python train.py --help` for every flag.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

DESCRIPTION = """\
Train the latentseg series' final model (LatentSegNet) on the synthetic shapes data,
evaluate it on the fixed held-out set of 256 images, and write checkpoint.pt, curves.png,
predictions.png and metrics.json into the folder given by --out. The defaults reproduce
notebook 05's final model (about 0.92 held-out mIoU after 800 steps)."""

EPILOG = """\
examples:
  python train.py --out runs/demo                      the final model, 800 steps
  python train.py --out runs/quick --steps 100         a quick look
  python train.py --out runs/key --key-variant         the long-range "key" data
  python train.py --out runs/plain --no-attention      the same model without attention

Ctrl-C stops training early and still writes everything for the steps done."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    out = parser.add_argument_group("output")
    out.add_argument("--out", default=os.path.join("runs", "latest"), metavar="DIR",
                     help="folder to write the checkpoint, figures and metrics into; "
                          "created if missing, files in it are overwritten (default: %(default)s)")
    training = parser.add_argument_group("training")
    training.add_argument("--steps", type=int, default=800,
                          help="optimisation steps, each on a fresh batch (default: %(default)s)")
    training.add_argument("--batch-size", type=int, default=16, metavar="N",
                          help="images per step (default: %(default)s)")
    training.add_argument("--lr", type=float, default=3e-3,
                          help="peak learning rate of AdamW, with a short warm-up and cosine "
                               "decay to 0 (default: %(default)s)")
    training.add_argument("--seed", type=int, default=0,
                          help="seed for the weights and the training data; the held-out set is "
                               "fixed and never trained on (default: %(default)s)")
    training.add_argument("--eval-every", type=int, default=100, metavar="STEPS",
                          help="evaluate held-out mIoU every this many steps, for the curves "
                               "(default: %(default)s)")
    training.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                          help="auto picks CUDA if available, else Apple MPS, else the CPU "
                               "(default: %(default)s)")
    model = parser.add_argument_group("model (LatentSegNet)")
    model.add_argument("--num-latents", type=int, default=16, metavar="K",
                       help="number of learned latent vectors that read the image "
                            "(default: %(default)s)")
    model.add_argument("--num-heads", type=int, default=4,
                       help="attention heads; must divide --feature-dim (default: %(default)s)")
    model.add_argument("--feature-dim", type=int, default=64, metavar="D",
                       help="width of the tokens and latents (default: %(default)s)")
    model.add_argument("--rounds", type=int, default=1,
                       help="read/write rounds of attention (default: %(default)s)")
    model.add_argument("--no-attention", action="store_true",
                       help="remove every attention layer: the pixel path alone, to measure "
                            "what attention adds")
    data = parser.add_argument_group("data")
    data.add_argument("--key-variant", action="store_true",
                      help="the long-range variant: a coloured frame names the one shape kind "
                           "that counts (train and held-out data both)")
    return parser


# Module argument names -> the flags that set them, so a module error names the flag.
_FLAGS = {"num_latents": "--num-latents", "num_heads": "--num-heads",
          "latent_dim": "--feature-dim", "feature_dim": "--feature-dim", "rounds": "--rounds",
          "steps": "--steps", "batch_size": "--batch-size", "lr": "--lr",
          "eval_every": "--eval-every"}


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject bad values with one clear line that names the flag (argparse exits with 2)."""
    for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size),
                        ("--eval-every", args.eval_every), ("--num-latents", args.num_latents),
                        ("--num-heads", args.num_heads), ("--rounds", args.rounds)):
        if value < 1:
            parser.error(f"argument {flag}: must be at least 1, got {value}")
    if args.feature_dim < 2:
        parser.error(f"argument --feature-dim: must be at least 2, got {args.feature_dim}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        parser.error(f"argument --lr: must be a positive finite number such as 3e-3, got {args.lr}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"argument --out: {args.out!r} exists and is not a folder")


def name_flags(message: str) -> str:
    for name, flag in _FLAGS.items():
        message = message.replace(f"{name}=", f"{flag} ")
    return message


def import_or_explain() -> bool:
    """Import what training needs; False (after one clear line) when a package is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")                  # files only: no window, no display needed
        import matplotlib.pyplot  # noqa: F401
        import torch  # noqa: F401
        import tqdm  # noqa: F401  (the progress bar of latentseg_utils.train)
    except ImportError as error:
        print(f"train.py: error: {error.name} is not installed in this Python ({sys.executable}); "
              "activate the series' environment or run: pip install -r requirements.txt",
              file=sys.stderr)
        return False
    return True


def device_and_model(parser, args):
    """The device the flags ask for and the seeded model they describe (bad flags: one line)."""
    import torch
    import latentseg_utils as u

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda was asked for but torch.cuda.is_available() is "
                     "False; use --device auto or cpu")
    device = u.get_device() if args.device == "auto" else torch.device(args.device)
    torch.manual_seed(args.seed)
    try:
        u.check_heads(args.feature_dim, args.num_heads)     # the module's check, flags named
        model = u.LatentSegNet(num_latents=args.num_latents, num_heads=args.num_heads,
                               feature_dim=args.feature_dim, rounds=args.rounds,
                               attention=not args.no_attention)
    except ValueError as error:
        parser.error(name_flags(str(error)))
    return device, model


def measure(model, heldout, history, args) -> dict:
    """Score the trained model on the held-out set; everything metrics.json records."""
    import torch
    import latentseg_utils as u

    scores = u.evaluate(model, *heldout)
    per_class = {name: (None if math.isnan(v) else round(float(v), 4))
                 for name, v in zip(u.CLASS_NAMES, scores["per_class_iou"].tolist())}
    return {
        "miou": round(scores["miou"], 4),
        "pixel_accuracy": round(scores["pixel_accuracy"], 4),
        "per_class_iou": per_class,
        "steps": args.steps, "steps_done": history["steps_done"],
        "interrupted": history["interrupted"],
        "seconds": round(history["seconds"], 1),
        "device": history["device"], "torch": torch.__version__,
        "data": "shapes, key variant" if args.key_variant else "shapes",
        "heldout_images": len(heldout[0]),
        "training": {"batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                     "schedule": "cosine", "optimizer": "AdamW"},
        "config": dict(model.config),
        "history": {"eval_step": history["eval_step"],
                    "miou": [round(m, 4) for m in history["miou"]]},
    }


def write_outputs(model, heldout, history, metrics, args) -> dict:
    """Write checkpoint.pt, curves.png, predictions.png and metrics.json; returns their paths."""
    import matplotlib.pyplot as plt
    import latentseg_utils as u

    paths = {name: os.path.join(args.out, name)
             for name in ("checkpoint.pt", "curves.png", "predictions.png", "metrics.json")}
    u.save_checkpoint(paths["checkpoint.pt"], model,
                      extra={k: metrics[k] for k in ("miou", "steps_done", "data", "training")})
    title = f"LatentSegNet, {history['steps_done']} steps" + (" (key variant)" if args.key_variant else "")
    fig = u.plot_history(history, title=title)
    fig.savefig(paths["curves.png"], dpi=100, bbox_inches="tight")
    plt.close(fig)
    images, labels = heldout[0][:4], heldout[1][:4]
    fig = u.plot_predictions(images, labels, u.predict(model, images),
                             title=f"{title}: held-out image, truth, prediction, errors")
    fig.savefig(paths["predictions.png"], dpi=100, bbox_inches="tight")
    plt.close(fig)
    with open(paths["metrics.json"], "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    return paths


def main(argv: "list[str] | None" = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    if not import_or_explain():
        return 1
    import torch
    import latentseg_utils as u

    device, model = device_and_model(parser, args)

    def data(batch_size, image_size, seed):
        return u.make_shapes_batch(batch_size, image_size, seed=seed, key=args.key_variant)

    heldout = u.make_heldout_set(key=args.key_variant)
    os.makedirs(args.out, exist_ok=True)
    print(f"latentseg: training LatentSegNet ({u.count_parameters(model):,} parameters) on "
          f"{'the key variant of ' if args.key_variant else ''}the shapes data for {args.steps} "
          f"steps on {device}, torch {torch.__version__}; writing to {args.out}", flush=True)
    try:
        history = u.train(model, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          seed=args.seed, data=data, heldout=heldout,
                          eval_every=min(args.eval_every, args.steps), device=device)
    except ValueError as error:
        parser.error(name_flags(str(error)))
    if history["interrupted"]:
        print(f"interrupted after {history['steps_done']} of {args.steps} steps; "
              "evaluating and saving what was trained", flush=True)
    if history["steps_done"] == 0:
        print("no step was completed; nothing to save", file=sys.stderr)
        return 130

    start = time.perf_counter()
    metrics = measure(model, heldout, history, args)
    paths = write_outputs(model, heldout, history, metrics, args)
    print(f"held-out mIoU {metrics['miou']:.3f}, pixel accuracy {metrics['pixel_accuracy']:.3f} "
          f"({history['steps_done']} steps, {history['seconds']:.0f} s training, "
          f"{time.perf_counter() - start:.0f} s evaluating and writing)")
    print("per-class IoU: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}"
                                        for k, v in metrics["per_class_iou"].items()))
    for path in paths.values():
        print("wrote", path)
    return 130 if history["interrupted"] else 0   # 130: the usual status after Ctrl-C


if __name__ == "__main__":
    sys.exit(main())
