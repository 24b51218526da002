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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/latentseg/latentseg/blob/v0.2/notebooks/04_synthetic_data.ipynb)
#
# # 04 · Synthetic data: why noise teaches nothing, and a data set that needs context
#
# After this notebook you can tell from a loss curve when the data holds nothing to learn, build
# the series' shapes data set yourself from coordinate grids, and show with measurements why a
# pixel-by-pixel classifier cannot segment it.
#
# **Run time:** about 15 seconds on an idle 2-core CPU (a minute or more when the machine is busy), most of it in two short trainings.
#
# **What you will learn**
# 1. Why the tutorial's model, trained on the tutorial's own data (noise images, random labels),
#    can never get its loss below ln 2 on average, and what it learns instead.
# 2. How the series' learnable data set is drawn: one shape from coordinate grids, several shapes
#    that hide each other, colours that say "object" but never "which object", noise, the class rule.
# 3. What the data looks like in numbers: class balance, colour per class, the fixed held-out set,
#    the generator's speed.
# 4. That the data needs spatial context: a classifier that sees one pixel at a time fails, and why.
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
# The imports, a fixed seed so that every result below is the same on every run (timings apart),
# and the device (printed so that a bug report says what you ran). `u` is the series' shared
# module.

# %%
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
import matplotlib.pyplot as plt
from matplotlib.patches import Patch
import latentseg_utils as u

torch.manual_seed(0)
device = u.get_device()
print(f"torch {torch.__version__}, device: {device}")
plt.rcParams["figure.dpi"] = 72   # small figures

# %% [markdown]
# ## 1. The tutorial's data: noise in, noise out
#
# The tutorial trains its model on images made with `torch.rand` and label maps made with
# `torch.randint`. `u.make_noise_batch` is exactly that: uniform-noise images `[B, 3, H, W]` and,
# drawn separately, one random class id per pixel `[B, H, W]`. With the tutorial's default of two
# classes every label is 0 or 1, each with probability 1/2.

# %% tags=["nbval-check-output"]
noise_images, noise_labels = u.make_noise_batch(8, 32, num_classes=2, seed=0)
print("images:", tuple(noise_images.shape), noise_images.dtype)
print("labels:", tuple(noise_labels.shape), noise_labels.dtype, "values:", noise_labels.unique().tolist())

# %% [markdown]
# This is what the model is asked to segment. The labels are drawn in the series' class palette;
# since they mean nothing, the legend calls them "label 0" and "label 1".

# %%
fig, axes = plt.subplots(2, 4, figsize=(6, 3.7))
for i in range(4):
    axes[0, i].imshow(noise_images[i].permute(1, 2, 0).numpy())
    axes[1, i].imshow(noise_labels[i].numpy(), cmap=u.class_colormap(2), vmin=0, vmax=1,
                      interpolation="nearest")
for ax in axes.flat:
    ax.set_xticks([]), ax.set_yticks([])
axes[0, 0].set_ylabel("image"), axes[1, 0].set_ylabel("label")
fig.legend(handles=[Patch(facecolor=u.CLASS_COLORS[c], edgecolor="grey", label=f"label {c}")
                    for c in range(2)], loc="lower center", ncol=2, frameon=False)
fig.suptitle("The tutorial's data: noise images and independent random labels")
fig.tight_layout(rect=(0, 0.07, 1, 1))
plt.show()

# %% [markdown]
# Is there anything in an image that tells its labels? By construction, no: the labels come from
# a separate call to the random number generator that never looks at the image. We can also see
# it in the numbers: on a large batch, the pixels labelled 0 and the pixels labelled 1 have the
# same mean colour and the same spread, up to sampling noise.

# %%
x, y = u.make_noise_batch(64, 32, num_classes=2, seed=1)
pixels = x.permute(0, 2, 3, 1)                       # [B, H, W, 3]
for c in (0, 1):
    chosen = pixels[y == c]                          # [n, 3]
    print(f"label {c}: {len(chosen):,} pixels, mean RGB {chosen.mean(0).numpy().round(3)}, "
          f"std RGB {chosen.std(0).numpy().round(3)}")

# %% [markdown]
# ### Why ln 2 is the floor
#
# Take one pixel. Whatever the model computes from the image, it ends up with a probability $q$
# that the pixel is label 1. The true label is 0 or 1 with probability 1/2 each, *whatever the
# image is*, so the expected cross-entropy at that pixel is
#
# $$
# \mathbb{E}[\text{loss}] = -\tfrac12 \ln q - \tfrac12 \ln (1-q) \;\ge\; \ln 2 \approx 0.6931,
# $$
#
# with equality only at $q = 1/2$. (In general: the cross-entropy between the true distribution $p$
# and the prediction $q$ is the entropy of $p$ plus $\mathrm{KL}(p\,\|\,q) \ge 0$, and the entropy
# of $K$ equally likely classes is $\ln K$.) The image cannot help, because it is independent of
# the label. So the best any model can do, however large, is to answer 1/2 everywhere, and its
# loss is then ln 2. The cell below checks the inequality on a grid of $q$ and draws it.

# %%
q = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
expected_loss = -(0.5 * q.log() + 0.5 * (1 - q).log())
best = int(expected_loss.argmin())
print(f"best constant answer q = {q[best]:.2f}, expected loss {expected_loss[best]:.4f}, "
      f"ln 2 = {math.log(2):.4f}")

fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(q.numpy(), expected_loss.numpy(), color=u.CLASS_COLORS[5], label="expected cross-entropy")
ax.axhline(math.log(2), ls="--", color="grey", label="ln 2")
ax.set(xlabel="predicted probability of label 1, q", ylabel="expected loss", ylim=(0.6, 1.5),
       title="On random labels, no answer beats q = 1/2")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Train the tutorial's model on the tutorial's data
#
# Now the experiment. The tutorial's model with its defaults (`u.SegmentationModel()`: two classes,
# 70,504 parameters), seeded so the run is the same every time.

