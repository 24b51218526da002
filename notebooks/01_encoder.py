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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/latentseg/latentseg/blob/v0.2/notebooks/01_encoder.ipynb)
#
# # 01 · The encoder, layer by layer
#
# Throughout the series, *the tutorial* is a short blog post, with PyTorch code for Colab, that
# builds a segmentation model from "multi-head latent attention" and "fine-grained expert
# segmentation"; the series rebuilds its model faithfully, then measures and improves it.
#
# After this notebook you can build the tutorial's `SimpleEncoder` from its layers (two stages of
# convolution, ReLU and max-pool), predict the shape after each of them, and compute and draw the
# part of the image that one of its output cells sees.
#
# **Run time:** under 10 seconds on a quiet 2-core CPU. Nothing is trained.
#
# **What you will learn**
# 1. What the tutorial's encoder does to a real image, one layer at a time, with the shape after every layer.
# 2. Why it shrinks the image by exactly 4, and what that buys and costs (measured).
# 3. The receptive field of one output cell: computed with a formula, measured with a gradient, drawn on the image.
# 4. What its feature maps look like before training.
# 5. That your encoder is exactly `latentseg_utils.SimpleEncoder`, the one that later notebooks use.
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
# The imports, a fixed seed so that every number below is the same on every run, and the device.
# Nothing in this notebook trains, so everything runs on the CPU whatever `device` says; it is
# printed so that a bug report says what you ran. `u` is the series' shared module: the encoder
# this notebook builds by hand is also `u.SimpleEncoder`, and the notebook ends by checking that
# the two agree.

# %%
import torch
import torch.nn as nn
import torch.nn.functional as F
import matplotlib.pyplot as plt
import latentseg_utils as u

torch.manual_seed(0)
device = u.get_device()
print(f"torch {torch.__version__}, device: {device}")
plt.rcParams["figure.dpi"] = 72   # small committed figures

# %% [markdown]
# ## 1. A real sample
#
# The series trains on synthetic images that it draws itself (nothing is downloaded).
# `u.make_shapes_batch` paints circles, squares and triangles, each in a random colour, on a
# background of another random colour. Colour therefore tells *where* an object is, but never
# *which* class it is: the class is the shape. That is why a segmentation model needs spatial
# context, the theme of the whole series.
#
# A batch is a pair: images `[B, 3, H, W]` with values roughly in `[0, 1]`, and label maps
# `[B, H, W]` holding one class id per pixel.

# %% tags=["nbval-check-output"]
images, labels = u.make_shapes_batch(6, image_size=64, seed=0)
print("images:", tuple(images.shape), images.dtype)
print("labels:", tuple(labels.shape), labels.dtype)
print("classes:", dict(enumerate(u.CLASS_NAMES)))

# %% [markdown]
# Here they are, drawn with the series' plotting helper. The class colours (Okabe-Ito, safe for
# colour-blind readers) are defined once in `u.CLASS_COLORS` and used for every label map.

# %%
u.plot_samples(images, labels, title="Six samples: image (top) and true classes (bottom)")
plt.show()

# %% [markdown]
# We follow one image through the encoder: sample 2 (counting from 0, so the third column above),
# which holds all three shapes. The encoder, like every PyTorch layer, expects a batch, so we add a
# batch dimension of 1.

# %% tags=["nbval-check-output"]
index = 2
image, label = images[index], labels[index]
print("classes in this image:", [u.CLASS_NAMES[c] for c in label.unique().tolist()])
x = image.unsqueeze(0)
print("x:", tuple(x.shape), "  (batch, channels, height, width)")

