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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/latentseg/latentseg/blob/v0.2/notebooks/03_expert_segmentation.ipynb)
#
# # 03 · Expert segmentation: pixels read the experts, and the whole model
#
# After this notebook you can build the tutorial's `ExpertSegmentation`, in which every pixel attends over
# the 16 experts and a linear head gives its class logits, and assemble the whole
# `SegmentationModel`, accounting for each of its 70,504 parameters. You will also be able to
# place the model beside Perceiver IO and MaskFormer.
#
# **Run time:** under 10 seconds on a quiet 2-core CPU. Nothing is trained.
#
# **What you will learn**
# 1. Pixels as queries over the experts: the second cross-attention, which runs the other way.
# 2. What a pixel's output can and cannot depend on (shown, not assumed).
# 3. The linear head, the tutorial's decoder, and the whole model, with a table of parameters per part.
# 4. The per-pixel expert assignment, drawn as a map over the image, and what it will mean after training.
# 5. How this model relates to Perceiver IO and to MaskFormer, and what its names do not mean.
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
# printed so that a bug report says what you ran. `u` is the series' shared module: whatever this
# notebook builds by hand, `u` holds too, and the notebook ends by checking that the two agree.

# %%
import torch
import torch.nn as nn
import matplotlib.pyplot as plt
import latentseg_utils as u

torch.manual_seed(0)
device = u.get_device()
print(f"torch {torch.__version__}, device: {device}")
plt.rcParams["figure.dpi"] = 72   # small committed figures

# %% [markdown]
# ## 1. From an image to experts
#
# Notebooks 01 and 02 built the first two parts, and `latentseg_utils` holds both, checked
# against what those notebooks built. The encoder turns the image into $N = 256$ pixel tokens
# (one per 4×4 block). `LatentAttention` lets $K = 16$ learned latents read them, and its output
# is 16 refined **experts**.

# %% tags=["nbval-check-output"]
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

# %% [markdown]
# ## 2. Pixels as queries over the experts
#
# Now the roles swap. In notebook 02 the 16 latents asked questions of the 256 pixels. Here each
# of the 256 pixels asks a question of the 16 experts:
#
# - **queries**: each pixel's own feature, mapped into the latent space by `pixel_proj` (a linear layer);
# - **keys and values**: the experts.
#
# Each pixel gets back a weighted mix of the experts. Its weights are 16 numbers per head that sum to 1.

# %% tags=["nbval-check-output"]
pixel_proj = nn.Linear(64, 64)
expert_attention = nn.MultiheadAttention(64, 4, batch_first=True)
with torch.no_grad():
    queries = pixel_proj(tokens)                                          # [1, 256, 64]
    attended, pixel_weights = expert_attention(queries, experts, experts, average_attn_weights=False)
print("queries", tuple(queries.shape), " keys = values = experts", tuple(experts.shape))
print("attended", tuple(attended.shape), " weights", tuple(pixel_weights.shape), " (batch, head, pixel, expert)")
print("each pixel's weights sum to 1 over the experts:",
      torch.allclose(pixel_weights.sum(-1), torch.ones(1, 4, 256)))

# %% [markdown]
# ### What a pixel's output can depend on
#
# Look at what the attention computes for one pixel. In each head it mixes the experts' values
# with the pixel's 16 weights, then the output projection combines the heads. The pixel's own
# feature enters **only through its weights**: nothing adds it back (there is no residual
# connection). We can rebuild every pixel's output from its weights and the experts alone, never
# touching the pixel features:

# %% tags=["nbval-check-output"]
W_v = expert_attention.in_proj_weight[128:]          # the value rows of the stacked projection
b_v = expert_attention.in_proj_bias[128:]
with torch.no_grad():
    V = (experts @ W_v.T + b_v).view(1, 16, 4, 16).transpose(1, 2)       # [1, heads, K, 16]
    mixed = (pixel_weights @ V).transpose(1, 2).reshape(1, 256, 64)        # [1, N, 64]
    rebuilt = expert_attention.out_proj(mixed)
print("every pixel's output rebuilt from its weights and the experts alone:",
      torch.allclose(rebuilt, attended, atol=1e-5))