# %% tags=["nbval-check-output"]
torch.manual_seed(0)
noise_model = u.SegmentationModel()
print(f"SegmentationModel: {u.count_parameters(noise_model):,} parameters, "
      f"{noise_model.num_classes} classes")

# %% [markdown]
# Train it for 200 steps on fresh noise batches, with a constant learning rate of 1e-3. We use
# batches of 8 images of 32×32 pixels to keep it quick; the floor is ln 2 at any size.
# `u.train` calls `data(batch_size, image_size, seed=generator)` for every step, so
# `u.make_noise_batch` plugs straight in. There is nothing to evaluate on (no held-out set).

# %% tags=["nbval-ignore-output"]
noise_history = u.train(noise_model, steps=200, batch_size=8, image_size=32,
                        data=u.make_noise_batch, lr=1e-3, schedule="constant", heldout=None,
                        progress=False)
print(f"trained {noise_history['steps_done']} steps in {noise_history['seconds']:.1f} s")

# %% [markdown]
# The loss per step, against the dashed line at ln 2. The right-hand panel is for the series'
# score, the held-out **mIoU**: for each class, its **IoU** (intersection over union) is the
# number of pixels that both the prediction and the truth give that class, divided by the number
# that either gives it; the mIoU is the mean of these over the classes. Here the panel has no
# curve: noise has no held-out set worth scoring.

# %%
fig = u.plot_history(noise_history, title="The tutorial's model on the tutorial's data (noise)",
                     reference_loss=math.log(2), reference_label=f"ln 2 = {math.log(2):.4f}")
fig.axes[1].set_xlim(fig.axes[0].get_xlim())
plt.show()

# %% [markdown]
# The loss falls from its starting value onto the line and stays there. The fall is tiny: note
# the scale of the loss axis. We measure the mean of the last 100 steps. A single step can dip a
# hair below ln 2: in one batch the labels are almost never exactly half and half, and a model
# that leans slightly towards that batch's majority label gets lucky on it. On average it cannot
# win. The last line asks whether the mean lies within 0.01 of ln 2.

# %%
losses = torch.tensor(noise_history["loss"])
noise_final_loss = losses[-100:].mean().item()
print(f"first step {losses[0]:.4f}, mean of the last 100 steps {noise_final_loss:.4f}, "
      f"ln 2 = {math.log(2):.4f}, difference {noise_final_loss - math.log(2):+.4f}")
print(f"lowest single step {losses.min():.4f}")
assert abs(noise_final_loss - math.log(2)) < 0.01, noise_final_loss
print("final loss within 0.01 of ln 2:", abs(noise_final_loss - math.log(2)) < 0.01)

# %% [markdown]
# What did the model learn? Only what there is to learn: that each label has probability 1/2.
# The cell prints its answers on fresh noise beside those of the same model before training (seed
# 0 gives the same starting weights). Untrained, it already answers between 0.446 and 0.457
# everywhere, close to 1/2, so the last line's test (within 0.05) is nearly met before any
# training. The change is in the means: from 0.451 before training to about 1/2 after, the share
# of each label.

# %%
fresh_images, _ = u.make_noise_batch(16, 32, num_classes=2, seed=123)
torch.manual_seed(0)
untrained_model = u.SegmentationModel()                              # noise_model before training
with torch.no_grad():
    p0 = untrained_model(fresh_images).softmax(dim=1)[:, 1]          # [B, H, W]
    p1 = noise_model.cpu()(fresh_images).softmax(dim=1)[:, 1]        # [B, H, W]
for name, p in (("before training", p0), ("after training", p1)):
    print(f"{name:>15}: predicted probability of label 1 from {p.min():.3f} to {p.max():.3f}, "
          f"mean {p.mean():.3f}")
print("after training, every predicted probability within 0.05 of 1/2:",
      bool(((p1 - 0.5).abs() < 0.05).all()))

# %% [markdown]
# **Plainly:** on the tutorial's data the loss cannot go below ln 2, because there is nothing to
# learn. Images and labels are independent, so no model, however clever, can do better than
# answering 1/2. A loss curve that sits on ln 2 says nothing about whether the model works: the
# data gives it nothing to work on. The rest of the series needs data in which the labels follow
# from the image.

# %% [markdown]
# ## 2. A data set with something to learn
#
# What we want from the data:
#
# 1. **The labels follow from the image**, so there is something to learn.
# 2. **The class needs spatial context.** Colour says *where* an object is, never *which* class it
#    is; the class is the *shape*. A model must look at a neighbourhood to tell a circle from a
#    square: context that convolutions or attention layers can provide.
# 3. **Cheap, endless and seeded**: a fresh batch at every step in milliseconds, the same batch for
#    the same seed, nothing downloaded.
# 4. **A fixed held-out set**, drawn from a seed that, by design, no training stream uses, to
#    score every model the same way.
#
# We build it step by step; from section 2.6 on we use the module's version,
# `u.make_shapes_batch`, the generator every later notebook trains on.
#
# ### 2.1 One shape from coordinate grids
#
# Number the pixels' centres 0.5, 1.5, ..., 63.5. For a shape centred at $(c_x, c_y)$, every pixel
# has an offset $d_x$ (a row vector `[1, S]`) and $d_y$ (a column vector `[S, 1]`) from the centre.
# Broadcasting the two gives a full `[S, S]` grid without a loop.

# %% tags=["nbval-check-output"]
S = 64
coords = torch.arange(S, dtype=torch.float32) + 0.5      # pixel centres
dx = coords.view(1, S) - 32.0                            # [1, S]: offset along x (columns)
dy = coords.view(S, 1) - 32.0                            # [S, 1]: offset along y (rows)
print("dx", tuple(dx.shape), "dy", tuple(dy.shape), "-> grid", tuple((dx + dy).shape))