# %% [markdown]
# ## 2. The tutorial's encoder, one layer at a time
#
# This is the tutorial's encoder, word for word:
#
# ```python
# class SimpleEncoder(nn.Module):
#     def __init__(self, in_channels=3, feature_dim=64):
#         super().__init__()
#         self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=3, padding=1)
#         self.conv2 = nn.Conv2d(32, feature_dim, kernel_size=3, padding=1)
#         self.pool = nn.MaxPool2d(2, 2)
#
#     def forward(self, x):
#         x = F.relu(self.conv1(x))
#         x = self.pool(x)
#         x = F.relu(self.conv2(x))
#         x = self.pool(x)
#         return x
# ```
#
# Two identical stages: a 3×3 convolution, a ReLU, and a 2×2 max-pool. We run the layers by hand
# first and print the shape after each one.
#
# ### `conv1`: 3 channels in, 32 out, same size
#
# Each of the 32 output channels is a weighted sum over a 3×3 window of all 3 input channels
# (3·3·3 = 27 weights) plus a bias: 32 · 28 = 896 parameters. The output size of a convolution is
# $\lfloor (H + 2p - k)/s \rfloor + 1$; with kernel $k=3$, padding $p=1$ and stride $s=1$ that is
# $H$ again. Padding with one ring of zeros is what keeps the 64×64 size.

# %% tags=["nbval-check-output"]
conv1 = nn.Conv2d(3, 32, kernel_size=3, padding=1)
h1 = conv1(x)
print("conv1.weight:", tuple(conv1.weight.shape), " conv1.bias:", tuple(conv1.bias.shape),
      f" parameters: {u.count_parameters(conv1):,}")
print("after conv1:", tuple(h1.shape))

# %% [markdown]
# ### ReLU, then max-pool: half the size
#
# ReLU sets every negative value to zero and changes no shape. The 2×2 max-pool with stride 2
# keeps the largest value of each 2×2 block, so height and width halve. Neither has parameters.

# %% tags=["nbval-check-output"]
pool = nn.MaxPool2d(2, 2)
a1 = F.relu(h1)
p1 = pool(a1)
print("after relu:", tuple(a1.shape))
print("after pool:", tuple(p1.shape), f"  pool parameters: {u.count_parameters(pool)}")

# %% [markdown]
# ### `conv2`, ReLU, max-pool: 64 channels at a quarter of the size
#
# The second stage repeats the first on the 32 channels: 32 · 3 · 3 · 64 weights plus 64 biases,
# 18,496 parameters. After the second pool, each side is a quarter of the input's.

# %% tags=["nbval-check-output"]
conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
h2 = conv2(p1)
p2 = pool(F.relu(h2))
print("after conv2:", tuple(h2.shape), f"  parameters: {u.count_parameters(conv2):,}")
print("after pool :", tuple(p2.shape))


# %% [markdown]
# ### The same thing as a module
#
# Now we write the class. The attribute names (`conv1`, `conv2`, `pool`) are the tutorial's. They
# matter: they become the keys of the module's `state_dict`, and the final check of this notebook
# loads the weights of `latentseg_utils.SimpleEncoder` into your class by those names.

# %% tags=["nbval-check-output"]
class SimpleEncoder(nn.Module):
    """The tutorial's CNN encoder: [B, in_channels, H, W] -> [B, feature_dim, H/4, W/4]."""

    def __init__(self, in_channels=3, feature_dim=64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, feature_dim, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))   # [B, 32, H/2, W/2]
        x = self.pool(F.relu(self.conv2(x)))   # [B, feature_dim, H/4, W/4]
        return x


encoder = SimpleEncoder()
with torch.no_grad():
    features = encoder(x)
print("encoder:", tuple(x.shape), "->", tuple(features.shape),
      f"  parameters: {u.count_parameters(encoder):,}")

# %% [markdown]
# ### Sizes that are not a multiple of 4
#
# Each pool rounds down. A 66×66 image therefore gives a 16×16 map, and the decoder's ×4
# upsampling (notebook 03) returns 64×64, not 66×66. So the series' whole model,
# `u.SegmentationModel` (assembled in notebook 03), refuses such sizes with an error rather than
# returning a label map of the wrong size, as the last line shows.

# %% tags=["nbval-check-output"]
with torch.no_grad():
    for size in (32, 64, 96, 66):
        side = encoder(torch.zeros(1, 3, size, size)).shape[-1]
        print(f"{size:>3} x {size:<3} -> {side} x {side} cells -> x4 upsample: {4 * side} x {4 * side}"
              + ("" if 4 * side == size else "   (does not match the input)"))
try:
    u.SegmentationModel()(torch.zeros(1, 3, 66, 66))
except ValueError as error:
    print("u.SegmentationModel:", error)

