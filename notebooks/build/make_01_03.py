"""Write notebooks 01-03 of the latentseg series (sources only, no outputs).

    python notebooks/build/make_01_03.py            # all three
    python notebooks/build/make_01_03.py 02         # one

Then execute each for commit (Restart & Run All equivalent):

    cd notebooks && jupyter nbconvert --to notebook --execute --inplace \
        --ExecutePreprocessor.record_timing=False \
        --ExecutePreprocessor.store_widget_state=False 01_encoder.ipynb

Edit the text here, not in the .ipynb files, so the notebooks stay reproducible.
"""
import sys

from nbtools import Notebook, imports_cell, setup_cell_source

IMPORTS = imports_cell(r'''
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import matplotlib.pyplot as plt
import latentseg_utils as u
''')

IMPORTS_TEXT = """
The imports, a fixed seed so that every number below is the same on every run, and the device.
Nothing in this notebook trains, so everything runs on the CPU whatever `device` says; it is
printed so that a bug report says what you ran. `u` is the series' shared module: whatever this
notebook builds by hand, `u` holds too, and the notebook ends by checking that the two agree.
"""


# ---------------------------------------------------------------------------------------------
# 01 · The encoder
# ---------------------------------------------------------------------------------------------

def notebook_01() -> Notebook:
    nb = Notebook("nb01")
    nb.md(r"""
# 01 · The encoder, layer by layer

After this notebook you can build the tutorial's `SimpleEncoder` from its four layers, predict
the shape after each of them, and compute and draw the part of the image that one of its
output cells sees.

**Run time:** under 10 seconds on a quiet 2-core CPU. Nothing is trained.

**What you will learn**
1. What the tutorial's encoder does to a real image, one layer at a time, with the shape after every layer.
2. Why it shrinks the image by exactly 4, and what that buys and costs (measured).
3. The receptive field of one output cell: computed with a formula, measured with a gradient, drawn on the image.
4. What the 64 feature maps look like before training.
5. That your encoder is exactly `latentseg_utils.SimpleEncoder`, the one that later notebooks use.

The first code cell is the series' setup. In Colab it fetches `latentseg_utils.py` (pinned to a
release) and installs what Colab lacks. On your own machine it does nothing except make the
module importable.
""")
    nb.code(setup_cell_source(), verbatim=True)   # word for word
    nb.md(IMPORTS_TEXT)
    nb.code(IMPORTS)

    nb.md(r"""
## 1. A real sample

The series trains on synthetic images that it draws itself (nothing is downloaded).
`u.make_shapes_batch` paints circles, squares and triangles, each in a random colour, on a
background of another random colour. Colour therefore tells *where* an object is, but never
*which* class it is: the class is the shape. That is why a segmentation model needs spatial
context, the theme of the whole series.

A batch is a pair: images `[B, 3, H, W]` with values roughly in `[0, 1]`, and label maps
`[B, H, W]` holding one class id per pixel.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
images, labels = u.make_shapes_batch(6, image_size=64, seed=0)
print("images:", tuple(images.shape), images.dtype)
print("labels:", tuple(labels.shape), labels.dtype)
print("classes:", dict(enumerate(u.CLASS_NAMES)))
''')
    nb.md(r"""
Here they are, drawn with the series' plotting helper. The class colours (Okabe-Ito, safe for
colour-blind readers) are defined once in `u.CLASS_COLORS` and used by every figure.
""")
    nb.code(r'''
u.plot_samples(images, labels, title="Six samples: image (top) and true classes (bottom)")
plt.show()
''')
    nb.md(r"""
We follow one image through the encoder: sample 2, which holds all three shapes. The encoder,
like every PyTorch layer, expects a batch, so we add a batch dimension of 1.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
index = 2
image, label = images[index], labels[index]
print("classes in this image:", [u.CLASS_NAMES[c] for c in label.unique().tolist()])
x = image.unsqueeze(0)
print("x:", tuple(x.shape), "  (batch, channels, height, width)")
''')

    nb.md(r"""
## 2. The tutorial's encoder, one layer at a time

This is the tutorial's encoder, word for word:

```python
class SimpleEncoder(nn.Module):
    def __init__(self, in_channels=3, feature_dim=64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, feature_dim, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = self.pool(x)
        x = F.relu(self.conv2(x))
        x = self.pool(x)
        return x
```

Two identical stages: a 3×3 convolution, a ReLU, and a 2×2 max-pool. We run the layers by hand
first and print the shape after each one.

### `conv1`: 3 channels in, 32 out, same size

Each of the 32 output channels is a weighted sum over a 3×3 window of all 3 input channels
(3·3·3 = 27 weights) plus a bias: 32 · 28 = 896 parameters. The output size of a convolution is
$\lfloor (H + 2p - k)/s \rfloor + 1$; with kernel $k=3$, padding $p=1$ and stride $s=1$ that is
$H$ again. Padding with one ring of zeros is what keeps the 64×64 size.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
conv1 = nn.Conv2d(3, 32, kernel_size=3, padding=1)
h1 = conv1(x)
print("conv1.weight:", tuple(conv1.weight.shape), " conv1.bias:", tuple(conv1.bias.shape),
      f" parameters: {u.count_parameters(conv1):,}")
print("after conv1:", tuple(h1.shape))
''')
    nb.md(r"""
### ReLU, then max-pool: half the size

ReLU sets every negative value to zero and changes no shape. The 2×2 max-pool with stride 2
keeps the largest value of each 2×2 block, so height and width halve. Neither has parameters.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
pool = nn.MaxPool2d(2, 2)
a1 = F.relu(h1)
p1 = pool(a1)
print("after relu:", tuple(a1.shape))
print("after pool:", tuple(p1.shape), f"  pool parameters: {u.count_parameters(pool)}")
''')
    nb.md(r"""
### `conv2`, ReLU, max-pool: 64 channels at a quarter of the size

The second stage repeats the first on the 32 channels: 32 · 3 · 3 · 64 weights plus 64 biases,
18,496 parameters. After the second pool, each side is a quarter of the input's.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
h2 = conv2(p1)
p2 = pool(F.relu(h2))
print("after conv2:", tuple(h2.shape), f"  parameters: {u.count_parameters(conv2):,}")
print("after pool :", tuple(p2.shape))
''')
    nb.md(r"""
### The same thing as a module

Now we write the class. The attribute names (`conv1`, `conv2`, `pool`) are the tutorial's. They
matter: they become the keys of the module's `state_dict`, and the final check of this notebook
loads the weights of `latentseg_utils.SimpleEncoder` into your class by those names.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
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
''')
    nb.md(r"""
### Sizes that are not a multiple of 4

Each pool rounds down. A 66×66 image therefore gives a 16×16 map, and the decoder's ×4
upsampling (notebook 03) returns 64×64, not 66×66. This is why `u.SegmentationModel` rejects
such sizes with a clear error instead of returning a label map of the wrong size.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    for size in (32, 64, 96, 66):
        side = encoder(torch.zeros(1, 3, size, size)).shape[-1]
        print(f"{size:>3} x {size:<3} -> {side} x {side} cells -> x4 upsample: {4 * side} x {4 * side}"
              + ("" if 4 * side == size else "   (does not match the input)"))
''')

    nb.md(r"""
## 3. Why stride 4?

From notebook 02 on, every cell of the encoder's output becomes a **token**: a vector of 64
numbers, one per channel. The attention layers then compare tokens with each other or with a
few learned vectors. Their cost grows with the number of tokens $N$:

- full self-attention, where every token looks at every token, stores $N^2$ weights per head;
- the tutorial's latent attention, where $K = 16$ learned latents look at the tokens, stores
  $N \cdot K$ weights per head.

The table counts both for a 64×64 image at several strides. Stride 1 would mean attention over
raw pixels.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
K = 16   # the tutorial's number of latents (notebook 02)
print(f"{'stride':>6}  {'grid':>7}  {'tokens N':>8}  {'N*N':>12}  {'N*K':>7}")
for stride in (1, 2, 4, 8):
    side = 64 // stride
    N = side * side
    print(f"{stride:>6}  {side:>3}x{side:<3}  {N:>8,}  {N * N:>12,}  {N * K:>7,}")
''')
    nb.md(r"""
Stride 4 turns 4,096 pixels into 256 tokens, so that even full self-attention would stay small.
The price is resolution: one token stands for a 4×4 block of pixels. Suppose the model were
perfect at the token level and gave each block the class most of its pixels have. How good could
its label map be? We measure that ceiling on the series' fixed held-out set (256 images) for
several strides, with the series' metrics.
""")
    nb.code(r'''
def block_labels(labels, stride, num_classes=4):
    """The majority class of every stride x stride block, copied back to full size: [B, H, W]."""
    one_hot = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()   # [B, C, H, W]
    votes = F.avg_pool2d(one_hot, stride)                                 # [B, C, H/s, W/s]
    return votes.argmax(1).repeat_interleave(stride, 1).repeat_interleave(stride, 2)


heldout_images, heldout_labels = u.make_heldout_set(256)
for stride in (1, 2, 4, 8, 16):
    coarse = block_labels(heldout_labels, stride)
    print(f"stride {stride:>2}: best pixel accuracy {u.pixel_accuracy(coarse, heldout_labels):6.1%}, "
          f"best mIoU {u.mean_iou(coarse, heldout_labels, 4):.3f}")
''')
    nb.md(r"""
At stride 4 even a perfect token classifier that copies each token's class to its 4×4 block
loses about a sixth of the mean IoU, almost all of it along the objects' edges; the figure shows
where. The tutorial's decoder (notebook 03) upsamples the logits bilinearly rather than copying
blocks, so it can do a little better than this ceiling, but the encoder has already mixed
each 4×4 block into one vector. Stride 8 would cost much more. Stride 4 is a compromise, and
notebook 05 adds a full-resolution path to win the edges back.
""")
    nb.code(r'''
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
fig.suptitle("The best label map a model could give with one class per token")
fig.tight_layout(rect=(0, 0.1, 1, 1))
plt.show()
''')

    nb.md(r"""
## 4. The receptive field of one output cell

Which input pixels can influence one cell of the 16×16 output? Walk through the layers keeping
two numbers: the **jump** $j$, the distance in input pixels between two neighbouring cells of
the current layer, and the **receptive field** $r$, the width of the input window one cell
sees. A single input pixel has $r = 1, j = 1$. A layer with kernel $k$ and stride $s$ gives

$$r_\text{out} = r_\text{in} + (k - 1)\, j_\text{in}, \qquad j_\text{out} = j_\text{in} \cdot s .$$

A max-pool is a layer with kernel 2 and stride 2 for this purpose.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
layers = [("conv1", 3, 1), ("pool", 2, 2), ("conv2", 3, 1), ("pool", 2, 2)]
r, j = 1, 1
print(f"{'layer':<6} {'kernel':>6} {'stride':>6} {'jump':>5} {'field':>6}")
for name, k, s in layers:
    r, j = r + (k - 1) * j, j * s
    print(f"{name:<6} {k:>6} {s:>6} {j:>5} {r:>6}")
receptive_field, jump = r, j
print(f"one output cell sees {receptive_field}x{receptive_field} pixels; "
      f"neighbouring cells are {jump} pixels apart")
''')
    nb.md(r"""
Do not trust a formula you can check. The receptive field depends only on kernel sizes,
strides and padding, not on the weights or on ReLU. So we measure it on a stand-in with the
same geometry whose weights are all ones, with average pooling in place of max-pooling.
(With max-pooling and ReLU the gradient flows only through the winning inputs, so it would
light up only part of the field.) Every input pixel inside the field then has a positive gradient, and every other
pixel has zero.

We pick the output cell on the circle's edge that lies nearest the image centre.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
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
''')
    nb.md(r"""
Now draw it. The filled square is the 4×4 block of pixels that the cell stands for; the outline is
everything the cell can see. Fields of neighbouring cells overlap, since 10 > 4. The faint grid
marks the 16×16 cells.

The shapes' radii are 10% to 22% of the image side (`radius_range` of `make_shapes_batch`; the
title gives them in pixels), so a 10×10 window sees a piece of an edge, not a whole shape. A cell cannot tell a circle from a
square on its own. The attention layers of notebooks 02 and 03 have to bring in the context.
""")
    nb.code(r'''
import inspect
from matplotlib.patches import Rectangle

low, high = inspect.signature(u.make_shapes_batch).parameters["radius_range"].default

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
''')

    nb.md(r"""
