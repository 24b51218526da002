# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/latentseg/latentseg/blob/v0.2/notebooks/06_visualization.ipynb)
#
# # 06 · Visualization: predictions, errors, and what each expert looks at
#
# After this notebook you can inspect a trained segmentation model the way you would inspect your
# own: draw its predictions and errors, read a confusion matrix and per-class IoU, draw its
# attention in both directions (what each expert reads, which expert each pixel reads), measure
# whether the "experts" specialise, and find and explain its worst failures.
#
# **Run time:** about 15 seconds on a quiet 2-core CPU when the trained model's checkpoint is present
# (`notebooks/checkpoints/latentsegnet.pt`, written by notebook 05). Without it the notebook first
# trains the model itself, which adds about a minute (longer on a busy machine).
#
# **What you will learn**
# 1. How to load a saved model, and what to do when the file is missing or damaged.
# 2. Where the model goes wrong: a grid of predictions and errors, a confusion matrix, IoU per class.
# 3. What each expert reads (latent-to-pixel heatmaps), per head and averaged over heads.
# 4. Which expert each pixel reads (the pixel-to-expert map), and how the experts divide the classes.
# 5. How to *measure* specialisation instead of guessing it from pictures, and what it shows here:
#    averaged over heads, the experts say little about the class; one head alone splits background
#    from objects, and none tells one shape from another well. How to measure what a trained model
#    depends on (ablations, with the mean as the control for zeros), and what such a measurement
#    does not tell you.
# 6. The worst images of the held-out set, and what goes wrong in them.
#
# The first code cell is the series' setup. In Colab it installs the series' modules with pip
# (pinned to a release) and then only what Colab lacks. On your own machine it does nothing: the
# modules are already installed (`pip install -e .`).

# %%
# Setup. In Colab: install the series' modules from the repository, pinned to a release tag,
# without their dependencies, then only what Colab lacks (never torch). Elsewhere: nothing;
# the modules are already installed (`pip install -e .`, see the README).
import importlib.util
import os
import sys

LATENTSEG_PACKAGE = os.environ.get(
    "LATENTSEG_PACKAGE", "git+https://github.com/latentseg/latentseg@v0.2")
if "google.colab" in sys.modules:
    # %pip install -q --no-deps {LATENTSEG_PACKAGE}
    if _exit_code != 0:  # noqa: F821  (set by %pip: pip's exit status)
        raise RuntimeError(f"pip could not install {LATENTSEG_PACKAGE} (its message is above); "
                           "check the repository and the tag in LATENTSEG_PACKAGE")
    missing = [f"'{req}'" for module, req in (("tqdm", "tqdm>=4.66"),
                                              ("ipywidgets", "ipywidgets>=7.7"))
               if importlib.util.find_spec(module) is None]
    if missing:
        # %pip install -q {" ".join(missing)}
        print(f"installed {LATENTSEG_PACKAGE}, then what Colab lacked:", ", ".join(missing))
    else:
        print(f"installed {LATENTSEG_PACKAGE}; nothing else needed (all present)")

# %% [markdown]
# The imports, a fixed seed so that every number below is the same on every run, and the device
# (printed so that a bug report says what you ran). `u` is the series' shared module: the model,
# the data, the metrics and the plotting helpers all come from it.

# %%
import math
import os
from contextlib import contextmanager

import torch
import torch.nn.functional as F
import matplotlib.pyplot as plt
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
import latentseg_utils as u

torch.manual_seed(0)
device = u.get_device()
print(f"torch {torch.__version__}, device: {device}")
plt.rcParams["figure.dpi"] = 72   # small committed figures

# %% [markdown]
# ## 1. The trained model
#
# Notebook 05 trains the series' final model, `u.LatentSegNet()` with its defaults (16 experts,
# 4 heads, 4 classes), for 800 steps and saves it with `u.save_checkpoint` to
# `checkpoints/latentsegnet.pt`, next to the notebooks. This cell loads that file. So that the
# notebook also runs on its own (for example in Colab, where the setup cell installs the modules
# but not the checkpoint), it trains the model with exactly notebook 05's recipe when the file is
# missing, and saves it for next time.
#
# `u.load_checkpoint` never runs code from the file (it loads with `weights_only=True`) and raises
# a `ValueError` that says what is wrong when the file is damaged or belongs to another model. A
# damaged checkpoint is not a reason to stop: the cell says so and trains again. So does a
# checkpoint of some other model or other settings, which would load but is not the model this
# notebook is about.
#
# All the scores in this notebook are measured on `u.make_heldout_set()`: 256 images of 64×64
# pixels that no training run ever sees.

# %% tags=["nbval-ignore-output"]
CHECKPOINT = u.checkpoint_path("latentsegnet.pt")   # checkpoints/latentsegnet.pt, next to the notebooks
heldout_images, heldout_labels = u.make_heldout_set()          # [256, 3, 64, 64], [256, 64, 64]


def train_final_model():
    """Notebook 05's recipe for the final model: 800 steps, batches of 16, seed 0."""
    torch.manual_seed(0)
    model = u.LatentSegNet()
    history = u.train(model, steps=800, batch_size=16, lr=3e-3, seed=0,
                      heldout=(heldout_images, heldout_labels))
    extra = {"miou": history["miou"][-1], "steps": 800}
    u.save_checkpoint(CHECKPOINT, model, extra=extra)
    return model, extra


try:
    model, extra = u.load_checkpoint(CHECKPOINT)
    if type(model) is not u.LatentSegNet or model.config != u.LatentSegNet().config:
        raise ValueError(f"it holds {type(model).__name__}({model.config}), not u.LatentSegNet()")
    print(f"loaded {CHECKPOINT}")
except FileNotFoundError:
    print(f"no checkpoint at {CHECKPOINT}: training the final model (about a minute on a CPU)")
    model, extra = train_final_model()
    print(f"saved {CHECKPOINT}")
except ValueError as error:
    print(f"cannot use {CHECKPOINT}: {error}\nTraining the final model again instead.")
    model, extra = train_final_model()
    print(f"saved {CHECKPOINT}")
model = model.to(device).eval()

# %% [markdown]
# What we have, whichever way it came: the model's class, its size, its settings and how long it
# was trained.

# %% tags=["nbval-check-output"]
config = model.config
K, heads, num_classes = config["num_latents"], config["num_heads"], model.num_classes
print(f"{type(model).__name__}: {u.count_parameters(model):,} parameters, {K} experts (latents), "
      f"{heads} heads, {num_classes} classes, trained {extra['steps']} steps")
print("classes:", ", ".join(u.CLASS_NAMES))

# %% [markdown]
# ## 2. How good is it, and where does it go wrong?
#
# `u.evaluate` predicts every held-out image and returns the mean IoU over the classes, the pixel
# accuracy, the IoU of each class and the confusion matrix (row = true class, column = predicted
# class, in pixels). The IoU of a class is
# $\frac{\text{pixels right}}{\text{pixels right} + \text{false alarms} + \text{misses}}$;
# the mIoU averages it over the four classes, so the small classes count as much as the large
# background.

