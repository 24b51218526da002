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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/latentseg/latentseg/blob/v0.2/notebooks/02_latent_attention.ipynb)
#
# # 02 · Latent attention, from the equation to the module
#
# After this notebook you can write attention and multi-head attention from scratch and show they
# equal PyTorch's, and build the tutorial's `LatentAttention`, in which 16 learned latents read
# an image's pixel features. You will also be able to say, with measurements, why it reads through latents.
#
# **Run time:** under 10 seconds on a quiet 2-core CPU. Nothing is trained.
#
# **What you will learn**
# 1. Scaled dot-product attention, $\mathrm{softmax}(QK^\top/\sqrt{d})\,V$, in three lines, and why the $\sqrt{d}$ is there (measured).
# 2. Multi-head attention by hand: project, split, attend, merge, project. Your version equals `nn.MultiheadAttention` to 1e-5.
# 3. `LatentAttention`: K learned latents as queries, the pixel features as keys and values.
# 4. Where each latent and each head looks on an image, drawn as heatmaps.
# 5. What latents buy: time and peak memory of $N\cdot K$ cross-attention against $N^2$ self-attention, measured as the image grows.
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
# The imports, a fixed seed so that every number below is the same on every run (except section
# 6's timings and memory), and the device.
# Nothing in this notebook trains, so everything runs on the CPU whatever `device` says; it is
# printed so that a bug report says what you ran. `u` is the series' shared module: whatever this
# notebook builds by hand, `u` holds too, and the notebook ends by checking that the two agree.

# %%
import numpy as np
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
# ## 1. Pixel tokens to attend over
#
# Notebook 01 built the encoder. It turns a 64×64 image into a 16×16 grid of 64-dimensional
# features. Attention works on sets of vectors, so we flatten the grid row by row into
# $N = 256$ **tokens** of width $D = 64$: `[B, D, h, w] -> [B, N, D]`.

# %% tags=["nbval-check-output"]
images, labels = u.make_shapes_batch(6, image_size=64, seed=0)
image = images[2]                                   # the sample notebook 01 follows
encoder = u.SimpleEncoder()
with torch.no_grad():
    features = encoder(image.unsqueeze(0))          # [1, 64, 16, 16]
tokens = features.flatten(2).transpose(1, 2)        # [1, 256, 64]: token n is cell (n // 16, n % 16)
print("features:", tuple(features.shape), "-> tokens:", tuple(tokens.shape))


# %% [markdown]
# ## 2. Scaled dot-product attention by hand
#
# Attention answers $M$ questions about $N$ items. Each item has a **key** (what it is about) and a
# **value** (what it says); each question is a **query**. The answer to a query is an average of
# the values, weighted by how well the query matches each key:
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{d}}\right) V,
# \qquad Q \in \mathbb{R}^{M\times d},\; K \in \mathbb{R}^{N\times d},\; V \in \mathbb{R}^{N\times d_v}.$$
#
# The softmax runs along each row, so row $i$ of the weights is a probability distribution over
# the $N$ items: how much query $i$ reads from each. That is the whole mechanism.