## 5. Feature maps

What does the encoder compute? Each of its output channels is a map over the image. The
weights are still random, so these are random filters. Even so, random 3×3 filters respond to colour and to
colour changes (edges), and that is the raw material that training will shape. The top row
shows 8 of the 32 channels after `conv1` and ReLU, at full resolution. The bottom row shows
8 of the 64 channels that leave the encoder, at 16×16. Each map has its own colour scale
(dark is low).
""")
    nb.code(r'''
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
''')
    nb.md(r"""
The zeros are a property of the untrained network worth knowing: ReLU zeroes every negative
value, and some channels are zero everywhere on this image. Such channels pass nothing on to
the attention layers until training moves their filters.
""")
    nb.code(r'''
print(f"values that are zero after conv1 + ReLU: {(stage1 == 0).float().mean():.0%}")
print(f"values that are zero at the encoder's output: {(stage2 == 0).float().mean():.0%}")
print(f"output channels that are zero everywhere on this image: "
      f"{int((stage2.flatten(1).amax(1) == 0).sum())} of {stage2.shape[0]}")
''')

    nb.md(r"""
## Summary

- The tutorial's encoder is two stages of 3×3 convolution, ReLU and 2×2 max-pool:
  `[B, 3, H, W] -> [B, 32, H/2, W/2] -> [B, 64, H/4, W/4]`, with 19,392 parameters.
- Stride 4 turns a 64×64 image into 256 tokens, which keeps attention cheap. The price is
  resolution: even a perfect token classifier loses the edges (measured above), and notebook 05
  wins them back.
- One output cell sees a 10×10 window (computed, measured, drawn), smaller than most shapes.
  Telling a circle from a square takes context, which is the job of the attention layers in
  notebooks 02 and 03.
- Input sizes must be multiples of 4, or the decoder's ×4 upsample does not give back the input's
  size.

## Exercises

Each exercise comes with a check function. Write your answer in a new cell and call the check
on it. The solution is in the collapsed cell below each check; click it to expand.

### Exercise 1: a third stage

Write `field_and_jump(layers)`, which takes a list of `(kernel, stride)` pairs and returns
`(receptive_field, jump)`. What are they if we add a third conv3×3 + pool2 stage (stride 8)?
The check compares your function with fields measured by gradients, as in section 4, on several stacks.
""")
    nb.code(r'''
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
''')
    nb.code(r'''
# @title Solution (double-click to show)
# NBVAL_CHECK_OUTPUT
def field_and_jump(layers):
    r, j = 1, 1
    for k, s in layers:
        r, j = r + (k - 1) * j, j * s
    return r, j


check_field_and_jump(field_and_jump)
print("three stages (field, jump):", field_and_jump([(3, 1), (2, 2)] * 3))
''', hidden=True)
    nb.md(r"""
### Exercise 2: fields at the border

Write `field_box(row, col, size=64)`, which returns `(top, bottom, left, right)`, the inclusive
pixel rows and columns that output cell `(row, col)` sees, clipped to the image. Use
`receptive_field` and `jump` from section 4, not the gradient.
""")
    nb.code(r'''
def check_field_box(fn):
    cells = [(0, 0), (0, 15), (15, 0), (15, 15), (0, 7), (7, 0), (1, 1), (8, 8), (14, 3), (6, 9)]
    for cell_ in cells:
        expected, got = box(measured_field(*cell_)), tuple(fn(*cell_))
        assert got == expected, f"cell {cell_}: expected {expected}, got {got}"
    print(f"correct on all {len(cells)} cells")
''')
    nb.code(r'''
# @title Solution (double-click to show)
# NBVAL_CHECK_OUTPUT
def field_box(row, col, size=64):
    # cell i stands for pixels jump*i .. jump*i + jump - 1; its field reaches
    # (receptive_field - jump) / 2 = 3 pixels further on each side
    margin = (receptive_field - jump) // 2
    def span(i):
        return max(0, jump * i - margin), min(size - 1, jump * i + jump - 1 + margin)
    (top, bottom), (left, right) = span(row), span(col)
    return top, bottom, left, right


check_field_box(field_box)
''', hidden=True)
    nb.md(r"""
### Exercise 3: counting parameters

Write `encoder_parameters(in_channels, feature_dim)` with pencil-and-paper arithmetic (no
PyTorch), and check it against `u.count_parameters(u.SimpleEncoder(...))`. How many parameters
does an encoder for 1-channel images with `feature_dim=128` have?
""")
    nb.code(r'''
def check_encoder_parameters(fn):
    settings = [(3, 64), (1, 64), (3, 128), (4, 32), (1, 128)]
    for c, d in settings:
        expected = u.count_parameters(u.SimpleEncoder(c, d))
        assert fn(c, d) == expected, f"({c}, {d}): expected {expected:,}, got {fn(c, d):,}"
    print(f"correct on all {len(settings)} settings")
''')
    nb.code(r'''
# @title Solution (double-click to show)
# NBVAL_CHECK_OUTPUT
def encoder_parameters(in_channels, feature_dim):
    conv1 = in_channels * 3 * 3 * 32 + 32
    conv2 = 32 * 3 * 3 * feature_dim + feature_dim
    return conv1 + conv2


check_encoder_parameters(encoder_parameters)
print(f"1 channel, feature_dim=128: {encoder_parameters(1, 128):,} parameters")
''', hidden=True)

    nb.md(r"""
## Final check: your encoder is `latentseg_utils.SimpleEncoder`

