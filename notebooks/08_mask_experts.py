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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/latentseg/latentseg/blob/v0.2/notebooks/08_mask_experts.ipynb)
#
# # 08 · Latents that become segments: mask classification, built, trained and measured
#
# Notebook 06 found that the final model's 16 "experts" do not specialise. After this notebook you
# can say why nothing in that model asks them to, build MaskFormer's answer (each latent predicts a
# class and a mask, and is matched to one segment in training) on the series' encoder, train it,
# and measure whether its latents now own segments.
#
# **What works and what does not.** The construction works: every piece matches the module, and
# the competing masks never let two latents claim one object. Of the design changes measured on
# the validation set at 800 steps, one is a finding in PQ (higher on every seed, by a gap larger than both rows' seed
# spreads, section 4.3):
# deep supervision with masked attention (section 2.5), which
# the head trained here uses. With it the head still misses the three targets of section 3 on every
# seed of the committed benchmark: its class map is below the final model's, its panoptic quality below that of cutting the
# final model's class map into connected components (on every seed, though by the finding rule both
# gaps are within the head's wide seed spread, section 5), and fewer than 90% of objects are claimed
# by exactly one latent. On crowded images, where objects touch, connected components fail, but at
# 800 steps they still beat the mask head on every seed (a finding). Without deep supervision, MaskFormer's own head (no
# competing masks, no pooled class) scores no measurably different validation PQ from this head's
# defaults at 800 steps (section 4.3). Two and a half times the training budget
# raises the recipe's (`deep`) validation PQ on every seed, though within its 800-step spread, and no
# seed reaches a validation PQ of 0.75 at 2,000 steps (section 4.3); on the test set at 2,000 steps
# the head's PQ is no measurably different from the connected components' on both data sets (at
# 800 steps the components' lead was a finding on crowded images only), and on shapes it still
# misses every target (section 5). At five times the budget, trained on shapes only and read with
# Mask2Former's inference at the setting the validation split chose again, the head passes the
# PQ target on the shapes test set on every seed (its plain rule passes only in the mean); the
# claims (one seed reaches 90%) and the class map still miss (section 5). Why: most objects not
# claimed once are **merged**, one latent holding two of them, at every budget; from 800 to 4,000 steps the other failures shrink to almost
# nothing but merges fall only slowly, and of the changes whose merges were counted (validation,
# 800 steps) only the query positions cut them measurably, by a little (section 4.3).
#
# **Run time:** about six minutes on a quiet 2-core CPU, mostly two trainings of the mask head
# (section 3 and section 4.3), when notebook 05's checkpoint
# (`notebooks/checkpoints/latentsegnet.pt`) is present; without it, about a minute more.
#
# **What you will learn**
# 1. Why latents that read with a softmax over the pixels never have to divide the image, and two
#    ways to make them compete: Slot Attention's softmax over the latents, MaskFormer's matching.
# 2. Mask classification piece by piece, each piece checked against the module.
# 3. How to judge a trained mask head: masks, claims, failures, one change per row, three seeds.
#
# The first code cell is the series' setup: in Colab it installs the series' modules; elsewhere it
# does nothing.

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
# The imports, a fixed seed, and the device (printed so that a bug report says what you ran).
# `u` is the series' shared module; `linear_sum_assignment` is SciPy's solver for the assignment
# problem (section 2.2).

# %%
import itertools
import os

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from scipy.optimize import linear_sum_assignment
import latentseg_utils as u

torch.manual_seed(0)
device = u.get_device()
print(f"torch {torch.__version__}, device: {device}")
plt.rcParams["figure.dpi"] = 72   # small committed figures

# %% [markdown]
# ## 1. What would make a latent own a segment?
#
# Notebook 06 took the series' final model, `u.LatentSegNet()`, apart: which of its 16 latents
# ("experts") a token reads most tells little about object or background and almost nothing about
# *which* shape (section 5 shows the latter on three seeds: below a quarter on each), and many
# latents are near copies of each other.
#
# Nothing in that model asks for more. Each latent's attention weights are a softmax **over the
# pixels**: each latent spreads its one unit of attention over the image as it likes, and what one
# latent reads does not change what another can read. Two latents that start alike can read the
# same pixels for ever.
#
# The smallest example: 8 pixels with 2 features each (pixels 0-3 "object", 4-7 "background") and
# 3 latents, of which A and B are identical. The scores are the dot products latent · pixel,
# `[K, N]`, normalised both ways: over the pixels, as our latents do, and over the latents, as Slot
# Attention's slots do.

# %% tags=["nbval-check-output"]
pixels = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4)         # [N=8, 2]: 0-3 object, 4-7 background
toy_latents = torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 3.0]])   # [K=3, 2]: A and B alike, C not
toy_names = ["A", "B", "C"]


def read_weights(latents, pixels):
    """The scores latents @ pixels.T [K, N], normalised over the pixels (each latent's row sums
    to 1: Perceiver, our latents) and over the latents (each pixel's column sums to 1: Slot
    Attention)."""
    scores = latents @ pixels.T
    return scores.softmax(dim=1), scores.softmax(dim=0)


over_pixels, over_latents = read_weights(toy_latents, pixels)
print("softmax over the pixels: every latent's row sums to 1:",
      torch.allclose(over_pixels.sum(1), torch.ones(3)))
print("softmax over the latents: every pixel's column sums to 1:",
      torch.allclose(over_latents.sum(0), torch.ones(8)))
print("object pixel 0, over the pixels:  " +
      ", ".join(f"{n} {w:.3f}" for n, w in zip(toy_names, over_pixels[:, 0].tolist())))
print("object pixel 0, over the latents: " +
      ", ".join(f"{n} {w:.3f}" for n, w in zip(toy_names, over_latents[:, 0].tolist())))

# %% [markdown]
# Over the pixels, A and B each give object pixel 0 the weight they would give it if the other did
# not exist: they read the same thing twice. Over the latents, the pixel has one unit to hand out,
# and A and B split it. The difference matters when one latent gets better at something. Make A a
# little more object-like and see what happens to B:

# %% tags=["nbval-check-output"]
nudged = toy_latents.clone()
nudged[0, 0] = 3.5                                                   # A a little more object-like
new_over_pixels, new_over_latents = read_weights(nudged, pixels)
print(f"B's weight on object pixel 0, over the pixels:  {over_pixels[1, 0]:.3f} -> "
      f"{new_over_pixels[1, 0]:.3f}")
print(f"B's weight on object pixel 0, over the latents: {over_latents[1, 0]:.3f} -> "
      f"{new_over_latents[1, 0]:.3f}")
b_moves_over_pixels = not torch.allclose(over_pixels[1], new_over_pixels[1])
b_moves_over_latents = not torch.allclose(over_latents[1], new_over_latents[1])
print("over the pixels, a change in A moves B:", b_moves_over_pixels)
print("over the latents, a change in A moves B:", b_moves_over_latents)

# %% [markdown]
# That is competition: over the latents, what A wins, B loses. *Object-Centric Learning with Slot
# Attention* (Locatello et al., NeurIPS 2020) builds on exactly this: its slots read the image with
# a softmax over the slots, for a few rounds, and come to bind to single objects without labels.
#
# MaskFormer (*Per-Pixel Classification is Not All You Need for Semantic Segmentation*, Cheng,
# Schwing and Kirillov, NeurIPS 2021) makes latents compete another way, with labels. Each latent
# predicts a **class** (one of the classes, or "no object") and a **mask** of its own, a sigmoid
# per pixel, so the masks do not compete in the forward pass. The competition is in training: each
# true segment is matched to exactly one latent, so that the pairs as a whole fit best, and every
# latent left over is taught to say "no object". Two latents that predict the same object cannot
# both be matched to it: one is taught to be that object, the other to be nothing.
#
# On the toy, each latent's mask is a shifted sigmoid of its scores; the image has two segments,
# "object" and "background"; the cost of giving segment s to latent k is a dice loss (section 2.2:
# 0 for a perfect overlap, 1 for none); and SciPy's `linear_sum_assignment` finds the assignment,
# one latent per segment, with the smallest total cost.

# %% tags=["nbval-check-output"]
toy_masks = (nudged @ pixels.T - 1.5).sigmoid()                              # [K, N]: each latent's mask
toy_segments = torch.tensor([[1.0] * 4 + [0.0] * 4, [0.0] * 4 + [1.0] * 4])  # [S=2, N]: object, background
toy_cost = 1 - 2 * (toy_masks @ toy_segments.T) / (toy_masks.sum(1, keepdim=True)
                                                   + toy_segments.sum(1))   # dice loss [K, S]
toy_rows, toy_cols = linear_sum_assignment(toy_cost.numpy())
toy_left_over = sorted(set(range(3)) - set(toy_rows.tolist()))
for k, s in zip(toy_rows.tolist(), toy_cols.tolist()):
    print(f"segment {['object', 'background'][s]} -> latent {toy_names[k]}")
print("left over, and taught to say 'no object':", [toy_names[k] for k in toy_left_over])

# %% [markdown]
# The three ideas in one picture, all on the toy with A nudged: on the left our latents' reading
# (both A and B light up the object pixels), in the middle Slot Attention's (A takes more of each
# object pixel, B less), on the right MaskFormer's matching (A gets the object, C the
# background, B nothing).

# %%
fig, axes = plt.subplots(1, 3, figsize=(11.5, 2.7), gridspec_kw={"width_ratios": [8, 8, 4.2]})
panels = ((new_over_pixels, "Softmax over the pixels (ours)\neach row sums to 1"),
          (new_over_latents, "Softmax over the latents (Slot Attention)\neach column sums to 1"))
for ax, (weights, title) in zip(axes[:2], panels):
    ax.imshow(weights.numpy(), cmap="viridis", vmin=0, vmax=1)
    for k in range(3):
        for n in range(8):
            ax.text(n, k, f"{weights[k, n]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if weights[k, n] > 0.5 else "white")
    ax.set_xticks(range(8), [f"{n}\n{'obj' if n < 4 else 'bg'}" for n in range(8)], fontsize=8)
    ax.set_yticks(range(3), toy_names)
    ax.set(xlabel="pixel", ylabel="latent", title=title)
ax = axes[2]
ax.imshow(toy_cost.numpy(), cmap="viridis_r", vmin=0, vmax=1)
for k in range(3):
    for s in range(2):
        ax.text(s, k, f"{toy_cost[k, s]:.2f}", ha="center", va="center", fontsize=8, color="white")
ax.scatter(toy_cols, toy_rows, s=900, marker="s", facecolors="none", edgecolors="red", linewidths=2)
ax.set_xticks([0, 1], ["object", "bgr."])
ax.set_yticks(range(3), [f"{n} (no object)" if k in toy_left_over else n
                         for k, n in enumerate(toy_names)])
ax.set(xlabel="segment", title="MaskFormer's matching\n(dice cost; red: chosen)")
fig.suptitle("Three latents, eight pixels: who reads what, and who owns what (A nudged)")
fig.tight_layout()
plt.show()

# %% [markdown]
# The head built here keeps MaskFormer's classes, masks, matching and loss, and changes two things.
#
# - **Its masks compete, as Slot Attention's slots do.** At every pixel a softmax over the latents
#   turns their mask scores into probabilities that sum to 1, like the middle panel's columns: what
#   one latent's mask takes, the others give up. With independent sigmoids nothing stops two
#   latents from both covering an object in full (section 2.1 counts such pixels). The latents
#   still *read* with a softmax over the pixels; what competes is the masks they write.
# - **A latent's class also reads what its mask covers**: the encoder's features averaged inside
#   the latent's own mask, not only what it attended to.

# %% [markdown]
# ## 2. Mask classification, built piece by piece
#
# The module holds this head as `u.MaskLatentSegNet`, with its matching, loss and inference. We
# write each piece ourselves and check it against the module.
#
# ### 2.1 The mask head
#
# Shapes for a batch of B images of 64×64 pixels:
#
# - **Encoder**, as in `u.LatentSegNet`: a full-resolution stem (8 channels), then two stages of
#   two convolutions down to stride 4: features `[B, 64, 16, 16]`, which become N = 256 tokens
#   `[B, 256, 64]` with notebook 05's position features added.
# - **Latents**: 16 learned vectors `[16, 64]`. Two rounds: they read the pixels (`read`), then
#   each other (`talk`), so that a latent can see what the others have just taken and two of them
#   can settle on different segments (Mask2Former's decoder layers run in the same order).
# - **Masks**: an MLP turns each latent into a mask embedding `[B, 16, 32]`; the stride-4
#   features, projected, upsampled and refined with the stem, give an embedding per pixel
#   `[B, 32, 64, 64]`. Latent k's mask score at a pixel is the dot product of the two:
#   `[B, 16, 64, 64]`.
# - **Competition** (section 1; MaskFormer takes the sigmoid of each score on its own): a
#   log-softmax over the 16 latents at each pixel gives $\log p_k$, with $\sum_k p_k = 1$. The
#   head returns $\log p_k - \log(1 - p_k)$, the logit of $p_k$, whose sigmoid is $p_k$ again, so
#   everything downstream that takes the sigmoid of a mask logit works unchanged (the clamp keeps
#   $\log(1 - p_k)$ finite where one latent holds a pixel entirely).
# - **Class head**: a linear layer, `[B, 16, 5]`: the 4 classes and "no object". The background
#   is a class like the shapes ("stuff", in panoptic language): one latent is meant to own it.
#   Before it, each latent gets the encoder's features averaged inside its own mask (section 1):
#   the mask probabilities, pooled to the 16×16 token grid, weight the stride-4 features, and a
#   linear layer (`pool_proj`) adds the weighted mean to the latent. So the class comes after the
#   masks.
#
# The attention blocks are notebook 05's pre-norm residual blocks; we write ours again, and the
# check below confirms it is the module's `u.AttentionBlock`.

# %%
class Block(nn.Module):
    """Pre-norm residual attention: x [B, M, D] reads context [B, N, D] -> [B, M, D].
        x = x + Attention(LayerNorm(x), LayerNorm(context))
        x = x + MLP(LayerNorm(x))"""

    def __init__(self, dim, num_heads, mlp_ratio=2):
        super().__init__()
        self.norm_x, self.norm_context = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x, context):
        context = self.norm_context(context)
        attended, _ = self.attention(self.norm_x(x), context, context, need_weights=False)
        x = x + attended                                   # the route around the attention
        return x + self.mlp(self.norm_mlp(x))