# %%
scores = u.evaluate(model, heldout_images, heldout_labels)
print(f"held-out mIoU {scores['miou']:.4f}, pixel accuracy {scores['pixel_accuracy']:.4f}")
for name, iou in zip(u.CLASS_NAMES, scores["per_class_iou"].tolist()):
    print(f"  IoU {name:<10} {iou:.4f}")

# %% [markdown]
# The floats above may differ in their last digits on another machine, and another training run
# gives other ones. What holds for any run: three seeds of this model, trained by
# `python benchmarks/robustness.py` (benchmarks/results/robustness_test.md), all score above 0.90
# on the same held-out set:
#
# | data | model | mIoU per seed | mean | spread | worst | mean-ablated |
# |---|---|---|---:|---:|---:|---:|
# | shapes | final | 0.929, 0.934, 0.932 | 0.932 | 0.005 | 0.929 | 0.656 |
#
# The score must also agree with the one saved in the checkpoint, a check that the file loaded into
# the right model.

# %% tags=["nbval-check-output"]
print("held-out mIoU at least 0.90:", scores["miou"] >= 0.90)
print("agrees with the mIoU saved in the checkpoint:", abs(scores["miou"] - extra["miou"]) < 1e-3)

# %% [markdown]
# ### 2.1 Predictions and errors
#
# Numbers first, pictures second. `u.plot_predictions` draws, for each image, the input, the true
# classes, the predicted classes and the wrong pixels in red (the fraction wrong is written on the
# right). We keep all the held-out predictions, because later sections need them.

# %%
predictions = u.predict(model, heldout_images)                    # [256, 64, 64]
fig = u.plot_predictions(heldout_images[:6], heldout_labels[:6], predictions[:6], max_images=6,
                         title="Held-out images 0-5: image, truth, prediction, errors (red)")
plt.show()

# %% [markdown]
# On typical images the mistakes are few and small: isolated specks, most of them in the
# background, single pixels on the edge of a shape, and in image 4 a short strip of background
# where two circles overlap. Whole regions given the wrong class are rare; section 8 goes looking
# for them.
#
# ### 2.2 The confusion matrix
#
# Which class is mistaken for which? Each row of the confusion matrix is divided by its total, so
# a row reads "of the pixels that truly are this class, which fraction got each answer". The
# diagonal is each class's recall.

# %%
confusion = scores["confusion"].double()
rates = confusion / confusion.sum(1, keepdim=True)                 # rows sum to 1
fig, ax = plt.subplots(figsize=(5.2, 4.2))
im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
for t in range(num_classes):
    for p in range(num_classes):
        ax.text(p, t, f"{rates[t, p]:.1%}", ha="center", va="center", fontsize=9,
                color="white" if rates[t, p] > 0.5 else "black")
ax.set_xticks(range(num_classes), u.CLASS_NAMES, rotation=20)
ax.set_yticks(range(num_classes), u.CLASS_NAMES)
ax.set(xlabel="predicted class", ylabel="true class",
       title="Confusion matrix, normalised per true class")
fig.colorbar(im, ax=ax, label="fraction of the true class's pixels")
fig.tight_layout()
plt.show()

off = rates.clone().fill_diagonal_(0)
t, p = divmod(int(off.argmax()), num_classes)
print(f"largest confusion: {u.CLASS_NAMES[t]} predicted as {u.CLASS_NAMES[p]}, "
      f"{rates[t, p]:.1%} of the {u.CLASS_NAMES[t]} pixels")
pixels = confusion.sum(1)                                          # true pixels per class
print("true class   share of all pixels   recall (diagonal)   pixels missed")
for c, name in enumerate(u.CLASS_NAMES):
    print(f"  {name:<10} {pixels[c] / pixels.sum():>19.1%} {rates[c, c]:>19.1%} "
          f"{int(pixels[c] - confusion[c, c]):>15,}")

# %% [markdown]
# The diagonal, each class's recall, is at least 93.7% for every class. The background is almost
# never wrong in relative terms (99.8%), but it is so large (81.4% of all pixels) that its fraction
# of a percent of misses is 1,380 pixels, more than half the circle's 2,369. The shapes miss from
# 2,369 pixels (circle, recall 96.8%) to 4,274 (square, recall 93.7%). The matrix shows where they
# go: each shape loses more pixels to the other two shapes than to the background (parts of
# objects given the wrong shape, which section 8 shows), and the largest single confusion is
# square taken for triangle.
#
# ### 2.3 IoU per class
#
# IoU punishes false alarms as well as misses, so it is stricter than the diagonal above. The bars
# are drawn in the series' class palette; the dashed line is the mean over classes, the mIoU.

# %%
iou = scores["per_class_iou"]
fig, ax = plt.subplots(figsize=(5.2, 3.2))
bars = ax.bar(u.CLASS_NAMES, iou.numpy(), color=u.CLASS_COLORS[:num_classes], edgecolor="grey")
ax.bar_label(bars, fmt="%.3f", label_type="center", color="white", fontsize=10, fontweight="bold")
ax.axhline(scores["miou"], ls="--", color="grey", label=f"mIoU {scores['miou']:.3f}")
ax.set(ylim=(0, 1.1), xlabel="class", ylabel="IoU", title="Held-out IoU per class")
ax.legend(loc="lower right", fontsize=8)
fig.tight_layout()
plt.show()
print("the two kinds of error, each as a share of the class's true pixels:")
for c, name in enumerate(u.CLASS_NAMES):
    right, true_pixels = confusion[c, c], confusion[c].sum()
    misses, false_alarms = true_pixels - right, confusion[:, c].sum() - right
    print(f"  {name:<10} IoU {iou[c]:.3f}: misses {misses / true_pixels:.1%}, "
          f"false alarms {false_alarms / true_pixels:.1%}")

# %% [markdown]
# The shapes score from 0.899 (triangle) to 0.930 (circle), the background 0.995. The triangle has
# the lowest IoU, but not because it is missed more: the square misses 6.3% of its pixels, the
# triangle 5.6% (the recalls of section 2.2, 93.7% against 94.4%). The difference is the false
# alarms, pixels of other classes called triangle: they add up to 5.0% of the triangle's true
# pixels, against 3.5% for the square. The triangle is also the smallest class (5.0% of all
# pixels), so each false alarm weighs more in its IoU. Exercise 1 reaches the same verdict with
# recall and precision.

# %% [markdown]
# ## 3. The attention weights
#
# Now the inside of the model. `model(images, return_attention=True)` also returns the weights of
# its two attentions (from the last round; this model has one):
#
# - `attention["latent"]`: `[B, heads, K, N]`. Each of the $K = 16$ latents (the "experts") reads
#   the $N = 16 \times 16 = 256$ pixel tokens (one per 4×4 block). Row $k$ is expert $k$'s
#   distribution over the tokens: it sums to 1 over $N$.
# - `attention["pixel"]`: `[B, heads, N, K]`. Each token then reads the experts. Row $n$ is token
#   $n$'s distribution over the 16 experts: it sums to 1 over $K$.
#
# What the latents read is the encoder's feature of each 4×4 block together with the block's mean
# colour (the model's default `colour_tokens=True`), and the reading sends no gradient back into
# the convolutions (`detach_attention=True`). We compute both weights for the whole held-out set
# at once (a few seconds) and keep them on the CPU.