Later notebooks import the encoder from `latentseg_utils`. This cell checks that it is the one you
built: the same parameter names and shapes, and, given the same weights, the same output on
all six images. If someone changed either of them, this cell would fail, and so would the
series' tests.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
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
''')
    return nb


# ---------------------------------------------------------------------------------------------
# 02 · Latent attention
# ---------------------------------------------------------------------------------------------

def notebook_02() -> Notebook:
    nb = Notebook("nb02")
    nb.md(r"""
# 02 · Latent attention, from the equation to the module

After this notebook you can write attention and multi-head attention from scratch and show they
equal PyTorch's, and build the tutorial's `LatentAttention`, in which 16 learned latents read
an image's pixel features. You will also be able to say, with measurements, why it reads through latents.

**Run time:** under 10 seconds on a quiet 2-core CPU. Nothing is trained.

**What you will learn**
1. Scaled dot-product attention, $\mathrm{softmax}(QK^\top/\sqrt{d})\,V$, in three lines, and why the $\sqrt{d}$ is there (measured).
2. Multi-head attention by hand: project, split, attend, merge, project. Your version equals `nn.MultiheadAttention` to 1e-5.
3. `LatentAttention`: K learned latents as queries, the pixel features as keys and values.
4. Where each latent and each head looks on an image, drawn as heatmaps.
5. What latents buy: time and peak memory of $N\cdot K$ cross-attention against $N^2$ self-attention, measured as the image grows.

The first code cell is the series' setup. In Colab it fetches `latentseg_utils.py`; on your own
machine it does nothing.
""")
    nb.code(setup_cell_source(), verbatim=True)   # word for word
    nb.md(IMPORTS_TEXT)
    nb.code(IMPORTS)

    nb.md(r"""
## 1. Pixel tokens to attend over

Notebook 01 built the encoder. It turns a 64×64 image into a 16×16 grid of 64-dimensional
features. Attention works on sets of vectors, so we flatten the grid row by row into
$N = 256$ **tokens** of width $D = 64$: `[B, D, h, w] -> [B, N, D]`.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
images, labels = u.make_shapes_batch(6, image_size=64, seed=0)
image = images[2]                                   # the sample notebook 01 follows
encoder = u.SimpleEncoder()
with torch.no_grad():
    features = encoder(image.unsqueeze(0))          # [1, 64, 16, 16]
tokens = features.flatten(2).transpose(1, 2)        # [1, 256, 64]: token n is cell (n // 16, n % 16)
print("features:", tuple(features.shape), "-> tokens:", tuple(tokens.shape))
''')

    nb.md(r"""
## 2. Scaled dot-product attention by hand

Attention answers $M$ questions about $N$ items. Each item has a **key** (what it is about) and a
**value** (what it says); each question is a **query**. The answer to a query is an average of
the values, weighted by how well the query matches each key:

$$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{d}}\right) V,
\qquad Q \in \mathbb{R}^{M\times d},\; K \in \mathbb{R}^{N\times d},\; V \in \mathbb{R}^{N\times d_v}.$$

The softmax runs along each row, so row $i$ of the weights is a probability distribution over
the $N$ items: how much query $i$ reads from each. That is the whole mechanism.
""")
    nb.code(r'''
def attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v.
    q [..., M, d], k [..., N, d], v [..., N, dv] -> (out [..., M, dv], weights [..., M, N])"""
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5    # [..., M, N]
    weights = scores.softmax(dim=-1)                          # each row sums to 1
    return weights @ v, weights
''')
    nb.md(r"""
A first test on small random tensors: 3 queries, 5 items. We check the shapes, that each row of
weights sums to 1, and that the answer equals PyTorch's fused
`F.scaled_dot_product_attention`.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
gen = torch.Generator().manual_seed(0)
q, k, v = torch.randn(3, 8, generator=gen), torch.randn(5, 8, generator=gen), torch.randn(5, 4, generator=gen)
out, w = attention(q, k, v)
print("out:", tuple(out.shape), " weights:", tuple(w.shape))
print("rows of the weights sum to 1:", torch.allclose(w.sum(-1), torch.ones(3)))
print("equals F.scaled_dot_product_attention:",
      torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-6))
''')
    nb.md(r"""
### Why divide by $\sqrt{d}$?

If the entries of $q$ and $k$ have variance 1, the dot product $q\cdot k$ is a sum of $d$ such
products, so its standard deviation grows like $\sqrt{d}$. Large scores make the softmax
**saturate**: one weight near 1, the rest near 0. A saturated softmax passes almost no gradient
to the keys it ignores, so learning stalls. Dividing by $\sqrt{d}$ brings the scores back to unit
scale at any width. We measure this with 1,000 random queries over 16 keys:
""")
    nb.code(r'''
print(f"{'d':>4} {'std of q.k':>11} {'std of q.k/sqrt(d)':>19} {'mean max weight: raw':>21} {'scaled':>7}")
for d in (4, 16, 64, 256):
    qd, kd = torch.randn(1000, d, generator=gen), torch.randn(16, d, generator=gen)
    raw = qd @ kd.T
    scaled = raw / d ** 0.5
    print(f"{d:>4} {raw.std():>11.1f} {scaled.std():>19.2f} "
          f"{raw.softmax(-1).max(-1).values.mean():>21.2f} {scaled.softmax(-1).max(-1).values.mean():>7.2f}")
''')
    nb.md(r"""
Without the scale, at $d = 256$ each query puts almost all of its weight on one key. With it, the
softmax stays equally soft at every width.

## 3. Multi-head attention by hand

One attention compares queries and keys along all $E$ channels at once. **Multi-head**
attention runs $h$ attentions side by side, each on its own $E/h$ channels, so that different
heads can match on different things (one on colour, another on texture). `nn.MultiheadAttention`
does five steps:

1. **project** queries, keys and values with learned matrices $W_q, W_k, W_v$ (each $E\times E$, plus biases);
2. **split** the $E$ channels into $h$ heads of $E/h$ channels;
3. **attend** in each head separately;
4. **merge** the heads back into $E$ channels;
5. apply the **output projection** $W_o$.

We take a real `nn.MultiheadAttention` with the tutorial's width $E = 64$ and $h = 4$ heads, and
redo its forward pass by hand from its weights. PyTorch stores $W_q, W_k, W_v$ stacked in one
`in_proj_weight` of shape `[3E, E]`. Its biases start at zero, so we randomise them; otherwise
the comparison would not test them.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
E, heads = 64, 4
mha = nn.MultiheadAttention(E, heads, batch_first=True)
with torch.no_grad():
    mha.in_proj_bias.normal_(0, 0.1)
    mha.out_proj.bias.normal_(0, 0.1)
W_q, W_k, W_v = mha.in_proj_weight.detach().chunk(3)       # each [E, E]
b_q, b_k, b_v = mha.in_proj_bias.detach().chunk(3)         # each [E]
W_o, b_o = mha.out_proj.weight.detach(), mha.out_proj.bias.detach()
print("in_proj_weight", tuple(mha.in_proj_weight.shape), "-> W_q, W_k, W_v", tuple(W_q.shape))
print("out_proj.weight", tuple(W_o.shape), f"  parameters: {u.count_parameters(mha):,}")
''')
    nb.md(r"""
**Step 1, project.** As queries we use 16 random vectors; in the next section they become the
learned latents. The keys and values are the 256 pixel tokens.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
query = torch.randn(1, 16, E, generator=gen)      # [B, M, E]
key = value = tokens                              # [B, N, E]
Q = query @ W_q.T + b_q
Kp = key @ W_k.T + b_k
Vp = value @ W_v.T + b_v
print("Q", tuple(Q.shape), "  K", tuple(Kp.shape), "  V", tuple(Vp.shape))
''')
    nb.md(r"""
**Step 2, split.** Head $i$ gets channels $16i$ to $16i+15$. A `view` cuts the channel axis into
`(heads, E/heads)`, and a `transpose` moves the heads next to the batch. Each head then
looks like an independent batch entry.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
def split_heads(t, heads):
    """[B, L, E] -> [B, heads, L, E / heads]"""
    B, L, E = t.shape
    return t.view(B, L, heads, E // heads).transpose(1, 2)


Qh, Kh, Vh = split_heads(Q, heads), split_heads(Kp, heads), split_heads(Vp, heads)
print("Q", tuple(Qh.shape), "  K", tuple(Kh.shape), "  V", tuple(Vh.shape), "  (batch, head, tokens, channels)")
''')
    nb.md(r"""
**Step 3, attend.** Our `attention` function works on any leading dimensions, so all heads run
at once. The scale is now $\sqrt{E/h} = 4$, the width of one head.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
head_out, head_weights = attention(Qh, Kh, Vh)
print("per-head output", tuple(head_out.shape), "  weights", tuple(head_weights.shape))
''')
    nb.md(r"""
**Steps 4 and 5, merge and project.** We undo the split and apply the output projection. The
output projection is what lets the heads' answers mix.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
merged = head_out.transpose(1, 2).reshape(1, 16, E)     # [B, M, E]
by_hand = merged @ W_o.T + b_o
print("merged", tuple(merged.shape), "-> output", tuple(by_hand.shape))
''')
    nb.md(r"""
Now the five steps go into one function, and we compare it with PyTorch, outputs and per-head weights,
on a batch of two different inputs.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
def multi_head_attention(query, key, value, mha):
    """nn.MultiheadAttention's forward (batch_first) written out with mha's weights.
    query [B, M, E], key and value [B, N, E] -> (out [B, M, E], weights [B, heads, M, N])"""
    h = mha.num_heads
    W_q, W_k, W_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    Qh = split_heads(query @ W_q.T + b_q, h)
    Kh = split_heads(key @ W_k.T + b_k, h)
    Vh = split_heads(value @ W_v.T + b_v, h)
    out, weights = attention(Qh, Kh, Vh)
    B, _, M, _ = out.shape
    out = out.transpose(1, 2).reshape(B, M, -1)
    return mha.out_proj(out), weights


q2, kv2 = torch.randn(2, 16, E, generator=gen), torch.randn(2, 256, E, generator=gen)
with torch.no_grad():
    ours, our_weights = multi_head_attention(q2, kv2, kv2, mha)
    theirs, their_weights = mha(q2, kv2, kv2, average_attn_weights=False)
same = (torch.allclose(ours, theirs, atol=1e-5) and torch.allclose(our_weights, their_weights, atol=1e-5))
print("output", tuple(ours.shape), " weights", tuple(our_weights.shape))
print("hand-written multi-head attention equals nn.MultiheadAttention (atol 1e-5):", same)
assert same
''')

    nb.md(r"""
## 4. `LatentAttention`: K learned latents read the pixels

The tutorial's `LatentAttention` is multi-head attention in which the **queries are learned**.
$K = 16$ vectors, the latents (the tutorial calls them *experts*), are parameters of the model,
the same for every image. The **keys and values are the pixel tokens**. Each latent asks its own
question of the image and gets back one 64-dimensional answer. The output is $K$ vectors, a
summary of the image in 16 slots, whatever the image's size.

This is the **read** step of the Perceiver (*Perceiver: General Perception with Iterative
Attention*, Jaegle et al., 2021). The name invites a misreading, so here it is plainly: this is
Perceiver-style latent cross-attention, **not** DeepSeek-V2's *Multi-head Latent Attention*
(MLA). MLA compresses each token's keys and values into a small per-token latent for the
inference cache and keeps one key per token. Here there are only 16 latent queries, and there
is no cache, no up-projection and no rotary part.

The tutorial's version has one oddity that we keep so the reproduction stays faithful. It
projects keys, values and queries with its own `nn.Linear` layers (`key_proj`, `value_proj`,
`query_proj`) before `nn.MultiheadAttention` projects them again with its $W_k, W_v, W_q$.
Two linear maps in a row are one linear map, so these layers add parameters but no
expressive power. Exercise 3 folds one of them away.
""")
    nb.code(r'''
class LatentAttention(nn.Module):
    """K learned latents cross-attend to N tokens: [B, N, feature_dim] -> [B, K, latent_dim].
    With return_attention=True also returns the weights [B, heads, K, N]."""

    def __init__(self, feature_dim, latent_dim, num_latents, num_heads):
        super().__init__()
        self.num_latents = num_latents
        self.latent_dim = latent_dim
        self.latents = nn.Parameter(torch.randn(num_latents, latent_dim))
        self.key_proj = nn.Linear(feature_dim, latent_dim)
        self.value_proj = nn.Linear(feature_dim, latent_dim)
        self.query_proj = nn.Linear(latent_dim, latent_dim)
        self.attention = nn.MultiheadAttention(embed_dim=latent_dim, num_heads=num_heads,
                                               batch_first=True)

    def forward(self, x, return_attention=False):
        B, N, _ = x.shape
        keys = self.key_proj(x)                                         # [B, N, latent_dim]
        values = self.value_proj(x)                                     # [B, N, latent_dim]
        queries = self.query_proj(self.latents.unsqueeze(0).expand(B, -1, -1))   # [B, K, latent_dim]
        out, weights = self.attention(query=queries, key=keys, value=values,
                                      need_weights=return_attention, average_attn_weights=False)
        return (out, weights) if return_attention else out
''')
    nb.md(r"""
We build it with the tutorial's sizes and read the sample image's 256 tokens.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
latent_attention = LatentAttention(feature_dim=64, latent_dim=64, num_latents=16, num_heads=4)
with torch.no_grad():
    experts, weights = latent_attention(tokens, return_attention=True)
print("tokens", tuple(tokens.shape), "-> experts", tuple(experts.shape))
print("weights", tuple(weights.shape), "  (batch, head, latent, token)")
print("each latent's weights sum to 1 over the tokens:", torch.allclose(weights.sum(-1), torch.ones(1, 4, 16)))
''')
    nb.md(r"""
Where do its parameters sit? 12,480 of them are in the three extra projections described above.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
for name, child in [("latents", None), ("key_proj", latent_attention.key_proj),
                    ("value_proj", latent_attention.value_proj),
                    ("query_proj", latent_attention.query_proj),
                    ("attention", latent_attention.attention)]:
    count = latent_attention.latents.numel() if child is None else u.count_parameters(child)
    print(f"  {name:<11} {count:>7,}")
print(f"  {'total':<11} {u.count_parameters(latent_attention):>7,}")
''')

    nb.md(r"""
## 5. Where each latent looks

Row $k$ of the weights is latent $k$'s distribution over the 256 tokens, which is a map over the 16×16
grid. `u.plot_attention` draws one heatmap per latent over the image (here averaged over the 4
heads). The model is **untrained**, and that matters for reading the figure: each map is drawn
on its own colour scale, stretched from its smallest to its largest weight.
""")
    nb.code(r'''
fig = u.plot_attention(image, weights[0].mean(0),
                       title="Untrained latents: where each one looks (mean over heads; own colour scale per map)")
plt.show()
''')
    nb.md(r"""
The latents already prefer some colours: each map lights up the circle, the triangle or the
background. The scores are linear in the pixel features, and the features depend on colour.
The border cells differ too, because the encoder's zero padding makes them look different. But how strong are these
preferences? We compare the weights with the uniform weight $1/N$:
""")
    nb.code(r'''
uniform = 1 / tokens.shape[1]
print(f"uniform weight 1/N = {uniform:.5f}")
print(f"untrained weights range from {weights.min():.5f} to {weights.max():.5f} "
      f"(largest = {weights.max() / uniform:.2f} x uniform)")
''')
    nb.md(r"""
Before training, every latent reads almost the whole image evenly, and the patterns above are
small ripples on top of a nearly flat average. The reason is the size of the scores: with
PyTorch's initialisation, $QK^\top/\sqrt{d}$ is small, so the softmax is nearly flat. Training
has to make these scores large and meaningful. Notebook 06 draws the same maps for trained
models.

Each latent has 4 heads, and each head attends on its own 16 channels, so the heads of one latent
can look at different places. Here are the heads of the latent whose largest weight is
largest:
""")
    nb.code(r'''
k = int(weights[0].amax(dim=(0, 2)).argmax())
fig = u.plot_attention(image, weights[0, :, k], labels=[f"head {h}" for h in range(4)],
                       title=f"Latent {k}: where each of its 4 heads looks (untrained)")
plt.show()
''')

    nb.md(r"""
## 6. Why latents? $N\cdot K$ against $N^2$, measured

Why not let the pixel tokens attend to each other directly? Self-attention over $N$ tokens
compares every token with every other: $N^2$ weights per head, and time that grows as $N^2$.
Latent cross-attention compares $K$ latents with $N$ tokens: $N\cdot K$ weights, and time linear in
$N$. The Perceiver paper makes this argument; here we measure it.

We compare `nn.MultiheadAttention` used as self-attention over the tokens with `u.LatentAttention`
($K = 16$), both with the tutorial's width 64 and 4 heads, for images from 32×32 to 160×160
($N$ = 64 to 1,600 tokens at stride 4). Both are asked for their attention weights, as the
tutorial's code does, so both store their weight matrix. (Fused kernels such as
FlashAttention avoid storing the $N\times N$ matrix, but they still do $N^2$ work.)

**Peak memory, honestly.** `tracemalloc` does not see PyTorch's tensors. On Linux (and Colab) the
kernel can tell us: we return freed memory to the operating system (`malloc_trim`), reset the
process's high-water mark of resident memory (`/proc/self/clear_refs`), run one forward pass,
and read the new high-water mark (`VmHWM`). Where that is not available (macOS, Windows) the
function returns `None`, and the plot shows only the size of the returned weight tensor.
""")
    nb.code(r'''
import ctypes
import re
import time


def peak_memory_bytes(fn):
    """Extra resident memory at the peak of fn(), in bytes, measured by Linux; None elsewhere."""
    def status_kb(field):
        with open("/proc/self/status") as f:
            return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1))
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)      # give freed memory back first
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                               # reset the peak to the current size
        before = status_kb("VmRSS")
    except (OSError, AttributeError):
        return None
    result = fn()
    peak = status_kb("VmHWM")
    del result
    return (peak - before) * 1024


def best_time(fn, repeats=5):
    """Fastest of a few runs, in seconds (the least disturbed by other work on the machine)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
''')
    nb.md(r"""
The measurement itself. Each size is run once as a warm-up (first calls allocate buffers that
later calls reuse), then timed and measured. We time on **one thread**. On a busy or shared CPU,
PyTorch's threads spend their time waiting for each other, and those waits would swamp what we
want to see. The printed numbers depend on the machine and on what else it is doing. The shape
of the curves does not.
""")
    nb.code(r'''
# NBVAL_IGNORE_OUTPUT
self_attention = nn.MultiheadAttention(64, 4, batch_first=True).eval()
latent_reader = u.LatentAttention(64, 64, 16, 4).eval()
sizes = [32, 64, 96, 128, 160]
bench = {"self-attention": [], "latent attention": []}     # rows: (N, seconds, peak bytes, weight bytes)
threads = torch.get_num_threads()
torch.set_num_threads(1)
with torch.no_grad():
    for size in sizes:
        x = torch.randn(1, (size // 4) ** 2, 64)
        calls = {"self-attention": lambda: self_attention(x, x, x, average_attn_weights=False),
                 "latent attention": lambda: latent_reader(x, return_attention=True)}
        for name, call in calls.items():
            w = call()[1]                                   # warm-up; keep the weights' size
            bench[name].append((x.shape[1], best_time(call), peak_memory_bytes(call),
                                w.numel() * w.element_size()))
torch.set_num_threads(threads)
print(f"{'image':>7} {'N':>6} | {'self: ms':>8} {'MB peak':>8} {'MB weights':>10} | "
      f"{'latent: ms':>10} {'MB peak':>8} {'MB weights':>10}")
for size, s, l in zip(sizes, bench["self-attention"], bench["latent attention"]):
    mb = lambda b: float("nan") if b is None else b / 1e6
    print(f"{size:>3}x{size:<3} {s[0]:>6,} | {1e3 * s[1]:>8.2f} {mb(s[2]):>8.2f} {mb(s[3]):>10.2f} | "
          f"{1e3 * l[1]:>10.2f} {mb(l[2]):>8.2f} {mb(l[3]):>10.2f}")
''')
    nb.md(r"""
On log-log axes a power law $N^p$ is a straight line of slope $p$. The dotted grey lines show
slopes 2 and 1 for comparison.
""")
    nb.code(r'''
fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.6))
colours = {"self-attention": "#D55E00", "latent attention": "#0072B2"}   # Okabe-Ito
for name, rows in bench.items():
    N = np.array([r[0] for r in rows])
    ax_t.plot(N, [1e3 * r[1] for r in rows], "o-", color=colours[name], label=name)
    if rows[0][2] is not None:
        ax_m.plot(N, [max(r[2], 1) / 1e6 for r in rows], "o-", color=colours[name],
                  label=f"{name}: measured peak")
    ax_m.plot(N, [r[3] / 1e6 for r in rows], "s--", color=colours[name], alpha=0.6,
              label=f"{name}: weight tensor")
N = np.array([r[0] for r in bench["self-attention"]], dtype=float)
for ax, key, unit in ((ax_t, 1, 1e3), (ax_m, 3, 1e-6)):   # reference lines through the last points
    self_end = bench["self-attention"][-1][key] * unit
    latent_end = bench["latent attention"][-1][key] * unit
    ax.plot(N, self_end * (N / N[-1]) ** 2, ":", color="grey", label="slope 2 (N²)")
    ax.plot(N, latent_end * (N / N[-1]), ":", color="grey", alpha=0.5, label="slope 1 (N)")
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("tokens N (image side / 4, squared)")
ax_t.set(ylabel="milliseconds per forward pass", title="Time")
ax_m.set(ylabel="megabytes", title="Memory")
ax_t.legend(fontsize=8)
ax_m.legend(fontsize=7)
fig.suptitle("Self-attention over pixel tokens against 16 latents reading them")
fig.tight_layout()
plt.show()
''')
    nb.md(r"""
Least-squares slopes over all five sizes put numbers on the two lines. They are rough: at the
smallest sizes fixed costs (Python overhead, the projections) dominate, which pulls the slopes
below the ideal 2 and 1, while at the largest sizes self-attention's $N\times N$ matrix no
longer fits in the CPU's caches, which can push its time slope above 2. The memory of self-attention
follows its weight matrix.
""")
    nb.code(r'''
# NBVAL_IGNORE_OUTPUT
def slope(rows, key):
    N = np.log([r[0] for r in rows])
    y = np.log([max(r[key], 1e-12) for r in rows])
    return np.polyfit(N, y, 1)[0]

for name, rows in bench.items():
    memory = "n/a" if rows[0][2] is None else f"{slope(rows, 2):.2f}"
    print(f"{name:<17} time slope {slope(rows, 1):.2f}, measured peak memory slope {memory}")
''')
    nb.md(r"""
What stays true on every machine is the count of weights. At the largest size, full
self-attention stores $N/K$ times as many weights as the latents do, and that factor grows
with the image:
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
for (N, _, _, self_bytes), (_, _, _, latent_bytes) in zip(bench["self-attention"], bench["latent attention"]):
    print(f"N = {N:>5,}: self-attention stores {self_bytes // latent_bytes:>3}x the latents' weights (N/K = {N // 16})")
''')

    nb.md(r"""
## Summary

- Attention is $\mathrm{softmax}(QK^\top/\sqrt{d})V$: every query takes a weighted average of the
  values, and the weights say how well it matches each key. The $\sqrt{d}$ keeps the softmax
  from saturating as width grows (measured).
- Multi-head attention is project, split, attend, merge, project. Your version equals
  `nn.MultiheadAttention` to 1e-5.
- `LatentAttention` uses $K = 16$ learned latents as queries over the $N$ pixel tokens. It turns any
  image into 16 vectors. It is Perceiver-style cross-attention, not DeepSeek's MLA.
- Untrained, every latent reads the image almost uniformly, with colour-driven ripples. Training
  must sharpen this (notebook 06 shows trained maps).
- Latents make the cost linear in $N$: measured time and memory grow about as $N\cdot K$ against
  $N^2$ for self-attention.

## Exercises

Each exercise comes with a check function. Write your answer in a new cell and call the check
on it. The solution is in the collapsed cell below each check.

### Exercise 1: a bag of pixels

Write `shuffle_tokens(tokens, generator)`, which returns the tokens `[B, N, D]` in a random order
(the same permutation for the whole batch). Then run `latent_attention` on both orders. What
happens to its output, and to its weights? What does that tell you about what the latents know
of *where* a pixel is?
""")
    nb.code(r'''
def check_shuffle(fn):
    g = torch.Generator().manual_seed(1)
    shuffled = fn(tokens, g)
    assert shuffled.shape == tokens.shape, "keep the shape [B, N, D]"
    assert not torch.equal(shuffled, tokens), "the order did not change"
    assert torch.equal(shuffled[0].sort(0).values, tokens[0].sort(0).values), \
        "the shuffled tokens are not a reordering of the original ones"
    with torch.no_grad():
        before = latent_attention(tokens)
        after = latent_attention(shuffled)
    print("latent output unchanged by the shuffle:", torch.allclose(before, after, atol=1e-5))
''')
    nb.code(r'''
# @title Solution (double-click to show)
# NBVAL_CHECK_OUTPUT
def shuffle_tokens(tokens, generator):
    order = torch.randperm(tokens.shape[1], generator=generator)
    return tokens[:, order]

check_shuffle(shuffle_tokens)
# The weights are shuffled the same way as the tokens, and each latent's weighted sum is the
# same. The latents see a *set* of tokens, not a grid: anything they know about position comes
# from what the encoder's 10x10 receptive field put into each token (and from the padded border).
# Notebook 05 adds position features for that reason.
''', hidden=True)
    nb.md(r"""
### Exercise 2: counting attention weights

Write `attention_weight_counts(image_size, num_latents=16, num_heads=4)`, which returns the
number of attention weights per image for `(self-attention, latent attention)` at stride 4. The
check compares it with the weight tensors that the modules actually return.
""")
    nb.code(r'''
def check_counts(fn):
    for size in (32, 48, 64):
        x = torch.randn(1, (size // 4) ** 2, 64)
        with torch.no_grad():
            w_self = self_attention(x, x, x, average_attn_weights=False)[1]
            w_latent = latent_reader(x, return_attention=True)[1]
        expected = (w_self.numel(), w_latent.numel())
        assert tuple(fn(size)) == expected, f"image {size}: expected {expected}, got {tuple(fn(size))}"
    print("correct for 32, 48 and 64 pixel images")
''')
    nb.code(r'''
# @title Solution (double-click to show)
# NBVAL_CHECK_OUTPUT
def attention_weight_counts(image_size, num_latents=16, num_heads=4):
    N = (image_size // 4) ** 2
    return num_heads * N * N, num_heads * num_latents * N

check_counts(attention_weight_counts)
print("a 256x256 image (self, latent):", attention_weight_counts(256))
''', hidden=True)
    nb.md(r"""
### Exercise 3: fold away `query_proj`

The latents are free parameters, and `query_proj` only applies a fixed linear map to them. So a
module whose `query_proj` is the identity, and whose latents are the old `query_proj(latents)`,
computes exactly the same thing. Build such a copy of `latent_attention` (hint:
`copy.deepcopy`, then set the weights under `torch.no_grad()`) and check it.
""")
    nb.code(r'''
def check_folded(folded):
    qp = folded.query_proj
    assert torch.equal(qp.weight, torch.eye(64)) and torch.equal(qp.bias, torch.zeros(64)), \
        "query_proj should be the identity"
    with torch.no_grad():
        same = torch.allclose(folded(tokens), latent_attention(tokens), atol=1e-5)
    print("folded module computes the same experts:", same)
''')
    nb.code(r'''
# @title Solution (double-click to show)
# NBVAL_CHECK_OUTPUT
import copy

folded = copy.deepcopy(latent_attention)
with torch.no_grad():
    folded.latents.copy_(latent_attention.query_proj(latent_attention.latents))
    folded.query_proj.weight.copy_(torch.eye(64))
    folded.query_proj.bias.zero_()
check_folded(folded)
# query_proj's 4,160 parameters add nothing the latents could not learn themselves.
''', hidden=True)

    nb.md(r"""
## Final check: your `LatentAttention` is `latentseg_utils.LatentAttention`

Later notebooks import `LatentAttention` from `latentseg_utils`. This cell checks that it is what
you built. It compares the parameter names and shapes, and, with the same weights, the
experts and the attention weights on all six images. It also checks that your hand-written
`multi_head_attention` reproduces the module's own attention from its weights. If either drifts,
this cell fails, and so do the series' tests.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
reference = u.LatentAttention(feature_dim=64, latent_dim=64, num_latents=16, num_heads=4)
mine = LatentAttention(feature_dim=64, latent_dim=64, num_latents=16, num_heads=4)
shapes = [(name, tuple(p.shape)) for name, p in mine.state_dict().items()]
same_shapes = shapes == [(name, tuple(p.shape)) for name, p in reference.state_dict().items()]
mine.load_state_dict(reference.state_dict())
with torch.no_grad():
    batch_tokens = encoder(images).flatten(2).transpose(1, 2)                    # [6, 256, 64]
    ref_out, ref_w = reference(batch_tokens, return_attention=True)
    my_out, my_w = mine(batch_tokens, return_attention=True)
    queries = reference.query_proj(reference.latents).expand(len(images), -1, -1)
    hand_out, hand_w = multi_head_attention(queries, reference.key_proj(batch_tokens),
                                            reference.value_proj(batch_tokens), reference.attention)
same_output = torch.allclose(my_out, ref_out, atol=1e-5) and torch.allclose(my_w, ref_w, atol=1e-6)
same_by_hand = torch.allclose(hand_out, ref_out, atol=1e-5) and torch.allclose(hand_w, ref_w, atol=1e-6)
for name, shape in shapes:
    print(f"  {name:<27} {shape}")
print("same parameter names and shapes:", same_shapes)
print("hand-written multi-head attention reproduces it:", same_by_hand)
print("matches latentseg_utils.LatentAttention:", same_output)
assert same_shapes and same_output and same_by_hand, "LatentAttention here and in latentseg_utils have drifted apart"
''')
    return nb


# ---------------------------------------------------------------------------------------------
# 03 · Expert segmentation and the whole model
# ---------------------------------------------------------------------------------------------

def notebook_03() -> Notebook:
    nb = Notebook("nb03")
    nb.md(r"""
# 03 · Expert segmentation: pixels read the experts, and the whole model

After this notebook you can build the tutorial's `ExpertSegmentation`, in which every pixel attends over
the 16 experts and a linear head gives its class logits, and assemble the whole
`SegmentationModel`, accounting for each of its 70,504 parameters. You will also be able to
place the model beside Perceiver IO and MaskFormer.

**Run time:** under 10 seconds on a quiet 2-core CPU. Nothing is trained.

**What you will learn**
1. Pixels as queries over the experts: the second cross-attention, which runs the other way.
2. What a pixel's output can and cannot depend on (shown, not assumed).
3. The linear head, the tutorial's decoder, and the whole model, with a table of parameters per part.
4. The per-pixel expert assignment, drawn as a map over the image, and what it will mean after training.
5. How this model relates to Perceiver IO and to MaskFormer, and what its names do not mean.

The first code cell is the series' setup. In Colab it fetches `latentseg_utils.py`; on your own
machine it does nothing.
""")
    nb.code(setup_cell_source(), verbatim=True)   # word for word
    nb.md(IMPORTS_TEXT)
    nb.code(IMPORTS)

    nb.md(r"""
## 1. From an image to experts

Notebooks 01 and 02 built the first two parts, and `latentseg_utils` holds both, checked
against what those notebooks built. The encoder turns the image into $N = 256$ pixel tokens
(one per 4×4 block). `LatentAttention` lets $K = 16$ learned latents read them, and its output
is 16 refined **experts**.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
images, labels = u.make_shapes_batch(6, image_size=64, seed=0)
image, label = images[2], labels[2]                # the sample notebooks 01 and 02 follow
x = image.unsqueeze(0)                             # [1, 3, 64, 64]
encoder = u.SimpleEncoder()
latent_attention = u.LatentAttention(feature_dim=64, latent_dim=64, num_latents=16, num_heads=4)
with torch.no_grad():
    features = encoder(x)                            # [1, 64, 16, 16]
    tokens = features.flatten(2).transpose(1, 2)     # [1, 256, 64]
    experts = latent_attention(tokens)               # [1, 16, 64]
print("image", tuple(x.shape), "-> features", tuple(features.shape),
      "-> tokens", tuple(tokens.shape), "-> experts", tuple(experts.shape))
''')

    nb.md(r"""
## 2. Pixels as queries over the experts

Now the roles swap. In notebook 02 the 16 latents asked questions of the 256 pixels. Here each
of the 256 pixels asks a question of the 16 experts:

- **queries**: each pixel's own feature, mapped into the latent space by `pixel_proj` (a linear layer);
- **keys and values**: the experts.

Each pixel gets back a weighted mix of the experts. Its weights are 16 numbers per head that sum to 1.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
pixel_proj = nn.Linear(64, 64)
expert_attention = nn.MultiheadAttention(64, 4, batch_first=True)
with torch.no_grad():
    queries = pixel_proj(tokens)                                          # [1, 256, 64]
    attended, pixel_weights = expert_attention(queries, experts, experts, average_attn_weights=False)
print("queries", tuple(queries.shape), " keys = values = experts", tuple(experts.shape))
print("attended", tuple(attended.shape), " weights", tuple(pixel_weights.shape), " (batch, head, pixel, expert)")
print("each pixel's weights sum to 1 over the experts:",
      torch.allclose(pixel_weights.sum(-1), torch.ones(1, 4, 256)))
''')
    nb.md(r"""
### What a pixel's output can depend on

Look at what the attention computes for one pixel. In each head it mixes the experts' values
with the pixel's 16 weights, then the output projection combines the heads. The pixel's own
feature enters **only through its weights**: nothing adds it back (there is no residual
connection). We can rebuild every pixel's output from its weights and the experts alone, never
touching the pixel features:
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
W_v = expert_attention.in_proj_weight[128:]          # the value rows of the stacked projection
b_v = expert_attention.in_proj_bias[128:]
with torch.no_grad():
    V = (experts @ W_v.T + b_v).view(1, 16, 4, 16).transpose(1, 2)       # [1, heads, K, 16]
    mixed = (pixel_weights @ V).transpose(1, 2).reshape(1, 256, 64)        # [1, N, 64]
    rebuilt = expert_attention.out_proj(mixed)
print("every pixel's output rebuilt from its weights and the experts alone:",
      torch.allclose(rebuilt, attended, atol=1e-5))
''')
    nb.md(r"""
So two pixels that weigh the experts the same way get the same output, and so the same class,
whatever else their features say. Everything a pixel knows about the image must pass through
64 numbers (16 weights × 4 heads) over 16 shared experts. This bottleneck is the tutorial's
design. Notebook 05 measures what it costs, and the series' improved model (`u.LatentSegNet`)
adds the pixel's own feature back with a residual connection.

## 3. The linear head: class logits

A linear layer maps each pixel's 64-dimensional output to one score (**logit**) per class. The
tutorial's default is `num_classes=2`, and we keep it so that the parameter count below matches
the tutorial's. The series' shapes data has 4 classes, and notebook 05 uses 4.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
num_classes = 2
segmentation_head = nn.Linear(64, num_classes)
with torch.no_grad():
    pixel_logits = segmentation_head(attended)            # [1, 256, num_classes]
print("attended", tuple(attended.shape), "-> logits", tuple(pixel_logits.shape),
      f"  head parameters: {u.count_parameters(segmentation_head)}")
''')
    nb.md(r"""
### The expert head as one module

The tutorial's `ExpertSegmentation` is these three layers. We keep its attribute names, which
become the `state_dict` keys that the final check compares.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
class ExpertSegmentation(nn.Module):
    """Each pixel attends over the experts; a linear head gives class logits.
    pixel_features [B, N, feature_dim], experts [B, K, latent_dim] -> logits [B, N, num_classes]
    (with return_attention=True also the weights [B, heads, N, K])."""

    def __init__(self, feature_dim, latent_dim, num_heads, num_classes):
        super().__init__()
        self.pixel_proj = nn.Linear(feature_dim, latent_dim)
        self.attention = nn.MultiheadAttention(embed_dim=latent_dim, num_heads=num_heads,
                                               batch_first=True)
        self.segmentation_head = nn.Linear(latent_dim, num_classes)

    def forward(self, pixel_features, experts, return_attention=False):
        queries = self.pixel_proj(pixel_features)                        # [B, N, latent_dim]
        attended, weights = self.attention(query=queries, key=experts, value=experts,
                                           need_weights=return_attention,
                                           average_attn_weights=False)   # [B, N, latent_dim]
        logits = self.segmentation_head(attended)                        # [B, N, num_classes]
        return (logits, weights) if return_attention else logits


expert_segmentation = ExpertSegmentation(feature_dim=64, latent_dim=64, num_heads=4, num_classes=2)
with torch.no_grad():
    logits, weights = expert_segmentation(tokens, experts, return_attention=True)
print("tokens", tuple(tokens.shape), "+ experts", tuple(experts.shape), "-> logits", tuple(logits.shape))
print("weights", tuple(weights.shape), f"  parameters: {u.count_parameters(expert_segmentation):,}")
''')

    nb.md(r"""
## 4. The whole model, with the tutorial's decoder

The logits live on the 16×16 grid. The tutorial's decoder brings them back to the image:

1. reshape `[B, N, C] -> [B, C, 16, 16]` (the inverse of the flatten in section 1);
2. a 3×3 convolution **on the logits** (C channels in, C out), which lets each cell's scores see its neighbours' scores;
3. bilinear upsampling ×4 to `[B, C, 64, 64]`.

Here is the whole model. The encoder and latent attention come from `latentseg_utils`, where
notebooks 01 and 02 checked them. The expert head is the one you just wrote. The attribute names are the tutorial's.
""")
    nb.code(r'''
class SegmentationModel(nn.Module):
    """The tutorial's model: [B, 3, H, W] -> logits [B, num_classes, H, W] (H, W multiples of 4).
    With return_attention=True also {"latent": [B, heads, K, N], "pixel": [B, heads, N, K]}."""

    def __init__(self, in_channels=3, feature_dim=64, latent_dim=64, num_latents=16,
                 num_heads=4, num_classes=2):
        super().__init__()
        self.num_classes = num_classes
        self.encoder = u.SimpleEncoder(in_channels, feature_dim)
        self.latent_attention = u.LatentAttention(feature_dim, latent_dim, num_latents, num_heads)
        self.expert_segmentation = ExpertSegmentation(feature_dim, latent_dim, num_heads, num_classes)
        self.decoder = nn.Sequential(
            nn.Conv2d(num_classes, num_classes, kernel_size=3, padding=1),
            nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False))

    def forward(self, x, return_attention=False):
        features = self.encoder(x)                                       # [B, D, h, w]
        B, D, h, w = features.shape
        tokens = features.flatten(2).transpose(1, 2)                     # [B, N, D]
        experts, latent_w = self.latent_attention(tokens, return_attention=True)       # [B, K, D]
        logits, pixel_w = self.expert_segmentation(tokens, experts, return_attention=True)  # [B, N, C]
        logits = logits.transpose(1, 2).reshape(B, self.num_classes, h, w)  # [B, C, h, w]
        logits = self.decoder(logits)                                    # [B, C, H, W]
        return (logits, {"latent": latent_w, "pixel": pixel_w}) if return_attention else logits
''')
    nb.md(r"""
One forward pass on the sample, with the shape of everything it returns:
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
model = SegmentationModel()
with torch.no_grad():
    logits, attention = model(x, return_attention=True)
print("image", tuple(x.shape), "-> logits", tuple(logits.shape))
print("latent weights", tuple(attention["latent"].shape), "  pixel weights", tuple(attention["pixel"].shape))
''')
    nb.md(r"""
### Parameters, part by part

Where do the parameters sit? The table is computed from the modules, and its total must equal
the count of `latentseg_utils.SegmentationModel`, the tutorial's model as the rest of the series
uses it.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
la, es = model.latent_attention, model.expert_segmentation
parts = {
    "encoder": [("conv1", model.encoder.conv1), ("conv2", model.encoder.conv2)],
    "latent_attention": [("latents", la.latents), ("key_proj", la.key_proj),
                         ("value_proj", la.value_proj), ("query_proj", la.query_proj),
                         ("attention", la.attention)],
    "expert_segmentation": [("pixel_proj", es.pixel_proj), ("attention", es.attention),
                            ("segmentation_head", es.segmentation_head)],
    "decoder": [("conv 3x3 on logits", model.decoder[0]), ("upsample x4", model.decoder[1])],
}
size = lambda p: p.numel() if isinstance(p, nn.Parameter) else u.count_parameters(p)
total = 0
for part, children in parts.items():
    part_total = sum(size(p) for _, p in children)
    assert part_total == u.count_parameters(getattr(model, part))
    print(f"{part:<22} {part_total:>7,}")
    for name, p in children:
        print(f"    {name:<18} {size(p):>7,}")
    total += part_total
reference_total = u.count_parameters(u.SegmentationModel())
print(f"{'total':<22} {total:>7,}")
print(f"latentseg_utils.SegmentationModel(): {reference_total:,} parameters; equal: {total == reference_total}")
assert total == u.count_parameters(model) == reference_total
''')
    nb.md(r"""
Three things stand out. The model is tiny: 70,504 parameters, a few hundred kilobytes. Most of them
are in the two attentions and their projections, and the part that decides the class, the head
plus the decoder, has only 168. The number of classes changes only the head and the decoder:
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
for c in (2, 4):
    print(f"num_classes={c}: {u.count_parameters(SegmentationModel(num_classes=c)):,} parameters")
''')

    nb.md(r"""
## 5. Which expert does each pixel read?

Each pixel's attention weights over the 16 experts are a soft assignment. Take the argmax over
the experts (after averaging the 4 heads) and you get a hard **expert assignment map**, the model's
own partition of the image. It is a 16×16 map because the tokens are, and we draw it at image
size. Experts are not classes, so they get their own palette (`tab20`), not the class colours.

This is the **untrained** model. The figure also shows each head's own assignment, and a bar
chart of how many of the 256 tokens each expert wins.
""")
    nb.code(r'''
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

K = model.latent_attention.num_latents
pixel_w = attention["pixel"][0]                               # [heads, N, K]
assignment = pixel_w.mean(0).argmax(-1).view(16, 16)          # [16, 16] expert ids
per_head = pixel_w.argmax(-1).view(-1, 16, 16)                # [heads, 16, 16]
expert_cmap = ListedColormap(plt.cm.tab20.colors[:K])
show = dict(cmap=expert_cmap, vmin=-0.5, vmax=K - 0.5, interpolation="nearest", extent=(0, 64, 64, 0))

fig, axes = plt.subplots(2, 4, figsize=(10, 5.6))
axes[0, 0].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
axes[0, 0].set_title("image")
axes[0, 1].imshow(label.numpy(), cmap=u.class_colormap(4), vmin=0, vmax=3, interpolation="nearest")
axes[0, 1].set_title("true classes")
axes[0, 1].legend(handles=[Patch(facecolor=c, edgecolor="grey", label=n)
                           for c, n in zip(u.CLASS_COLORS, u.CLASS_NAMES)],
                  fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, frameon=False)
im = axes[0, 2].imshow(assignment.numpy(), **show)
axes[0, 2].set_title("expert per pixel (head mean)")
fig.colorbar(im, ax=axes[0, 2], ticks=range(0, K, 3), label="expert", fraction=0.046)
share = torch.bincount(assignment.flatten(), minlength=K)
axes[0, 3].bar(range(K), share.numpy(), color=expert_cmap.colors)
axes[0, 3].set(title="pixels per expert", xlabel="expert", ylabel="tokens (of 256)")
for h in range(per_head.shape[0]):
    axes[1, h].imshow(per_head[h].numpy(), **show)
    axes[1, h].set_title(f"head {h}: expert per pixel")
for ax in list(axes[0, :3]) + list(axes[1]):
    ax.set_xticks([]), ax.set_yticks([])
fig.suptitle("Untrained model: which expert each pixel reads most")
fig.tight_layout()
plt.show()
''')
    nb.md(r"""
Before reading anything into these maps, measure how decided the assignments are. How different are the 16 experts from each other, and how far
are the pixels' weights from the uniform $1/K$?
""")
    nb.code(r'''
with torch.no_grad():
    model_experts = model.latent_attention(model.encoder(x).flatten(2).transpose(1, 2))[0]  # [K, 64]
centre = model_experts.mean(0)
spread = (model_experts - centre).norm(dim=-1) / centre.norm()
print(f"each expert's distance from the experts' mean, relative to the mean's length: "
      f"at most {spread.max():.1e}")
print(f"every pixel weight is within {(pixel_w - 1 / K).abs().max():.1e} of 1/K = {1 / K}")
print(f"experts that win at least one token (head mean): {int((share > 0).sum())} of {K}")
''')
    nb.md(r"""
**Before training the map means nothing, and the numbers say why.** Notebook 02 showed that
every untrained latent reads the image almost uniformly, so every expert is nearly the same
average of the whole image: the 16 experts differ by less than a part in a thousand. Pixels then
have nothing to choose between, their weights are $1/16$ to within rounding error, and the
argmax is decided by differences at the level of floating-point noise. That is why one or a few
experts "win" everywhere, and why the per-head maps show only faint traces of the shapes. The
lesson for the design: the expert head can only tell experts apart after the latent attention
has made them different.

**After training** the same map becomes the model's answer to "which part of the image is
this?" If the experts specialise, each one will own a kind of region, for example background,
object interiors, or the edges of one shape, and the map will look like a rough segmentation
that the classifier then labels. If training lets a few experts win everywhere, the map will show
that collapse just as plainly. Notebook 06 draws this map for trained models, next to their
predictions.

## 6. Where this design comes from: Perceiver IO and MaskFormer

In one sentence, the model is this: **16 learned latents read the pixel features by
cross-attention, then every pixel reads the latents back, then a linear layer classifies each
pixel.**

**Perceiver IO** (*Perceiver IO: A General Architecture for Structured Inputs & Outputs*,
DeepMind, 2021) has exactly this shape. Its encoder is a cross-attention in which a small learned
latent array reads a large input, costing $O(NK)$ instead of $O(N^2)$ (notebook 02 measured it).
Its decoder is a second cross-attention in which **output queries**, one per output element
(here one per pixel), read the latents, so the cost stays linear in the output size too. In short,
*latents read, output queries write*. The tutorial's `LatentAttention` is the read and its
`ExpertSegmentation` is the write. Two differences: Perceiver IO processes the latents with a
stack of self-attention blocks between read and write, and the tutorial has none, so its 16
latents never exchange information. And Perceiver IO's blocks are residual with layer norms and
MLPs, which the tutorial's are not (notebook 05 adds them).

**MaskFormer** (*Per-Pixel Classification is Not All You Need for Semantic Segmentation*, Cheng,
Schwing and Kirillov, 2021) shares the idea of a small set of learned **queries**, but uses them
differently. Each query becomes a *segment*. It predicts class scores (including "no object") and a mask embedding, and its mask is
$\mathrm{sigmoid}(\text{mask embedding}\cdot\text{pixel embedding})$. The semantic map combines
each query's class with its mask. In the tutorial's model the latents carry no class, and the
class is decided per pixel by a linear head on the pixel's mix of experts. That is still
per-pixel classification, the baseline MaskFormer argues against. The per-pixel weights over
the experts resemble MaskFormer's masks, one soft map per query. But they compete through a
softmax over experts at each pixel, where MaskFormer's masks are independent sigmoids, and no
expert is ever tied to a class.

**What the names do not mean.** The tutorial speaks of "multi-head latent attention" and
"fine-grained expert segmentation". Its attention is not DeepSeek-V2's Multi-head Latent
Attention, which compresses each token's keys and values for the inference cache. Its experts
are not DeepSeekMoE's experts: those are split feed-forward networks with their own weights,
routed by a gate to the top few per token. Here every pixel mixes **all** 16 experts densely, the
experts have no weights of their own, and nothing is routed or load-balanced. The Perceiver
paper's reading fits better: the latents are cluster centres that the pixels are grouped
around.

| | latents / queries | what reads what | how a pixel gets its class |
|---|---|---|---|
| this tutorial | 16 learned latents | latents read pixels; pixels read latents | linear head on the pixel's mix of experts |
| Perceiver IO | learned latent array | latents read inputs; latent self-attention; output queries read latents | a head on each output query's answer |
| MaskFormer | 100 learned queries | queries read pixel features (transformer decoder) | each query's class × its mask, combined per pixel |

## Summary

- `ExpertSegmentation` is the second cross-attention: pixels are the queries, the 16 experts are
  keys and values, and a linear head turns each pixel's mix into class logits.
- A pixel's output depends on its own feature only through its attention weights (rebuilt above
  from the weights alone). This is a bottleneck that notebook 05 measures and the improved
  model removes.