# %% [markdown]
# Same parameter names as the module's block, so its weights load into ours; in eval mode the two
# must give the same output. `matches` collects every check of this section for the final check.

# %% tags=["nbval-check-output"]
matches = {}
torch.manual_seed(0)
their_block, our_block = u.AttentionBlock(64, 4).eval(), Block(64, 4).eval()
our_block.load_state_dict(their_block.state_dict())
x, context = torch.randn(2, 16, 64), torch.randn(2, 256, 64)
with torch.no_grad():
    matches["Block"] = torch.allclose(our_block(x, context), their_block(x, context), atol=1e-5)
print("Block matches u.AttentionBlock:", matches["Block"])


# %% [markdown]
# Now the model. `predict_masks` returns the two outputs that make each latent a segment: class
# logits `[B, K, C + 1]` and mask logits `[B, K, H, W]`. `forward` turns them into per-pixel class
# scores, so that `u.train`, `u.predict` and `u.evaluate` work unchanged: MaskFormer's **semantic
# inference**, $\text{score}_c(p) = \sum_k P(\text{latent } k \text{ is class } c)\cdot
# \sigma(\text{mask}_k(p))$, "no object" left out (section 2.4).

# %%
def conv_bn_relu(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def semantic_scores(class_logits, mask_logits):
    """Sum over latents of P(class c) * sigmoid(mask): [B, K, C + 1] (last: "no object"),
    [B, K, H, W] -> [B, C, H, W]."""
    probabilities = class_logits.softmax(-1)[..., :-1]                  # "no object" left out
    return torch.einsum("bkc,bkhw->bchw", probabilities, mask_logits.sigmoid())


class MaskModel(nn.Module):
    """Mask classification on the series' encoder and latents. [B, 3, H, W] -> class logits
    [B, K, C + 1] and mask logits [B, K, H, W] (predict_masks), or semantic log-scores
    [B, C, H, W] (forward). compete: the masks compete for each pixel; pooled_class: the class
    also reads the features inside the latent's mask (both as in u.MaskLatentSegNet)."""

    def __init__(self, num_classes=4, D=64, K=16, heads=4, rounds=2, mask_dim=32, stem_dim=8,
                 compete=True, pooled_class=True):
        super().__init__()
        self.num_classes, self.compete, self.pooled_class = num_classes, compete, pooled_class
        # the encoder: a full-resolution stem, then two stages of two convolutions to stride 4
        self.stem = conv_bn_relu(3, stem_dim)
        self.down = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(stem_dim, D // 2),
                                  conv_bn_relu(D // 2, D // 2), nn.MaxPool2d(2),
                                  conv_bn_relu(D // 2, D), conv_bn_relu(D, D))
        self.position_proj = nn.Linear(16, D)                           # notebook 05's positions
        # the latents, and `rounds` rounds of reading the pixels, then the latents
        self.latents = nn.Parameter(torch.randn(K, D))
        self.reads = nn.ModuleList(Block(D, heads) for _ in range(rounds))
        self.talks = nn.ModuleList(Block(D, heads) for _ in range(rounds))
        self.norm_latents = nn.LayerNorm(D)
        # what makes a latent a segment: a class (or "no object") and a mask embedding ...
        self.class_head = nn.Linear(D, num_classes + 1)
        if pooled_class:
            self.pool_proj = nn.Linear(D, D)                            # features under the mask
        self.mask_embed = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, mask_dim))
        # ... and an embedding of every pixel, at full resolution, to take dot products with
        self.pixel_proj = nn.Conv2d(D, mask_dim, 1)
        self.pixel_refine = nn.Sequential(conv_bn_relu(mask_dim + stem_dim, mask_dim),
                                          nn.Conv2d(mask_dim, mask_dim, 1))

    def predict_masks(self, x):
        H, W = x.shape[-2:]
        stem = self.stem(x)                                             # [B, 8, H, W]
        local = self.down(stem)                                         # [B, D, H/4, W/4]
        B, D, h, w = local.shape
        tokens = local.flatten(2).transpose(1, 2) + \
            self.position_proj(u.fourier_positions(h, w, device=x.device))  # [B, N, D]
        latents = self.latents.expand(B, -1, -1)                        # [B, K, D]
        for read, talk in zip(self.reads, self.talks):
            latents = read(latents, tokens)                             # read the pixels,
            latents = talk(latents, latents)                            # then each other
        latents = self.norm_latents(latents)
        up = F.interpolate(self.pixel_proj(local), size=(H, W), mode="bilinear",
                           align_corners=False)
        pixel_embeddings = self.pixel_refine(torch.cat([up, stem], dim=1))          # [B, E, H, W]
        masks = torch.einsum("bke,behw->bkhw", self.mask_embed(latents), pixel_embeddings)
        if self.compete:
            # a softmax over the latents at each pixel, returned as the logits of its probabilities
            log_p = masks.log_softmax(dim=1)                            # log p; p sums to 1 over K
            masks = log_p - torch.log1p(-log_p.exp().clamp(max=1 - 1e-6))   # sigmoid(masks) = p
        if self.pooled_class:
            # the class also reads the encoder's features inside the latent's own mask
            weights = F.adaptive_avg_pool2d(masks.sigmoid(), (h, w)).flatten(2)       # [B, K, N]
            pooled = weights @ local.flatten(2).transpose(1, 2) / weights.sum(-1, keepdim=True).clamp(min=1e-6)
            latents = latents + self.pool_proj(pooled)                  # [B, K, D]
        return self.class_head(latents), masks                          # [B, K, C + 1], [B, K, H, W]

    def forward(self, x):
        classes, masks = self.predict_masks(x)
        return semantic_scores(classes, masks).clamp(min=1e-6).log()    # [B, C, H, W]


# %% [markdown]
# The check: the module's untrained `u.MaskLatentSegNet()` (seed 0), its weights copied into ours
# (the names are the same, so `load_state_dict` insists that every weight finds its place), both
# in eval mode, on four images.

# %% tags=["nbval-check-output"]
torch.manual_seed(0)
untrained = u.MaskLatentSegNet().eval()                 # the module's model, untrained
ours = MaskModel().eval()
ours.load_state_dict(untrained.state_dict())
x, y, ids = u.make_shapes_batch(4, seed=5, instances=True)   # images, classes, instance ids
with torch.no_grad():
    class_logits, mask_logits = ours.predict_masks(x)
    their_class_logits, their_mask_logits = untrained.predict_masks(x)
    our_scores, their_scores = ours(x), untrained(x)
matches["predict_masks"] = (torch.allclose(class_logits, their_class_logits, atol=1e-5)
                            and torch.allclose(mask_logits, their_mask_logits, atol=1e-5))
matches["forward"] = torch.allclose(our_scores, their_scores, atol=1e-5)
print("class logits", tuple(class_logits.shape), " mask logits", tuple(mask_logits.shape),
      " forward", tuple(our_scores.shape))
print(f"parameters: {u.count_parameters(ours):,} (u.LatentSegNet() has "
      f"{u.count_parameters(u.LatentSegNet()):,})")
print("MaskModel.predict_masks matches u.MaskLatentSegNet:", matches["predict_masks"])
print("MaskModel.forward matches u.MaskLatentSegNet:", matches["forward"])

# %% [markdown]
# What the competition does, on the same four images: at each pixel, the sum over the 16 latents of
# their mask probabilities, for our model and for the same weights built with `compete=False,
# pooled_class=False` (MaskFormer's independent sigmoids). With competition the sum is 1, so at
# most one latent can be above one half at a pixel; without it several latents can be sure of the
# same pixel at once.

# %%
free = MaskModel(compete=False, pooled_class=False).eval()          # MaskFormer's masks
free.load_state_dict({k: v for k, v in untrained.state_dict().items() if not k.startswith("pool_proj")})
with torch.no_grad():
    free_mask_logits = free.predict_masks(x)[1]
for name, logits in (("competing (ours)", mask_logits), ("independent sigmoids", free_mask_logits)):
    total = logits.sigmoid().sum(1)                                     # [B, H, W]
    crowded = int(((logits.sigmoid() > 0.5).sum(1) >= 2).sum())
    print(f"{name:<21} sum over the latents: min {total.min():.3f}, max {total.max():.3f}; "
          f"pixels with two or more latents above one half: {crowded:,} of {total.numel():,}")
print("competing masks: the probabilities sum to 1 at every pixel:",
      torch.allclose(mask_logits.sigmoid().sum(1), torch.ones_like(mask_logits[:, 0]), atol=1e-4))

# %% [markdown]
# ### 2.2 Hungarian matching on one image
#
# Training needs each image's **segments**: the background region (if any), then each object, from
# the instance map that `u.make_split(..., instances=True)` returns beside the class map (id 0:
# background; each object its own id and one class). We take the shapes test set, the 256 images
# every notebook scores on, and pick the first test image with three objects in view.

# %% tags=["nbval-check-output"]
test_images, test_labels, test_instances = u.make_split("shapes", "test", instances=True)
print("test set: images", tuple(test_images.shape), " classes", tuple(test_labels.shape),
      " instances", tuple(test_instances.shape))


def segments_of(labels, instances):
    """One image's segments: background (if present), then each object.
    labels, instances [H, W] -> classes [S] (int64), masks [S, H, W] (bool)."""
    classes, masks = [], []
    if (labels == 0).any():
        classes.append(0)
        masks.append(labels == 0)
    for k in instances.unique().tolist():
        if k > 0:
            classes.append(int(labels[instances == k][0]))
            masks.append(instances == k)
    return torch.tensor(classes, dtype=torch.long), torch.stack(masks)


sample = next(b for b in range(len(test_images))
              if len(segments_of(test_labels[b], test_instances[b])[0]) == 4)
segment_classes, segment_masks = segments_of(test_labels[sample], test_instances[sample])
their_classes, their_masks = u.segments_of(test_labels[sample], test_instances[sample])
matches["segments_of"] = (torch.equal(segment_classes, their_classes)
                          and torch.equal(segment_masks, their_masks))
segment_names = [f"{s}: {u.CLASS_NAMES[c]}" for s, c in enumerate(segment_classes.tolist())]
print(f"test image {sample}: segments {segment_names}, masks {tuple(segment_masks.shape)}")
print("segments_of matches u.segments_of:", matches["segments_of"])

# %% [markdown]
# The **cost** of giving segment s to latent k says how badly latent k predicts that segment now.
# MaskFormer sums three weighted terms (the weights are in the model's config): minus the
# probability the latent gives the segment's class; the binary cross-entropy of its mask against
# the segment's, averaged over the pixels; and the dice loss, $1 - \frac{2\,|m \cap t| + 1}{|m| +
# |t| + 1}$ with soft sizes, which looks at the overlap only, so a small object counts as much as a
# large one.

# %%
WEIGHTS = {name: value for name, value in untrained.config.items() if name.endswith("_weight")}
print("weights:", WEIGHTS)


def dice_loss(probabilities, targets):
    """Every predicted mask against every target mask: [K, P], [S, P] -> [K, S]."""
    overlap = probabilities @ targets.T
    return 1 - (2 * overlap + 1) / (probabilities.sum(-1)[:, None] + targets.sum(-1)[None, :] + 1)


def cost_matrix(class_logits, mask_logits, classes, targets, w):
    """One image: class logits [K, C + 1], mask logits [K, P], the segments' classes [S] and masks
    [S, P] (float) -> the cost [K, S] of giving segment s to latent k."""
    K, S = len(class_logits), len(classes)
    class_cost = -class_logits.softmax(-1)[:, classes]                         # [K, S]
    bce = F.binary_cross_entropy_with_logits(mask_logits[:, None].expand(-1, S, -1),
                                             targets[None].expand(K, -1, -1),
                                             reduction="none").mean(-1)        # [K, S]
    return (w["class_weight"] * class_cost + w["mask_weight"] * bce
            + w["dice_weight"] * dice_loss(mask_logits.sigmoid(), targets))


def match(cost):
    """Hungarian matching: cost [K, S] (K >= S) -> (latents, segments), one latent per segment,
    the smallest total cost."""
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


# %% [markdown]
# On the sample image, with the untrained model: the cost matrix, our matching against the
# module's `u.match_segments`, and both against brute force, every way of giving the 4 segments 4
# different latents out of 16. A greedy choice (each segment takes its own cheapest latent) can
# give one latent two segments; the Hungarian algorithm cannot.

# %%
with torch.no_grad():
    sample_classes, sample_masks = untrained.predict_masks(test_images[sample:sample + 1])
targets = segment_masks.flatten(1).float()                                     # [S, P]
cost = cost_matrix(sample_classes[0], sample_masks[0].flatten(1), segment_classes, targets, WEIGHTS)
rows, cols = match(cost)
their_rows, their_cols = u.match_segments(cost)
K, S = cost.shape
every = torch.tensor(list(itertools.permutations(range(K), S)))               # [43680, S]
totals = cost[every, torch.arange(S)].sum(1)
matches["match"] = torch.equal(rows, their_rows) and torch.equal(cols, their_cols)
matches["optimal"] = bool(torch.isclose(totals.min(), cost[rows, cols].sum()))
greedy = cost.argmin(0)                                                        # [S]
print("cost", tuple(cost.shape), " matched latents (segment order):", rows[cols.argsort()].tolist())
print(f"{len(every):,} ways to assign; the cheapest costs {totals.min():.4f}, the Hungarian "
      f"matching {cost[rows, cols].sum():.4f}")
print("each segment's own cheapest latent:", greedy.tolist(),
      " one latent cheapest for several segments:", len(set(greedy.tolist())) < S)

# %% [markdown]
# The two checks: the same pairs as the module's matcher, and no assignment cheaper.

# %% tags=["nbval-check-output"]
print("match matches u.match_segments:", matches["match"])
print("the matching is the cheapest assignment:", matches["optimal"])

# %% [markdown]
# The cost matrix as a heat map, segments in rows, latents in columns, the chosen pairs in red.
# Look along each row: untrained, no latent is much cheaper than another, yet the matching picks
# one per segment, and training is meant to make that latent better at it. Section 3.4 draws it
# again after training.

# %%
def draw_cost(ax, cost, rows, cols, names, title):
    """A cost matrix [K, S] drawn as S rows by K columns, the matched pairs marked in red."""
    im = ax.imshow(cost.T.numpy(), cmap="viridis_r", aspect="auto")
    ax.scatter(rows, cols, s=160, marker="s", facecolors="none", edgecolors="red", linewidths=2)
    ax.set_xticks(range(cost.shape[0]))
    ax.set_yticks(range(cost.shape[1]), names)
    ax.set(xlabel="latent", ylabel="segment", title=title)
    return im


def label_point(mask):
    """(x, y) of the pixel of a mask [H, W] nearest to its median point: a place for its label."""
    ys, xs = mask.nonzero(as_tuple=True)
    nearest = int(((ys - ys.float().median()) ** 2 + (xs - xs.float().median()) ** 2).argmin())
    return float(xs[nearest]), float(ys[nearest])


def draw_truth(ax, b):
    """A test image's classes, with each segment's number written on it."""
    ax.imshow(test_labels[b].numpy(), cmap=u.class_colormap(4), vmin=0, vmax=3,
              interpolation="nearest")
    for s, mask in enumerate(segments_of(test_labels[b], test_instances[b])[1]):
        ax.text(*label_point(mask), str(s), color="white", ha="center", va="center",
                fontsize=10, fontweight="bold")
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(f"test image {b}: segments", fontsize=9)


def class_legend(fig):
    fig.legend(handles=[Patch(facecolor=u.CLASS_COLORS[c], edgecolor="grey", label=u.CLASS_NAMES[c])
                        for c in range(4)], loc="lower center", ncol=4, frameon=False, fontsize=8)


fig, axes = plt.subplots(1, 2, figsize=(10, 2.9), gridspec_kw={"width_ratios": [1, 4]})
draw_truth(axes[0], sample)
im = draw_cost(axes[1], cost, rows, cols, segment_names,
               "Matching cost, untrained model (red: the Hungarian matching)")
fig.colorbar(im, ax=axes[1], label="cost (lower: better fit)", fraction=0.04)
class_legend(fig)
fig.tight_layout(rect=(0, 0.08, 1, 1))
plt.show()

# %% [markdown]
# ### 2.3 The loss
#
# With the matching fixed, the loss of one batch has two parts:
#
# - **Classes**, over all K latents: cross-entropy toward the matched segment's class, or toward
#   "no object" for the unmatched latents. Most latents are unmatched, so "no object" gets a small
#   weight (`no_object_weight`), or it would be the easiest answer everywhere.
# - **Masks**, over the matched pairs only: binary cross-entropy and dice loss against the
#   segment's mask. The segments cover every pixel, so this is smallest when the matched latents
#   hold every pixel between them, which trains the unmatched masks too: they are left nothing,
#   and their "no object" answer keeps whatever they still hold out of the output.
#
# The matching is made under `torch.no_grad()`: a choice of targets, not a function to learn
# through. The model's own `training_loss`, which `u.train` calls, is this loss.

# %%
def mask_loss(class_logits, mask_logits, labels, instances, w):
    """MaskFormer's loss for a batch: class logits [B, K, C + 1], mask logits [B, K, H, W], classes
    and instance ids [B, H, W] -> (loss, its parts)."""
    B, K, C1 = class_logits.shape
    class_targets = torch.full((B, K), C1 - 1, dtype=torch.long,
                               device=class_logits.device)                      # "no object" ...
    mask_terms = []
    for b in range(B):
        classes, masks = segments_of(labels[b], instances[b])
        classes, targets = classes.to(class_logits.device), masks.flatten(1).float()
        logits = mask_logits[b].flatten(1)                                     # [K, P]
        with torch.no_grad():
            rows, cols = match(cost_matrix(class_logits[b], logits, classes, targets, w))
        class_targets[b, rows] = classes[cols]                                 # ... unless matched
        matched, wanted = logits[rows], targets[cols]                          # [S, P] each
        mask_terms.append(w["mask_weight"] * F.binary_cross_entropy_with_logits(matched, wanted)
                          + w["dice_weight"] * dice_loss(matched.sigmoid(), wanted).diag().mean())
    class_weights = torch.ones(C1, device=class_logits.device)
    class_weights[-1] = w["no_object_weight"]
    class_loss = F.cross_entropy(class_logits.reshape(B * K, C1), class_targets.reshape(-1),
                                 weight=class_weights)
    mask_term = torch.stack(mask_terms).mean()
    return w["class_weight"] * class_loss + mask_term, {"class": class_loss, "masks": mask_term,
                                                        "targets": class_targets}


def training_loss(model, images, labels, instances, w):
    """What u.train asks the model for: its class and mask logits, then mask_loss."""
    class_logits, mask_logits = model.predict_masks(images)
    return mask_loss(class_logits, mask_logits, labels, instances, w)


# %% [markdown]
# On the four images of section 2.1, with the untrained model's outputs, and our `training_loss`
# on our copy of the model:

# %%
with torch.no_grad():
    class_logits, mask_logits = untrained.predict_masks(x)
    loss, parts = mask_loss(class_logits, mask_logits, y, ids, WEIGHTS)
    their_loss = u.mask_classification_loss(class_logits, mask_logits, y, ids, WEIGHTS)
    total, _ = training_loss(ours, x, y, ids, WEIGHTS)          # our model, our loss
    their_total = untrained.training_loss(x, y, ids)             # theirs; both in eval mode
print(f"loss {loss:.4f} = class_weight x class loss {parts['class']:.4f} + mask terms "
      f"{parts['masks']:.4f}")
print("class targets of image 0's latents (4 = 'no object'):", parts["targets"][0].tolist())

# %% [markdown]
# The checks against the module's loss and against the model's own `training_loss` (what
# `u.train` calls), and the bookkeeping: every image has exactly as many latents with a real
# class target as it has segments.

# %% tags=["nbval-check-output"]
matches["loss"] = torch.allclose(loss, their_loss, atol=1e-5)
matches["training_loss"] = torch.allclose(total, their_total, atol=1e-5)
print("every image: as many matched latents as segments:",
      all(int((parts["targets"][b] < 4).sum()) == len(segments_of(y[b], ids[b])[0])
          for b in range(len(y))))
print("mask_loss matches u.mask_classification_loss:", matches["loss"])
print("training_loss matches u.MaskLatentSegNet.training_loss:", matches["training_loss"])

# %% [markdown]
# ### 2.4 Inference: a class map and an instance map
#
# **Semantic inference** (a class per pixel), which `forward` already does: the score of class c at
# pixel p is the sum over latents of P(latent is c) times its mask at p. Since the competing masks
# sum to 1 at a pixel, the scores there sum over the classes to at most 1 ("no object" left out).
# `forward` returns their logarithm, so the argmax gives the class map as for any model of the
# series.

# %% tags=["nbval-check-output"]
with torch.no_grad():
    scores = semantic_scores(class_logits, mask_logits)
matches["semantic_scores"] = torch.allclose(scores, u.semantic_scores(class_logits, mask_logits),
                                            atol=1e-6)
print("semantic scores", tuple(scores.shape), "(images, classes, height, width)")
print("the scores sum over the classes to at most 1 at every pixel:",
      bool((scores.sum(1) <= 1 + 1e-5).all()))
print("semantic_scores matches u.semantic_scores:", matches["semantic_scores"])


# %% [markdown]
# **Instance inference** (which object each pixel belongs to), what per-pixel classification
# cannot give at all. Keep the latents that name a shape (not "no object", not the background);
# give each pixel to the kept latent with the highest P(its class) × mask, if that latent holds
# more than half of the pixel. The instance map holds the latent's index + 1 (0: background or
# unclaimed), the class map its class.

# %%
@torch.no_grad()
def predict_instances(model, images):
    """-> instance map [B, H, W] (0 = none, else latent index + 1) and class map [B, H, W]."""
    model.eval()
    classes, masks = model.predict_masks(images.to(next(model.parameters()).device))
    probabilities = classes.softmax(-1)                                         # [B, K, C + 1]
    score, label = probabilities[..., :-1].max(-1)                              # best class [B, K]
    keep = (probabilities[..., -1] < 0.5) & (label > 0)                         # shapes, not "no object"
    strength = (score[..., None, None] * masks.sigmoid()) * keep[..., None, None]
    best, owner = strength.max(1)                                               # [B, H, W]
    claimed = masks.sigmoid().gather(1, owner[:, None]).squeeze(1) > 0.5
    claimed &= best > 0
    instance_map = torch.where(claimed, owner + 1, 0)
    class_map = torch.where(claimed, label.gather(1, owner.flatten(1)).view_as(owner), 0)
    return instance_map.cpu(), class_map.cpu()


# %% [markdown]
# Checked against `u.predict_instances` on the same untrained model (whatever it finds, both must
# find the same):

# %% tags=["nbval-check-output"]
instance_map, class_map = predict_instances(untrained, x)
their_instance_map, their_class_map = u.predict_instances(untrained, x)
matches["predict_instances"] = (torch.equal(instance_map, their_instance_map)
                                and torch.equal(class_map, their_class_map))
print("instance map", tuple(instance_map.shape), " class map", tuple(class_map.shape))
print("predict_instances matches u.predict_instances:", matches["predict_instances"])


# %% [markdown]
# ### 2.5 What makes it converge: a loss after every round, and masked attention
#
# So far only the last round's output enters the loss. MaskFormer, following DETR, scores every
# decoder layer's output, and Mask2Former (Cheng et al., 2022) added masked attention, with which
# the head converges in a sixth of the training. `u.MaskLatentSegNet(deep_supervision=True)` has
# both:
#
# - **Deep supervision.** The class and mask heads are applied before the first round and after
#   every round; each stage is matched and scored by section 2.3's loss, and the losses are
#   averaged, so every round gets its own signal.
# - **Masked attention.** From the second read on, a latent reads only the tokens inside its mask
#   from the previous stage (probability above one half, pooled to the token grid), or every token
#   when that mask is empty: a latent that has started on one object keeps reading it.
#
# The rule, checked against the module's `attention_mask` (which returns the opposite, once per
# head, as `nn.MultiheadAttention` wants it):

# %% tags=["nbval-check-output"]
def may_read(mask_logits, grid):
    """[B, K, H, W] mask logits -> [B, K, N] bool: the tokens of a grid (h, w) each latent reads."""
    inside = F.adaptive_avg_pool2d(mask_logits.sigmoid(), grid).flatten(2) >= 0.5   # [B, K, N]
    return inside | ~inside.any(-1, keepdim=True)                 # an empty mask: read everything


deep_model = u.MaskLatentSegNet(deep_supervision=True).eval()
with torch.no_grad():
    stages, _ = deep_model.predict_stages(x)
heads = deep_model.config["num_heads"]
ours = may_read(stages[0][1], (16, 16))
theirs = ~deep_model.attention_mask(stages[0][1], (16, 16))[::heads]   # one copy per image
matches_masked = torch.equal(ours, theirs)
print(f"stages predicted with deep supervision: {len(stages)} (the initial latents, then "
      f"{deep_model.config['rounds']} rounds)")
print("may_read matches the module's attention mask:", matches_masked)

# %% [markdown]
# Section 3 trains this head; section 4.3 measures what they do together (its row `deep`).

# %% [markdown]
# ## 3. Train it, and look at its latents
#
# First the targets, fixed before training. A head whose latents own segments must, on the 256
# test images (section 4 checks this run, section 5 three seeds):
#
# 1. keep the class map: **semantic test mIoU** at most 0.03 below the final model's;
# 2. find the objects: **panoptic quality** (PQ, section 4) at least 0.75, and at least what the
#    connected components of the final model's class map reach (a baseline with no latents);
# 3. give each object one latent: at least 90% of test objects **claimed by exactly one latent**
#    (section 3.2).
#
# Reported, not targets: the **class accuracy** on claimed objects, and notebook 06's
# **mutual-information share for "which shape"** (how much an object pixel's owning latent tells
# about its shape), which nothing in the loss asks for.
#
# The final model comes from notebook 05's checkpoint, or is trained with notebook 05's recipe when
# the file is missing or holds another model (in Colab, for example).

# %% tags=["nbval-ignore-output"]
CHECKPOINT = u.checkpoint_path("latentsegnet.pt")   # checkpoints/latentsegnet.pt, next to the notebooks


def train_final_model():
    """Notebook 05's recipe for the final model: 800 steps, batches of 16, seed 0."""
    torch.manual_seed(0)
    model = u.LatentSegNet()
    history = u.train(model, steps=800, batch_size=16, lr=3e-3, seed=0,
                      heldout=(test_images, test_labels), device=device)
    extra = {"miou": history["miou"][-1], "steps": 800}
    u.save_checkpoint(CHECKPOINT, model, extra=extra)
    return model, extra


try:
    final, final_extra = u.load_checkpoint(CHECKPOINT)
    if type(final) is not u.LatentSegNet or final.config != u.LatentSegNet().config:
        raise ValueError(f"it holds {type(final).__name__}({final.config}), not u.LatentSegNet()")
    print(f"loaded {CHECKPOINT}")
except FileNotFoundError:
    print(f"no checkpoint at {CHECKPOINT}: training the final model (about a minute on a CPU)")
    final, final_extra = train_final_model()
    print(f"saved {CHECKPOINT}")
except ValueError as error:
    print(f"cannot use {CHECKPOINT}: {error}\nTraining the final model again instead.")
    final, final_extra = train_final_model()
    print(f"saved {CHECKPOINT}")
final = final.to(device).eval()

# %% [markdown]
# Whichever way it came, it must be the model notebook 05 trained:

# %% tags=["nbval-check-output"]
print("comparison model is u.LatentSegNet() with its defaults, trained 800 steps:",
      type(final) is u.LatentSegNet and final.config == u.LatentSegNet().config
      and final_extra["steps"] == 800)

# %% [markdown]
# Now the mask head with section 2.5's changes, `u.MaskLatentSegNet(deep_supervision=True)` (the
# recipe chosen on validation, section 4.3), trained by `u.train` with the final model's settings and seed.
# Only the data differs: `u.variant_data("shapes", instances=True)` also returns the instance maps
# that `training_loss` needs. Change `STEPS` to try a longer run.

# %% tags=["nbval-ignore-output"]
STEPS = 800
# The recipe chosen on the validation set (benchmarks/results/mask_recipe.md, section 4.3)
RECIPE = dict(deep_supervision=True)
torch.manual_seed(0)
mask_model = u.MaskLatentSegNet(**RECIPE)
history = u.train(mask_model, steps=STEPS, batch_size=16, lr=3e-3, seed=0,
                  data=u.variant_data("shapes", instances=True), device=device)
print(f"trained {history['steps_done']} steps in {history['seconds']:.0f} s on {history['device']}")

# %% [markdown]
# The training loss, per step and as a running mean: it falls fast at first, then slowly, and is
# nearly flat by the end.

# %%
loss_per_step = torch.tensor(history["loss"])
window = max(1, len(loss_per_step) // 40)
running = loss_per_step.unfold(0, window, 1).mean(1)
fig, ax = plt.subplots(figsize=(6.5, 3))
ax.plot(history["step"], loss_per_step.numpy(), lw=0.8, alpha=0.35, color=u.CLASS_COLORS[5],
        label="per step")
ax.plot(history["step"][window - 1:], running.numpy(), lw=2, color=u.CLASS_COLORS[6],
        label=f"running mean ({window} steps)")
ax.set(xlabel="step", ylabel="loss (classes + masks)", title="The mask head's training loss")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# From section 3.1 to section 4.2 everything is measured on the test set, predicted once (section 4.3 chooses on the
# validation set):

# %% tags=["nbval-check-output"]
@torch.no_grad()
def predict_all(model, images, batch_size=64):
    """Class logits [B, K, C + 1] and mask logits [B, K, H, W] of many images, on the CPU."""
    model.eval()
    outputs = [model.predict_masks(images[s:s + batch_size].to(device))
               for s in range(0, len(images), batch_size)]
    return torch.cat([c.cpu() for c, _ in outputs]), torch.cat([m.cpu() for _, m in outputs])


test_classes, test_masks = predict_all(mask_model, test_images)
K, num_classes = mask_model.config["num_latents"], mask_model.num_classes
probabilities = test_classes.softmax(-1)                                         # [B, K, C + 1]
print("test class logits", tuple(test_classes.shape), " test mask logits", tuple(test_masks.shape))

# %% [markdown]
# ### 3.1 Every latent's mask
#
# The first three test images, all 16 latents: each mask (bright: the latent holds most of the
# pixel) under the latent's likeliest answer and its probability (`none`: "no object"). In a head
# that works, most latents say `none`, one says `bg` over the background, and each object has one
# latent naming its shape. Read the title of the brightest mask on each object.

# %%
SHORT = ["bg", "circ", "sq", "tri", "none"]
shown = [0, 1, 2]
fig, axes = plt.subplots(len(shown), K + 1, figsize=(0.82 * (K + 1), 1.0 * len(shown) + 0.5),
                         squeeze=False)
for row, b in enumerate(shown):
    axes[row, 0].imshow(test_images[b].permute(1, 2, 0).clamp(0, 1).numpy())
    axes[row, 0].set_title(f"image {b}", fontsize=7)
    for k in range(K):
        c = int(probabilities[b, k].argmax())
        axes[row, k + 1].imshow(test_masks[b, k].sigmoid().numpy(), cmap="magma", vmin=0, vmax=1)
        axes[row, k + 1].set_title(f"{k}: {SHORT[c]} {probabilities[b, k, c]:.2f}", fontsize=6)
for ax in axes.flat:
    ax.set_xticks([]), ax.set_yticks([])
fig.suptitle("Every latent's mask on three test images (title: latent, its answer, probability)",
             fontsize=10)
fig.tight_layout()
plt.show()
for b in shown:
    present = (probabilities[b, :, -1] < 0.5).nonzero().flatten().tolist()
    print(f"image {b}: {len(segments_of(test_labels[b], test_instances[b])[0])} segments in the "
          f"truth; {len(present)} latents not 'no object' (probability below one half): {present}")

# %% [markdown]
# In this run each image has one latent that answers `bg` with a probability near 1 and holds the
# background, but not always the same one (latent 7 in image 0, latent 1 in images 1 and 2), and
# the latent holding each object names its shape right. Not everything is clean: in image 0 two
# latents both answer `sq` and share the square.
#
# ### 3.2 Which latent claims which object
#
# Pictures suggest; counts decide. Latent k **claims** object j (`u.claims`) when its "no object"
# probability is below one half and its thresholded mask has an IoU above one half with the object
# (PQ's rule too); per object, the latent, or -1 for none, -2 for several (never, with competing
# masks). The latent that **owns** a pixel (`u.mask_owner`) has the largest P(not "no object") ×
# mask there.

# %%
claims = u.claims(test_classes, test_masks, test_instances)     # per image {object id: latent}
owners = u.mask_owner(test_classes, test_masks)                 # [B, H, W]: each pixel's latent
verdicts = [k for claim in claims for k in claim.values()]
used = sorted({k for k in verdicts if k >= 0})
print(f"{len(verdicts)} test objects: {sum(k >= 0 for k in verdicts)} claimed by exactly one "
      f"latent, {verdicts.count(-1)} by none, {verdicts.count(-2)} by several")
print(f"latents that claim at least one object: {len(used)} of {K}: {used}")
print("test pixels where two or more latents' masks are above one half:",
      int(((test_masks.sigmoid() > 0.5).sum(1) >= 2).sum()))

# %% [markdown]
# In this run about four objects in five are claimed once, and half of the latents do all the
# claiming. The sample image of section 2.2 by latent (palette `tab20`, never the class colours):
# the owner of each pixel, and each object in the colour of its claiming latent (grey: none).
# Check that each object on the right has the colour that owns it in the middle.

# %%
latent_colours = torch.tensor(plt.cm.tab20.colors[:K])                        # [K, 3]
latent_cmap = ListedColormap(plt.cm.tab20.colors[:K])
fig, axes = plt.subplots(1, 4, figsize=(10.5, 3.2))
axes[0].imshow(test_images[sample].permute(1, 2, 0).clamp(0, 1).numpy())
axes[0].set_title(f"test image {sample}", fontsize=9)
draw_truth(axes[1], sample)
axes[2].imshow(owners[sample].numpy(), cmap=latent_cmap, vmin=-0.5, vmax=K - 0.5,
               interpolation="nearest")
axes[2].set_title("owner of each pixel (u.mask_owner)", fontsize=9)
canvas = torch.ones(64, 64, 3)
for j, k in claims[sample].items():
    obj = test_instances[sample] == j
    canvas[obj] = latent_colours[k] if k >= 0 else torch.tensor([0.6, 0.6, 0.6])
    axes[3].text(*label_point(obj), f"latent {k}" if k >= 0 else ("none" if k == -1 else "several"),
                 ha="center", va="center", fontsize=8, fontweight="bold")
axes[3].imshow(canvas.numpy())
axes[3].set_title("objects by claiming latent (u.claims)", fontsize=9)
for ax in axes:
    ax.set_xticks([]), ax.set_yticks([])
in_view = sorted(set(owners[sample].unique().tolist()) | {k for k in claims[sample].values() if k >= 0})
fig.legend(handles=[Patch(facecolor=latent_colours[k].tolist(), edgecolor="grey", label=f"latent {k}")
                    for k in in_view], loc="lower center", ncol=len(in_view), frameon=False, fontsize=8)
fig.tight_layout(rect=(0, 0.1, 1, 1))
plt.show()
print(f"image {sample}: claims {claims[sample]}; latents owning pixels: {in_view}")

# %% [markdown]
# Here every object is claimed, each by its own latent. The failures are elsewhere.
#
# ### 3.3 Where it fails
#
# Every unclaimed object, sorted by code from the owner map, counting only latents that answer a
# shape in that image:
#
# - **missed**: they own less than half of it;
# - **merged**: its main shape latent also owns at least half of another object;
# - **split**: a second shape latent owns at least `SPLIT_SHARE` of it;
# - **rough**: one shape latent owns most of it, but its thresholded mask's IoU with it is below
#   one half;
# - **claimed by several**: with competing masks, duplicates show up as split or rough instead.

# %%
SPLIT_SHARE = 0.25                                                      # as u.SPLIT_SHARE
answers = probabilities.argmax(-1)                                      # [B, K]: 0 bg, 1-3 shapes, 4 none


def shape_shares(b, j):
    """The share of object j's pixels (test image b) owned by each latent that answers a shape
    in that image, [K]; latents answering background or "no object" count 0."""
    obj = test_instances[b] == j
    share = torch.bincount(owners[b][obj], minlength=K).double() / obj.sum()
    return share * ((answers[b] >= 1) & (answers[b] <= num_classes - 1))


def diagnose(b, j):
    """What happened to object j of test image b."""
    if claims[b][j] >= 0:
        return "claimed once"
    if claims[b][j] == -2:
        return "claimed by several"
    share = shape_shares(b, j)
    if share.sum() < 0.5:
        return "missed"
    main = int(share.argmax())
    if any(shape_shares(b, o)[main] >= 0.5 for o in claims[b] if o != j):
        return "merged"
    if share.topk(2).values[1] >= SPLIT_SHARE:
        return "split"
    return "rough"


diagnoses = [(b, j, diagnose(b, j)) for b, claim in enumerate(claims) for j in claim]
sizes = {(b, j): int((test_instances[b] == j).sum()) for b, j, _ in diagnoses}
KINDS = ["missed", "merged", "split", "rough", "claimed by several"]
print(f"split: a second shape latent owns at least {SPLIT_SHARE:.0%} of the object")
for kind in ["claimed once"] + KINDS:
    found = [(b, j) for b, j, d in diagnoses if d == kind]
    size = f", median size {sorted(sizes[f] for f in found)[len(found) // 2]} px" if found else ""
    print(f"  {kind:<19} {len(found):>4} objects{size}")
print(f"  all objects         {len(diagnoses):>4} objects, median size "
      f"{sorted(sizes.values())[len(sizes) // 2]} px")

# The module's u.claim_outcomes is this rule, so the benchmarks can count it over seeds:
module_outcomes = [o for image in u.claim_outcomes(test_classes, test_masks, test_instances)
                   for o in image.values()]
print("u.claim_outcomes sorts every object as diagnose does:",
      module_outcomes == [d.removeprefix("claimed ").removeprefix("by ") for _, _, d in diagnoses])

# %% [markdown]
# In this run merges are by far the commonest failure. The first example of each kind: the image,
# the owner map with the object outlined in white, and the truth. Compare the colours inside the
# outline with those on the other objects.

# %%
examples = {}
for b, j, d in diagnoses:
    if d in KINDS and d not in examples:
        examples[d] = (b, j)
if not examples:
    print("no failures of these kinds in this run")
else:
    fig, axes = plt.subplots(3, len(examples), figsize=(2.3 * len(examples) + 0.4, 6.6),
                             squeeze=False)
    for col, (kind, (b, j)) in enumerate(examples.items()):
        obj = (test_instances[b] == j).float().numpy()
        axes[0, col].imshow(test_images[b].permute(1, 2, 0).clamp(0, 1).numpy())
        axes[0, col].set_title(f"{kind}\nimage {b}, object {j} ({sizes[(b, j)]} px)", fontsize=8)
        axes[1, col].imshow(owners[b].numpy(), cmap=latent_cmap, vmin=-0.5, vmax=K - 0.5,
                            interpolation="nearest")
        axes[1, col].contour(obj, levels=[0.5], colors="white", linewidths=1.5)
        axes[2, col].imshow(test_labels[b].numpy(), cmap=u.class_colormap(4), vmin=0, vmax=3,
                            interpolation="nearest")
        axes[2, col].contour(obj, levels=[0.5], colors="white", linewidths=1.5)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    for ax, name in zip(axes[:, 0], ("image", "owner (latent)", "truth")):
        ax.set_ylabel(name)
    fig.suptitle("The first unclaimed object of each kind (white outline)", fontsize=10)
    class_legend(fig)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    plt.show()
    for kind, (b, j) in examples.items():
        shares = {k: round(float(v), 2) for k, v in enumerate(shape_shares(b, j)) if v > 0.05}
        print(f"{kind}: image {b}, object {j}; shape latents' shares of its pixels: {shares}")

# %% [markdown]
# The split circle is divided between two latents; the merged example is a one-pixel remnant of an
# almost hidden circle, owned by the latent of the circle in front (the median sizes above show
# most merged objects are far larger); the rough triangle is mostly one latent's, but its mask fits
# poorly; of the missed square a shape latent holds under half.
#
# ### 3.4 The matching after training
#
# Section 2.2's cost matrix, trained. The background row has one clearly cheapest latent; on the
# object rows the colour scale, stretched by the background's costs, hardly separates the latents,
# so read the printout.

# %%
cost = cost_matrix(test_classes[sample], test_masks[sample].flatten(1), segment_classes, targets,
                   WEIGHTS)
rows, cols = match(cost)
fig, axes = plt.subplots(1, 2, figsize=(10, 2.9), gridspec_kw={"width_ratios": [1, 4]})
draw_truth(axes[0], sample)
im = draw_cost(axes[1], cost, rows, cols, segment_names,
               f"Matching cost after {history['steps_done']} training steps")
fig.colorbar(im, ax=axes[1], label="cost (lower: better fit)", fraction=0.04)
class_legend(fig)
fig.tight_layout(rect=(0, 0.08, 1, 1))
plt.show()
print("matched latents (segment order):", rows[cols.argsort()].tolist(),
      " each segment's cheapest latent:", cost.argmin(0).tolist())

# %% [markdown]
# In this run each segment's cheapest latent is a different one, so the matching simply takes them:
# the owners of section 3.2's figure.
#
# ## 4. The verdict on this run
#
# **Panoptic quality** (*Panoptic Segmentation*, Kirillov et al., CVPR 2019) matches a predicted
# and a true object of one class when their IoU is above one half. Per shape class, SQ is the mean
# IoU of the matches, RQ = TP / (TP + FP/2 + FN/2) from the matched (TP), false (FP) and missed (FN)
# objects, and PQ = SQ × RQ, averaged over the three shapes (the printed counts are summed over the shapes, so RQ worked
# out from them is the pooled value, which can differ from the printed average; here they agree). For "which shape", the final model's owner is each
# 4×4 token's main expert (notebook 06), the mask head's `u.mask_owner` per pixel.

# %%
mask_scores = u.evaluate(mask_model, test_images, test_labels)
final_scores = u.evaluate(final, test_images, test_labels)
pred_instances, pred_classes = u.predict_instances(mask_model, test_images)
pq = u.panoptic_quality(pred_instances, pred_classes, test_instances, test_labels)
claimed_once = sum(k >= 0 for k in verdicts) / len(verdicts)
head_scores = u.mask_head_scores(mask_model, test_images, test_labels, test_instances)
pq_components = u.panoptic_quality(*u.connected_component_instances(u.predict(final, test_images)),
                                   test_instances, test_labels)
mask_spec = u.specialisation(test_labels, owners, num_classes, K)

with torch.no_grad():
    main_expert = torch.cat([final(test_images[s:s + 64].to(device), return_attention=True)[1]
                             ["pixel"].mean(1).argmax(-1).cpu()
                             for s in range(0, len(test_images), 64)])        # [B, N]: main expert
one_hot = F.one_hot(test_labels, num_classes).permute(0, 3, 1, 2).float()
token_class = F.avg_pool2d(one_hot, 4).argmax(1).flatten(1)                    # [B, N]: majority class
final_spec = u.specialisation(token_class, main_expert, num_classes, final.config["num_latents"])

print(f"semantic test mIoU: mask head {mask_scores['miou']:.3f}, LatentSegNet() "
      f"{final_scores['miou']:.3f} (difference {mask_scores['miou'] - final_scores['miou']:+.3f})")
print(f"panoptic quality {pq['pq']:.3f} (SQ {pq['sq']:.3f}, RQ {pq['rq']:.3f}; "
      f"{pq['tp']} matched, {pq['fp']} false, {pq['fn']} missed)")
print(f"PQ of the connected components of LatentSegNet()'s class map: {pq_components['pq']:.3f}")
print(f"test objects claimed by exactly one latent: {100 * claimed_once:.1f}% "
      f"({len(used)} latents claim at least one)")
print(f"class accuracy on claimed objects: {100 * head_scores['class_accuracy']:.1f}% "
      f"(u.mask_head_scores gives the same PQ: {head_scores['pq']:.3f})")
print(f"MI share for which shape: mask head {mask_spec['which shape']:.3f}, "
      f"LatentSegNet()'s main expert {final_spec['which shape']:.3f}")

# %% [markdown]
# The verdict, one line per target (a `False` is this run's result, not a bug):

# %% tags=["nbval-check-output"]
print("semantic test mIoU at least LatentSegNet()'s minus 0.03:",
      mask_scores["miou"] >= final_scores["miou"] - 0.03)
print("PQ at least 0.75 and at least the connected components of LatentSegNet()'s class map:",
      pq["pq"] >= max(0.75, pq_components["pq"]))
print("at least 90% of test objects claimed by exactly one latent:", claimed_once >= 0.90)

# %% [markdown]
# This run misses all three. The class map is below the final model's, though a latent that claims
# an object mostly names its shape right. In PQ the matches fit well (SQ is high) but RQ is low:
# many predicted segments match nothing, and many objects are missed.
#
# ### 4.1 Notebook 06's measure, both models side by side
#
# Notebook 06's three questions for both models. Look at the "which shape" bars: how much the
# owner tells about the object's shape.

# %%
questions = list(mask_spec)
print(f"{'question':<22}{'LatentSegNet()':>16}{'mask head':>12}")
for q in questions:
    print(f"{q:<22}{final_spec[q]:>16.3f}{mask_spec[q]:>12.3f}")
fig, ax = plt.subplots(figsize=(7, 3.4))
positions = torch.arange(len(questions)).float()
for offset, spec, name, colour in ((-0.2, final_spec, "LatentSegNet(): token's main expert", 5),
                                   (0.2, mask_spec, "mask head: pixel's owner", 6)):
    bars = ax.bar((positions + offset).numpy(), [spec[q] for q in questions], width=0.4,
                  color=u.CLASS_COLORS[colour], label=name)
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
ax.set_xticks(positions.numpy(), questions)
ax.set(ylim=(0, 1.1), ylabel="I(owner; class) / H(class)",
       title="How much the owning latent tells about the class (test set)")
ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False)
fig.tight_layout()
plt.show()

# %% [markdown]
# 0 means the owner tells nothing about the class, 1 everything. In this run the mask head's owner
# tells more about the shape than the final model's expert, but both stay low: the matching pairs
# segments with latents image by image, and nothing asks the same latent to own the same shape
# across images; even the background changes latent (section 3.1). Exercise 2 counts which shapes
# each latent claims.

# %% [markdown]
# ### 4.2 Inference first: a better rule, or better masks?
#
# Some false segments could come from section 2.4's rule, where every latent not "no object" makes
# a segment. Mask2Former's panoptic inference, `u.panoptic_inference`, is stricter: it keeps a
# latent only if its class scores above a threshold, and drops a segment that keeps less than a
# share of its own mask, or is smaller than a minimum area. Two references use no latents: the
# connected components of the final model's class map (`u.connected_component_instances`) and of
# the *true* class map, that method's ceiling. `python benchmarks/mask_inference.py`
# (benchmarks/results/mask_inference.md) chose the settings on the validation split: no score threshold (0.0), so
# the overlap and the minimum area do the work. On this notebook's models:

# %%
inference = dict(score_threshold=0.0, overlap_threshold=0.8, min_area=32)   # the benchmark's choice
strict_instances, strict_classes = u.panoptic_inference(test_classes, test_masks, **inference)
pq_strict = u.panoptic_quality(strict_instances, strict_classes, test_instances, test_labels)
print(f"settings chosen on validation: {inference}")
pq_ceiling = u.panoptic_quality(*u.connected_component_instances(test_labels), test_instances,
                                test_labels)
for name, result in (("mask head, plain inference", pq),
                     ("mask head, Mask2Former's inference", pq_strict),
                     ("components of LatentSegNet()'s class map", pq_components),
                     ("components of the true class map", pq_ceiling)):
    print(f"{name:<42} PQ {result['pq']:.3f}  (RQ {result['rq']:.3f}: {result['tp']} matched, "
          f"{result['fp']} false, {result['fn']} missed)")

# %% [markdown]
# And on that benchmark's three seeds (test split), judged by the series' rule, `u.is_finding`
# (the same sign on every seed, a gap of the means larger than both spreads). That benchmark trains
# the head with deep supervision, as this notebook does.

# %%
import json


def committed_results(name):
    """A committed benchmark's results, benchmarks/results/NAME.json in a clone of the repository,
    or None where there is no copy (Colab installs only the modules)."""
    path = f"../benchmarks/results/{name}.json"
    if not os.path.exists(path):
        print(f"no copy of {path} here (Colab installs only the modules): "
              f"read benchmarks/results/{name}.md in the repository")
        return None
    with open(path) as f:
        return json.load(f)


def show_finding(name_a, scores_a, name_b, scores_b):
    """Two rows' scores on the same seeds, judged by the series' rule (u.is_finding)."""
    gap = u.seed_summary(scores_a)["mean"] - u.seed_summary(scores_b)["mean"]
    verdict = "a finding" if u.is_finding(scores_a, scores_b) else "no measurable difference"
    print(f"{name_a} against {name_b}: {gap:+.3f}, {verdict}")


inference_results = committed_results("mask_inference")
if inference_results is not None:
    by_model = {r["model"]: r["measured"] for r in inference_results["results"]
                if r["data"] == "shapes"}                       # one dict per seed
    chosen = (f"test score>{inference['score_threshold']}, "
              f"overlap>={inference['overlap_threshold']}, area>={inference['min_area']}")
    seed_pq = {"plain inference": [m["test plain"]["pq"] for m in by_model["mask-head"]],
               "Mask2Former's inference": [m[chosen]["pq"] for m in by_model["mask-head"]],
               "components": [m["test components"]["pq"] for m in by_model["final"]]}
    print(f"committed test PQ, seeds {inference_results['seeds']}:")
    for name, scores in seed_pq.items():
        summary = u.seed_summary(scores)
        print(f"  {name:<24} {', '.join(f'{s:.3f}' for s in scores)}  "
              f"mean {summary['mean']:.3f}, spread {summary['spread']:.3f}")
    print(f"  components of the true class map (ceiling): "
          f"{inference_results['ceilings']['shapes']['pq']:.3f}")
    show_finding("Mask2Former's inference", seed_pq["Mask2Former's inference"],
                 "plain inference", seed_pq["plain inference"])
    show_finding("components", seed_pq["components"],
                 "Mask2Former's inference", seed_pq["Mask2Former's inference"])

# %% [markdown]
# In this run the stricter rule cuts the false segments and brings the head's PQ up to about the
# components'. Over three seeds it raises PQ on every seed but by less than the spread: no
# measurable difference. The components keep a higher mean PQ, though not on every seed, so that is
# no finding either. The head's shortfall is mostly in its masks and classes, not in how they are
# read; the rest of this notebook uses the plain rule.

# %% [markdown]
# ### 4.3 What made the difference: one change, measured
#
# `python benchmarks/mask_recipe.py` (benchmarks/results/mask_recipe.md) trains the head
# with one change per row, three seeds each, and scores them on the **validation** set: the design
# is chosen there, and the test set only reports. The first rows change one thing from the head
# without deep supervision (`default`): `plain` is MaskFormer's own head (no competing masks,
# no pooled class); `coords` adds x and y channels to the pixel features the masks are made
# from, so two identical shapes differ; `semantic` adds a per-pixel class loss on the encoder;
# `8 latents` halves the latents; `no-object 0.3` weighs the "no object" class three times
# more in the class loss; `deep` adds deep supervision with masked attention (section 2.5), and it
# is the one finding among them. Each row named `deep + ...`
# adds one of these options to `deep`, or latents that start from the image (`deep + heatmap`:
# a 1x1 convolution predicts a heatmap of object centres on the encoder's tokens, and each latent
# starts as its learned vector plus the token at one of the heatmap's strongest peaks, as the
# detectors DINO and Panoptic-DeepLab start their queries). Four more rows answer the merges of
# section 3.3, a latent that covers two objects. The masks are dot products with pixel features
# that carry no position code (the keys have one, the pixels do not), so two objects of one shape
# can look alike to them:
# `deep + pixel positions` adds the keys' position code (`u.fourier_positions`, notebook 05) to
# those pixel features; `deep + query positions` gives latent k the position code of the k-th
# point of a grid over the image (Mask2Former's query positions, DAB-DETR's anchors), so the latents
# start spread over the image. `deep + 3 rounds` lets the latents read the pixels three times
# instead of two (Slot Attention iterates three times); `deep + competing reads` makes the
# latents compete for the pixels when they read them, not only in their masks (Slot Attention's
# softmax over the latents, in the read). The next row reads each latent's class also from
# `semantic`'s per-pixel class head, averaged inside the latent's mask (as ReMaX does), on top of
# `deep + semantic`. The last row, `deep + discriminative`, aims at the merges through the pixel
# features themselves: De Brabandere et al.'s discriminative loss (2017) pulls each object's pixel
# features toward their mean and pushes the means of two objects apart, so that one latent's dot
# product can take one of two touching objects without the other. Each row's PQ is compared by the series' rule with its base: for a row named
# `A + B`, the row `A`; for the others, `default`:

# %%
recipe_results = committed_results("mask_recipe")
if recipe_results is not None:
    recipe_pq = {r["model"]: [m["pq"] for m in r["measured"]] for r in recipe_results["results"]}
    print(f"validation PQ, {recipe_results['steps']} steps, seeds {recipe_results['seeds']}, "
          f"torch threads {recipe_results['threads']}:")
    for name, pq_seeds in recipe_pq.items():
        base = name.rsplit(" + ", 1)[0] if " + " in name else "default"   # row "A + B": against A
        finding = u.is_finding(pq_seeds, recipe_pq[base])
        verdict = "" if name == "default" else f"against {base}: " + (
            "a finding" if finding else "no measurable difference")
        print(f"  {name:<25} {', '.join(f'{v:.3f}' for v in pq_seeds)}  mean "
              f"{u.seed_summary(pq_seeds)['mean']:.3f}  {verdict}")

# %% [markdown]
# Only `deep` is a finding. No other row differs measurably from its base: not `plain`,
# MaskFormer's own head without section 1's two changes, and no option added to deep supervision,
# the heatmap's latents, the two kinds of positions, the third round, the competing reads and the
# discriminative loss included. Deep supervision's seeds spread widely at 800 steps, so an option
# added to it would need a large gap to count: the positions, the third round, the competing reads
# and the discriminative loss spread less than `deep`'s seeds, but `deep`'s best seed is above
# every one of theirs. Reading the classes
# from the semantic head beats `deep + semantic` on every seed, by less than that row's spread.
#
# The same comparison on one seed: the head without deep supervision, trained like `mask_model`,
# both scored on the validation set. One seed shows the size of the
# change; the table decides.

# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
without = u.MaskLatentSegNet()                       # the same head, no deep supervision
u.train(without, steps=STEPS, batch_size=16, lr=3e-3, seed=0,
        data=u.variant_data("shapes", instances=True), device=device)
val_images, val_labels, val_instances = u.make_split("shapes", "validation", instances=True)
for name, model in (("without deep supervision", without), ("with it (mask_model)", mask_model)):
    s = u.mask_head_scores(model, val_images, val_labels, val_instances)
    print(f"{name:<25} validation PQ {s['pq']:.3f}, claimed once {100 * s['claimed_once']:.1f}%, "
          f"class accuracy {100 * s['class_accuracy']:.1f}%, "
          f"mIoU {u.evaluate(model, val_images, val_labels)['miou']:.3f}")

# %% [markdown]
# On this seed deep supervision roughly doubles the validation PQ and raises every other printed
# score. (The table's seed 0 differs from this run: the benchmark ran with the torch threads printed in the
# table's first line, and section 5 shows why another thread count changes a training.)
#
# #### Slow or wrong? The same rows at 2,000 steps
#
# Every row above trains 800 steps. If the head were wrong, more steps would not help; if it is
# slow, they would. `python benchmarks/mask_recipe.py --steps 2000` with `--rows default deep
# "deep + coords" "deep + 8 latents" "deep + pixel positions" "deep + query positions"
# "deep + competing reads"` (benchmarks/results/mask_recipe_2000.md) trains the two decisive rows,
# the two options of the first rows with the largest gain when added to deep supervision, and
# three of the rows aimed at merges (not the third round, nor the discriminative loss, added later), two and a half times longer, on the same seeds and validation set. The series' rule compares
# each row with itself at 800 steps (PQ and mIoU), then, at 2,000 steps, with its base (PQ):

# %%
long_results = committed_results("mask_recipe_2000")
if recipe_results is not None and long_results is not None:
    short = {r["model"]: r for r in recipe_results["results"]}
    steps = (recipe_results["steps"], long_results["steps"])
    for r in long_results["results"]:
        for measure, of in (("PQ", lambda row: [m["pq"] for m in row["measured"]]),
                            ("mIoU", lambda row: row["miou"])):
            before, after = of(short[r["model"]]), of(r)
            print(f"{r['model']}, validation {measure} per seed: "
                  f"{steps[0]} steps {', '.join(f'{v:.3f}' for v in before)}; "
                  f"{steps[1]} steps {', '.join(f'{v:.3f}' for v in after)}")
            show_finding(f"  {steps[1]} steps", after, f"{steps[0]} steps", before)
    long_pq = {r["model"]: [m["pq"] for m in r["measured"]] for r in long_results["results"]}
    print(f"at {steps[1]} steps, PQ:")
    for name in long_pq:
        if name != "default":
            base = name.rsplit(" + ", 1)[0] if " + " in name else "default"
            show_finding(f"  {name}", long_pq[name], base, long_pq[base])

# %% [markdown]
# Every row gains mIoU on every seed, and PQ on every seed but one (the competing reads, on seed
# 1); `deep`'s own seeds agree far more closely than at 800 steps. The PQ gain is a finding for
# the coordinates, the 8 latents and both kinds of positions; for `default` and `deep` it is not
# (`deep`'s seeds spread more than its gain at 800 steps, `default`'s at 2,000), nor for the
# competing reads. A head that was wrong would not gain on every seed, so this one is slow. At
# 2,000 steps no option is a finding against `deep`, so the recipe stays deep supervision alone; and no
# row reaches a PQ of 0.75 on any seed (the query positions' best seed comes closest), so whether time alone would bring the head to the targets
# stays open; the next part trains `deep` twice as long again. (The loss curve of section 3
# looked nearly flat at 800 steps; the scores still move.) The methods this head borrows from
# train far longer: Slot Attention reports 500k steps.
#
# #### Why objects stay unclaimed, over three seeds and three budgets
#
# Section 3.3 sorted one run's unclaimed objects by hand; `u.claim_outcomes` is the same rule, so
# the benchmark can count it on every seed. `python benchmarks/mask_recipe.py --rows deep --steps
# 4000` trains deep supervision five times the 800-step budget, on the same seeds and
# validation set; the committed `deep` rows at 800 and 2,000 steps record the same counts. Each
# bar is the share of the validation objects with each outcome, averaged over the three seeds:

# %%
budgets = [r for r in (committed_results(name) for name in
                       ("mask_recipe", "mask_recipe_2000", "mask_recipe_4000")) if r is not None]
deep_rows = [next(row for row in r["results"] if row["model"] == "deep") for r in budgets]
if deep_rows:
    outcome_colours = {"once": "#009E73", "several": "#CC79A7", "missed": "#999999",
                       "merged": "#D55E00", "split": "#E69F00", "rough": "#56B4E9"}
    fig, ax = plt.subplots(figsize=(6.5, 2.6), dpi=80)
    for i, row in enumerate(deep_rows):
        shares = {o: sum(m["claimed_once" if o == "once" else o] for m in row["measured"])
                  / len(row["measured"]) for o in u.CLAIM_OUTCOMES}
        left = 0.0
        for outcome, share in shares.items():
            ax.barh(i, share, left=left, color=outcome_colours[outcome],
                    label=outcome if i == 0 else None)
            left += share
        pq = [m["pq"] for m in row["measured"]]
        print(f"deep, {row['steps']} steps: validation PQ per seed "
              f"{', '.join(f'{v:.3f}' for v in pq)} (mean {sum(pq) / len(pq):.3f}); objects: "
              + ", ".join(f"{o} {100 * v:.1f}%" for o, v in shares.items()))
    ax.set_yticks(range(len(deep_rows)), [f"{row['steps']} steps" for row in deep_rows])
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of validation objects, mean of 3 seeds")
    ax.legend(ncol=6, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    plt.show()
    by_steps = {row["steps"]: [m["pq"] for m in row["measured"]] for row in deep_rows}
    if 4000 in by_steps:
        show_finding("deep, 4000 steps, PQ", by_steps[4000], "2000 steps", by_steps[2000])
    merged = {r["model"]: [m["merged"] for m in r["measured"]] for r in budgets[0]["results"]
              if "merged" in r["measured"][0]}
    print(f"share merged at {budgets[0]['steps']} steps, per seed:")
    for name, shares in merged.items():
        print(f"  {name:<24} {', '.join(f'{100 * v:.1f}%' for v in shares)}")
        base = name.rsplit(" + ", 1)[0]        # the row it adds one change to
        if " + " in name and base in merged:
            show_finding(f"    {name}", shares, base, merged[base])

# %% [markdown]
# Merges are most of the failures at every budget, and a larger part of them as the budget grows:
# one latent holding two objects, as in section 3.3's run. The other failures (split, rough,
# missed) are few at 800 steps and fewer at 4,000. Merges fall slowly, from 18.2% of the objects
# at 800 steps to 13.6% at 4,000, so the mean validation share claimed once (84.8%) stays
# below 90% at five times the budget. PQ keeps rising on average and one seed passes 0.75, but the third seed
# scores less than at 2,000 steps: the gain is no measurable difference. From 800 to 4,000 steps
# the other failures shrink to almost nothing, while merges fall by about a quarter.
#
# The rows of section 4.3 that record the count answer whether a change does better. Only the query
# positions cut the merged share on every seed by more than the spreads, a finding, but a small
# one (the gap is barely above `deep`'s own spread over the seeds, and PQ is no measurably
# different). The coordinates, the pixel
# positions, the discriminative loss, which aims at the merges through the pixel features, the
# heatmap's latents, and the image's own colour channels in the pixel features (`colours=True`,
# alone or added to the heatmap's latents, which start from one object's token) leave it within
# the seeds' spread. Merges are the open problem of this head: the next change to try
# has to stop one latent's mask from taking a second object.
#
# ### 4.4 Where connected components fail: objects that touch
#
# Connected components cannot separate two touching objects of one class. The `crowded` variant
# (up to 8 objects that touch and occlude each other) shows it. Both models were trained on shapes
# only; the figure picks the crowded test image where the components lose the most objects.

# %%
crowd_images, crowd_labels, crowd_instances = u.make_split("crowded", "test", num_images=64,
                                                          instances=True)
crowd_components = u.connected_component_instances(u.predict(final, crowd_images))
crowd_head = u.predict_instances(mask_model, crowd_images)
lost = [len(crowd_instances[b].unique()) - len(crowd_components[0][b].unique()) for b in range(64)]
b = max(range(64), key=lambda i: lost[i])
fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
panels = [(crowd_images[b].permute(1, 2, 0).clamp(0, 1).numpy(), f"crowded test image {b}"),
          (crowd_instances[b].numpy(), f"true objects: {len(crowd_instances[b].unique()) - 1}"),
          (crowd_components[0][b].numpy(),
           f"components: {len(crowd_components[0][b].unique()) - 1} segments"),
          (crowd_head[0][b].numpy(), f"mask head: {len(crowd_head[0][b].unique()) - 1} segments")]
for ax, (image, title) in zip(axes, panels):
    ax.imshow(image, cmap=None if image.ndim == 3 else "tab20", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
fig.tight_layout()
plt.show()
for name, (inst, cls) in (("components of LatentSegNet()'s class map", crowd_components),
                          ("mask head", crowd_head)):
    result = u.panoptic_quality(inst, cls, crowd_instances, crowd_labels)
    print(f"{name:<42} PQ on 64 crowded test images {result['pq']:.3f}")

# %% [markdown]
# In the components panel one colour covers the two overlapping squares at the bottom left, and the
# circle above them: touching objects become one segment. A latent could hold each of them, which
# no cut of the class map can. Here the mask head gives the front square its own segment, but its
# other segments are ragged, and in this run its PQ on the crowded images is below the
# components'.

# %% [markdown]
# ## 5. Over three seeds: the committed benchmark
#
# One run is one seed's luck. `python benchmarks/mask_experts.py` (benchmarks/results/mask_experts.md)
# trains both models with section 3's recipe on seeds 0, 1 and 2, on shapes and (for the crowded
# rows) on crowded data,
# and measures the same targets on the test images (its strip plot:
# `benchmarks/results/mask_experts.png`):
#
# | data | model | test mIoU per seed | mean | spread | PQ per seed | PQ of components per seed | % objects claimed once | class accuracy on claimed | latents used | MI share, which shape |
# |---|---|---|---:|---:|---|---|---|---|---|---|
# | shapes | mask-head | 0.873, 0.683, 0.639 | 0.732 | 0.233 | 0.642, 0.495, 0.459 |  | 83.2, 75.6, 79.7 | 93.9, 78.6, 72.1 | 7, 7, 8 | 0.305, 0.011, 0.032 |
# | shapes | final | 0.929, 0.934, 0.932 | 0.932 | 0.005 |  | 0.647, 0.676, 0.672 |  |  |  | 0.019, 0.143, 0.067 |
# | crowded | mask-head | 0.805, 0.771, 0.813 | 0.797 | 0.042 | 0.428, 0.396, 0.402 |  | 61.9, 60.4, 59.0 | 93.5, 90.6, 95.2 | 15, 15, 13 | 0.251, 0.250, 0.315 |
# | crowded | final | 0.881, 0.874, 0.875 | 0.876 | 0.007 |  | 0.482, 0.473, 0.457 |  |  |  | 0.058, 0.070, 0.014 |
#
# The series' rule on these rows, and the benchmark's seed 0 beside this run:

# %%
experiments = committed_results("mask_experts")
if experiments is not None:
    by_model = {r["model"]: r for r in experiments["results"] if r["data"] == "shapes"}
    head, base = by_model["mask-head"], by_model["final"]
    show_finding("mask head", head["miou"], "LatentSegNet()", base["miou"])     # test mIoU
    show_finding("which shape, mask head", [m["mi_which_shape"] for m in head["measured"]],
                 "LatentSegNet()", [m["mi_which_shape"] for m in base["measured"]])
    for variant in ("shapes", "crowded"):
        rows = {r["model"]: r for r in experiments["results"] if r["data"] == variant}
        show_finding(f"{variant}: mask head PQ", [m["pq"] for m in rows["mask-head"]["measured"]],
                     "components of LatentSegNet()'s class map",
                     [m["components_pq"] for m in rows["final"]["measured"]])
    print(f"the benchmark ran `{experiments['command']}`, torch threads: "
          f"{experiments['threads']}; this notebook: {torch.get_num_threads()}")
    print(f"seed 0, the mask head's test mIoU: the benchmark {head['miou'][0]:.3f}, "
          f"this run {mask_scores['miou']:.3f}")

# %% [markdown]
# Every seed misses all three targets on shapes, as this run does. None of the three shapes gaps is a finding:
# the mask head's seeds spread by more than the gap, far more than the final model's. On crowded
# data the components beat the mask head on every seed, a finding. The "which shape" share swings
# from seed to seed for both models. The benchmark's seed 0 is not this run: with another thread
# count float sums are reduced in another order, and the same seed trains another model.

# %% [markdown]
# #### Two and a half times the budget, on the test set
#
# Section 4.3 found the head slow rather than wrong on the validation set. Does the longer budget
# carry over to the test set, and does it reach the targets? `python benchmarks/mask_experts.py
# --steps 2000` (benchmarks/results/mask_experts_2000.md) trains both models 2,000 steps on the
# same seeds and scores the same targets. Per seed, at both budgets:

# %%
long_experiments = committed_results("mask_experts_2000")
if experiments is not None and long_experiments is not None:
    for variant in ("shapes", "crowded"):
        print(f"{variant} test set:")
        budgets = {}
        for results in (experiments, long_experiments):
            rows = {r["model"]: r for r in results["results"] if r["data"] == variant}
            head, final = rows["mask-head"], rows["final"]
            budgets[results["steps"]] = head, final
            per_seed = {
                "mask head mIoU": head["miou"], "LatentSegNet() mIoU": final["miou"],
                "mask head PQ": [m["pq"] for m in head["measured"]],
                "components' PQ": [m["components_pq"] for m in final["measured"]],
                "claimed once": [m["claimed_once"] for m in head["measured"]]}
            print(f"  {results['steps']} steps: " + "; ".join(
                f"{name} {', '.join(f'{v:.3f}' for v in values)}" for name, values in per_seed.items()))
        ((short, _), (long, long_final)), steps = budgets.values(), list(budgets)
        show_finding(f"  mask head PQ at {steps[1]} steps", [m["pq"] for m in long["measured"]],
                     f"{steps[0]} steps", [m["pq"] for m in short["measured"]])
        show_finding(f"  mask head mIoU at {steps[1]} steps", long["miou"], f"{steps[0]} steps",
                     short["miou"])
        show_finding(f"  mask head PQ at {steps[1]} steps", [m["pq"] for m in long["measured"]],
                     "the components' PQ", [m["components_pq"] for m in long_final["measured"]])
    print(f"the targets at {long_experiments['steps']} steps, as the benchmark prints them:")
    with open("../benchmarks/results/mask_experts_2000.md") as f:
        print(f.read().split("shapes:\n")[1].split("\n\ncrowded:")[0])

# %% [markdown]
# On shapes every target still misses at 2,000 steps. Every seed gains in PQ, mIoU and claims, on
# both data sets (in PQ a finding on crowded data; on shapes the gain is within the 800-step
# spread), and on shapes the seeds agree far more closely than at 800 steps; the head's PQ is, as
# at 800 steps on shapes, no measurably different from the connected components' (their means are
# now close, and on crowded data the components no longer lead on every seed), but stays below 0.75, and its class map stays below the
# final model's, which gains too. The longer budget is worth having, and not enough. In this
# notebook's run (800 steps) the commonest failure was section 3.3's merges, one latent covering two
# objects; the rows of section 4.3 aimed at them (positions for the pixels or the latents, a third
# round, competing reads, the discriminative loss) are no measurable difference in PQ at 800 steps,
# and section 4.3 counts the merges over seeds and budgets.

# %% [markdown]
# #### Five times the budget, and the inference chosen on validation
#
# `python benchmarks/mask_experts.py --steps 4000 --variants shapes`
# (benchmarks/results/mask_experts_4000.md) trains both models 4,000 steps on shapes. From this run
# on, the benchmark also reads the head with section 4's panoptic inference at every setting of its
# grid, lets the validation split choose one (the plain rule is a candidate too), and the PQ target
# reads the test PQ at that setting. Per seed:

# %%
longest = committed_results("mask_experts_4000")
if longest is not None:
    rows = {r["model"]: r for r in longest["results"] if r["data"] == "shapes"}
    head, final = rows["mask-head"], rows["final"]
    chosen = head["chosen_inference"]                 # the setting the validation split chose
    per_seed = {
        "mask head mIoU": head["miou"], "LatentSegNet() mIoU": final["miou"],
        "mask head PQ, plain inference": [m["pq"] for m in head["measured"]],
        f"mask head PQ, chosen inference ({chosen})":
            [m["inference"][chosen]["test"]["pq"] for m in head["measured"]],
        "components' PQ": [m["components_pq"] for m in final["measured"]],
        "claimed once": [m["claimed_once"] for m in head["measured"]]}
    print(f"shapes test set, {longest['steps']} steps:")
    for name, values in per_seed.items():
        print(f"  {name}: {', '.join(f'{v:.3f}' for v in values)}")
    show_finding("chosen inference", per_seed[f"mask head PQ, chosen inference ({chosen})"],
                 "the components' PQ", per_seed["components' PQ"])
    print(f"the targets at {longest['steps']} steps, as the benchmark prints them:")
    with open("../benchmarks/results/mask_experts_4000.md") as f:
        print(f.read().split("shapes:\n")[1].strip())

# %% [markdown]
# At 4,000 steps the PQ target passes: with the inference the validation split chose, the head's
# PQ is above 0.75 and above the connected components' on every seed, a finding against the
# components. Its plain rule only just reaches 0.75 in the mean, with two seeds below (by its
# mean it would pass too); the chosen inference is higher on every seed. The claims target misses
# narrowly (one seed reaches 90%), and merges are most of the objects not claimed once. The semantic target still misses: the
# final model's class map gains from the longer budget too, and stays above the head's on every
# seed. So the head was slow more than wrong, and its inference is worth choosing on validation.

# %% [markdown]
# ## 6. Explore it yourself: each latent's mask
#
# `latentseg_widgets.latent_masks` puts section 3.1 under a slider: pick a latent and see its mask
# over six test images (in a running notebook).

# %% tags=["nbval-ignore-output"]
from IPython.display import display

try:
    import latentseg_widgets as uw
except ImportError:
    uw = None
    print("latentseg_widgets is not installed (run pip install -e . in the repository); "
          "skip this section (everything above works without it).")
if uw is not None:
    browser = uw.latent_masks(mask_model, test_images[:6])
    display(browser)

# %% [markdown]
# ## 7. Where this sits: Mask2Former, Slot Attention, DeepSeekMoE
#
# **Mask2Former** (*Masked-attention Mask Transformer for Universal Image Segmentation*, Cheng et
# al., CVPR 2022) restricts each query's cross-attention to its own mask from the previous layer,
# and scores every layer: section 2.5's changes, the one finding of section 4.3. With 100 queries
# of width 256 (ours: 16 of width 64), MaskFormer reports 55.6 mIoU on ADE20K, and Mask2Former 57.7
# mIoU on ADE20K and 57.8 PQ on COCO: the design at scale, not a forecast for ours.
#
# **Slot Attention** makes slots compete as they read the image; our latents compete only in the
# masks they write. **DeepSeekMoE** (Dai et al., 2024) specialises experts by routing each token to
# a few of many small ones; the mask head specialises by segment instead, which, as sections 4.1
# and 5 show, does not reliably make a latent prefer one shape.

# %% [markdown]
# ## Summary
#
# - Latents that read with a softmax over the pixels never have to divide the image. Slot
#   Attention's softmax over the latents makes them compete for each pixel; MaskFormer makes them
#   compete through matching in training; the head built here, checked piece by piece against the module, makes its masks
#   compete for each pixel and matches them in training.
# - Of the design changes compared with their base rows on validation at 800 steps, only deep
#   supervision with masked attention is a finding in PQ. With it the head still misses all three
#   targets, in this run and on every seed of the 800-step benchmark.
# - On crowded images connected components fail, but at 800 steps they still beat the mask head on
#   every seed. Two and a half times the training budget raises the recipe's validation PQ on every
#   seed, but by less than its 800-step spread (no finding), and no seed reaches a PQ of 0.75 at 2,000
#   steps. On the test set at 2,000 steps the head's PQ is no measurably different from the
#   connected components' on both data sets, and on shapes it still misses every target. At
#   4,000 steps on shapes (the only data set trained that long), with the inference chosen on
#   validation, the PQ target passes on the test set; the claims and the class map still miss. Over three seeds and
#   up to five times the budget, most objects not
#   claimed once are merged with another by one latent (`u.claim_outcomes`); from 800 to 4,000
#   steps the other failures shrink to almost nothing, but merges fall only slowly, and of the
#   changes whose merges were counted (validation, 800 steps) only the query positions cut them
#   measurably, by a little.
#
# ## Exercises
#
# ### Exercise 1: why not greedy?
#
# Write `greedy_match(cost)` that goes through the segments in order (background first) and gives
# each the cheapest latent not yet taken. Return `(latents, segments)` like `match`. The check
# runs it on the trained model's cost matrices for the first 64 test images and counts how often
# greedy costs more than the Hungarian matching.

# %%
def check_greedy(fn):
    toy = torch.tensor([[0.0, 1.0], [1.0, 10.0]])          # greedy: 0 + 10; Hungarian: 1 + 1
    rows, cols = fn(toy)
    assert rows.tolist() == [0, 1] and cols.tolist() == [0, 1], \
        "segment 0 takes its cheapest latent (0), segment 1 gets the one left (1)"
    worse = 0
    for b in range(64):
        classes, masks = segments_of(test_labels[b], test_instances[b])
        cost = cost_matrix(test_classes[b], test_masks[b].flatten(1), classes,
                           masks.flatten(1).float(), WEIGHTS)
        rows, cols = fn(cost)
        assert len(set(rows.tolist())) == len(rows) == cost.shape[1], "one latent per segment"
        best_rows, best_cols = match(cost)
        greedy_total, best_total = float(cost[rows, cols].sum()), float(cost[best_rows, best_cols].sum())
        assert greedy_total >= best_total - 1e-5, "nothing beats the Hungarian matching"
        worse += greedy_total > best_total + 1e-5
    print(f"correct; greedy costs more than the Hungarian matching on {worse} of 64 test images")


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def greedy_match(cost):
    taken = []
    for s in range(cost.shape[1]):
        k = next(k for k in cost[:, s].argsort().tolist() if k not in taken)
        taken.append(k)
    return torch.tensor(taken), torch.arange(cost.shape[1])

check_greedy(greedy_match)
# Greedy can be worse when two segments want the same latent: the first one takes it, and the
# second is left with a poor one, though the first had a nearly as good alternative.


# %% [markdown]
# ### Exercise 2: which shapes does each latent claim?
#
# Write `shape_counts(claims, instances, labels, K)` that returns a `[K, 3]` tensor: how many
# circles, squares and triangles of the test set each latent claims (`claims` from section 3.2; a
# claimed object's class is the label of any of its pixels). Do the busiest latents stick to one
# shape?

# %%
def check_shape_counts(fn):
    counts = fn(claims, test_instances, test_labels, K)
    assert tuple(counts.shape) == (K, 3), f"expected {(K, 3)}, got {tuple(counts.shape)}"
    expected = torch.zeros(K, 3, dtype=torch.long)
    for b, claim in enumerate(claims):
        for j, k in claim.items():
            if k >= 0:
                expected[k, int(test_labels[b][test_instances[b] == j][0]) - 1] += 1
    assert torch.equal(counts.long(), expected), "count each claimed object once, by its shape"
    print("correct; the five busiest latents (circles, squares, triangles claimed):")
    for k in counts.sum(1).argsort(descending=True)[:5].tolist():
        print(f"  latent {k:>2}: {counts[k].tolist()}")


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def shape_counts(claims, instances, labels, K):
    counts = torch.zeros(K, 3, dtype=torch.long)
    for b, claim in enumerate(claims):
        for j, k in claim.items():
            if k >= 0:                               # -1: no latent, -2: several
                shape = int(labels[b][instances[b] == j][0])
                counts[k, shape - 1] += 1
    return counts

check_shape_counts(shape_counts)


# %% [markdown]
# ### Exercise 3: what is "no object" for?
#
# Write `scores_without_no_object(class_logits, mask_logits)`: the semantic scores of section 2.4,
# but with the softmax taken over the real classes only (drop the "no object" logit before the
# softmax), so that every latent adds its mask to some class. The check compares the test mIoU of
# both. Why is the difference what it is?

# %%
def check_without_no_object(fn):
    toy_classes = torch.tensor([[[2.0, 0.0, 0.0, 0.0, 5.0]]])   # one latent, mostly "no object"
    toy_masks = torch.full((1, 1, 2, 2), 3.0)
    expected = (torch.tensor([2.0, 0.0, 0.0, 0.0]).softmax(0)[None, :, None, None]
                * torch.tensor(3.0).sigmoid()).expand(1, 4, 2, 2)
    result = fn(toy_classes, toy_masks)
    assert tuple(result.shape) == (1, 4, 2, 2) and torch.allclose(result, expected, atol=1e-6), \
        "softmax over the four real classes only, times the sigmoid of the mask"
    with_none = u.mean_iou(u.semantic_scores(test_classes, test_masks).argmax(1), test_labels, 4)
    without = u.mean_iou(fn(test_classes, test_masks).argmax(1), test_labels, 4)
    print(f"correct; test mIoU with 'no object' {with_none:.3f}, without it {without:.3f}")


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def scores_without_no_object(class_logits, mask_logits):
    probabilities = class_logits[..., :-1].softmax(-1)            # "no object" dropped first
    return torch.einsum("bkc,bkhw->bchw", probabilities, mask_logits.sigmoid())

check_without_no_object(scores_without_no_object)
# Without "no object", every latent adds its mask to some class, including latents that own
# nothing in this image. With competing masks such a latent is trained to hold little of any
# pixel (section 2.3: the matched latents learn to hold every pixel between them), so what it adds
# is small where the matched latents are sure of a pixel, and counts where they are not. How much
# that costs depends on the run (the check prints it); "no object" is what keeps a latent that
# owns nothing out of the output either way.

# %% [markdown]
# ## Final check
#
# The claims of this notebook that hold whatever the training run gives, in one place (the
# verdict of section 4 holds on every seed of the benchmark too).

# %% tags=["nbval-check-output"]
print("over the latents, latents compete for a pixel; over the pixels they do not:",
      b_moves_over_latents and not b_moves_over_pixels)
print("the toy matching leaves the weaker duplicate to 'no object':",
      [toy_names[k] for k in toy_left_over] == ["B"])
print("our block, mask head, segments, matching, loss and inference match the module:",
      all(matches.values()) and len(matches) == 10)
print("mask head outputs [B, K, C + 1] and [B, K, H, W]:",
      tuple(test_classes.shape) == (256, K, num_classes + 1)
      and tuple(test_masks.shape) == (256, K, 64, 64))
print("every test object has a verdict (one latent, none, or several):",
      len(verdicts) == sum(len(c) for c in claims) == int(sum(len(i.unique()) - 1 for i in test_instances)))