# %% tags=["nbval-check-output"]
with torch.no_grad():
    _, attention = model(heldout_images.to(device), return_attention=True)
latent_w = attention["latent"].cpu()        # [B, heads, K, N]: expert -> tokens
pixel_w = attention["pixel"].cpu()          # [B, heads, N, K]: token -> experts
B, _, N, _ = pixel_w.shape
grid = int(math.isqrt(N))                   # tokens form a grid x grid map (16 x 16)
print("latent weights", tuple(latent_w.shape), "  (images, heads, experts, tokens)")
print("pixel weights ", tuple(pixel_w.shape), "  (images, heads, tokens, experts)")
print("each expert's weights sum to 1 over the tokens:",
      torch.allclose(latent_w.sum(-1), torch.ones(B, heads, K), atol=1e-4))
print("each token's weights sum to 1 over the experts:",
      torch.allclose(pixel_w.sum(-1), torch.ones(B, heads, N), atol=1e-4))

# %% [markdown]
# To compare weights with classes we need a class per token. A token covers a 4×4 block of
# pixels; `avg_pool2d` of the one-hot labels gives the fraction of each class in every block, and
# the token's class is the majority. Blocks on a boundary are mixed; exercise 3 repeats the
# analysis with only the pure blocks.

# %% tags=["nbval-check-output"]
one_hot = F.one_hot(heldout_labels, num_classes).permute(0, 3, 1, 2).double()   # [B, C, 64, 64]
class_fraction = F.avg_pool2d(one_hot, 4).flatten(2)                           # [B, C, N]
token_class = class_fraction.argmax(1)                                          # [B, N]
share = torch.bincount(token_class.flatten(), minlength=num_classes) / token_class.numel()
print("token classes", tuple(token_class.shape), " share of tokens per class:",
      {name: round(float(s), 3) for name, s in zip(u.CLASS_NAMES, share)})

# %% [markdown]
# ## 4. What each expert reads (latent → pixels)
#
# Pick a held-out image with all three shapes in it. For each expert, `u.plot_attention` draws its
# weights over the 256 tokens (averaged over the 4 heads) as a heatmap over the image, each map
# scaled to its own maximum: bright = read a lot.

# %%
sample = next(i for i in range(B) if len(heldout_labels[i].unique()) == num_classes)
print(f"sample {sample}: classes", [u.CLASS_NAMES[c] for c in heldout_labels[sample].unique()])
fig = u.plot_attention(heldout_images[sample], latent_w[sample].mean(0),
                       labels=[f"expert {k}" for k in range(K)],
                       title=f"What each expert reads in held-out image {sample} (mean over heads)")
plt.show()

# %% [markdown]
# Most experts put their brightest spot on the **background**: experts 0, 1, 2, 4, 5, 7, 10, 14
# and 15 on one token in the gap between the square, the circle and the triangle, expert 3 along
# the right and bottom edges of the image. Experts 6, 8, 9, 11, 12 and 13 also read inside the
# shapes, the upper left of the circle and (expert 13 most) the left side of the square, beside
# spots on the image's left edge. One image can mislead, so we measure over all 256: for each
# expert, the share of its attention that lands on tokens of each class. If an expert read
# everything evenly, its black bar would match the background's share of the tokens (dashed line).

# %%
# where each expert's attention lands: [K, C], averaged over images, heads averaged
reads_class = torch.einsum("bkn,bcn->kc", latent_w.mean(1).double(), class_fraction) / B
fig, ax = plt.subplots(figsize=(8, 3.2))
bottom = torch.zeros(K, dtype=torch.float64)
for c in range(num_classes):
    ax.bar(range(K), reads_class[:, c].numpy(), bottom=bottom.numpy(), color=u.CLASS_COLORS[c],
           edgecolor="grey", linewidth=0.5, label=u.CLASS_NAMES[c])
    bottom += reads_class[:, c]
ax.axhline(share[0], ls="--", color="red", lw=1, label="background share of tokens")
ax.set(xticks=range(K), xlabel="expert", ylabel="share of its attention", ylim=(0, 1),
       title="Where each expert's attention lands, by true class (all held-out images)")
ax.legend(fontsize=7, loc="upper center", ncol=5, bbox_to_anchor=(0.5, -0.22), frameon=False)
fig.tight_layout()
plt.show()
print("share of attention on background, per expert:", reads_class[:, 0].numpy().round(2))

# %% [markdown]
# Every expert gives most of its attention to the background, from 0.7 to 0.96 of it, against
# 0.825 of the tokens. Against that share the experts fall into three kinds. Expert 3 reads
# almost nothing but background (0.96). Seven read about the background's share (experts 1, 2, 4,
# 5, 7, 10 and 14, at 0.83 to 0.85). The other eight (0, 6, 8, 9, 11, 12, 13 and 15, at 0.7 to
# 0.75) read more object than an even reader would, up to 30% of their attention, and in the
# chart some of them lean toward one shape (experts 0 and 15 toward the triangle, expert 13
# toward the square). But none reads mostly one shape: there is no "circle expert" or "triangle
# expert" on the reading side.
#
# And the edge of the image? The outer ring of the 16×16 token grid is almost pure background in
# this data. We compare the share of attention it gets with the share of tokens it holds, for the
# trained model:

# %%
edge = torch.zeros(grid, grid, dtype=torch.bool)
edge[0], edge[-1], edge[:, 0], edge[:, -1] = True, True, True, True
edge = edge.flatten()                                            # [N]: the outer ring of tokens
edge_attention = latent_w.mean(1)[..., edge].sum(-1).mean(0)     # [K]: share per expert
print(f"the edge ring holds {edge.double().mean():.1%} of the tokens, "
      f"{class_fraction[:, 0][:, edge].mean():.1%} of them background")
print(f"share of each expert's attention on it: {edge_attention.min():.1%} to {edge_attention.max():.1%}")

# %% [markdown]
# The edge gets about its share, no more: it holds 23.4% of the tokens and gets from 16.6% to
# 28.5% of an expert's attention, less than its share in some experts and a little more in
# others. The bright edge spots in the picture are peaks, not where the bulk of the attention
# goes.
#
# ### 4.1 The heads, one by one
#
# Each expert reads the image with 4 heads, each with its own query and key projections, and the
# maps above are their mean. Here is the expert that reads the most object, one map per head.

# %%
object_expert = int(reads_class[:, 0].argmin())     # the expert that reads the most object
print(f"expert {object_expert}: {1 - reads_class[object_expert, 0]:.0%} of its attention on objects")
fig = u.plot_attention(heldout_images[sample], latent_w[sample, :, object_expert],
                       labels=[f"head {h}" for h in range(heads)],
                       title=f"Expert {object_expert} in image {sample}, one map per head")
plt.show()

# %% [markdown]
# The heads of one expert do read different places: head 0 one token in the gap between the
# three shapes, head 1 the background above and to the right of the circle and the triangle, head
# 3 the bottom-left corner, and head 2 the left and bottom edges of the square, with a faint glow
# over the triangle. That is what several heads are for: one latent can gather from several places
# at once. Head 2 comes closest to following a shape, and what it follows is the square's outline,
# not its inside.