# %% [markdown]
# So two pixels that weigh the experts the same way get the same output, whatever else their
# features say, and so the same logits from the linear head below (only the decoder of section 4,
# which mixes neighbouring scores, can still tell them apart). All that distinguishes one pixel's
# output from another's is its 64 weights (16 per head × 4 heads); the 16 experts they mix are
# the same for every pixel. This bottleneck is the tutorial's design. Notebook 05 measures what
# it costs, and the series' improved model (`u.LatentSegNet`) adds the pixel's own feature back
# with a residual connection.
#
# ## 3. The linear head: class logits
#
# A linear layer maps each pixel's 64-dimensional output to one score (**logit**) per class. The
# model built here keeps the tutorial's default, `num_classes=2`, so that its parameter count
# matches the tutorial's. The series' shapes data has 4 classes, so notebook 05 builds the model
# with `num_classes=4`.

# %% tags=["nbval-check-output"]
num_classes = 2
segmentation_head = nn.Linear(64, num_classes)
with torch.no_grad():
    pixel_logits = segmentation_head(attended)            # [1, 256, num_classes]
print("attended", tuple(attended.shape), "-> logits", tuple(pixel_logits.shape),
      f"  head parameters: {u.count_parameters(segmentation_head)}")


# %% [markdown]
# ### The expert head as one module
#
# The tutorial's `ExpertSegmentation` is these three layers. We keep its attribute names, which
# become the `state_dict` keys that the final check compares.

# %% tags=["nbval-check-output"]
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


# %% [markdown]
# ## 4. The whole model, with the tutorial's decoder
#
# The logits live on the 16×16 grid. The tutorial's decoder brings them back to the image:
#
# 1. reshape `[B, N, C] -> [B, C, 16, 16]` (the inverse of the flatten in section 1);
# 2. a 3×3 convolution **on the logits** (C channels in, C out), which lets each cell's scores see its neighbours' scores;
# 3. bilinear upsampling ×4 to `[B, C, 64, 64]`.
#
# Here is the whole model. The encoder and latent attention come from `latentseg_utils`, where
# notebooks 01 and 02 checked them. The expert head is the one you just wrote. The attribute names are the tutorial's.

# %%
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
        experts, latent_w = self.latent_attention(tokens, return_attention=True)  # [B, K, latent_dim]
        logits, pixel_w = self.expert_segmentation(tokens, experts, return_attention=True)  # [B, N, C]
        logits = logits.transpose(1, 2).reshape(B, self.num_classes, h, w)  # [B, C, h, w]
        logits = self.decoder(logits)                                    # [B, C, H, W]
        return (logits, {"latent": latent_w, "pixel": pixel_w}) if return_attention else logits


# %% [markdown]
# One forward pass on the sample, with the shape of everything it returns:

# %% tags=["nbval-check-output"]
model = SegmentationModel()
with torch.no_grad():
    logits, attention = model(x, return_attention=True)
print("image", tuple(x.shape), "-> logits", tuple(logits.shape))
print("latent weights", tuple(attention["latent"].shape), "  pixel weights", tuple(attention["pixel"].shape))

# %% [markdown]
# ### Parameters, part by part
#
# Where do the parameters sit? The table is computed from the modules, and its total must equal
# the count of `latentseg_utils.SegmentationModel`, the tutorial's model as the rest of the series
# uses it.

# %% tags=["nbval-check-output"]
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
def size(p):
    return p.numel() if isinstance(p, nn.Parameter) else u.count_parameters(p)


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
print(f"stored as float32 (4 bytes each): {4 * total / 1000:.0f} kB")
assert total == u.count_parameters(model) == reference_total

# %% [markdown]
# Three things stand out. The model is tiny: 70,504 parameters, 282 kB as float32. Most of them
# are in the two attentions and their projections. And only the last two layers depend on the
# classes: the head, which maps each pixel's 64 numbers to class scores (130 parameters), and the
# decoder's convolution on those scores (38). The number of classes changes only these two
# (exercise 1 works out how):