# %% [markdown]
# ## 3. Why stride 4?
#
# From notebook 02 on, every cell of the encoder's output becomes a **token**: a vector of 64
# numbers, one per channel. The attention layers then weigh tokens against each other or against
# a few learned vectors, one weight per pair compared, so their cost grows with the number of
# tokens $N$:
#
# - full self-attention, where every token looks at every token, stores $N^2$ weights;
# - the tutorial's attention, where $K = 16$ learned vectors (notebook 02 calls them latents) look
#   at the tokens, stores $N \cdot K$ weights.
#
# Here **stride** means the whole encoder's downsampling (its two pools of stride 2 make 4): one
# token per stride×stride block of pixels. The table counts both for a 64×64 image at several
# strides. Stride 1 would mean attention over raw pixels.

# %% tags=["nbval-check-output"]
K = 16   # the tutorial's number of latents (notebook 02)
print(f"{'stride':>6}  {'grid':>7}  {'tokens N':>8}  {'N*N':>12}  {'N*K':>7}")
for stride in (1, 2, 4, 8):
    side = 64 // stride
    N = side * side
    print(f"{stride:>6}  {side:>3}x{side:<3}  {N:>8,}  {N * N:>12,}  {N * K:>7,}")


# %% [markdown]
# Stride 4 turns 4,096 pixels into 256 tokens, so even full self-attention stores 65,536 weights
# instead of 16,777,216. The price is resolution: one token stands for a 4×4 block of pixels.
# Suppose a model classified every token perfectly, giving it the class that most pixels of its
# block have, and its decoder copied that class to the whole block. How good would the label map
# be? `block_labels` below builds that map for several strides, and we score it with the series'
# two metrics:
#
# - **pixel accuracy** (`u.pixel_accuracy`): the share of pixels whose class is right;
# - **mIoU** (`u.mean_iou`): the IoU (intersection over union) of a class is
#   |prediction ∩ truth| / |prediction ∪ truth|, the number of pixels that both the prediction and
#   the truth give that class divided by the number that either gives it; the mIoU is the mean of
#   the IoUs over the classes.
#
# Both count the pixels of the **held-out set**, `u.make_heldout_set()`: a fixed set of 256 images
# drawn with a seed of its own that no training batch uses, on which every notebook scores its
# models. Notebook 04 builds the data and this set.

# %%
def block_labels(labels, stride, num_classes=4):
    """The majority class of every stride x stride block, copied back to full size: [B, H, W]."""
    one_hot = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()   # [B, C, H, W]
    votes = F.avg_pool2d(one_hot, stride)                                 # [B, C, H/s, W/s]
    return votes.argmax(1).repeat_interleave(stride, 1).repeat_interleave(stride, 2)


heldout_images, heldout_labels = u.make_heldout_set(256)
for stride in (1, 2, 4, 8, 16):
    coarse = block_labels(heldout_labels, stride)
    print(f"stride {stride:>2}: pixel accuracy {u.pixel_accuracy(coarse, heldout_labels):6.1%}, "
          f"mIoU {u.mean_iou(coarse, heldout_labels, 4):.3f}")

# %% [markdown]
# At stride 4, perfect tokens whose class is copied to their blocks lose about a seventh of the
# mIoU (0.856 instead of 1.000) but keep a pixel accuracy of 96.8%. All the wrong pixels lie in
# blocks that straddle a boundary between two classes, since a block of one class is copied
# exactly. The mIoU falls further than the accuracy because each wrong pixel counts against two
# classes, and against a shape's small area rather than against all the pixels. Stride 8 costs
# much more (mIoU 0.742). The figure shows the maps for sample 2: at stride 4 the edges become 4×4
# staircases.

# %%
from matplotlib.patches import Patch

fig, axes = plt.subplots(1, 5, figsize=(10, 3.1))
axes[0].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
axes[0].set_title("image")
for ax, stride in zip(axes[1:], (1, 2, 4, 8)):
    coarse = block_labels(label.unsqueeze(0), stride)[0]
    ax.imshow(coarse.numpy(), cmap=u.class_colormap(4), vmin=0, vmax=3, interpolation="nearest")
    ax.set_title(f"stride {stride}: {64 // stride}x{64 // stride}")
for ax in axes:
    ax.set_xlabel("x (pixels)")