# %% [markdown]
# ## 5. Which expert each pixel reads (pixel → expert)
#
# The other direction. Every token mixes the experts with its 16 weights. Averaging the heads and
# taking the argmax gives each token's **main expert**: a map of the image in 16 "expert colours".
# Experts are not classes, so they get their own qualitative palette (`tab20`), never the class
# colours.

# %%
expert_cmap = ListedColormap(plt.cm.tab20.colors[:K])
expert_show = dict(cmap=expert_cmap, vmin=-0.5, vmax=K - 0.5, interpolation="nearest",
                   extent=(-0.5, 63.5, 63.5, -0.5))
main_expert = pixel_w.mean(1).argmax(-1)                  # [B, N]: each token's main expert
shown = [0, 3, 6, sample]
fig, axes = plt.subplots(3, len(shown), figsize=(2.1 * len(shown) + 1, 7), squeeze=False)
for j, i in enumerate(shown):
    axes[0, j].imshow(heldout_images[i].permute(1, 2, 0).clamp(0, 1).numpy())
    axes[0, j].set_title(f"image {i}", fontsize=9)
    axes[1, j].imshow(heldout_labels[i].numpy(), cmap=u.class_colormap(num_classes), vmin=0,
                      vmax=num_classes - 1, interpolation="nearest")
    im = axes[2, j].imshow(main_expert[i].view(grid, grid).numpy(), **expert_show)
for ax in axes.flat:
    ax.set_xticks([]), ax.set_yticks([])
for ax, name in zip(axes[:, 0], ("image", "truth", "main expert")):
    ax.set_ylabel(name)
fig.subplots_adjust(bottom=0.08, top=0.92, hspace=0.15)
fig.colorbar(im, ax=axes[2].tolist(), ticks=range(K), label="expert", fraction=0.03)
fig.legend(handles=[Patch(facecolor=u.CLASS_COLORS[c], edgecolor="grey", label=u.CLASS_NAMES[c])
                    for c in range(num_classes)], loc="lower center", ncol=num_classes,
           frameon=False, fontsize=8, title="classes (truth row)", title_fontsize=8)
fig.suptitle("Each token's main expert (argmax of the head-mean weights)")
plt.show()
wins = torch.bincount(main_expert.flatten(), minlength=K) / main_expert.numel()
print("share of all held-out tokens each expert wins (experts above 1%):",
      {k: round(float(w), 3) for k, w in enumerate(wins) if w > 0.01})

# %% [markdown]
# The map does not paint the objects. In images 3, 6 and 9 the inside of the objects picks the
# **same** expert as the background far from them (expert 3, light orange); other experts take a
# band along the objects' outlines and the background next to them (mostly expert 13 in image 3,
# expert 0 in image 9, a mix in image 6). Image 0, a single square, is the exception: its
# background picks expert 13 and the square a handful of others. Over the whole held-out set two
# experts win most tokens, expert 3 a share of 0.44 and expert 13 a share of 0.267, and the other
# fourteen share the rest. A circle, a square and a triangle pick the same expert as each other,
# and in most of these images the same as the background: the head-mean map roughly marks where
# the outlines are, and it is neither an object-or-background mask nor a segmentation of the three
# shapes.
#
# The argmax also hides how soft the choice is. How large is a token's biggest weight, on average?
# Uniform over 16 experts would be $1/16 = 0.06$; a token that reads only one expert would have 1.

# %%
top_weight = pixel_w.mean(1).max(-1).values                  # [B, N]
print(f"a token's largest expert weight: mean {top_weight.mean():.3f}, "
      f"90% of tokens below {top_weight.flatten().quantile(0.9):.3f} "
      f"(uniform: {1 / K:.3f}, one expert only: 1)")

# %% [markdown]
# So a token reads a *blend* of many experts: its main one gets 0.183 of the mix on average, and
# less than 0.310 in 90% of the tokens. The argmax map shows the ridge of a soft landscape.
#
# ### 5.1 The heads' own maps
#
# Each head has its own pixel weights, so each head has its own map. Here they are for the sample
# image, beside the head mean.

# %%
fig, axes = plt.subplots(1, heads + 2, figsize=(2.0 * (heads + 2) + 0.8, 2.6))
axes[0].imshow(heldout_labels[sample].numpy(), cmap=u.class_colormap(num_classes), vmin=0,
               vmax=num_classes - 1, interpolation="nearest")
axes[0].set_title("truth", fontsize=9)
axes[0].legend(handles=[Patch(facecolor=u.CLASS_COLORS[c], edgecolor="grey", label=u.CLASS_NAMES[c])
                        for c in range(num_classes)], fontsize=6, loc="upper center",
               bbox_to_anchor=(0.5, -0.02), ncol=2, frameon=False)
axes[1].imshow(main_expert[sample].view(grid, grid).numpy(), **expert_show)
axes[1].set_title("mean over heads", fontsize=9)
for h in range(heads):
    im = axes[h + 2].imshow(pixel_w[sample, h].argmax(-1).view(grid, grid).numpy(), **expert_show)
    axes[h + 2].set_title(f"head {h}", fontsize=9)
for ax in axes:
    ax.set_xticks([]), ax.set_yticks([])
fig.colorbar(im, ax=axes.tolist(), ticks=range(0, K, 3), label="expert", fraction=0.02)
fig.suptitle(f"Main expert per token in image {sample}: each head, and their mean")
plt.show()

# %% [markdown]
# The single heads look nothing like their mean. Head 1 draws a nearly clean mask: the
# background one expert (0), all three shapes another (3). Heads 0 and 2 give the shapes of this
# image different experts (in head 2 the square one, the triangle another, most of the circle a
# third), and head 3 is in between. The mean over heads, taken before the argmax, keeps none of
# this: it gives the inside of every shape the same expert as the far background. Whether the
# heads' choices follow the shapes over all images is a question for numbers, in the next section.

# %% [markdown]
# ## 6. Do the experts specialise? Measured
#
# Pictures suggest; numbers decide. First the **usage per class**: for each class $c$, the mean
# pixel-to-expert weight (head mean) over all tokens of class $c$ in the held-out set. Each row is
# a distribution over the 16 experts (it sums to 1). If experts specialised in classes, each row
# would be concentrated on a few experts, and different rows on different ones.

# %%
token_weights = pixel_w.mean(1).double()                               # [B, N, K]
usage = torch.stack([token_weights[token_class == c].mean(0) for c in range(num_classes)])  # [C, K]
fig, ax = plt.subplots(figsize=(9, 2.9))
im = ax.imshow(usage.numpy(), cmap="viridis", vmin=0, aspect="auto")
for c in range(num_classes):
    for k in range(K):
        ax.text(k, c, f"{usage[c, k]:.2f}", ha="center", va="center", fontsize=7,
                color="black" if usage[c, k] > 0.6 * usage.max() else "white")
ax.set_xticks(range(K))
ax.set_yticks(range(num_classes), u.CLASS_NAMES)
ax.set(xlabel="expert", ylabel="true class of the token",
       title="Expert usage per class: mean pixel-to-expert weight (rows sum to 1)")
fig.colorbar(im, ax=ax, label="mean weight", fraction=0.03)
fig.tight_layout()
plt.show()