# %% [markdown]
# A shape is then a comparison on the grid, giving a boolean mask. All three shapes are sized by
# one number, their "radius" $r$:
#
# - **circle** (class 1): $d_x^2 + d_y^2 \le r^2$;
# - **square** (class 2): $|d_x| \le 0.85\,r$ and $|d_y| \le 0.85\,r$ (side $1.7\,r$, so its area
#   $2.89\,r^2$ is close to the circle's $3.14\,r^2$);
# - **triangle** (class 3), apex up: $|d_y| \le r$ and $|d_x| \le (d_y + r)/2$ (zero width at the
#   top, $2r$ wide at the bottom; area $2\,r^2$, about a third smaller than the circle).
#
# Since $r$ itself is drawn at random (section 2.5), size is a weak cue to the class, not a
# giveaway.
#
# The class ids are those of `u.CLASS_NAMES`; 0 is the background.

# %%
def shape_mask(kind, dx, dy, r):
    """Boolean mask of one shape with 'radius' r centred where dx = dy = 0.
    dx [1, S] and dy [S, 1] broadcast to the mask [S, S]. kind: 1 circle, 2 square, 3 triangle."""
    if kind == 1:
        return dx ** 2 + dy ** 2 <= r ** 2
    if kind == 2:
        return (dx.abs() <= 0.85 * r) & (dy.abs() <= 0.85 * r)
    if kind == 3:
        return (dy.abs() <= r) & (dx.abs() <= (dy + r) / 2)
    raise ValueError(f"kind={kind}: use 1 (circle), 2 (square) or 3 (triangle)")


print({u.CLASS_NAMES[k]: int(shape_mask(k, dx, dy, 12.0).sum()) for k in (1, 2, 3)},
      "pixels at r = 12")

# %% [markdown]
# The three masks at $r = 12$ pixels, each drawn in its class colour, with its area measured in
# pixels against the formula.

# %%
r = 12.0
fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.9))
for ax, kind, formula in zip(axes, (1, 2, 3), (math.pi * r ** 2, (1.7 * r) ** 2, 2 * r ** 2)):
    ax.imshow(shape_mask(kind, dx, dy, r).long() * kind, cmap=u.class_colormap(4), vmin=0, vmax=3,
              interpolation="nearest")
    area = int(shape_mask(kind, dx, dy, r).sum())
    ax.set_title(f"{u.CLASS_NAMES[kind]}: {area} px\n(formula {formula:.0f})", fontsize=10)
    ax.set_xlabel("x (pixels)")
axes[0].set_ylabel("y (pixels)")
fig.suptitle("One shape each, from a comparison on the coordinate grid (r = 12)")
fig.tight_layout()
plt.show()


# %% [markdown]
# ### 2.2 Several objects, and who is on top
#
# An image holds one or a few objects, and they may overlap. We draw them in order and let each
# one paint over the pixels it covers (the *painter's algorithm*): the last object drawn at a
# pixel is the one you see, and its class is the pixel's label. A pixel no object covers stays 0,
# background.

# %%
def paint_labels(objects, size=64):
    """Label map [size, size] of objects (kind, cx, cy, r), painted in order: later ones on top."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    labels = torch.zeros(size, size, dtype=torch.long)
    for kind, cx, cy, r in objects:
        mask = shape_mask(kind, coords.view(1, size) - cx, coords.view(size, 1) - cy, r)
        labels[mask] = kind
    return labels


objects = [(1, 24.0, 26.0, 13.0), (2, 38.0, 34.0, 12.0), (3, 28.0, 44.0, 11.0)]
print("label map", tuple(paint_labels(objects).shape), "classes present:",
      paint_labels(objects).unique().tolist())

# %% [markdown]
# The same three objects drawn in two orders: the order decides who hides whom.

# %%
orders = {"circle, square, triangle": objects, "triangle, square, circle": objects[::-1]}
fig, axes = plt.subplots(1, 2, figsize=(6, 3.8))
for ax, (name, objs) in zip(axes, orders.items()):
    ax.imshow(paint_labels(objs), cmap=u.class_colormap(4), vmin=0, vmax=3, interpolation="nearest")
    ax.set_title(f"drawn {name}", fontsize=10)
    ax.set_xlabel("x (pixels)")
axes[0].set_ylabel("y (pixels)")
fig.legend(handles=[Patch(facecolor=u.CLASS_COLORS[c], edgecolor="grey", label=u.CLASS_NAMES[c])
                    for c in range(4)], loc="lower center", ncol=4, frameon=False)
fig.suptitle("Occlusion: the last object drawn is the one you see")
fig.tight_layout(rect=(0, 0.1, 1, 1))
plt.show()

# %% [markdown]
# ### 2.3 Colours that say "object" but never "which object"
#
# Each image gets a random background colour $b \in [0, 1]^3$. Each object gets its own colour
# $c = (b + s) \bmod 1$ with a shift $s$ drawn in $[0.25, 0.75]$ for every channel. So in every
# channel $|c - b|$ is $s$ or $1 - s$, never below 0.25: the object always stands out from its
# background. And since $b$ is uniform, $c$ is uniform too, whatever the object's class. The class
# is drawn apart from the colour, so colour carries no class. We check both claims on 100,000 draws:
# the smallest gap, and, to two decimals, the mean of $c$ and the quartiles of its red channel (for
# a uniform value on $[0, 1]$: mean 0.5, quartiles 0.25, 0.5 and 0.75).

# %% tags=["nbval-check-output"]
g = torch.Generator().manual_seed(0)
b = torch.rand(100_000, 3, generator=g)                        # backgrounds
s = 0.25 + 0.5 * torch.rand(100_000, 3, generator=g)           # shifts
c = (b + s) % 1.0                                              # object colours
print(f"smallest |c - b| in any channel: {(c - b).abs().min():.4f}")
print(f"object colours: mean {c.mean(0).numpy().round(2)}, quartiles "
      f"{torch.quantile(c[:, 0], torch.tensor([0.25, 0.5, 0.75])).numpy().round(2)} (red)")
print("every channel differs from the background by at least 0.25:", bool(((c - b).abs() >= 0.25).all()))


# %% [markdown]
# ### 2.4 Paint the image, then add noise
#
# The image is painted exactly like the labels, object by object in the same order, with the
# background colour first. Then Gaussian noise with standard deviation 0.08 is added to every
# pixel, so that a region's colour is never perfectly flat (values may leave $[0, 1]$ a little;
# the model does not mind). From left to right: the labels, the clean image, the noisy image.

# %%
def paint_image(objects, colours, background, size=64):
    """Image [3, size, size]: background colour [3], then each object in its colour [3], in order."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    image = background.view(3, 1, 1).repeat(1, size, size)
    for (kind, cx, cy, r), colour in zip(objects, colours):
        mask = shape_mask(kind, coords.view(1, size) - cx, coords.view(size, 1) - cy, r)
        image[:, mask] = colour.view(3, 1)
    return image