axes[0].set_ylabel("y (pixels)")
fig.legend(handles=[Patch(facecolor=c, edgecolor="grey", label=n)
                    for c, n in zip(u.CLASS_COLORS, u.CLASS_NAMES)],
           loc="lower center", ncol=4, frameon=False)
fig.suptitle("Each block's majority class, copied to the whole block")
fig.tight_layout(rect=(0, 0.1, 1, 1))
plt.show()

# %% [markdown]
# These numbers belong to a decoder that copies each cell's class to its block, not to stride 4.
# The tutorial's decoder (notebook 03) works on the **logits**, one raw score per class and cell,
# and upsamples them **bilinearly**: each pixel gets a distance-weighted average of the four
# nearest cells' scores, so a boundary can fall inside a block. The cell below gives it perfect
# stride-4 scores, each block's share of each class:

# %%
shares = F.avg_pool2d(F.one_hot(heldout_labels, 4).permute(0, 3, 1, 2).float(), 4)   # [B, 4, 16, 16]
smooth = F.interpolate(shares, scale_factor=4, mode="bilinear", align_corners=False).argmax(1)
print(f"stride 4, perfect scores upsampled bilinearly: pixel accuracy "
      f"{u.pixel_accuracy(smooth, heldout_labels):.1%}, mIoU {u.mean_iou(smooth, heldout_labels, 4):.3f}")

# %% [markdown]
# Blending lifts the mIoU from 0.856 to 0.959. What upsampling cannot undo is that the encoder has
# already mixed each 4×4 block into one vector, so stride 4 stays a compromise; notebook 05 adds a
# full-resolution path around the encoder to sharpen the edges.

# %% [markdown]
# ## 4. The receptive field of one output cell
#
# Which input pixels can influence one cell of the 16×16 output? Walk through the layers keeping
# two numbers: the **jump** $j$, the distance in input pixels between two neighbouring cells of
# the current layer, and the **receptive field** $r$, the width of the input window one cell
# sees. A single input pixel has $r = 1, j = 1$. A layer with kernel $k$ and stride $s$ gives
#
# $$r_\text{out} = r_\text{in} + (k - 1)\, j_\text{in}, \qquad j_\text{out} = j_\text{in} \cdot s .$$
#
# A max-pool is a layer with kernel 2 and stride 2 for this purpose.

# %% tags=["nbval-check-output"]
layers = [("conv1", 3, 1), ("pool", 2, 2), ("conv2", 3, 1), ("pool", 2, 2)]
r, j = 1, 1
print(f"{'layer':<6} {'kernel':>6} {'stride':>6} {'jump':>5} {'field':>6}")
for name, k, s in layers:
    r, j = r + (k - 1) * j, j * s
    print(f"{name:<6} {k:>6} {s:>6} {j:>5} {r:>6}")
receptive_field, jump = r, j
print(f"one output cell sees {receptive_field}x{receptive_field} pixels; "
      f"neighbouring cells are {jump} pixels apart")


# %% [markdown]
# A formula that can be checked should be. The receptive field depends only on kernel sizes,
# strides and padding, not on the weights or on ReLU. So we measure it on a stand-in with the
# same geometry whose weights are all ones, with average pooling in place of max-pooling.
# (With max-pooling and ReLU the gradient flows only through the winning inputs, so it would
# light up only part of the field.) Every input pixel inside the field then has a positive
# gradient, and every other pixel has zero.
#
# Which cell? Among the cells whose 4×4 block holds more than one class (cells on an edge), we take
# the one nearest the centre of the 16×16 grid. For sample 2 that is cell (7, 5), on the
# triangle's left edge just above its base (drawn below).

# %% tags=["nbval-check-output"]
def measured_field(row, col, size=64):
    """The input pixels that can influence output cell (row, col): a bool mask [size, size]."""
    probe = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.AvgPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.AvgPool2d(2))
    for p in probe.parameters():
        nn.init.ones_(p)
    pixels = torch.zeros(1, 3, size, size, requires_grad=True)
    probe(pixels)[0, :, row, col].sum().backward()
    return pixels.grad[0].abs().sum(0) > 0


def box(mask):
    """(top, bottom, left, right) of the True pixels, inclusive."""
    rows, cols = mask.nonzero(as_tuple=True)
    return rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()