# %% tags=["nbval-check-output"]
for c in (2, 4):
    print(f"num_classes={c}: {u.count_parameters(SegmentationModel(num_classes=c)):,} parameters")

# %% [markdown]
# ## 5. Which expert does each pixel read?
#
# Each pixel's attention weights over the 16 experts are a soft assignment. Take the argmax over
# the experts (after averaging the 4 heads) and you get a hard **expert assignment map**, the model's
# own partition of the image. It is a 16×16 map because the tokens are, and we draw it at image
# size. Experts are not classes, so they get their own palette (`tab20`), not the class colours.
#
# This is the **untrained** model. The figure also shows each head's own assignment, and a bar
# chart of how many of the 256 tokens each expert wins. Look at how few experts appear: one covers
# most of the image, and the bar chart has only three bars, one of them barely visible.

# %%
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

# %% [markdown]
# Before reading anything into these maps, measure how decided the assignments are. How different are the 16 experts from each other, and how far
# are the pixels' weights from the uniform $1/K$?

# %%
import copy

with torch.no_grad():
    model_experts = model.latent_attention(model.encoder(x).flatten(2).transpose(1, 2))[0]  # [K, 64]
    _, attention64 = copy.deepcopy(model).double()(x.double(), return_attention=True)
pixel_w64 = attention64["pixel"][0]                           # the same weights, in float64
centre = model_experts.mean(0)
spread = (model_experts - centre).norm(dim=-1) / centre.norm()
print(f"each expert's distance from the experts' mean, relative to the mean's length: "
      f"at most {spread.max():.1e}")
print(f"every pixel weight is within {(pixel_w - 1 / K).abs().max():.1e} of 1/K = {1 / K}")
print(f"the same weights in float64 differ from these by at most {(pixel_w64 - pixel_w).abs().max():.1e}")
changed = int((pixel_w64.mean(0).argmax(-1) != assignment.flatten()).sum())
print(f"pixels whose expert (head mean) changes in float64: {changed} of {pixel_w.shape[1]}")
won = {e: int(share[e]) for e in share.nonzero().flatten().tolist()}
print(f"experts that win at least one token (head mean): {len(won)} of {K}; tokens won: {won}")


# %% [markdown]
# **Before training the map means nothing, and the numbers say why.** Notebook 02 showed that
# every untrained latent reads the image almost uniformly, so the experts are nearly the same
# average of the whole image: each lies within 1.2e-03 of their mean, relative to the mean's
# length. So a pixel has almost nothing to choose between: every weight is within 2.0e-07 of
# $1/16$. These tiny differences are real, since float64 gives the same weights to within
# 9.8e-09. But at some pixels the two largest weights are so close that rounding decides which
# expert wins: computed in float64, 27 of the 256 pixels change expert.
#
# The argmax shows only which expert wins, not by how much, so even these tiny leads paint solid
# patches. Which expert wins depends on the pixel's query: its largest weight goes to the expert
# whose key best matches it, and pixels with similar features have similar queries and pick the
# same expert. That is why one expert covers most of the image, only 3 of the 16 win any token (one of them only 2 tokens), and some per-head maps follow the
# shapes. The expert head can tell experts apart only after the latent attention has made them
# different.

# %% [markdown]
# ### What the map will show after training
#
# Then the map answers "which part of the image is this?" If the experts specialise, each owns a
# kind of region (background, object interiors, the edges of one shape), and the map looks like a
# rough segmentation that the head then labels. If a few experts win everywhere, the map shows that
# collapse just as plainly. Notebook 06 draws it for the series' trained model, `u.LatentSegNet`.