# %% [markdown]
# The background row stands apart: it leans on a few experts (3 and 13 most, then 8, 11 and 12)
# and uses most of the others less than evenly. The circle, square and triangle rows are almost
# the same row, and almost flat: each puts a little extra weight on expert 3, the background's
# favourite too, and spreads the rest nearly evenly. Two numbers make this precise.
#
# **Mutual information** between a token's main expert $E$ and its class $C$ is how much knowing
# the expert tells you about the class:
# $I(E; C) = \sum_{e, c} p(e, c) \ln \frac{p(e, c)}{p(e)\,p(c)}$. Dividing it by the entropy of
# the class, $H(C)$, gives the fraction of the class uncertainty that the expert choice removes:
# 0 when the expert says nothing about the class, 1 when it says everything. We split it into the
# two questions a segmenter has to answer: *object or background?* (over all tokens) and *which
# shape?* (over the object tokens only). An untrained model of the same design gives the floor.

# %%
def mutual_information(a, b, num_a, num_b):
    """I(A; B) in nats from paired samples of two discrete variables (integer tensors)."""
    joint = torch.bincount(a.flatten() * num_b + b.flatten(), minlength=num_a * num_b)
    joint = joint.reshape(num_a, num_b).double() / a.numel()
    independent = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    seen = joint > 0
    return float((joint[seen] * (joint[seen] / independent[seen]).log()).sum())


def entropy(a, num_a):
    """H(A) in nats from samples of a discrete variable."""
    p = torch.bincount(a.flatten(), minlength=num_a).double() / a.numel()
    return float(-(p[p > 0] * p[p > 0].log()).sum())


def specialisation(main_expert):
    """Fraction of class uncertainty explained by the main expert: overall, object vs
    background, and which shape (object tokens only). main_expert: [B, N] expert ids."""
    is_object, objects = (token_class > 0).long(), token_class > 0
    shape = token_class[objects] - 1
    return {
        "all classes": mutual_information(token_class, main_expert, num_classes, K)
                           / entropy(token_class, num_classes),
        "object or background": mutual_information(is_object, main_expert, 2, K) / entropy(is_object, 2),
        "which shape": mutual_information(shape, main_expert[objects], 3, K)
                                      / entropy(shape, 3),
    }


print(f"I(E; C) = {mutual_information(token_class, main_expert, num_classes, K):.3f} nats, "
      f"H(C) = {entropy(token_class, num_classes):.3f} nats")
ours, module = specialisation(main_expert), u.specialisation(token_class, main_expert, num_classes, K)
print("the same as the module's u.specialisation (notebook 08 uses it):",
      all(abs(ours[q] - module[q]) < 1e-9 for q in ours))

# %% [markdown]
# The table: the trained model's main expert from the head mean, then from each head alone (each
# head has its own weights, so its own main expert), and the floor, an untrained `LatentSegNet`
# (seed 0) on the same images.

# %%
torch.manual_seed(0)
untrained = u.LatentSegNet(**config).to(device).eval()
with torch.no_grad():
    _, untrained_attention = untrained(heldout_images.to(device), return_attention=True)
rows = {"trained, mean over heads": main_expert}
rows.update({f"trained, head {h} alone": pixel_w[:, h].argmax(-1) for h in range(heads)})
rows["untrained, mean over heads"] = untrained_attention["pixel"].cpu().mean(1).argmax(-1)
table = {name: specialisation(choice) for name, choice in rows.items()}
trained_spec, untrained_spec = table["trained, mean over heads"], table["untrained, mean over heads"]
head_shape = [table[f"trained, head {h} alone"]["which shape"] for h in range(heads)]

print(f"{'fraction of uncertainty explained':<28}" + "".join(f"{c:>22}" for c in trained_spec))
for name, spec in table.items():
    print(f"{name:<28}" + "".join(f"{v:>22.3f}" for v in spec.values()))

# %% [markdown]
# The second number looks at the weights themselves rather than the argmax: the **normalised
# entropy** of each class's usage row, $H(\text{usage}_c) / \ln K$. It is 1 when a class spreads
# its weight evenly over all 16 experts, 0 when it uses a single expert.

# %%
usage_entropy = -(usage * usage.log()).sum(1) / math.log(K)
for name, value in zip(u.CLASS_NAMES, usage_entropy.tolist()):
    print(f"normalised entropy of the usage, {name:<10} {value:.3f}   "
          f"(about {math.exp(value * math.log(K)):.1f} experts' worth)")

# %% [markdown]
# The verdict on the copy shown here. One training run is one sample: another seed gives other
# numbers, and some of these lines may print otherwise.

# %%
print("experts separate background from objects (more than 25% explained):",
      trained_spec["object or background"] > 0.25)
print("training made the experts more informative than chance:",
      trained_spec["all classes"] > 5 * untrained_spec["all classes"])
print("no head alone explains more than half of which shape:", max(head_shape) < 0.5)
print("every class spreads its weight over many experts (normalised entropy above 0.8):",
      bool((usage_entropy > 0.8).all()))

# %% [markdown]
# One verdict holds for every training run measured: `python benchmarks/mask_experts.py`
# (benchmarks/results/mask_experts.md) measures the same "which shape" share (last column) for
# three seeds of this model, all far below 25%:
#
# | model | test mIoU per seed | mean | spread | PQ per seed | % objects claimed once | latents used | MI share, which shape |
# |---|---|---:|---:|---|---|---|---|
# | final | 0.929, 0.934, 0.932 | 0.932 | 0.005 |  |  |  | 0.019, 0.143, 0.067 |

# %% tags=["nbval-check-output"]
print("experts tell the three shapes apart (more than 25% explained):",
      trained_spec["which shape"] > 0.25)

# %% [markdown]
# **Plainly: averaged over heads, the experts specialise only weakly, and hardly by shape.**
# Knowing a token's main expert (head mean) removes 0.209 of the uncertainty about whether it is
# background or object: more than ten times the untrained model's 0.017, but short of the 25% that
# the first check asks for, so it prints False. Among the object tokens it removes only 0.074 of
# the uncertainty about *which* shape: circles, squares and triangles read the same experts in
# nearly the same proportions. The heads on their own do better. Head 1 removes 0.684 of the
# object-or-background uncertainty (the mask of section 5.1) but only 0.053 of which shape;
# heads 0, 2 and 3 remove from 0.177 to 0.205 of which shape, more than the mean but far from
# half. Averaging the heads before the argmax washes both out. And every class spreads its weight
# over most of the 16 experts (from 14.0 to 15.9 experts' worth): the usage is soft, not a hard
# routing.
#
# ### 6.1 Sixteen experts, or two?
#
# How many different experts are there really? Look at the experts themselves: the 16 vectors
# the latents hold after reading the image (the output of the read block), compared by cosine
# similarity, averaged over 64 images. We catch them with a forward hook, a function PyTorch calls
# with a module's output.

# %%
caught = {}
read_block = model.reads[-1]                     # latents read the pixels; returns (latents, weights)
hook = read_block.register_forward_hook(
    lambda module, inputs, output: caught.update(experts=output[0] if isinstance(output, tuple) else output))
try:
    with torch.no_grad():
        model(heldout_images[:64].to(device))
finally:
    hook.remove()