# cells whose 4x4 block holds more than one class lie on an edge; take the most central one
blocks = label.unfold(0, 4, 4).unfold(1, 4, 4).reshape(16, 16, 16)            # [16, 16, 4*4]
mixed = [(r, c) for r in range(16) for c in range(16) if len(blocks[r, c].unique()) > 1]
cell = min(mixed, key=lambda rc: (rc[0] - 7.5) ** 2 + (rc[1] - 7.5) ** 2)
top, bottom, left, right = box(measured_field(*cell))
print(f"output cell {cell}: input rows {top}..{bottom}, columns {left}..{right}, "
      f"{bottom - top + 1}x{right - left + 1} pixels")
assert (bottom - top + 1, right - left + 1) == (receptive_field, receptive_field)
top, bottom, left, right = box(measured_field(0, 0))
print(f"output cell (0, 0): input rows {top}..{bottom}, columns {left}..{right} "
      "(the rest of its field is zero padding)")

# %% [markdown]
# Now draw it. The filled square is the 4×4 block of pixels that the cell stands for; the outline is
# everything the cell can see. Fields of neighbouring cells overlap, since 10 > 4. The faint grid
# marks the 16×16 cells.
#
# `radius_range`, a default of `u.make_shapes_batch`, gives the shapes' radii as fractions of the
# image side: 0.14 to 0.25, that is 9 to 16 pixels here (the next cell prints both). Even the
# smallest shape is wider than 10 pixels, so a 10×10 window never holds a whole shape: a cell
# inside a shape sees plain colour, and a cell on an edge sees a short stretch of it, perhaps with
# a corner. That is too little to tell a circle from a square reliably; the attention layers of
# notebooks 02 and 03 have to bring in the context.

# %%
import inspect
from matplotlib.patches import Rectangle

low, high = inspect.signature(u.make_shapes_batch).parameters["radius_range"].default
print(f"radius_range = {(low, high)}: radius {low * 64:.0f} to {high * 64:.0f} pixels in a 64x64 image")

fig, ax = plt.subplots(figsize=(4.8, 5.2))
ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
for t in range(0, 65, jump):
    ax.axhline(t - 0.5, color="white", lw=0.4, alpha=0.6)
    ax.axvline(t - 0.5, color="white", lw=0.4, alpha=0.6)
for (row, col), colour in ((cell, "#D55E00"), ((0, 0), "#F0E442")):   # Okabe-Ito vermillion, yellow
    top, bottom, left, right = box(measured_field(row, col))
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left + 1, bottom - top + 1,
                           fill=False, ec=colour, lw=2.5, label=f"field of cell {(row, col)}"))
    ax.add_patch(Rectangle((col * jump - 0.5, row * jump - 0.5), jump, jump, fc=colour,
                           alpha=0.8, label=f"pixels cell {(row, col)} stands for"))
ax.set(title=f"What one output cell sees\n(shapes have radius {low * 64:.0f} to {high * 64:.0f} pixels)", xlabel="x (pixels)", ylabel="y (pixels)")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Feature maps
#
# What does the encoder compute? Each of its output channels is a map over the image. The
# weights are still random, so these are random filters. Even so, random 3×3 filters respond to
# colour and to colour changes (edges), and that is the raw material that training will shape. The
# top row shows the first 8 of the 32 channels after `conv1` and ReLU, at full resolution. The
# bottom row shows the first 8 of the 64 channels that leave the encoder, at 16×16. Each map has
# its own colour scale (dark is low). Look at the image border: several maps have a bright or dark
# frame along an edge, where the zero padding puts zeros into the filter's window. And output
# channel 5 is blank.

# %%
with torch.no_grad():
    stage1 = F.relu(encoder.conv1(x))[0]      # [32, 64, 64]
    stage2 = features[0]                      # [64, 16, 16]