g = torch.Generator().manual_seed(4)
background = torch.rand(3, generator=g)
colours = (background + 0.25 + 0.5 * torch.rand(len(objects), 3, generator=g)) % 1.0
clean = paint_image(objects, colours, background)
noisy = clean + 0.08 * torch.randn(clean.shape, generator=g)
print("image", tuple(noisy.shape), f"values from {noisy.min():.2f} to {noisy.max():.2f}")

fig, axes = plt.subplots(1, 3, figsize=(8, 3.3))
axes[0].imshow(paint_labels(objects), cmap=u.class_colormap(4), vmin=0, vmax=3, interpolation="nearest")
axes[1].imshow(clean.permute(1, 2, 0).clamp(0, 1).numpy())
axes[2].imshow(noisy.permute(1, 2, 0).clamp(0, 1).numpy())
for ax, name in zip(axes, ("labels", "clean image", "with noise (std 0.08)")):
    ax.set_title(name, fontsize=10), ax.set_xticks([]), ax.set_yticks([])
fig.legend(handles=[Patch(facecolor=u.CLASS_COLORS[k], edgecolor="grey", label=u.CLASS_NAMES[k])
                    for k in range(4)], loc="lower center", ncol=4, frameon=False)
fig.suptitle("One image, painted object by object")
fig.tight_layout(rect=(0, 0.08, 1, 1))
plt.show()

# %% [markdown]
# ### 2.5 The class rule, and a whole batch
#
# The rule that makes a batch, all of it random but seeded:
#
# - each image gets a background colour and 1 to `max_objects` objects;
# - each object gets a class drawn uniformly from circle, square, triangle, a radius drawn
#   uniformly in `radius_range` (a fraction of the image size), a centre that keeps it inside the
#   image, and a colour as in section 2.3;
# - the label of a pixel is the class of the topmost object covering it, 0 where there is none;
# - noise with standard deviation `noise` is added last.
#
# These settings are arguments of `u.make_shapes_batch`. We read their defaults from the module
# itself, so that this notebook always describes the generator that the series trains on.

# %%
import inspect

DEFAULTS = {name: p.default for name, p in inspect.signature(u.make_shapes_batch).parameters.items()
            if name in ("max_objects", "radius_range", "noise")}
print("u.make_shapes_batch defaults:", DEFAULTS)


# %% [markdown]
# Our version draws all its random numbers first, in the same order as `u.make_shapes_batch`, so
# the two can be compared exactly; then it paints image by image with a plain loop. (The module
# paints the whole batch at once with tensor operations and no Python loop: the same rule, harder
# to read, and quicker when several CPU cores or a GPU share the work.)

# %%
def shapes_batch_step_by_step(batch_size=16, image_size=64, seed=0,
                              max_objects=DEFAULTS["max_objects"],
                              radius_range=DEFAULTS["radius_range"], noise=DEFAULTS["noise"]):
    """images [B, 3, S, S] and labels [B, S, S], built from the pieces above."""
    g = torch.Generator().manual_seed(seed)
    B, S, M = batch_size, image_size, max_objects
    lo, hi = radius_range
    # 1. every random number, in the module's order (unused object slots are drawn too)
    background = torch.rand(B, 3, generator=g)
    num_objects = torch.randint(1, M + 1, (B,), generator=g)
    kinds = torch.randint(1, 4, (B, M), generator=g)
    radius = (lo + (hi - lo) * torch.rand(B, M, generator=g)) * S
    centre = radius.unsqueeze(-1) + torch.rand(B, M, 2, generator=g) * (S - 2 * radius.unsqueeze(-1))
    shift = 0.25 + 0.5 * torch.rand(B, M, 3, generator=g)
    colour = (background.unsqueeze(1) + shift) % 1.0                       # [B, M, 3]
    # 2. paint each image and its labels, object by object
    images = torch.empty(B, 3, S, S)
    labels = torch.empty(B, S, S, dtype=torch.long)
    for i in range(B):
        objs = [(int(kinds[i, m]), centre[i, m, 0], centre[i, m, 1], radius[i, m])
                for m in range(int(num_objects[i]))]
        labels[i] = paint_labels(objs, S)
        images[i] = paint_image(objs, colour[i], background[i], S)
    # 3. noise last
    return images + noise * torch.randn(B, 3, S, S, generator=g), labels


mine_images, mine_labels = shapes_batch_step_by_step(16, 64, seed=0)
print("images", tuple(mine_images.shape), mine_images.dtype, "| labels", tuple(mine_labels.shape),
      mine_labels.dtype)

# %% [markdown]
# The check: with the defaults and with other settings, our loop and the module's vectorised
# generator give the same labels, pixel for pixel, and the same images.

# %% tags=["nbval-check-output"]
settings = [dict(batch_size=16, image_size=64, seed=0), dict(batch_size=8, image_size=48, seed=7),
            dict(batch_size=8, image_size=64, seed=3, max_objects=6, noise=0.0),
            dict(batch_size=8, image_size=32, seed=5, max_objects=2, radius_range=(0.2, 0.3))]
for setting in settings:
    ours = shapes_batch_step_by_step(**setting)
    theirs = u.make_shapes_batch(**setting)
    same_labels = torch.equal(ours[1], theirs[1])
    same_images = torch.equal(ours[0], theirs[0])
    assert same_labels and same_images, setting
    print(f"{setting}: labels identical {same_labels}, images identical {same_images}")

