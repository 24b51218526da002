"""latentseg.plotting: the figures. One colour-blind-safe class palette (Okabe-Ito,
CLASS_COLORS, class_colormap) used by every figure; the pieces the widgets reuse
(class_legend, show_image, show_labels); and plot_samples, plot_predictions, plot_history,
plot_seed_strip, plot_accuracy_by_distance and plot_attention.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from latentseg.data import CLASS_NAMES, DISTANCE_EDGES

__all__ = ["CLASS_COLORS", "class_colormap", "class_legend", "show_image", "show_labels",
           "plot_samples", "plot_predictions", "plot_history", "plot_seed_strip",
           "plot_accuracy_by_distance", "plot_attention"]


CLASS_COLORS = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2",
                "#D55E00", "#CC79A7")   # background black, then Okabe-Ito orange, sky blue, ...


def class_colormap(num_classes: int = len(CLASS_NAMES)):
    """A ListedColormap with one Okabe-Ito colour per class (use vmin=0, vmax=num_classes-1).

    Taught in notebook 01, section "1. A real sample".
    """
    from matplotlib.colors import ListedColormap
    if not 1 <= num_classes <= len(CLASS_COLORS):
        raise ValueError(f"num_classes={num_classes}: the palette has {len(CLASS_COLORS)} colours.")
    return ListedColormap(CLASS_COLORS[:num_classes])


def class_legend(fig, num_classes: int, names=None) -> None:
    """A legend of the class colours at the bottom of a figure (names: CLASS_NAMES by default).

    Taught in notebook 04, section "2. A data set with something to learn".
    """
    from matplotlib.patches import Patch
    names = names or (CLASS_NAMES if num_classes <= len(CLASS_NAMES)
                      else [f"class {i}" for i in range(num_classes)])
    handles = [Patch(facecolor=CLASS_COLORS[i], edgecolor="grey", label=names[i])
               for i in range(num_classes)]
    fig.legend(handles=handles, loc="lower center", ncol=num_classes, frameon=False,
               bbox_to_anchor=(0.5, -0.02))


def show_image(ax, image: torch.Tensor) -> None:
    """Draw an image [3, H, W] (values in [0, 1]) on an axis, without ticks.

    Taught in notebook 04, section "2. A data set with something to learn".
    """
    ax.imshow(image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_xticks([]), ax.set_yticks([])


def show_labels(ax, labels: torch.Tensor, num_classes: int) -> None:
    """Draw a label map [H, W] in the class colours on an axis, without ticks.

    Taught in notebook 04, section "2. A data set with something to learn".
    """
    ax.imshow(labels.detach().cpu().numpy(), cmap=class_colormap(num_classes), vmin=0,
              vmax=num_classes - 1, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])


def plot_samples(images: torch.Tensor, labels: torch.Tensor, num_classes: int = 4,
                 max_images: int = 6, title: str = "Samples: image (top) and truth (bottom)",
                 class_names: Optional[list] = None):
    """Grid of images [B, 3, H, W] over their label maps [B, H, W], with a class legend
    (class_names overrides CLASS_NAMES in the legend).

    Taught in notebook 01, section "1. A real sample".
    """
    import matplotlib.pyplot as plt
    n = min(max_images, len(images))
    fig, axes = plt.subplots(2, n, figsize=(1.7 * n, 3.9), squeeze=False)
    for i in range(n):
        show_image(axes[0, i], images[i])
        show_labels(axes[1, i], labels[i], num_classes)
    axes[0, 0].set_ylabel("image"), axes[1, 0].set_ylabel("truth")
    fig.suptitle(title)
    class_legend(fig, num_classes, class_names)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def plot_predictions(images: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor,
                     num_classes: int = 4, max_images: int = 4,
                     title: str = "Image, truth, prediction and errors"):
    """Rows of image / truth / prediction / errors (red = wrong pixel) with a class legend.

    Taught in notebook 04, section "3. The data needs spatial context".
    """
    import matplotlib.pyplot as plt
    n = min(max_images, len(images))
    fig, axes = plt.subplots(n, 4, figsize=(7, 1.8 * n + 0.6), squeeze=False)
    for i in range(n):
        show_image(axes[i, 0], images[i])
        show_labels(axes[i, 1], labels[i], num_classes)
        show_labels(axes[i, 2], predictions[i], num_classes)
        wrong = (predictions[i] != labels[i]).cpu().numpy()
        axes[i, 3].imshow(wrong, cmap="Reds", vmin=0, vmax=1, interpolation="nearest")
        axes[i, 3].set_xticks([]), axes[i, 3].set_yticks([])
        axes[i, 3].set_ylabel(f"{wrong.mean():.0%} wrong", fontsize=8)
        axes[i, 3].yaxis.set_label_position("right")
    for ax, name in zip(axes[0], ("image", "truth", "prediction", "errors")):
        ax.set_title(name, fontsize=10)
    fig.suptitle(title)
    class_legend(fig, num_classes)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def plot_history(history: dict, title: str = "Training", reference_loss: Optional[float] = None,
                 fig=None, reference_label: Optional[str] = None):
    """Training loss per step (left) and held-out mIoU (right). Pass `fig` to redraw in place.

    reference_loss draws a dashed line (e.g. ln(num_classes), the loss of a uniform guess).

    Taught in notebook 04, section "1. The tutorial's data: noise in, noise out".
    """
    import matplotlib.pyplot as plt
    if fig is None:
        fig, _ = plt.subplots(1, 2, figsize=(9, 3.2))
    loss_ax, miou_ax = fig.axes[:2]
    loss_ax.clear(), miou_ax.clear()
    loss_ax.plot(history["step"], history["loss"], lw=1, color=CLASS_COLORS[5], label="loss")
    if reference_loss is not None:
        loss_ax.axhline(reference_loss, ls="--", color="grey",
                        label=reference_label or f"reference {reference_loss:.4f}")
    loss_ax.set(xlabel="step", ylabel="cross-entropy", title="training loss")
    loss_ax.legend(fontsize=8)
    miou_ax.plot(history["eval_step"], history["miou"], "o-", color=CLASS_COLORS[6])
    miou_ax.set(xlabel="step", ylabel="mIoU", title="held-out mIoU", ylim=(0, 1))
    if not history["eval_step"]:
        miou_ax.text(0.5, 0.5, "no held-out set", ha="center", va="center",
                     transform=miou_ax.transAxes, color="grey")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_seed_strip(rows: "list[dict]", title: str = "One dot per seed",
                    xlabel: str = "row", ylabel: str = "mIoU (dot = seed)"):
    """run_seeds's rows as a strip plot: a dot per seed and a bar at the mean, one column per
    row, labelled by the first word of the row's name ("1e'", "7").

    Taught in notebook 05, section "4. The fixes, one at a time".
    """
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(5.0, 0.42 * len(rows)), 3.4))
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r["miou"]), r["miou"], s=14, color=CLASS_COLORS[5])
        ax.hlines(r["mean"], i - 0.3, i + 0.3, color=CLASS_COLORS[5])
    ax.set_xticks(range(len(rows)), [r["model"].split(" ")[0] for r in rows])
    ax.set(xlabel=xlabel, ylabel=ylabel, ylim=(0, 1), title=title)
    fig.tight_layout()
    return fig


def plot_accuracy_by_distance(rows: "list[dict]", edges: "tuple[float, ...]" = DISTANCE_EDGES,
                              title: str = "Accuracy on object pixels by distance from the cue"):
    """run_seeds's rows measured with distance_measure: one panel per data variant, one
    colour per model, a dot per seed and a line through the means of each distance band.

    Taught in notebook 05, section "6. Does the latent attention earn its place?".
    """
    import matplotlib.pyplot as plt
    variants = list(dict.fromkeys(r["data"] for r in rows))
    fig, axes = plt.subplots(1, len(variants), figsize=(4.2 * len(variants), 3.4), squeeze=False)
    labels = [f"{lo}-{hi}" for lo, hi in zip(edges, edges[1:])]
    for ax, variant in zip(axes[0], variants):
        bands = len(labels)
        for i, r in enumerate(r for r in rows if r["data"] == variant):
            colour = CLASS_COLORS[5 + i % 3]
            per_seed = torch.tensor([m["accuracy_by_distance"] for m in r["measured"]])
            bands = int((~per_seed.isnan().all(0)).nonzero().max()) + 1   # bands the images reach
            for seed_values in per_seed[:, :bands]:
                ax.scatter(range(bands), seed_values, s=10, color=colour, alpha=0.6)
            ax.plot(range(bands), per_seed[:, :bands].mean(0), "-", color=colour, label=r["model"])
        labels_here = labels[:bands]
        ax.set(xticks=range(bands), title=variant, ylim=(0, 1.02),
               xlabel="distance from the cue (pixels)", ylabel="accuracy on object pixels")
        ax.set_xticklabels(labels_here, fontsize=8)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(title + " (dot = seed, line = mean)")
    fig.tight_layout()
    return fig


def plot_attention(image: torch.Tensor, attention: torch.Tensor, title: str = "",
                   max_maps: int = 16, labels: Optional[list] = None):
    """Heatmaps of attention over the image: attention [M, N] with N = h*w tokens,
    one map per row (e.g. per latent), each upsampled to the image and overlaid on it.

    Taught in notebook 02, section "5. Where each latent looks".
    """
    import matplotlib.pyplot as plt
    H, W = image.shape[-2:]
    M, N = attention.shape
    h = int(round(math.sqrt(N * H / W)))
    w = N // h
    if h * w != N:
        raise ValueError(f"attention has {N} tokens, which is not an h x w grid for a {H}x{W} image.")
    maps = attention[:max_maps].detach().cpu().reshape(-1, 1, h, w)
    maps = F.interpolate(maps, size=(H, W), mode="nearest")[:, 0]
    n = len(maps)
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols + 1, figsize=(1.5 * (cols + 1), 1.6 * rows + 0.5),
                             squeeze=False)
    base = image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
    for r in range(rows):
        axes[r, 0].axis("off")
    show_image(axes[0, 0], image)
    axes[0, 0].set_title("image", fontsize=8)
    for i in range(rows * cols):
        ax = axes[i // cols, i % cols + 1]
        ax.axis("off")
        if i < n:
            ax.imshow(base.mean(-1), cmap="gray", vmin=0, vmax=1)
            ax.imshow(maps[i].numpy(), cmap="magma", alpha=0.7)
            ax.set_title(labels[i] if labels else f"latent {i}", fontsize=8)
    fig.suptitle(title or "Where each latent looks (attention weight per pixel)")
    fig.tight_layout()
    return fig