experts = F.normalize(caught["experts"].cpu(), dim=-1)           # [64, K, D]
similarity = (experts @ experts.transpose(1, 2)).mean(0)          # [K, K]
order = reads_class[:, 0].argsort(descending=True)               # most-background experts first

fig, ax = plt.subplots(figsize=(5.6, 4.6))
im = ax.imshow(similarity[order][:, order].numpy(), cmap="magma", vmin=0.5, vmax=1)
ax.set_xticks(range(K), order.tolist(), fontsize=7)
ax.set_yticks(range(K), order.tolist(), fontsize=7)
ax.set(xlabel="expert (most-background readers first)", ylabel="expert",
       title="Cosine similarity between the experts")
fig.colorbar(im, ax=ax, label="mean cosine similarity")
fig.tight_layout()
plt.show()
print(f"pairs of different experts with similarity above 0.95: "
      f"{int(((similarity > 0.95).sum() - K) / 2)} of {K * (K - 1) // 2}")

# %% [markdown]
# Two bright blocks and a pair. The seven experts that read about the background's share of the
# tokens (1, 2, 4, 5, 7, 10 and 14) are near copies of each other, and so are six of those that
# read more object (6, 8, 9, 11, 12 and 13); experts 0 and 15 are near copies of each other, and
# expert 3, the strongest background reader, is close to none of them. Most of the 37 pairs above
# 0.95 lie inside the two blocks. Sixteen slots hold about four distinct vectors per image.
# Nothing in the training asks them to differ (there is no diversity or load-balancing loss,
# unlike a real mixture of experts), so most of them do not.
#
# ## 7. Does the model need its experts? Measured
#
# Remember how the model is built (notebook 05): after the pixels read the experts, their features
# are **concatenated with the encoder's own features** and fused. So attention sits *beside* a
# direct route from the convolutions to the classifier, not across it. Three measurements on the
# trained model, without retraining:
#
# 1. **No reading:** the pixels read nothing (the attention's output is replaced by zeros).
# 2. **Mean reading:** the attention's output is replaced by its mean over the 256 held-out
#    images, token by token, so every image gets the same reading. This is the usual control for
#    (1): the layers after the attention never met zeros in training, so part of what zeros cost
#    can be the shock of an unfamiliar input. The mean keeps the typical input and removes only
#    what differs from image to image.
# 3. **One expert only:** the pixels may read only expert $k$, for each $k$ in turn. With one
#    expert left, every pixel of an image gets the same vector: whatever the model gains then is
#    a summary of the whole image, not a per-pixel choice of expert.
#
# A forward hook replaces the output of the pixel-reading attention (1 and 2), and a forward
# pre-hook changes the keys and values it receives (3); the context managers remove them again
# whatever happens. One more forward hook records the mean reading first. The 19 evaluations use
# the first 64 held-out images, to keep the notebook quick.

# %%
pixel_reading = model.writes[-1].attention       # nn.MultiheadAttention(query=tokens, key=value=experts)


@contextmanager
def pixels_may_read(experts):
    """Inside the block, the pixels read only the listed experts; [] means they read nothing."""
    if len(experts) == 0:
        handle = pixel_reading.register_forward_hook(
            lambda module, inputs, output: (torch.zeros_like(output[0]), output[1]))
    else:
        def keep(module, args, kwargs):
            query, key, value = args
            return (query, key[:, experts], value[:, experts]), kwargs
        handle = pixel_reading.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def pixels_read_the_mean(mean_reading):
    """Inside the block, what the pixels read is mean_reading [N, D], the same in every image."""
    handle = pixel_reading.register_forward_hook(
        lambda module, inputs, output: (mean_reading.expand_as(output[0]), output[1]))
    try:
        yield
    finally:
        handle.remove()


# The mean reading: record what the pixels read in each held-out image, then average over images.
reading_sums = []
handle = pixel_reading.register_forward_hook(
    lambda module, inputs, output: reading_sums.append(output[0].sum(0)))
try:
    with torch.no_grad():
        for batch in heldout_images.split(64):
            model(batch.to(device))
finally:
    handle.remove()
mean_reading = torch.stack(reading_sums).sum(0) / B               # [N, D]: one vector per token

ablation_images, ablation_labels = heldout_images[:64], heldout_labels[:64]
def ablation_miou():
    return u.evaluate(model, ablation_images, ablation_labels)["miou"]

full_miou = ablation_miou()
with pixels_may_read([]):
    no_reading_miou = ablation_miou()
with pixels_read_the_mean(mean_reading):
    mean_reading_miou = ablation_miou()
one_expert_miou = []
for k in range(K):
    with pixels_may_read([k]):
        one_expert_miou.append(ablation_miou())
print(f"first 64 held-out images: all 16 experts {full_miou:.3f}, no reading {no_reading_miou:.3f}, "
      f"mean reading {mean_reading_miou:.3f}, "
      f"one expert only {min(one_expert_miou):.3f} to {max(one_expert_miou):.3f}")
print(f"what the trained model loses: {full_miou - no_reading_miou:.3f} mIoU with no reading, "
      f"{full_miou - mean_reading_miou:.3f} with the mean reading")

# %% [markdown]
# The same numbers as a chart:

# %%
fig, ax = plt.subplots(figsize=(8, 3.2))
ax.bar(range(K), one_expert_miou, color=plt.cm.tab20.colors[:K], edgecolor="grey",
       label="pixels read only this expert")
ax.axhline(full_miou, color="black", ls="--", label=f"all 16 experts ({full_miou:.3f})")
ax.axhline(mean_reading_miou, color="dimgray", ls="-.", lw=2,
           label=f"mean reading ({mean_reading_miou:.3f})")
ax.axhline(no_reading_miou, color=u.CLASS_COLORS[6], ls=":", lw=2,
           label=f"no reading at all ({no_reading_miou:.3f})")
ax.set(xticks=range(K), xlabel="the one expert left", ylabel="mIoU (64 held-out images)",
       ylim=(0, 1), title="What the trained model loses without its experts")
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
plt.show()

# %% [markdown]
# As verdicts on the copy shown here:

# %%
print("reading nothing costs more than 0.1 mIoU:", full_miou - no_reading_miou > 0.1)
print("the mean reading costs less than reading nothing:", mean_reading_miou > no_reading_miou)
print("any single expert keeps the mIoU within 0.03 of all 16:",
      full_miou - min(one_expert_miou) < 0.03)

# %% [markdown]
# One of them holds for every training run measured: the robustness benchmark (the table of
# section 2) replaces the reading by its mean over the test set for three seeds of this model, and
# every seed loses more than 0.05 mIoU; the "mean-ablated" column gives their average. Seed by
# seed (benchmarks/results/robustness_test.json) the loss ranges from under a tenth to about
# four tenths of the mIoU: how much a model leans on its attention differs from one training run
# to the next.

# %% tags=["nbval-check-output"]
print("the mean reading still costs more than 0.05 mIoU:", full_miou - mean_reading_miou > 0.05)