# %%
def attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v.
    q [..., M, d], k [..., N, d], v [..., N, dv] -> (out [..., M, dv], weights [..., M, N])"""
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5    # [..., M, N]
    weights = scores.softmax(dim=-1)                          # each row sums to 1
    return weights @ v, weights


# %% [markdown]
# A first try on small random tensors: 3 queries, 5 items. We check the shapes, that each row of
# weights sums to 1, and that the answer equals PyTorch's fused
# `F.scaled_dot_product_attention`.

# %% tags=["nbval-check-output"]
gen = torch.Generator().manual_seed(0)
q, k, v = torch.randn(3, 8, generator=gen), torch.randn(5, 8, generator=gen), torch.randn(5, 4, generator=gen)
out, w = attention(q, k, v)
print("out:", tuple(out.shape), " weights:", tuple(w.shape))
print("rows of the weights sum to 1:", torch.allclose(w.sum(-1), torch.ones(3)))
print("equals F.scaled_dot_product_attention:",
      torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-6))

# %% [markdown]
# ### Why divide by $\sqrt{d}$?
#
# If the entries of $q$ and $k$ have variance 1, the dot product $q\cdot k$ is a sum of $d$ such
# products, so its standard deviation grows like $\sqrt{d}$. Large scores make the softmax
# **saturate**: one weight near 1, the rest near 0. A saturated softmax passes almost no gradient
# to the keys it ignores, so learning stalls. Dividing by $\sqrt{d}$ brings the scores back to unit
# scale at any width. We measure this with 1,000 random queries over 16 keys:

# %%
print(f"{'d':>4} {'std of q.k':>11} {'std of q.k/sqrt(d)':>19} {'mean max weight: raw':>21} {'scaled':>7}")
for d in (4, 16, 64, 256):
    qd, kd = torch.randn(1000, d, generator=gen), torch.randn(16, d, generator=gen)
    raw = qd @ kd.T
    scaled = raw / d ** 0.5
    print(f"{d:>4} {raw.std():>11.1f} {scaled.std():>19.2f} "
          f"{raw.softmax(-1).max(-1).values.mean():>21.2f} {scaled.softmax(-1).max(-1).values.mean():>7.2f}")

# %% [markdown]
# Without the scale, the softmax sharpens as $d$ grows: at $d = 256$ a query puts on average 0.92 of
# its weight on a single key. With the scale, the scores keep a standard deviation near 1 and the
# softmax stays about equally soft at every width.
#
# ## 3. Multi-head attention by hand
#
# One attention compares queries and keys along all $E$ channels at once. **Multi-head**
# attention runs $h$ attentions side by side, each on its own $E/h$ channels, so that different
# heads can match on different things (one on colour, say, another on texture).
# `nn.MultiheadAttention` does five steps:
#
# 1. **project** queries, keys and values with learned matrices $W_q, W_k, W_v$ (each $E\times E$, plus biases);
# 2. **split** the $E$ channels into $h$ heads of $E/h$ channels;
# 3. **attend** in each head separately;
# 4. **merge** the heads back into $E$ channels;
# 5. apply the **output projection** $W_o$.
#
# We take a real `nn.MultiheadAttention` with the tutorial's width $E = 64$ and $h = 4$ heads, and
# redo its forward pass by hand from its weights. PyTorch stores $W_q, W_k, W_v$ stacked in one
# `in_proj_weight` of shape `[3E, E]`. Its biases start at zero, so we randomise them; otherwise
# the comparison would not cover them.

# %% tags=["nbval-check-output"]
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

# %% [markdown]
# **Step 1, project.** As queries we use 16 random vectors; in the next section they become the
# learned latents. The keys and values are the 256 pixel tokens.

# %% tags=["nbval-check-output"]
query = torch.randn(1, 16, E, generator=gen)      # [B, M, E]
key = value = tokens                              # [B, N, E]
Q = query @ W_q.T + b_q
Kp = key @ W_k.T + b_k
Vp = value @ W_v.T + b_v
print("Q", tuple(Q.shape), "  K", tuple(Kp.shape), "  V", tuple(Vp.shape))


# %% [markdown]
# **Step 2, split.** Head $i$ gets channels $16i$ to $16i+15$. A `view` cuts the channel axis into
# `(heads, E/heads)`, and a `transpose` moves the heads next to the batch. Each head then
# looks like an independent batch entry.

# %% tags=["nbval-check-output"]
def split_heads(t, heads):
    """[B, L, E] -> [B, heads, L, E / heads]"""
    B, L, E = t.shape
    return t.view(B, L, heads, E // heads).transpose(1, 2)


Qh, Kh, Vh = split_heads(Q, heads), split_heads(Kp, heads), split_heads(Vp, heads)
print("Q", tuple(Qh.shape), "  K", tuple(Kh.shape), "  V", tuple(Vh.shape), "  (batch, head, tokens, channels)")

# %% [markdown]
# **Step 3, attend.** Our `attention` function works on any leading dimensions, so all heads run
# at once. The scale is now $\sqrt{E/h} = 4$, the width of one head.

# %% tags=["nbval-check-output"]
head_out, head_weights = attention(Qh, Kh, Vh)
print("per-head output", tuple(head_out.shape), "  weights", tuple(head_weights.shape))

# %% [markdown]
# **Steps 4 and 5, merge and project.** We undo the split and apply the output projection. The
# output projection is what lets the heads' answers mix.

# %% tags=["nbval-check-output"]
merged = head_out.transpose(1, 2).reshape(1, 16, E)     # [B, M, E]
by_hand = merged @ W_o.T + b_o
print("merged", tuple(merged.shape), "-> output", tuple(by_hand.shape))


# %% [markdown]
# Now the five steps go into one function, and we compare it with PyTorch, outputs and per-head weights,
# on a batch of two different inputs.

# %% tags=["nbval-check-output"]
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


# %% [markdown]
# ## 4. `LatentAttention`: K learned latents read the pixels
#
# The tutorial's `LatentAttention` is multi-head attention in which the **queries are learned**:
# $K = 16$ vectors, the **latents**, are parameters of the model, the same for every image. (From
# here on $K$ is this number of latents, not the key matrix of section 2.) The **keys and values
# are the pixel tokens**. Queries from one set reading keys and values from another is
# **cross-attention**; in self-attention (section 6) all three come from the same tokens. Each
# latent asks the image one question per head, 4 in all, and the output projection merges the 4
# answers into one 64-dimensional vector. The output is $K$ such vectors, a summary of the image in
# 16 slots whatever its size: the latents refined by what they read, which the tutorial calls
# **experts**.
#
# This is the **read** step of the Perceiver (*Perceiver: General Perception with Iterative
# Attention*, Jaegle et al., 2021).
#
# The tutorial's version has one oddity that we keep so the reproduction stays faithful. It
# projects keys, values and queries with its own `nn.Linear` layers (`key_proj`, `value_proj`,
# `query_proj`) before `nn.MultiheadAttention` projects them again with its $W_k, W_v, W_q$.
# Two linear maps in a row are one linear map, so these layers add parameters but no
# expressive power. Exercise 3 folds one of them away.

# %%
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


# %% [markdown]
# We build it with the tutorial's sizes and read the sample image's 256 tokens.

# %% tags=["nbval-check-output"]
latent_attention = LatentAttention(feature_dim=64, latent_dim=64, num_latents=16, num_heads=4)
with torch.no_grad():
    experts, weights = latent_attention(tokens, return_attention=True)
print("tokens", tuple(tokens.shape), "-> experts", tuple(experts.shape))
print("weights", tuple(weights.shape), "  (batch, head, latent, token)")
print("each latent's weights sum to 1 over the tokens:", torch.allclose(weights.sum(-1), torch.ones(1, 4, 16)))

# %% [markdown]
# Where do its parameters sit? The last line adds up the three extra projections described above.

# %% tags=["nbval-check-output"]
for name, child in [("latents", None), ("key_proj", latent_attention.key_proj),
                    ("value_proj", latent_attention.value_proj),
                    ("query_proj", latent_attention.query_proj),
                    ("attention", latent_attention.attention)]:
    count = latent_attention.latents.numel() if child is None else u.count_parameters(child)
    print(f"  {name:<11} {count:>7,}")
print(f"  {'total':<11} {u.count_parameters(latent_attention):>7,}")
extra = sum(u.count_parameters(p) for p in (latent_attention.key_proj, latent_attention.value_proj,
                                            latent_attention.query_proj))
print(f"key_proj, value_proj and query_proj together: {extra:,}")

# %% [markdown]
# ## 5. Where each latent looks
#
# Row $k$ of the weights is latent $k$'s distribution over the 256 tokens, which is a map over the 16×16
# grid. `u.plot_attention` draws one heatmap per latent over the image (here averaged over the 4
# heads). Bright means more attention weight, dark less. The model is **untrained**, and that
# matters for reading the figure: each map is drawn on its own colour scale, stretched from its
# smallest to its largest weight.

# %%
fig = u.plot_attention(image, weights[0].mean(0),
                       title="Untrained latents: where each one looks (mean over heads; own colour scale per map)")
plt.show()

# %% [markdown]
# The maps already follow the image: in some the triangle stands out, in others the circle, the
# square or the background, and the shapes' edges show as thin bright or dark lines. The scores
# are linear in the pixel features, and the features differ with colour and at edges. The border
# cells differ too, because the encoder's zero padding makes them look different. But how strong
# are these preferences? Each map has its own colour scale, so we compare the weights
# themselves with the uniform weight $1/N$. A softmax's log-weights are its scores minus one
# constant per row, so the last line also gives the widest spread of one latent's scores (in one
# head):

# %%
uniform = 1 / tokens.shape[1]
print(f"uniform weight 1/N = {uniform:.5f}")
print(f"untrained weights range from {weights.min():.5f} to {weights.max():.5f} "
      f"(largest = {weights.max() / uniform:.2f} x uniform)")
score_spread = (weights.log().amax(-1) - weights.log().amin(-1)).max()
print(f"largest spread of one latent's scores over the 256 tokens (one head): {score_spread:.3f}")

# %% [markdown]
# Before training, every latent reads almost the whole image evenly: the largest weight is only
# 1.04 times the uniform one, so the patterns above are small ripples on top of a nearly flat
# average. The reason is the size of the scores: with PyTorch's initialisation, one latent's scores
# $QK^\top/\sqrt{d}$ differ by at most 0.069 from token to token, and a softmax of nearly equal
# scores is nearly flat. Training has to make these differences large and meaningful. Notebook 06
# draws the same maps for trained models.
#
# Each latent has 4 heads, and each head attends on its own 16 channels, so the heads of one latent
# can look at different places. Here are the heads of the latent with the largest single weight
# (bright again means more weight). Even untrained, its heads weight the same shapes differently
# (compare the circle across the four maps):

# %%
k = int(weights[0].amax(dim=(0, 2)).argmax())
fig = u.plot_attention(image, weights[0, :, k], labels=[f"head {h}" for h in range(4)],
                       title=f"Latent {k}: where each of its 4 heads looks (untrained)")
plt.show()

# %% [markdown]
# ## 6. Why latents? $N\cdot K$ against $N^2$, measured
#
# Why not let the pixel tokens attend to each other directly? Self-attention over $N$ tokens
# compares every token with every other: $N^2$ weights per head, and, for large $N$, time that
# grows as $N^2$. Latent cross-attention compares $K$ latents with $N$ tokens: $N\cdot K$ weights,
# and time linear in $N$. The Perceiver paper makes this argument; here we measure it.
#
# We compare `nn.MultiheadAttention` used as self-attention over the tokens with `u.LatentAttention`
# ($K = 16$), both with the tutorial's width 64 and 4 heads, for images from 32×32 to 160×160
# ($N$ = 64 to 1,600 tokens at stride 4). Both are asked for their attention weights, so both
# compute and store their weight matrix. The tutorial's own line,
# `latent_output, _ = self.attention(query=queries, key=keys, value=values)`, does so on every
# call: it throws the weights away, but `need_weights` defaults to True. Our class (section 4)
# asks for them only when `return_attention` is set, and we set it, so it computes what the
# tutorial's call computes.
# (Fused kernels such as FlashAttention avoid storing the $N\times N$ matrix, but they still do
# $N^2$ work.)
#
# **Peak memory** comes from `peak_memory_bytes` in `latentseg.benchmarking`: the extra resident
# memory of the process at the peak of one forward pass, as Linux counts it, so every temporary
# buffer counts, not just the returned weights. Where Linux's counters are missing (macOS,
# Windows) it returns `None`, and the memory plot shows only the weight tensors.

# %%
import time
from contextlib import contextmanager

from latentseg.benchmarking import peak_memory_bytes


def best_time(fn, repeats=5):
    """Fastest of a few runs, in seconds (the least disturbed by other work on the machine)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@contextmanager