# %% [markdown]
# ### 2.6 The real thing: `u.make_shapes_batch`
#
# From here on we use the module's generator. A batch of 16 images of 64×64 pixels, and the first
# five of them over their labels.

# %% tags=["nbval-check-output"]
images, labels = u.make_shapes_batch(16, 64, seed=0)
print("images:", tuple(images.shape), images.dtype, "| labels:", tuple(labels.shape), labels.dtype)
print("classes:", dict(enumerate(u.CLASS_NAMES)))

# %% [markdown]
# Drawn with `u.plot_samples`: the images on top, their labels (the truth) below, with the class
# legend:

# %%
fig = u.plot_samples(images, labels, max_images=5,
                     title="u.make_shapes_batch: image (top) and truth (bottom)")
plt.show()

# %% [markdown]
# ### 2.7 Class balance
#
# How many pixels does each class get? We count over 256 images, and check that every class
# occurs, that background is the majority, and that the three shapes' shares lie within a factor
# 1.5 of each other.

# %% tags=["nbval-check-output"]
_, balance_labels = u.make_shapes_batch(256, 64, seed=0)
counts = torch.bincount(balance_labels.flatten(), minlength=4)
share = counts.double() / counts.sum()
print("share of pixels:", ", ".join(f"{name} {p:.1%}" for name, p in zip(u.CLASS_NAMES, share.tolist())))
print("every class present:", bool((counts > 0).all()))
print("background is the majority:", bool(share[0] > 0.5))
print("the three shapes within a factor 1.5 of each other:", bool(share[1:].max() / share[1:].min() < 1.5))

# %% [markdown]
# As bars: background dominates, which is why the series scores models with the mIoU (section 1)
# rather than pixel accuracy: a model that answers "background" everywhere is right
# on most pixels and useless.

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.4))
bars = ax.bar(u.CLASS_NAMES, 100 * share.numpy(), color=u.CLASS_COLORS[:4], edgecolor="grey")
for bar, n, p in zip(bars, counts.tolist(), share.tolist()):
    ax.text(bar.get_x() + bar.get_width() / 2, 100 * p + 1, f"{p:.1%}\n{n:,} px",
            ha="center", va="bottom", fontsize=8)
ax.set(xlabel="class", ylabel="share of pixels (%)", ylim=(0, 110),
       title="Class balance over 256 images of 64×64")