- The whole model is encoder → latent attention → expert head → 3×3 conv on the logits → ×4
  bilinear upsample, with 70,504 parameters at 2 classes, counted part by part.
- The per-pixel argmax over experts is a map of how the model partitions the image. Before
  training it is noise: the untrained experts are nearly identical (measured). Notebook 06 shows
  what training makes of it.
- Structurally this is a small Perceiver IO (latents read, output queries write). It borrows
  MaskFormer's learned queries but not its mask classification, and it is neither DeepSeek's MLA
  nor its mixture of experts.

## Exercises

Each exercise comes with a check function. Write your answer in a new cell and call the check
on it. The solution is in the collapsed cell below each check.

### Exercise 1: parameters as a function of the number of classes

Write `model_parameters(num_classes)` from the table above, by arithmetic: which parts depend on
`num_classes`, and how? The check compares it with `u.SegmentationModel` for 2 to 8 classes.
""")
    nb.code(r'''
def check_model_parameters(fn):
    for c in range(2, 9):
        expected = u.count_parameters(u.SegmentationModel(num_classes=c))
        assert fn(c) == expected, f"num_classes={c}: expected {expected:,}, got {fn(c):,}"
    print("correct for 2 to 8 classes")
''')
    nb.code(r'''
# @title Solution (double-click to show)
# NBVAL_CHECK_OUTPUT
def model_parameters(num_classes):
    C = num_classes
    fixed = (u.count_parameters(model.encoder) + u.count_parameters(model.latent_attention)
             + u.count_parameters(model.expert_segmentation.pixel_proj)
             + u.count_parameters(model.expert_segmentation.attention))
    head = 64 * C + C                # Linear(64, C)
    decoder = C * C * 3 * 3 + C      # Conv2d(C, C, 3)
    return fixed + head + decoder

check_model_parameters(model_parameters)
print(f"4 classes: {model_parameters(4):,}")
''', hidden=True)
    nb.md(r"""