# %% [markdown]
# These ablations measure how much **the trained model depends** on its attention, not whether
# **the model needs** attention: the layers after the attention were trained with it and expect
# its output. Zeroing the reading costs 0.153 mIoU. The mean reading, the fairer control, costs
# 0.089: part of the zeroing cost is the shock of an input the model never saw, and the rest is
# real, because the trained model uses what its attention reads from each image.
#
# **No single expert fully stands in for all 16** (the last check prints False). With one expert
# left, each image still gets its own reading, the same vector for every pixel, and the mIoU falls
# from 0.944 to between 0.869 and 0.928. Every one of them still beats the mean reading (0.855), so
# part of what the model uses is a summary of the whole image. How much an expert keeps depends on
# which one it is: in the chart the seven experts of the first block of section 6.1 keep the
# least, and expert 3 and the experts that read more object keep the most. The experts are not
# interchangeable copies, which fits the groups of section 6.1.
#
# Whether the model *needs* attention is a different question, and only retraining answers it:
# notebook 05 (section 6) trains this model's twin without attention, with the same budget and
# seed, and compares the two.
#
# So in this model, on this data, the latents are best read the way the Perceiver paper
# (*Perceiver: General Perception with Iterative Attention*, Jaegle et al., 2021) reads its
# latents: a small set of cluster centres that summarise the input, here collapsed to about four
# groups. They are not experts in the mixture-of-experts sense: they hold no weights of their
# own, no pixel is routed to a chosen few of them (each reads a soft blend of all 16), and
# averaged over heads they hardly divide the classes between them.
#
# ## 8. The worst failure cases
#
# A mean hides the tail. We score each held-out image on its own, in two ways: the fraction of its
# pixels that are wrong, and its own mIoU (over the classes present in its truth or its
# prediction). The two rankings find different failures.

# %%
wrong = (predictions != heldout_labels).double().mean((1, 2))                  # [B]
image_miou = torch.tensor([u.mean_iou(predictions[i], heldout_labels[i], num_classes)
                           for i in range(B)])                                  # [B]
fig, axes = plt.subplots(1, 2, figsize=(9, 2.9))
axes[0].hist(100 * wrong.numpy(), bins=40, color=u.CLASS_COLORS[5])
axes[0].set(xlabel="wrong pixels in one image (%)", ylabel="images", yscale="log",
            title="Wrong pixels per image")
axes[1].hist(image_miou.numpy(), bins=40, range=(0, 1), color=u.CLASS_COLORS[5])
axes[1].set(xlabel="mIoU of one image", ylabel="images", title="mIoU per image")
fig.suptitle("The 256 held-out images, one at a time")
fig.tight_layout()
plt.show()
print(f"wrong pixels: median {wrong.median():.1%}, worst {wrong.max():.1%}; {int((wrong <= 0.01).sum())} "
      f"images with at most 1% wrong, {int((wrong > 0.05).sum())} with more than 5%")
print(f"image mIoU: median {image_miou.median():.3f}; {int((image_miou >= 0.95).sum())} images at 0.95 "
      f"or above, {int((image_miou < 0.8).sum())} below 0.8")

# %% [markdown]
# The two histograms tell different stories. By wrong pixels most images are nearly perfect (174
# of the 256 have at most 1% wrong, the median 0.4%), and the tail, on the right, is thin: 10
# images have more than 5% wrong, the worst 11.0%. By mIoU the peak is at the right end too (161
# images at 0.95 or above, median 0.983), but the tail on the left is thick: 52 images, about a
# fifth of the set, score below 0.8. First the images with the most wrong pixels:

# %%
worst_wrong = wrong.argsort(descending=True)[:4]
fig = u.plot_predictions(heldout_images[worst_wrong], heldout_labels[worst_wrong],
                         predictions[worst_wrong], max_images=4,
                         title="The 4 held-out images with the most wrong pixels")
plt.show()
for i in worst_wrong.tolist():
    print(f"image {i:>3}: {wrong[i]:.1%} wrong, image mIoU {image_miou[i]:.3f}")

# %% [markdown]
# These are the real failures, and all four share one cause: **objects that overlap**. In the
# top row a triangle in front of a circle is called mostly circle. In the second, a triangle in
# front of a square of similar dark colour is called mostly square, and the circle above spreads
# into the square. In the third, a circle half hidden behind two squares spreads over one of them.
# In the last, much of a circle half hidden behind a square and a triangle is called square. The
# class is the shape, and where objects overlap the visible outline is neither shape: the model
# has to guess which object is in front, and the colour difference that marks where one object
# ends helps little when the colours are close. The data generator lets objects hide each other
# freely (notebook 04), and these four images are where that costs the most pixels.
#
# Now the images with the lowest mIoU of their own:

# %%
worst_miou = image_miou.argsort()[:4]
fig = u.plot_predictions(heldout_images[worst_miou], heldout_labels[worst_miou],
                         predictions[worst_miou], max_images=4,
                         title="The 4 held-out images with the lowest mIoU")
plt.show()
for i in worst_miou.tolist():
    confusion_i = u.confusion_matrix(predictions[i], heldout_labels[i], num_classes)
    iou_i = u.per_class_iou(confusion_i)                       # NaN: in neither truth nor prediction
    print(f"image {i:>3}: mIoU {image_miou[i]:.3f}, {wrong[i]:.1%} wrong; "
          "per class: IoU (true pixels / predicted pixels)")
    print("    " + ", ".join(f"{name} {iou_i[c]:.2f} ({int(confusion_i[c].sum())} / "
                             f"{int(confusion_i[:, c].sum())})"
                             for c, name in enumerate(u.CLASS_NAMES) if not iou_i[c].isnan()))

# %% [markdown]
# A different list, and a lesson about the metric. Only image 243 is on both lists; the other
# three have fewer wrong pixels than any image of the first list (from 0.1% to 5.1%, against at
# least 6.7%). All four share one thing: the model predicted **pixels of a class that
# is not in the image** (0 true pixels beside 1 to 149 predicted ones above). Such a class gets an
# IoU of 0 and counts as much as any other class in the image's mean. Image 8 is the extreme: its
# background and its two circles are right (IoU 1.00), but one predicted pixel of square and one
# missed true pixel of triangle give two classes an IoU of 0, and the image ends at 0.499. In the
# other three the absent class comes with a genuine failure, occlusion again. In image 63 the
# sliver of a square squeezed between two triangles, 96 true pixels, is never called square, and
# 35 pixels of circle appear beside it. In image 217, of a square half hidden behind a circle
# (239 true pixels), only 31 pixels are predicted square, and 149 pixels of triangle appear where
# it is. Image 243 adds 1 pixel of triangle to the occlusion failure of the first list. Over the
# whole held-out set such stray pixels barely count (section 2 pools the pixels of all images);
# image by image they can halve the score. So before you trust a list of "worst images", check
# what ranks them. How many of the 52 images below 0.8 have such a class is exercise 2.

# %% [markdown]
# ## 9. Explore it yourself
#
# `latentseg_widgets.expert_browser` puts everything above under sliders: pick a held-out image
# and an expert, a head (or their mean) and a view (what the expert reads, how much each pixel
# reads it, or the main-expert map with the chosen expert outlined). It needs a running notebook
# (Jupyter or Colab); in a static view of this page the cell shows nothing. The widgets live in
# their own module, `latentseg_widgets.py`, which the setup cell installs beside
# `latentseg_utils.py` in Colab; if it is missing, the cell says so instead of failing.