ax.legend(handles=[Patch(facecolor=u.CLASS_COLORS[k], edgecolor="grey", label=u.CLASS_NAMES[k])
                   for k in range(4)], fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Triangles get fewer pixels than circles and squares because, for the same $r$, they are the
# smallest shape (section 2.1). The three object classes are drawn equally often (each object's
# class is uniform over the three), so the shares differ only by area and by the luck of the draw.
#
# ### 2.8 Colour carries no class
#
# Section 2.3 argued it; here it is measured on the generator itself, on 2,048 images of 32×32
# (many images, so that many colour draws; small ones, so that it stays quick). The histograms of
# each colour channel, per class: every class, background included, has the same flat
# distribution (its edges softened by the noise). Looking at one pixel's colour, you cannot tell
# its class.

# %%
x, y = u.make_shapes_batch(2048, 32, seed=1)
pixels = x.permute(0, 2, 3, 1)                                 # [B, H, W, 3]
bins = np.linspace(-0.3, 1.3, 33)
fig, axes = plt.subplots(1, 3, figsize=(10, 3.2), sharey=True)
for channel, ax in enumerate(axes):
    for k in range(4):
        values = pixels[y == k][:, channel].numpy()
        ax.hist(values, bins=bins, density=True, histtype="step", lw=1.6,
                color=u.CLASS_COLORS[k], label=u.CLASS_NAMES[k])
    ax.set(xlabel="value", title=f"{'RGB'[channel]} channel")
axes[0].set_ylabel("density")
fig.legend(handles=[Patch(facecolor="none", edgecolor=u.CLASS_COLORS[k], lw=1.6, label=u.CLASS_NAMES[k])
                    for k in range(4)], loc="lower center", ncol=4, frameon=False)
fig.suptitle("Colour histograms per class: the same for every class")
fig.tight_layout(rect=(0, 0.08, 1, 1))
plt.show()

# %% [markdown]
# In numbers, on the same pixels (to two decimals): every class's mean colour is 0.5 in every
# channel, up to sampling noise of a few hundredths.

# %% tags=["nbval-check-output"]
class_means = torch.stack([pixels[y == k].mean(0) for k in range(4)])   # [4, 3]
for k in range(4):
    print(f"{u.CLASS_NAMES[k]:>10}: mean RGB {class_means[k].numpy().round(2)}")
print("every class's mean colour within 0.03 of 0.5:", bool(((class_means - 0.5).abs() < 0.03).all()))

# %% [markdown]
# ### 2.9 The held-out set, and the other evaluation sets
#
# Every notebook scores its models on the same 256 images, `u.make_heldout_set()`: the **test** set
# of the shapes data. It is drawn from its own seed, `u.HELDOUT_SEED`, kept by design apart from
# the small seeds of the training streams, and it is the same on every call.

# %% tags=["nbval-check-output"]
heldout = u.make_heldout_set()
again = u.make_heldout_set()
print("held-out images", tuple(heldout[0].shape), "labels", tuple(heldout[1].shape))
print("held-out seed:", u.HELDOUT_SEED)
print("the same on every call:", torch.equal(heldout[0], again[0]) and torch.equal(heldout[1], again[1]))
print("different from the training stream of seed 0:",
      not torch.equal(heldout[0][:16], u.make_shapes_batch(16, 64, seed=0)[0]))

# %% [markdown]
# Design choices (a setting, a layer, a schedule) look only at a separate **validation** set,
# drawn from another seed, `u.VALIDATION_SEED`, so that the test score is never the one a choice
# was tuned on. `u.make_split(variant, split)` gives both sets for each data variant the series
# tests on: the shapes data; low contrast (objects closer to their background than the minimum
# gap of section 2.3, on purpose); small objects; heavy noise; crowded scenes; and two long-range
# variants, in which a frame round the image (`'frame'`) or a small square in its top-left corner
# (`'swatch'`), far from most pixels, has a colour that names the one shape kind to segment;
# shapes of the other kinds are labelled background. Each variant is a set of
# `u.make_shapes_batch` arguments:

# %% tags=["nbval-check-output"]
validation = u.make_split("shapes", "validation")
print("u.make_split('shapes', 'test') is the held-out set:",
      torch.equal(u.make_split("shapes", "test")[1], heldout[1]))
print("validation seed:", u.VALIDATION_SEED, "| validation images differ from the test images:",
      not torch.equal(validation[0], heldout[0]))
for name, options in u.DATA_VARIANTS.items():
    long_range = " (long-range)" if name in u.LONG_RANGE_VARIANTS else ""
    print(f"{name:>12}: {options or 'the defaults'}{long_range}")

# %% [markdown]
# ### 2.10 Speed
#
# A training step wants a fresh batch every time, so the generator must be cheap. We time 50
# batches of 16 images at 64×64, and our loop on the same batches for comparison, then one
# training step of the tutorial's model (with four classes) on such a batch. Times depend on your
# machine and its load; what matters is that a batch costs a small fraction of a training step.

# %% tags=["nbval-ignore-output"]
u.make_shapes_batch(16, 64, seed=0)                                    # warm-up
start = time.perf_counter()
for seed in range(50):
    u.make_shapes_batch(16, 64, seed=seed)
ms_per_batch = 1000 * (time.perf_counter() - start) / 50
print(f"u.make_shapes_batch: {ms_per_batch:.1f} ms per batch of 16 images of 64x64")

start = time.perf_counter()
for seed in range(50):
    shapes_batch_step_by_step(16, 64, seed=seed)
print(f"our step-by-step loop: {1000 * (time.perf_counter() - start) / 50:.1f} ms per batch")

step_model = u.SegmentationModel(num_classes=4).to(device)
optimizer = torch.optim.AdamW(step_model.parameters())
step_images, step_labels = (t.to(device) for t in u.make_shapes_batch(16, 64, seed=0))
for repeat in range(3):                                                # the first one warms up
    if repeat == 1:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
    loss = F.cross_entropy(step_model(step_images), step_labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
if device.type == "cuda":
    torch.cuda.synchronize()
print(f"one training step of u.SegmentationModel: {1000 * (time.perf_counter() - start) / 2:.1f} ms")

# %% [markdown]
# ## 3. The data needs spatial context
#
# The data was designed so that one pixel's colour says nothing about its class. Let us put that to
# the test with a model that looks at one pixel at a time.
#
# `u.PixelClassifier` is two 1×1 convolutions with a ReLU between them: a small neural network
# applied to each pixel's three colour values on its own, with no view of its neighbours.

# %% tags=["nbval-check-output"]
torch.manual_seed(0)
pixel_model = u.PixelClassifier()
print(pixel_model)
print(f"{u.count_parameters(pixel_model):,} parameters")

# %% [markdown]
# Its receptive field is one pixel. We measure it: change one pixel of an image and see which
# outputs change.

# %% tags=["nbval-check-output"]
with torch.no_grad():
    image = heldout[0][:1]
    poked = image.clone()
    poked[0, :, 20, 30] += 0.5
    changed = (pixel_model(poked) - pixel_model(image)).abs().sum(dim=1)[0] > 0   # [H, W]
print("outputs that changed:", int(changed.sum()), "at (row, col)", changed.nonzero()[0].tolist())

# %% [markdown]
# Train it for 300 steps on the shapes data with `u.train`'s defaults (batches of 16 at 64×64,
# AdamW, learning rate 3e-3 with a cosine schedule), scoring the held-out set every 100 steps.

# %% tags=["nbval-ignore-output"]
pixel_history = u.train(pixel_model, steps=300, heldout=heldout, progress=False)
print(f"trained {pixel_history['steps_done']} steps in {pixel_history['seconds']:.1f} s")

# %% [markdown]
# What loss can a per-pixel model reach at best? If colour says nothing about the class, the best
# it can answer at every pixel is the class balance (section 2.7), and its loss is the entropy of
# that balance, $-\sum_c p_c \ln p_c$: the per-pixel model's floor, as ln 2 was the noise
# model's. We measure the balance on the held-out set (a little different from section 2.7's,
# which counted other images) and the trained model's cross-entropy on the same images. The
# dashed line in the loss plot is that entropy.

# %%
heldout_share = torch.bincount(heldout[1].flatten(), minlength=4).double() / heldout[1].numel()
prior_entropy = float(-(heldout_share * heldout_share.log()).sum())
with torch.no_grad():
    heldout_loss = float(F.cross_entropy(pixel_model.cpu()(heldout[0]), heldout[1]))
print(f"held-out class balance {heldout_share.numpy().round(3)}: entropy {prior_entropy:.4f} "
      f"(ln 4 = {math.log(4):.4f} for balanced classes)")
print(f"the per-pixel classifier's held-out cross-entropy: {heldout_loss:.4f}")
print("held-out loss within 0.05 of the class-balance entropy:", abs(heldout_loss - prior_entropy) < 0.05)
fig = u.plot_history(pixel_history, title="Per-pixel classifier (1x1 convolutions) on the shapes data",
                     reference_loss=prior_entropy,
                     reference_label=f"class-balance entropy {prior_entropy:.4f}")
plt.show()

# %% [markdown]
# The entropy, 0.6824, happens to lie close to ln 2 = 0.6931: a coincidence of this class
# balance (with four balanced classes it would be ln 4), not the noise floor again. Single
# training steps dip well below the dashed line: on a batch with more background than average,
# answering the class balance costs less.
#
# Next, the held-out scores, class by class, and the verdict: does its mIoU stay at or below 0.5?

# %%
scores = u.evaluate(pixel_model, *heldout)
for k, iou in enumerate(scores["per_class_iou"].tolist()):
    print(f"IoU {u.CLASS_NAMES[k]:>10}: {iou:.3f}")
print(f"mIoU {scores['miou']:.3f}, pixel accuracy {scores['pixel_accuracy']:.3f}")
assert scores["miou"] <= 0.5, scores["miou"]
print("per-pixel classifier mIoU at most 0.5:", scores["miou"] <= 0.5)

# %% [markdown]
# Its predictions on three held-out images: image, truth, prediction, and the wrong pixels in red.

# %%
predictions = u.predict(pixel_model, heldout[0][:3])
fig = u.plot_predictions(heldout[0][:3], heldout[1][:3], predictions,
                         title="Per-pixel classifier: it can only guess the majority class")
plt.show()

# %% [markdown]
# Is that any better than the laziest rule, "background everywhere"? Compare:

# %%
all_background = torch.zeros_like(heldout[1])
lazy_miou = u.mean_iou(all_background, heldout[1], 4)
print(f"'background everywhere': mIoU {lazy_miou:.3f}, "
      f"pixel accuracy {u.pixel_accuracy(all_background, heldout[1]):.3f}")
print(f"trained per-pixel classifier: mIoU {scores['miou']:.3f}, "
      f"pixel accuracy {scores['pixel_accuracy']:.3f}")
print("per-pixel classifier within 0.05 mIoU of 'background everywhere':",
      abs(scores["miou"] - lazy_miou) < 0.05)

# %% [markdown]
# ### Why it fails, and what a model needs instead
#
# Every class, background included, has the same colour distribution (section 2.8). So from one
# pixel's colour the best possible answer is the class balance itself, the same at every pixel,
# and its most likely class is "background", the large majority (section 2.7). Its held-out loss
# comes out close to the entropy of that balance (within 0.05), the floor of a model that cannot
# tell the classes apart. Since it predicts background everywhere, its mIoU is the background's
# IoU (the share of background pixels) divided by four classes, as measured above.
#
# Note the difference from section 1: here the labels *do* follow from the image, but only from a
# *neighbourhood* of it. A pixel inside a circle looks exactly like a pixel inside a square; only
# the outline (curved or straight, corners or none, a point at the top) tells them apart.
#
# So a model needs **spatial context** at the scale of the objects. A square is $1.7r$ wide and
# tall, a circle $2r$, a triangle $2r$ tall and $2r$ wide at its base (narrowing to a point at its
# apex). The cell below gives these in pixels at the default `radius_range`, beside the tutorial
# encoder's *receptive field*, the square window of the image that one cell of its 16×16 output
# grid sees, computed from the encoder's layers with notebook 01's formula. That window holds an
# edge or a corner, not a whole shape. The rest of the context must come from layers that see
# further: more convolutions, each of which widens the window, or attention, in which a few
# learned vectors, the *latent experts*, each read the whole image (notebook 02) and every pixel
# reads the experts back (notebook 03). Notebook 05 trains the tutorial's model on this data,
# measures how far it gets, improves it step by step, and measures what the attention adds to the
# convolutions.

# %%
lo, hi = DEFAULTS["radius_range"]   # a fraction of the image size
extent = {"circle": 2.0, "square": 1.7, "triangle": 2.0}     # width and height, in units of r
for name, k in extent.items():
    print(f"{name:>8}: {k}r, from {k * lo * 64:.1f} to {k * hi * 64:.1f} pixels at 64x64")

# notebook 01's formula, on the tutorial encoder's layers in the order its forward runs them
encoder = u.SimpleEncoder()
field, jump = 1, 1
for layer in (encoder.conv1, encoder.pool, encoder.conv2, encoder.pool):
    kernel, stride = (v if isinstance(v, int) else v[0] for v in (layer.kernel_size, layer.stride))
    field, jump = field + (kernel - 1) * jump, jump * stride
print(f"the tutorial encoder's receptive field: {field}x{field} pixels")
print("every shape is wider and taller than the receptive field:",
      min(extent.values()) * lo * 64 > field)


# %% [markdown]
# ## Summary
#
# - The tutorial's data (noise images, independent random labels) has nothing to learn. The best
#   possible answer is 1/2 at every pixel, and the loss cannot go below ln 2 ≈ 0.693. Trained on it,
#   the tutorial's model reaches that floor and learns nothing else (measured above).
# - The series' data set, `u.make_shapes_batch`, draws circles, squares and triangles from
#   coordinate grids, with occlusion, colours at least 0.25 away from the background in every
#   channel, and noise. We rebuilt it step by step.
# - Background covers most of the pixels, so we score with mIoU; colour has the same
#   distribution in every class; the held-out (test) set is fixed and drawn from a seed no
#   training stream uses, and design choices look at a separate validation set; a batch takes
#   milliseconds.
# - A per-pixel classifier does no better than "background everywhere" (held-out mIoU 0.204 for
#   both), and its loss settles close to the entropy of the class balance: the class is in the
#   shape, and seeing a shape takes spatial context. Notebook 05 gives the model that context.
#
# ## Exercises
#
# Each exercise comes with a check function. Write your answer in a new cell and call the check
# on it. The solution is in the collapsed cell below each check (double-click to show it); its
# output is not saved, so run the solution cell to see the answer.
#
# ### Exercise 1: the floor for K classes
#
# Write `noise_floor(num_classes)` that returns the lowest expected cross-entropy any model can
# reach on `u.make_noise_batch(..., num_classes=K)`. The check compares it with the entropy of the
# labels measured on a large noise batch, for several K.

# %%
def check_noise_floor(fn):
    for k in (2, 3, 4, 10):
        _, y = u.make_noise_batch(64, 32, num_classes=k, seed=k)
        p = torch.bincount(y.flatten(), minlength=k).double() / y.numel()
        measured = float(-(p * p.log()).sum())
        got = float(fn(k))
        assert abs(got - measured) < 0.01, f"K={k}: expected about {measured:.4f}, got {got:.4f}"
    print("correct for K = 2, 3, 4, 10")


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def noise_floor(num_classes):
    # K equally likely labels, independent of the image: the best answer is 1/K for every
    # class, and the loss is then -ln(1/K) = ln K.
    return math.log(num_classes)


check_noise_floor(noise_floor)


# %% [markdown]
# ### Exercise 2: a fourth shape
#
# Write `diamond_mask(dx, dy, r)` for a diamond (a square turned by 45°) with its corners at
# distance $r$ from the centre, in the style of `shape_mask`. The check tests it on the grid of
# section 2.1: it contains the centre and the four corner points, not points just outside it, it
# is symmetric, and its area is close to $2r^2$.

# %%
def check_diamond(fn):
    size = 64
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    for r in (8.0, 12.0, 15.0):
        gx, gy = coords.view(1, size) - 32.0, coords.view(size, 1) - 32.0
        mask = fn(gx, gy, r)
        assert mask.shape == (size, size) and mask.dtype == torch.bool, "return a boolean [S, S] mask"
        def inside(x, y, r=r):
            return bool(fn(torch.tensor(float(x)), torch.tensor(float(y)), r))
        assert inside(0, 0), "the centre belongs to the diamond"
        for x, y in ((r, 0), (-r, 0), (0, r), (0, -r)):
            assert inside(x, y), f"the corner ({x}, {y}) belongs to the diamond"
        for x, y in ((r / 2 + 1, r / 2 + 1), (r + 1, 0), (0, -r - 1)):
            assert not inside(x, y), f"({x}, {y}) lies outside the diamond"
        assert torch.equal(mask, mask.T) and torch.equal(mask, mask.flip(0)), "a diamond is symmetric"
        area = int(mask.sum())
        assert abs(area - 2 * r ** 2) < 0.15 * 2 * r ** 2, f"r={r}: area {area}, expected about {2 * r ** 2:.0f}"
    print("correct for r = 8, 12, 15")


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def diamond_mask(dx, dy, r):
    return dx.abs() + dy.abs() <= r     # the "L1 circle": corners at distance r on the axes


check_diamond(diamond_mask)


# %% [markdown]
# ### Exercise 3: let colour give the class away
#
# Write `leaky_shapes_batch(batch_size, image_size, seed)`, which takes a batch from
# `u.make_shapes_batch` and repaints every pixel in a colour fixed by its class (for example
# black background, and red, green, blue for circle, square, triangle), plus the same noise (std
# 0.08). It must keep the labels. The check verifies that the class can now be read from the mean
# colour. Then train a `u.PixelClassifier` on it: what mIoU does it reach now? (The solution does
# this with 100 steps at 32×32 and a learning rate of 1e-2; run the solution cell to see the
# answer.)

# %%
def check_leaky(fn):
    x, y = fn(64, 32, seed=5)
    _, y_ref = u.make_shapes_batch(64, 32, seed=5)
    assert x.shape == (64, 3, 32, 32) and torch.equal(y, y_ref), "keep u.make_shapes_batch's labels"
    means = torch.stack([x.permute(0, 2, 3, 1)[y == k].mean(0) for k in range(4)])
    gaps = torch.cdist(means, means) + 10 * torch.eye(4)
    assert gaps.min() > 0.3, f"two classes have nearly the same mean colour (gap {gaps.min():.2f})"
    print("the colour now gives the class away: smallest gap between class colours", round(float(gaps.min()), 2))


# %% cellView="form" jupyter={"source_hidden": true} tags=["nbval-ignore-output"]
# @title Solution (double-click to show)
def leaky_shapes_batch(batch_size, image_size, seed=None):
    images, labels = u.make_shapes_batch(batch_size, image_size, seed=seed, noise=0.0)
    palette = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed or 0)
    images = palette[labels].permute(0, 3, 1, 2) + 0.08 * torch.randn(images.shape, generator=g)
    return images, labels


check_leaky(leaky_shapes_batch)
torch.manual_seed(0)
leaky_model = u.PixelClassifier()
leaky_history = u.train(leaky_model, steps=100, lr=1e-2, image_size=32, data=leaky_shapes_batch,
                        heldout=leaky_shapes_batch(64, 32, seed=99), progress=False)
# The same 260-parameter model that failed on the real data now segments almost perfectly:
# it was never too weak; the real data hides the class from a single pixel.
print(f"per-pixel classifier on leaky colours: held-out mIoU {leaky_history['miou'][-1]:.3f}")
assert leaky_history["miou"][-1] > 0.9

# %% [markdown]
# ## Final check: the notebook's claims, and your generator is `latentseg_utils.make_shapes_batch`
#
# Every verdict of the notebook in one cell, with the generator built here against the module's on
# a fresh seed.

# %% tags=["nbval-check-output"]
ours = shapes_batch_step_by_step(8, 64, seed=11)
theirs = u.make_shapes_batch(8, 64, seed=11)
same_generator = torch.equal(ours[1], theirs[1]) and torch.equal(ours[0], theirs[0])
noise_at_floor = abs(noise_final_loss - math.log(2)) < 0.01
noise_answers_half = bool(((p1 - 0.5).abs() < 0.05).all())
pixel_fails = scores["miou"] <= 0.5
assert noise_at_floor and same_generator and pixel_fails
print("noise data: final loss within 0.01 of ln 2:", noise_at_floor)
print("noise data: every predicted probability within 0.05 of 1/2:", noise_answers_half)
print("step-by-step generator matches latentseg_utils.make_shapes_batch:", same_generator)
print("per-pixel classifier mIoU at most 0.5:", pixel_fails)
print("per-pixel classifier within 0.05 mIoU of 'background everywhere':",
      abs(scores["miou"] - lazy_miou) < 0.05)
print("per-pixel classifier's held-out loss within 0.05 of the class-balance entropy:",
      abs(heldout_loss - prior_entropy) < 0.05)