fig, axes = plt.subplots(2, 9, figsize=(12, 3.4))
axes[0, 0].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
axes[0, 0].set_title("image", fontsize=9)
axes[1, 0].imshow(label.numpy(), cmap=u.class_colormap(4), vmin=0, vmax=3, interpolation="nearest")
axes[1, 0].set_title("truth", fontsize=9)
for i in range(8):
    axes[0, i + 1].imshow(stage1[i].numpy(), cmap="viridis")
    axes[0, i + 1].set_title(f"conv1 ch {i}", fontsize=9)
    axes[1, i + 1].imshow(stage2[i].numpy(), cmap="viridis", interpolation="nearest")
    axes[1, i + 1].set_title(f"output ch {i}", fontsize=9)
for ax in axes.flat:
    ax.set_xticks([]), ax.set_yticks([])
axes[0, 1].set_ylabel("64x64", fontsize=9)
axes[1, 1].set_ylabel("16x16", fontsize=9)
fig.suptitle("Feature maps of the untrained encoder (each map on its own colour scale)")
fig.tight_layout()
plt.show()

# %% [markdown]
# Many values are exactly zero, and the cell below counts them, with the channels that are zero
# everywhere on this image, like channel 5. ReLU sets every negative value to zero. A blank channel
# passes nothing on to the attention layers for this image, and this image gives its filter no
# gradient either (ReLU passes none where its output is zero). Training changes it only through
# the images on which it is active.

# %%
print(f"values that are zero after conv1 + ReLU: {(stage1 == 0).float().mean():.0%}")
print(f"values that are zero at the encoder's output: {(stage2 == 0).float().mean():.0%}")
zero_channels = (stage2.flatten(1).amax(1) == 0).nonzero().flatten().tolist()
print(f"output channels that are zero everywhere on this image: "
      f"{len(zero_channels)} of {stage2.shape[0]}, channels {zero_channels}")


# %% [markdown]
# ## Summary
#
# - The tutorial's encoder is two stages of 3×3 convolution, ReLU and 2×2 max-pool:
#   `[B, 3, H, W] -> [B, 32, H/2, W/2] -> [B, 64, H/4, W/4]`, with 19,392 parameters.
# - Stride 4 turns a 64×64 image into 256 tokens, which keeps attention cheap. The price is
#   resolution: with perfect tokens, a decoder that copies each token's class to its 4×4 block
#   reaches a held-out mIoU of 0.856, losing pixels only at edges. That is a limit of copying, not
#   of stride 4: upsampling the same perfect scores bilinearly, as the tutorial's decoder does,
#   reaches 0.959.
# - Models are scored by pixel accuracy and mIoU on the fixed held-out set `u.make_heldout_set()`.
# - One output cell sees a 10×10 window (computed, measured, drawn), smaller than any whole shape.
#   Telling a circle from a square takes context, which is the job of the attention layers in
#   notebooks 02 and 03.
# - Input sizes must be multiples of 4, or the decoder's ×4 upsample does not give back the input's
#   size; `u.SegmentationModel` refuses other sizes.
#
# ## Exercises
#
# Each exercise comes with a check function. Write your answer in a new cell and call the check
# on it. The solution is in the hidden cell titled *Solution* below each check: click its collapsed
# input to read it (double-click in Colab), and run it to see the answer.
#
# ### Exercise 1: a third stage
#
# Write `field_and_jump(layers)`, which takes a list of `(kernel, stride)` pairs and returns
# `(receptive_field, jump)`. What are they if we add a third conv3×3 + pool2 stage (stride 8)?
# The check compares your function with fields measured by gradients, as in section 4, on several stacks.