def torch_threads(n):
    """Run the block on n threads; restore the previous count afterwards, even if it raises."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# %% [markdown]
# The measurement itself. Each size is run once as a warm-up (first calls allocate buffers that
# later calls reuse), then timed (fastest of five runs) and measured. We time on **one thread**
# (`torch_threads(1)`, which puts the previous thread count back afterwards). On a busy or shared
# CPU, PyTorch's threads spend their time waiting for each other, and those waits would swamp
# what we want to see. Times and peak memory depend on the machine and on what else it runs: the
# numbers below, and what the next cells say about them, describe the run saved here, and yours
# will differ in detail. The last column says which of the two was faster at each size.

# %% tags=["nbval-ignore-output"]
self_attention = nn.MultiheadAttention(64, 4, batch_first=True).eval()
latent_reader = u.LatentAttention(64, 64, 16, 4).eval()
sizes = [32, 64, 96, 128, 160]
bench = {"self-attention": [], "latent attention": []}     # rows: (N, seconds, peak bytes, weight bytes)
with torch_threads(1), torch.no_grad():
    for size in sizes:
        x = torch.randn(1, (size // 4) ** 2, 64)
        calls = {"self-attention": lambda: self_attention(x, x, x, average_attn_weights=False),
                 "latent attention": lambda: latent_reader(x, return_attention=True)}
        for name, call in calls.items():
            w = call()[1]                                   # warm-up; keep the weights' size
            bench[name].append((x.shape[1], best_time(call), peak_memory_bytes(call),
                                w.numel() * w.element_size()))


def mb(b):
    return float("nan") if b is None else b / 1e6


print(f"{'image':>7} {'N':>6} | {'self: ms':>8} {'MB peak':>8} {'MB weights':>10} | "
      f"{'latent: ms':>10} {'MB peak':>8} {'MB weights':>10} | faster")
for size, s, lat in zip(sizes, bench["self-attention"], bench["latent attention"]):
    print(f"{size:>3}x{size:<3} {s[0]:>6,} | {1e3 * s[1]:>8.2f} {mb(s[2]):>8.2f} {mb(s[3]):>10.2f} | "
          f"{1e3 * lat[1]:>10.2f} {mb(lat[2]):>8.2f} {mb(lat[3]):>10.2f} | "
          f"{'latent' if lat[1] < s[1] else 'self'}")

# %% [markdown]
# On log-log axes a power law $N^p$ is a straight line of slope $p$. The dotted grey lines, drawn
# through each curve's last point, show slopes 2 and 1 for comparison. What to look at:
#
# - **Time, smallest image.** A fixed cost per call dominates there, and the latents pay more of
#   it, with three extra linear layers in front of the same `nn.MultiheadAttention`, so the two
#   curves start close and the latents can be the slower (the `faster` column says which won).
# - **Time, as N grows.** Self-attention's curve steepens as its $N\times N$ part takes over,
#   toward slope 2 or past it. The latents' curve starts flatter, where their fixed cost
#   dominates, steepens as the part that grows with $N$ takes over, and stays far below.
# - **Memory.** The dashed weight tensors follow slopes 2 and 1 exactly. Self-attention's measured
#   peak closes in on its weight tensor as $N$ grows: at large $N$ its memory is mostly the
#   $N\times N$ matrix. The latents' measured peak grows about as their weight tensor does, and
#   ends far below self-attention's.

# %%
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


# %% [markdown]
# Least-squares slopes over all five sizes put numbers on the curves. Expect rough values, not the
# ideal 2 and 1: at small sizes the fixed cost per call (Python, PyTorch's dispatch) and the
# projections, whose cost grows only as $N$, pull the slopes down, while at large sizes
# self-attention's $N\times N$ matrix can outgrow the CPU's caches and make its time grow faster
# than $N^2$. The last lines compare the two modules.

# %% tags=["nbval-ignore-output"]
def slope(rows, key):
    N = np.log([r[0] for r in rows])
    y = np.log([max(r[key], 1e-12) for r in rows])
    return np.polyfit(N, y, 1)[0]

for name, rows in bench.items():
    memory = "n/a" if rows[0][2] is None else f"{slope(rows, 2):.2f}"
    print(f"{name:<17} time slope {slope(rows, 1):.2f}, measured peak memory slope {memory}")
for key, what in ((1, "time"), (2, "peak memory")):
    if key == 1 or bench["self-attention"][0][2] is not None:
        print(f"self-attention's {what} grows faster than the latents':",
              slope(bench["self-attention"], key) > slope(bench["latent attention"], key))

# %% [markdown]
# Here self-attention's time and peak memory grow faster with $N$ than the latents' (the last two
# lines), though neither pair of slopes is a clean 2 and 1. The clean $N/K$ ratio shows in the
# count of weights, which is the same on every machine: at every size, self-attention stores
# $N/K$ times as many weights as the latents do, and that factor grows with the image:

# %% tags=["nbval-check-output"]
for (N, _, _, self_bytes), (_, _, _, latent_bytes) in zip(bench["self-attention"], bench["latent attention"]):
    print(f"N = {N:>5,}: self-attention stores {self_bytes // latent_bytes:>3}x the latents' weights (N/K = {N // 16})")


# %% [markdown]
# ## Summary
#
# - Attention is $\mathrm{softmax}(QK^\top/\sqrt{d})V$: every query takes a weighted average of the
#   values, and the weights say how well it matches each key. The $\sqrt{d}$ keeps the softmax
#   from saturating as width grows (measured).
# - Multi-head attention is project, split, attend, merge, project. Your version equals
#   `nn.MultiheadAttention` to 1e-5.
# - `LatentAttention` uses $K = 16$ learned latents as queries over the $N$ pixel tokens
#   (cross-attention). It turns any image into 16 vectors, the experts: the Perceiver's read step.
# - Untrained, every latent reads the image almost uniformly, with small ripples that follow the
#   shapes, their edges and the border. Training must sharpen this (notebook 06 shows trained maps).
# - Latents store $N\cdot K$ attention weights against self-attention's $N^2$: $N/K$ times fewer,
#   at every size, on any machine. The timings and peak memory measured here show the same trend,
#   though not as clean powers of $N$, and for small images a fixed cost per call can make the
#   latents the slower of the two.
#
# ## Exercises
#
# Each exercise comes with a check function. Write your answer in a new cell and call the check
# on it. The solution is in the hidden cell titled *Solution* below each check: click its collapsed
# input to read it (double-click in Colab), and run it to see the answer.
#
# ### Exercise 1: a bag of pixels
#
# Write `shuffle_tokens(tokens, generator)`, which returns the tokens `[B, N, D]` in a random order
# (the same permutation for the whole batch). Then run `latent_attention` on both orders. What
# happens to its output, and to its weights? What does that tell you about what the latents know
# of *where* a pixel is?

# %%
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
    assert torch.allclose(before, after, atol=1e-5), "the latent output changed with the order"
    print("correct: the latent output is unchanged by the shuffle")


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def shuffle_tokens(tokens, generator):
    order = torch.randperm(tokens.shape[1], generator=generator)
    return tokens[:, order]

check_shuffle(shuffle_tokens)
# The weights are shuffled the same way as the tokens, and each latent's weighted sum is the
# same. The latents see a *set* of tokens, not a grid: anything they know about position comes
# from what the encoder's 10x10 receptive field put into each token (and from the padded border).
# Notebook 05 adds position features for that reason.

# %% [markdown]
# ### Exercise 2: counting attention weights
#
# Write `attention_weight_counts(image_size, num_latents=16, num_heads=4)`, which returns the
# number of attention weights per image for `(self-attention, latent attention)` at stride 4. The
# check compares it with the weight tensors that the modules actually return.

# %%
def check_counts(fn):
    for size in (32, 48, 64):
        x = torch.randn(1, (size // 4) ** 2, 64)
        with torch.no_grad():
            w_self = self_attention(x, x, x, average_attn_weights=False)[1]
            w_latent = latent_reader(x, return_attention=True)[1]
        expected = (w_self.numel(), w_latent.numel())
        assert tuple(fn(size)) == expected, f"image {size}: expected {expected}, got {tuple(fn(size))}"
    print("correct for 32, 48 and 64 pixel images")


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def attention_weight_counts(image_size, num_latents=16, num_heads=4):
    N = (image_size // 4) ** 2
    return num_heads * N * N, num_heads * num_latents * N

check_counts(attention_weight_counts)
print("a 256x256 image (self, latent):", attention_weight_counts(256))


# %% [markdown]
# ### Exercise 3: fold away `query_proj`
#
# The latents are free parameters, and `query_proj` only applies one more linear layer (weight
# and bias) to them. So a module whose `query_proj` is the identity, and whose latents are the old
# `query_proj(latents)`, computes the same thing, up to rounding. Build such a copy of
# `latent_attention` (hint: `copy.deepcopy`, then set the weights under `torch.no_grad()`) and
# check it.

# %%
def check_folded(folded):
    qp = folded.query_proj
    assert torch.equal(qp.weight, torch.eye(64)) and torch.equal(qp.bias, torch.zeros(64)), \
        "query_proj should be the identity"
    with torch.no_grad():
        same = torch.allclose(folded(tokens), latent_attention(tokens), atol=1e-5)
    print("folded module computes the same experts:", same)


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
import copy

folded = copy.deepcopy(latent_attention)
with torch.no_grad():
    folded.latents.copy_(latent_attention.query_proj(latent_attention.latents))
    folded.query_proj.weight.copy_(torch.eye(64))
    folded.query_proj.bias.zero_()
check_folded(folded)
# query_proj's 4,160 parameters add nothing the latents could not learn themselves.

# %% [markdown]
# ## Final check: your `LatentAttention` is `latentseg_utils.LatentAttention`
#
# Later notebooks import `LatentAttention` from `latentseg_utils`. This cell checks that it is what
# you built. It compares the parameter names and shapes, and, with the same weights, the
# experts and the attention weights on all six images. It also checks that your hand-written
# `multi_head_attention` reproduces the module's own attention from its weights. If either drifts,
# this cell fails.

# %% tags=["nbval-check-output"]
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