### Exercise 2: a bigger image, the same experts

The model has no parameter that depends on the image size. Predict the shapes for a 96×96 image:
fill in `expected_96` with the shapes of the logits, the latent weights and the pixel weights,
and check them against `u.SegmentationModel`.
""")
    nb.code(r'''
def check_shapes_96(expected):
    with torch.no_grad():
        out, att = u.SegmentationModel()(torch.rand(1, 3, 96, 96), return_attention=True)
    actual = {"logits": tuple(out.shape), "latent": tuple(att["latent"].shape),
              "pixel": tuple(att["pixel"].shape)}
    for key, shape in actual.items():
        assert tuple(expected[key]) == shape, f"{key}: expected {shape}, got {tuple(expected[key])}"
    print("all three shapes correct:", actual)
''')
    nb.code(r'''
# @title Solution (double-click to show)
# NBVAL_CHECK_OUTPUT
N96 = (96 // 4) ** 2    # 576 tokens; still 16 experts
expected_96 = {"logits": (1, 2, 96, 96), "latent": (1, 4, 16, N96), "pixel": (1, 4, N96, 16)}
check_shapes_96(expected_96)
''', hidden=True)
    nb.md(r"""
### Exercise 3: experts as soft masks

Section 6 compared the pixel weights with MaskFormer's masks. Write `expert_masks(pixel_weights)`,
which turns weights `[heads, N, K]` into one soft mask per expert, `[K, 16, 16]` (mean over heads).
The check tests your masks against the model's weights and confirms the property that sets them
apart from MaskFormer's: at every pixel, the masks sum to 1.
""")
    nb.code(r'''
def check_expert_masks(fn):
    masks = fn(pixel_w)
    assert tuple(masks.shape) == (K, 16, 16), f"expected shape {(K, 16, 16)}, got {tuple(masks.shape)}"
    assert torch.allclose(masks.flatten(1).T, pixel_w.mean(0), atol=1e-6), \
        "mask k at pixel n should be the head-mean weight of pixel n on expert k"
    print("masks sum to 1 at every pixel:", torch.allclose(masks.sum(0), torch.ones(16, 16), atol=1e-5))
''')
    nb.code(r'''
# @title Solution (double-click to show)
# NBVAL_CHECK_OUTPUT
def expert_masks(pixel_weights):
    heads, N, K_ = pixel_weights.shape
    side = int(N ** 0.5)
    return pixel_weights.mean(0).T.reshape(K_, side, side)

check_expert_masks(expert_masks)
''', hidden=True)

    nb.md(r"""