# %%
def measure_field_and_jump(layers, size=96):
    """Measured (receptive field, jump) of a stack of (kernel, stride) layers, by gradients."""
    probe = nn.Sequential(*[nn.Conv2d(1, 1, k, stride=s, padding=(k - 1) // 2, bias=False)
                            for k, s in layers])
    for p in probe.parameters():
        nn.init.ones_(p)
    pixels = torch.zeros(1, 1, size, size, requires_grad=True)
    out = probe(pixels)[0, 0]
    mid = out.shape[-1] // 2
    left_edges = []
    for col in (mid, mid + 1):
        (grad,) = torch.autograd.grad(out[mid, col], pixels, retain_graph=True)
        cols = grad[0, 0].sum(0).nonzero()
        left_edges.append(cols.min().item())
        if col == mid:
            field = (cols.max() - cols.min() + 1).item()
    return field, left_edges[1] - left_edges[0]


def check_field_and_jump(fn):
    stacks = [[(3, 1)], [(3, 1), (2, 2)], [(3, 1), (2, 2), (3, 1), (2, 2)],
              [(3, 1), (2, 2)] * 3, [(5, 1), (3, 2), (3, 1)], [(7, 2), (3, 2)]]
    for layers in stacks:
        expected, got = measure_field_and_jump(layers), tuple(fn(layers))
        assert got == expected, f"{layers}: expected {expected}, got {got}"
    print(f"correct on all {len(stacks)} stacks")


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def field_and_jump(layers):
    r, j = 1, 1
    for k, s in layers:
        r, j = r + (k - 1) * j, j * s
    return r, j


check_field_and_jump(field_and_jump)
print("three stages (field, jump):", field_and_jump([(3, 1), (2, 2)] * 3))


# %% [markdown]
# ### Exercise 2: fields at the border
#
# Write `field_box(row, col, size=64)`, which returns `(top, bottom, left, right)`, the inclusive
# pixel rows and columns that output cell `(row, col)` sees, clipped to the image. Use
# `receptive_field` and `jump` from section 4, not the gradient.

# %%
def check_field_box(fn):
    cells = [(0, 0), (0, 15), (15, 0), (15, 15), (0, 7), (7, 0), (1, 1), (8, 8), (14, 3), (6, 9)]
    for cell_ in cells:
        expected, got = box(measured_field(*cell_)), tuple(fn(*cell_))
        assert got == expected, f"cell {cell_}: expected {expected}, got {got}"
    print(f"correct on all {len(cells)} cells")


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def field_box(row, col, size=64):
    # cell i stands for pixels jump*i .. jump*i + jump - 1; its field reaches
    # (receptive_field - jump) / 2 = 3 pixels further on each side
    margin = (receptive_field - jump) // 2
    def span(i):
        return max(0, jump * i - margin), min(size - 1, jump * i + jump - 1 + margin)
    (top, bottom), (left, right) = span(row), span(col)
    return top, bottom, left, right


check_field_box(field_box)


# %% [markdown]
# ### Exercise 3: counting parameters
#
# Write `encoder_parameters(in_channels, feature_dim)` with pencil-and-paper arithmetic (no
# PyTorch), and check it against `u.count_parameters(u.SimpleEncoder(...))`. How many parameters
# does an encoder for 1-channel images with `feature_dim=128` have?

# %%
def check_encoder_parameters(fn):
    settings = [(3, 64), (1, 64), (3, 128), (4, 32), (1, 128)]
    for c, d in settings:
        expected = u.count_parameters(u.SimpleEncoder(c, d))
        assert fn(c, d) == expected, f"({c}, {d}): expected {expected:,}, got {fn(c, d):,}"
    print(f"correct on all {len(settings)} settings")


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def encoder_parameters(in_channels, feature_dim):
    conv1 = in_channels * 3 * 3 * 32 + 32
    conv2 = 32 * 3 * 3 * feature_dim + feature_dim
    return conv1 + conv2


check_encoder_parameters(encoder_parameters)
print(f"1 channel, feature_dim=128: {encoder_parameters(1, 128):,} parameters")

# %% [markdown]
# ## Final check: your encoder is `latentseg_utils.SimpleEncoder`
#
# Later notebooks import the encoder from `latentseg_utils`. This cell checks that it is the one you
# built: the same parameter names and shapes, and, given the same weights, the same output on
# all six images. If the two drifted apart, this cell would fail.

# %% tags=["nbval-check-output"]
reference = u.SimpleEncoder()
mine = SimpleEncoder()
shapes = [(name, tuple(p.shape)) for name, p in mine.state_dict().items()]
same_shapes = shapes == [(name, tuple(p.shape)) for name, p in reference.state_dict().items()]
mine.load_state_dict(reference.state_dict())
with torch.no_grad():
    same_output = torch.allclose(mine(images), reference(images), atol=1e-6)
for name, shape in shapes:
    print(f"  {name:<13} {shape}")
print("same parameter names and shapes:", same_shapes)
print("matches latentseg_utils.SimpleEncoder:", same_output)
assert same_shapes and same_output, "SimpleEncoder here and in latentseg_utils have drifted apart"