# %% tags=["nbval-ignore-output"]
from IPython.display import display

try:
    import latentseg_widgets as uw
except ImportError:
    uw = None
    print("latentseg_widgets is not installed (run pip install -e . in the repository); "
          "skip this section (everything above works without it).")
if uw is not None:
    browser = uw.expert_browser(model, heldout_images[:16], heldout_labels[:16])
    display(browser)


# %% [markdown]
# ## Summary
#
# - The final model scores a held-out mIoU above 0.9. On typical images its errors are a few
#   stray pixels; its real failures are overlapping objects, whose visible outline is no shape. A
#   per-image mIoU also flags images that are fine except for a few stray pixels of an absent class.
# - The confusion matrix and IoU per class say the same in numbers: background is nearly perfect,
#   the shapes lose a few percent each. The square misses the most pixels; the triangle has the
#   lowest IoU, from false alarms rather than misses.
# - Attention in both directions, drawn: each expert reads mostly background, some of them a
#   little more object than an even reader; each pixel reads a soft blend of experts, and the
#   head-mean main-expert map roughly marks the objects' outlines, giving the inside of the
#   objects the same expert as the far background.
# - Measured, the specialisation is weak: averaged over heads the main expert explains little of
#   *object or background* and almost nothing of *which shape*; one head alone splits background
#   from objects well, and three heads tell the shapes apart a little. The 16 experts behave like
#   about four, and no single one fully stands in for all of them.
# - The trained model depends on its attention: replacing what the pixels read by its held-out
#   mean costs 0.089 mIoU (zeros, at 0.153, overstate it). Part of what it uses is a per-image
#   summary: any single expert, left alone, does better than the mean reading. That is
#   dependence, not need: only retraining without attention (notebook 05) says whether the model
#   needs it.
# - The method carries over to any model: draw, then measure (usage per class, mutual information,
#   similarity, ablation with the mean as the control), compare with an untrained baseline before
#   believing a picture, and retrain without a part before saying the model needs it.
#
# ## Exercises
#
# ### Exercise 1: recall and precision from the confusion matrix
#
# Write `recall_precision(confusion)` that returns two tensors `[C]`: the recall of each class
# (the fraction of its true pixels found) and its precision (the fraction of the pixels predicted
# as it that really are it). The check tests it on a small hand-made matrix and on the model's.

# %%
def check_recall_precision(fn):
    toy = torch.tensor([[8, 2], [1, 9]])
    recall, precision = fn(toy)
    assert torch.allclose(recall.double(), torch.tensor([0.8, 0.9], dtype=torch.float64)), recall
    assert torch.allclose(precision.double(), torch.tensor([8 / 9, 9 / 11], dtype=torch.float64)), precision
    recall, precision = fn(scores["confusion"])
    assert tuple(recall.shape) == tuple(precision.shape) == (num_classes,)
    print("correct; lowest recall:", u.CLASS_NAMES[int(recall.argmin())],
          " lowest precision:", u.CLASS_NAMES[int(precision.argmin())])


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def recall_precision(confusion):
    confusion = confusion.double()
    right = confusion.diag()
    return right / confusion.sum(1), right / confusion.sum(0)   # rows: truth; columns: prediction

check_recall_precision(recall_precision)


# %% [markdown]
# ### Exercise 2: classes that are not there
#
# Section 8 found images whose low mIoU comes from a few pixels of a class that the image does not
# contain. How common is that? Write `spurious_classes(prediction, truth)` that takes one image's
# label maps `[H, W]` and returns the sorted list of class ids that are predicted somewhere but
# absent from the truth. The check counts the images that have one, and how many of the images
# with an mIoU below 0.8 they account for. Then think: how would you change the per-image score
# so that two stray pixels cannot halve it?

# %%
def check_spurious(fn):
    toy_prediction, toy_truth = torch.tensor([[0, 1], [3, 3]]), torch.tensor([[0, 0], [3, 2]])
    assert list(fn(toy_prediction, toy_truth)) == [1], "class 1 is predicted but not in the truth"
    assert list(fn(toy_truth, toy_truth)) == [], "a perfect prediction has no spurious class"
    has = torch.tensor([len(fn(predictions[i], heldout_labels[i])) > 0 for i in range(B)])
    low = image_miou < 0.8
    print(f"correct; {int(has.sum())} of {B} images have a spurious class, "
          f"{int((has & low).sum())} of the {int(low.sum())} images with an mIoU below 0.8")


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def spurious_classes(prediction, truth):
    return sorted(set(prediction.unique().tolist()) - set(truth.unique().tolist()))

check_spurious(spurious_classes)
# A fairer per-image score ignores classes with only a handful of pixels in both truth and
# prediction (say under 20), or reports pixel accuracy beside the mIoU.

# %% [markdown]
# ### Exercise 3: pure tokens only
#
# Section 6 gave every token the majority class of its 4×4 block, so tokens on a boundary count
# for a class they only half belong to. Maybe that blurs the specialisation. Write
# `pure_usage(token_weights, class_fraction)` that returns the usage per class `[C, K]` using only
# the tokens whose block is entirely one class. Does the picture change?

# %%
def check_pure_usage(fn):
    result = fn(token_weights, class_fraction)
    assert tuple(result.shape) == (num_classes, K), f"expected {(num_classes, K)}, got {tuple(result.shape)}"
    assert torch.allclose(result.sum(1).double(), torch.ones(num_classes, dtype=torch.float64), atol=1e-6), \
        "each row should sum to 1"
    pure = class_fraction.max(1).values == 1
    expected = torch.stack([token_weights[pure & (token_class == c)].mean(0) for c in range(num_classes)])
    assert torch.allclose(result.double(), expected, atol=1e-6), "use only the pure tokens of each class"
    shapes = result[1:]
    print("correct; largest difference between the three shapes' rows:",
          f"{(shapes[:, None] - shapes[None]).abs().max():.3f}",
          f"(between background and any shape: {(result[0] - shapes).abs().max():.3f})")


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def pure_usage(token_weights, class_fraction):
    pure = class_fraction.max(1).values == 1                  # [B, N]: one class in the whole block
    token_class = class_fraction.argmax(1)                    # [B, N]
    return torch.stack([token_weights[pure & (token_class == c)].mean(0)
                        for c in range(class_fraction.shape[1])])

check_pure_usage(pure_usage)
# The picture does not change: the three shapes still share one usage row, the background another.

# %% [markdown]
# ## Final check
#
# The claims of this notebook that hold for any training run of the model, in one place: the
# structure of the model and its attention, and the verdicts that the committed multi-seed
# results (three seeds) confirm on every seed.

# %% tags=["nbval-check-output"]
print("model is LatentSegNet with 16 experts:", type(model).__name__ == "LatentSegNet" and K == 16)
print("held-out mIoU at least 0.90:", scores["miou"] >= 0.90)
print("attention shapes [B, heads, K, N] and [B, heads, N, K]:",
      tuple(latent_w.shape) == (B, heads, K, N) and tuple(pixel_w.shape) == (B, heads, N, K))
print("experts do not separate the shapes:", trained_spec["which shape"] < 0.25)
print("the trained model depends on its attention:", full_miou - mean_reading_miou > 0.05)