## Final check: your model is `latentseg_utils.SegmentationModel`

Later notebooks train and inspect `latentseg_utils.SegmentationModel`. This cell checks that it
is the model you assembled. It compares `ExpertSegmentation` on its own, then the whole model:
parameter names and shapes, and, with the same weights, the logits and both attention maps on
all six images. If either side drifts, this cell fails, and so do the series' tests.
""")
    nb.code(r'''
# NBVAL_CHECK_OUTPUT
ref_head = u.ExpertSegmentation(feature_dim=64, latent_dim=64, num_heads=4, num_classes=2)
my_head = ExpertSegmentation(feature_dim=64, latent_dim=64, num_heads=4, num_classes=2)
head_shapes = ([(n, tuple(p.shape)) for n, p in my_head.state_dict().items()]
               == [(n, tuple(p.shape)) for n, p in ref_head.state_dict().items()])
my_head.load_state_dict(ref_head.state_dict())

reference, mine = u.SegmentationModel(), SegmentationModel()
model_shapes = ([(n, tuple(p.shape)) for n, p in mine.state_dict().items()]
                == [(n, tuple(p.shape)) for n, p in reference.state_dict().items()])
mine.load_state_dict(reference.state_dict())
with torch.no_grad():
    batch_tokens = reference.encoder(images).flatten(2).transpose(1, 2)
    batch_experts = reference.latent_attention(batch_tokens)
    ref_l, ref_w = ref_head(batch_tokens, batch_experts, return_attention=True)
    my_l, my_w = my_head(batch_tokens, batch_experts, return_attention=True)
    ref_logits, ref_att = reference(images, return_attention=True)
    my_logits, my_att = mine(images, return_attention=True)
same_head = torch.allclose(my_l, ref_l, atol=1e-5) and torch.allclose(my_w, ref_w, atol=1e-6)
same_model = (torch.allclose(my_logits, ref_logits, atol=1e-5)
              and all(torch.allclose(my_att[k], ref_att[k], atol=1e-6) for k in ("latent", "pixel")))
print("logits", tuple(my_logits.shape), f"  parameters: {u.count_parameters(mine):,}")
print("same parameter names and shapes:", head_shapes and model_shapes)
print("matches latentseg_utils.ExpertSegmentation:", same_head)
print("matches latentseg_utils.SegmentationModel:", same_model)
assert head_shapes and model_shapes and same_head and same_model, \
    "the model here and in latentseg_utils have drifted apart"
''')
    return nb


BUILDERS = {"01": (notebook_01, "01_encoder.ipynb"),
            "02": (notebook_02, "02_latent_attention.ipynb"),
            "03": (notebook_03, "03_expert_segmentation.ipynb")}

if __name__ == "__main__":
    for key in sys.argv[1:] or sorted(BUILDERS):
        build, name = BUILDERS[key]
        print("wrote", build().write(name))