# %% [markdown]
# ## 6. Where this design comes from: Perceiver IO and MaskFormer
#
# In one sentence: **16 learned latents read the pixel features by cross-attention, every pixel
# reads what they gathered (the experts), and a linear layer classifies each pixel.**
#
# ### Perceiver IO: latents read, output queries write
#
# *Perceiver IO: A General Architecture for Structured Inputs & Outputs* (DeepMind, 2021) has this
# shape. Its encoder is a cross-attention in which a small learned latent array reads a large
# input, at a cost of $O(NK)$ instead of $O(N^2)$ (notebook 02 measured it). Its decoder is a second
# cross-attention in which **output queries**, one per output element (here one per pixel), read
# the latents, so the cost stays linear in the output size too. The tutorial's `LatentAttention` is
# the read and its `ExpertSegmentation` the write. The tutorial lacks two things: Perceiver IO's
# self-attention blocks between read and write (its 16 latents never exchange information), and
# the layer norms, MLPs and residual connections around the attentions (notebook 05 adds them). Whether the decoder adds its result to the output query is a switch,
# `use_query_residual`. DeepMind's reference code leaves it off by default and in its optical-flow
# and language models, where an output query, like a pixel here (section 2), shapes its answer only
# through its attention weights; its ImageNet classifier turns it on (`perceiver/train/experiment.py`).

# %% [markdown]
# ### MaskFormer: queries that become segments
#
# *Per-Pixel Classification is Not All You Need for Semantic Segmentation* (Cheng, Schwing and
# Kirillov, 2021) also uses a small set of learned **queries**, but each becomes a *segment*: it
# predicts class scores (including "no object") and a mask embedding, its mask is
# $\mathrm{sigmoid}(\text{mask embedding}\cdot\text{pixel embedding})$, and the semantic map
# combines each query's class with its mask. Here the latents carry no class: a linear head
# classifies each pixel's mix of experts, which is per-pixel classification, the baseline
# MaskFormer argues against. The pixels' weights over the experts resemble its masks, one soft map
# per query, but they compete through a softmax at each pixel, where MaskFormer's masks are
# independent sigmoids, and no expert is tied to a class. The three side by side:
#
# | | latents / queries | what reads what | how a pixel gets its class |
# |---|---|---|---|
# | this tutorial | 16 learned latents | latents read pixels; pixels read latents | linear head on the pixel's mix of experts |
# | Perceiver IO | learned latent array | latents read inputs; latent self-attention; output queries read latents | a head on each output query's answer |
# | MaskFormer | 100 learned queries | queries read image features (transformer decoder) | each query's class × its mask, combined per pixel |

# %% [markdown]
# ### What the names do not mean
#
# The tutorial speaks of "multi-head latent attention" and "fine-grained expert segmentation". Its
# attention is not DeepSeek-V2's Multi-head Latent Attention, which compresses each token's keys
# and values for the inference cache (notebook 07 builds it). Its experts are not DeepSeekMoE's:
# those are feed-forward networks with their own weights, a gate routes each token to a few of
# them, and "fine-grained expert segmentation" means splitting each expert into smaller ones
# (notebook 09). Here every pixel mixes all 16 experts, which have no weights of their own, and
# nothing is routed. A better reading: the latents act like cluster centres that the pixels are
# grouped around, or like the Set Transformer's "inducing points" (Lee et al., 2019): a few
# learned vectors that summarise a large set, whose elements then read the summary back.

# %% [markdown]
# ## Summary
#
# - `ExpertSegmentation` is the second cross-attention: pixels are the queries, the 16 experts are
#   keys and values, and a linear head turns each pixel's mix into class logits.
# - A pixel's output depends on its own feature only through its attention weights (rebuilt above
#   from the weights and the experts alone): a bottleneck that notebook 05 measures and the
#   improved model removes.
# - The whole model is encoder → latent attention → expert head → 3×3 conv on the logits → ×4
#   bilinear upsample, with 70,504 parameters at 2 classes, counted part by part.
# - The per-pixel argmax over experts maps how the model partitions the image. Untrained it means
#   nothing: the experts are nearly identical and every pixel's weights almost exactly uniform
#   (measured), so the argmax magnifies tiny differences, some of them rounding.
# - Structurally this is a small Perceiver IO without the latent self-attention. It borrows
#   MaskFormer's learned queries but not its mask classification.

# %% [markdown]
# ## Exercises
#
# Each exercise comes with a check function. Write your answer in a new cell and call the check
# on it. The solution is in the hidden cell titled *Solution* below each check: click its collapsed
# input to read it (double-click in Colab), and run it to see the answer.
#
# ### Exercise 1: parameters as a function of the number of classes
#
# Write `model_parameters(num_classes)` by arithmetic, layer by layer as in the table above: which
# parts depend on `num_classes`, and how? The check compares it with `u.SegmentationModel` for 2
# to 8 classes.

# %%
def check_model_parameters(fn):
    for c in range(2, 9):
        expected = u.count_parameters(u.SegmentationModel(num_classes=c))
        assert fn(c) == expected, f"num_classes={c}: expected {expected:,}, got {fn(c):,}"
    print("correct for 2 to 8 classes")


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def model_parameters(num_classes):
    C, D = num_classes, 64
    linear = D * D + D                                    # one Linear(64, 64)
    attention = 4 * linear                                # in_proj (W_q, W_k, W_v) and out_proj
    encoder = 3 * 3 * 3 * 32 + 32 + 32 * 3 * 3 * D + D    # conv1, conv2
    latent_attention = 16 * D + 3 * linear + attention    # latents, key/value/query_proj
    pixel_side = linear + attention                       # pixel_proj, the second attention
    head = D * C + C                                      # Linear(64, C): depends on C
    decoder = C * C * 3 * 3 + C                           # Conv2d(C, C, 3): depends on C
    return encoder + latent_attention + pixel_side + head + decoder

check_model_parameters(model_parameters)
print(f"4 classes: {model_parameters(4):,}")


# %% [markdown]
# ### Exercise 2: a bigger image, the same experts
#
# The model has no parameter that depends on the image size. Predict the shapes for a 96×96 image:
# fill in `expected_96` with the shapes of the logits, the latent weights and the pixel weights,
# and check them against `u.SegmentationModel`.

# %%
def check_shapes_96(expected):
    with torch.no_grad():
        out, att = u.SegmentationModel()(torch.rand(1, 3, 96, 96), return_attention=True)
    actual = {"logits": tuple(out.shape), "latent": tuple(att["latent"].shape),
              "pixel": tuple(att["pixel"].shape)}
    for key, shape in actual.items():
        assert tuple(expected[key]) == shape, f"{key}: expected {shape}, got {tuple(expected[key])}"
    print("all three shapes correct:", actual)


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
N96 = (96 // 4) ** 2    # 576 tokens; still 16 experts
expected_96 = {"logits": (1, 2, 96, 96), "latent": (1, 4, 16, N96), "pixel": (1, 4, N96, 16)}
check_shapes_96(expected_96)


# %% [markdown]
# ### Exercise 3: experts as soft masks
#
# Section 6 compared the pixel weights with MaskFormer's masks. Write `expert_masks(pixel_weights)`,
# which turns weights `[heads, N, K]` into one soft mask per expert, `[K, 16, 16]` (mean over heads).
# The check compares your masks with the model's weights and confirms the property that sets them
# apart from MaskFormer's: at every pixel, the masks sum to 1.

# %%
def check_expert_masks(fn):
    masks = fn(pixel_w)
    assert tuple(masks.shape) == (K, 16, 16), f"expected shape {(K, 16, 16)}, got {tuple(masks.shape)}"
    assert torch.allclose(masks.flatten(1).T, pixel_w.mean(0), atol=1e-6), \
        "mask k at pixel n should be the head-mean weight of pixel n on expert k"
    assert torch.allclose(masks.sum(0), torch.ones(16, 16), atol=1e-5), "masks must sum to 1 at every pixel"
    print("correct: the masks sum to 1 at every pixel")


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def expert_masks(pixel_weights):
    heads, N, K_ = pixel_weights.shape
    side = int(N ** 0.5)
    return pixel_weights.mean(0).T.reshape(K_, side, side)

check_expert_masks(expert_masks)

# %% [markdown]
# ## Final check: your model is `latentseg_utils.SegmentationModel`
#
# Later notebooks train and inspect `latentseg_utils.SegmentationModel`. This cell checks that it
# is the model you assembled. It compares `ExpertSegmentation` on its own, then the whole model:
# parameter names and shapes, and, with the same weights, the logits and both attention maps on
# all six images. If either side drifts, this cell fails.

# %% tags=["nbval-check-output"]
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
