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
# can say why nothing in that model asks them to, build MaskFormer's answer on the series' own
# encoder and latents (each latent predicts a class and a mask, and is matched to one segment in
# training), train it, and measure whether its latents now own segments.
#
# **Run time:** about two minutes on a quiet 2-core CPU, most of it the one training in section 3,
# when notebook 05's checkpoint (`notebooks/checkpoints/latentsegnet.pt`) is present. Without it
# the notebook first trains that model too, which adds about a minute (longer on a busy machine).
# Far less on a GPU.
#
# **What you will learn**
# 1. Why latents that read the pixels with a softmax over the pixels never have to divide the
#    image between them, and two ways to make them compete: a softmax over the latents (Slot
#    Attention), or one-to-one matching in training (MaskFormer). The head built here uses both.
# 2. Mask classification piece by piece, each piece checked against the module: the mask head
#    (masks that compete for each pixel, a class that reads what its mask covers), Hungarian
#    matching, the loss, and the two ways to read its output (a class map and an instance map).
# 3. How to look at a trained mask head: every latent's mask, which latent claims which object,
#    and its failures (objects merged, split or missed), found by code rather than by eye.
# 4. How to judge it against the series' final model: semantic mIoU, panoptic quality, claims,
#    and notebook 06's specialisation measure, for this run and over three seeds.
# 5. Where the idea sits: Mask2Former, Slot Attention, and DeepSeekMoE's fine-grained experts.
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
# The imports, a fixed seed so that the random draws are the same on every run, and the device
# (printed so that a bug report says what you ran). `u` is the series' shared module.
# `linear_sum_assignment` is SciPy's solver for the assignment problem, which section 2.2 uses.

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
# Notebook 06 took the series' final model, `u.LatentSegNet()`, apart and measured its 16
# "experts" (latents). They split the image into object and background and hardly anything
# finer: which latent a pixel reads most tells almost nothing about *which* shape the pixel
# belongs to, many latents are near copies of each other, and any single one can stand in for
# all of them. Section 4.1 measures the first of these again (object or background, and which
# shape), on the same test images, beside the model this notebook builds.
#
# Nothing in that model asks for more. Look at how its latents read the pixels: each latent's
# attention weights are a softmax **over the pixels**. Each latent spreads its one unit of
# attention over the image as it likes, and what one latent reads does not change what another
# can read. Two latents that start alike can read the same pixels for ever.
#
# The smallest example that shows it: 8 pixels with 2 features each (pixels 0-3 are "object",
# 4-7 "background") and 3 latents, of which A and B are identical. The scores are the dot
# products latent · pixel, `[K, N]`. We normalise them both ways: over the pixels, as our latents
# do, and over the latents, as Slot Attention's slots do.

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
# Over the pixels, A and B each give object pixel 0 the weight they would give it if the other
# did not exist: the two latents read the same thing twice, and each is as good as the other.
# Over the latents, the pixel has one unit to hand out, and A and B split it.
#
# The difference matters when one latent gets better at something. Make A a little more
# object-like and see what happens to B:

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
# Attention* (Locatello et al., NeurIPS 2020) builds on exactly this. Its slots read the image with
# a softmax over the slots, then each slot takes the weighted mean of the pixels it won, for a few
# rounds, and the slots come to bind to single objects without any labels.
#
# MaskFormer (*Per-Pixel Classification is Not All You Need for Semantic Segmentation*, Cheng,
# Schwing and Kirillov, NeurIPS 2021) makes latents compete another way, with labels. Each latent
# predicts a **class** (one of the classes, or "no object") and a **mask** of its own, a sigmoid
# per pixel, so the masks do not compete in the forward pass. The competition is in training:
# each true segment of the image is matched to exactly one latent, chosen so that the pairs as a
# whole fit best, and every latent left over is taught to say "no object". Two latents that
# predict the same object cannot both be matched to it: one is taught to be that object, the
# other to be nothing. The aim is that a latent *is* a segment.
#
# Here is that matching on the toy. Each latent's mask is a sigmoid of its scores, shifted so that
# the pixels it scores high are well inside its mask and the others well outside. The image has
# two segments, "object" and "background", and the cost of giving segment s to latent k is how
# badly their masks overlap (a dice loss, as in section 2.2: 0 for a perfect overlap, 1 for
# none). SciPy's `linear_sum_assignment` finds the assignment, one latent per segment, with the
# smallest total cost.

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
# In MaskFormer the masks stay independent: each is its own sigmoid, and the matching alone
# decides which latent answers for which segment. The head this notebook builds keeps MaskFormer's
# classes, masks, matching and loss, and changes two things.
#
# - **Its masks compete, as Slot Attention's slots do.** At every pixel, a softmax over the
#   latents turns their mask scores into probabilities that sum to 1, like the columns of the
#   middle panel: what one latent's mask takes at a pixel, the others give up. Why: with
#   independent sigmoids nothing in the forward pass stops two latents from both covering an
#   object in full (section 2.1 counts, on the untrained model, how many pixels have two or more
#   latents above one half either way). The latents still
#   *read* the pixels with a softmax over the pixels, as on the left; what competes is the masks
#   they write.
# - **A latent's class also reads what its mask covers**: the encoder's features averaged inside
#   the latent's own mask, not only what the latent attended to.
#
# Section 2.1 writes both into the model.

# %% [markdown]
# ## 2. Mask classification, built piece by piece
#
# The module holds MaskFormer's head on the series' encoder, with section 1's two changes, as
# `u.MaskLatentSegNet`, with its matching, loss and inference beside it (notebook 07 showed the
# head untrained). We now write
# each piece ourselves and check it against the module, as every notebook of the series does.
#
# ### 2.1 The mask head
#
# The model, shapes for a batch of B images of 64×64 pixels:
#
# - **Encoder**, as in `u.LatentSegNet`: a full-resolution stem (8 channels), then two stages of
#   two convolutions each down to stride 4, giving 64-channel features `[B, 64, 16, 16]`, which
#   become N = 256 tokens `[B, 256, 64]` with notebook 05's position features added.
# - **Latents**: 16 learned vectors `[16, 64]`. Two rounds: they read the pixels (`read`), then
#   they read each other (`talk`, self-attention among the latents as they are after this
#   round's reading), so that a latent can see what the others have just taken and two of them
#   can settle on different segments. Mask2Former's decoder layers run in the same order:
#   cross-attention to the image, then self-attention among the queries.
# - **Masks**: an MLP turns each latent into a 32-dimensional mask embedding `[B, 16, 32]`. The
#   stride-4 features are projected to 32 channels, upsampled to full resolution and refined with
#   the stem, giving a 32-dimensional embedding per pixel `[B, 32, 64, 64]`. Latent k's mask score
#   at a pixel is the dot product of the two: `[B, 16, 64, 64]`.
# - **Competition** (ours, section 1; MaskFormer takes the sigmoid of each score on its own): a
#   log-softmax over the 16 latents at each pixel gives $\log p_k$, with $\sum_k p_k = 1$. The
#   head returns $\log p_k - \log(1 - p_k)$, the logit of $p_k$, whose sigmoid is $p_k$ again, so
#   everything downstream that takes the sigmoid of a mask logit (the loss, both inferences, the
#   claims) works unchanged. The clamp in the code keeps $\log(1 - p_k)$ finite where one latent
#   holds a pixel entirely.
# - **Class head**: a linear layer, `[B, 16, 5]`: the 4 classes and "no object". The background
#   is a class like the shapes ("stuff", in panoptic language): one latent is meant to own it.
#   Before it, each latent gets the encoder's features averaged inside its own mask (ours,
#   section 1): the mask probabilities, average-pooled to the 16×16 token grid, weight the
#   stride-4 features, and a linear layer (`pool_proj`) adds the weighted mean to the latent.
#   So the class comes after the masks.
#
# The attention blocks are the pre-norm residual blocks of notebook 05. We write ours again; it
# is a few lines, and the check below confirms it is the module's `u.AttentionBlock`.

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
# scores so that the series' `u.train`, `u.predict` and `u.evaluate` work unchanged: MaskFormer's
# **semantic inference**, $\text{score}_c(p) = \sum_k P(\text{latent } k \text{ is class } c)\cdot
# \sigma(\text{mask}_k(p))$, "no object" left out. Section 2.4 looks at it more closely.

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
# What the competition does, on the same four images: at each pixel, the sum over the 16 latents
# of their mask probabilities (the sigmoids of the mask logits). Once for our model, once for the
# same weights built with `compete=False, pooled_class=False`: independent sigmoids, MaskFormer's
# masks. With competition the sum is 1 at every pixel, so at most one latent can be above one
# half there; without it the sum can be anything from 0 to 16, and several latents can be sure
# of the same pixel at once.

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
# Training needs, for every image, the list of its **segments**: the background region (if any
# pixel is background), then each object, from the instance map that `u.make_split(...,
# instances=True)` returns beside the class map (instance id 0 is background; each object has its
# own id, and one class). We take the shapes test set, the 256 images every notebook scores on,
# and pick the first test image with three objects in view.

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
# MaskFormer sums three terms, each with a weight (the module keeps them in the model's config):
#
# - minus the probability the latent gives the segment's class (a latent already saying "circle"
#   is a cheap match for a circle),
# - the binary cross-entropy of its mask against the segment's mask, averaged over the pixels,
# - the dice loss, $1 - \frac{2\,|m \cap t| + 1}{|m| + |t| + 1}$ with soft sizes, which looks at
#   the overlap only, so a small object counts as much as a large one.

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
# The cost matrix as a heat map, segments in rows and the 16 latents in columns, the chosen pairs
# in red. Look along each row: untrained, no latent is much cheaper than another. The matching
# still picks one latent per segment, and training is meant to make that latent better at its
# segment. Section 3.4 draws the same matrix after training.

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
# - **Classes**, over all K latents of every image: cross-entropy toward the matched segment's
#   class for matched latents, toward "no object" for the others. Most latents are unmatched, so
#   "no object" gets a small weight (`no_object_weight`), or the easiest answer would be
#   "no object" everywhere.
# - **Masks**, over the matched pairs only: binary cross-entropy and dice loss of each matched
#   latent's mask against its segment's mask. No term looks at an unmatched latent's mask, but
#   with competing masks it is trained all the same. The segments cover every pixel, so the
#   matched masks' targets add up to 1 at each pixel, as the probabilities of all the latents
#   there do. The mask terms are smallest only when the matched latents hold every pixel between
#   them, which leaves the unmatched ones nothing; their "no object" answer keeps whatever they
#   still hold out of the output.
#
# The matching is made under `torch.no_grad()`: it is a choice of targets, not a function to learn
# through. The model's own `training_loss`, the one `u.train` calls, is this loss on the model's
# outputs, and nothing more.

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
# A trained mask head can be read two ways.
#
# **Semantic inference** (a class per pixel), which `forward` already does: the score of class c
# at pixel p is the sum over latents of P(latent is c) times its mask at p. The scores are not
# normalised: two latents of one class add up, and since the competing masks' probabilities at a
# pixel sum to 1, the scores there sum over the classes to at most 1, the latents' "no object"
# share being left out. `forward` returns their logarithm, so that the argmax gives the class map
# as for any other model of the series.

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
# cannot give at all. Keep the latents that name a shape, not "no object" (its probability below
# one half) and not the background; give each pixel to the kept latent with the highest
# P(its class) × mask; keep the pixel only if that latent's mask is above one half there (with
# competing masks: if it holds more than half of the pixel). The instance map holds the latent's
# index + 1 (0: background or unclaimed), the class map its class.

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
# ## 3. Train it, and look at its latents
#
# First the model to compare with: the series' final model `u.LatentSegNet()`, trained by
# notebook 05 and saved to `checkpoints/latentsegnet.pt` next to the notebooks. As in notebook 06,
# the cell loads that file, and when it is missing or holds another model (for example in Colab,
# where the setup cell installs the modules but not the checkpoint) it trains the model with
# notebook 05's recipe and saves it for next time.

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
# Now the mask head, `u.MaskLatentSegNet()`, trained by the same `u.train` with the same recipe
# (AdamW, learning rate 3e-3 with warm-up and cosine decay, batches of 16 fresh images, seed 0).
# Only the data function differs: `u.variant_data("shapes", instances=True)` also returns the
# instance maps, which `u.train` passes on to the model's `training_loss`, the loss of
# section 2.3. `STEPS` is the one setting you may want to change: more steps mean a longer wait,
# and whether they give better latents is for you to try.

# %% tags=["nbval-ignore-output"]
STEPS = 800
torch.manual_seed(0)
mask_model = u.MaskLatentSegNet()
history = u.train(mask_model, steps=STEPS, batch_size=16, lr=3e-3, seed=0,
                  data=u.variant_data("shapes", instances=True), device=device)
print(f"trained {history['steps_done']} steps in {history['seconds']:.0f} s on {history['device']}")

# %% [markdown]
# The training loss, per step and as a running mean over a fortieth of the run. Look at the
# running mean: it falls fast over the first hundred or so steps, then slowly, and it has nearly
# levelled off over the last two hundred. A falling loss says that the model fits its matched
# targets better; whether its latents now own segments is what the rest of the notebook measures.

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
# Every number from here on is measured on the test set. We predict the class logits and mask
# logits of all 256 test images once, in batches, and keep them on the CPU.

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
# The first three test images, and for each all 16 latents: the mask (sigmoid, bright = in the
# mask; the masks compete, so the 16 values at a pixel sum to 1 and a latent is bright only where
# it holds most of the pixel) and, above it, the latent's most likely answer with its probability
# (`bg` background, `circ`, `sq`, `tri`, `none` for "no object"). In a mask head that works,
# most latents answer `none`, one answers `bg` with a mask of the background, and each object has
# one latent with a mask of that object. Look for the brightest mask on each object and read its
# title: does that latent answer the object's shape, and how sure is it? The counts under the
# figure say how many latents are not "no object" in each image.

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
# In this run the background works as intended: in each image one latent answers `bg` with a
# probability near 1 and holds the whole background. The objects do not. Each has a bright mask,
# but the latent that holds it answers with a probability of only about a third to a half, and in
# images 0 and 2 it answers the wrong shape: the brightest mask on the square belongs to a latent
# that answers `circ` in image 0 and `tri` in image 2. The roles also move from image to image:
# latent 11 holds the background in image 0 and answers `circ` in images 1 and 2, and latent 8
# holds the background in images 1 and 2. And more latents are not "no object" than there are
# segments: four to six, for two segments in each image.
#
# ### 3.2 Which latent claims which object
#
# Pictures suggest; counts decide. Two of the module's functions turn the outputs into verdicts:
#
# - `u.claims`: latent k **claims** object j when its "no object" probability is below one half
#   and its thresholded mask (sigmoid above one half) has an IoU of more than one half with the
#   object (`u.MATCH_IOU`, the same rule as panoptic quality's matching below). Per object: the
#   latent, or -1 when no latent claims it, -2 when several do. With competing masks at most one
#   latent is above one half at any pixel, so the thresholded masks never overlap, and two of them
#   can never both cover more than half of one object. "Several" is what independent sigmoids allow
#   (section 1); the counts below show how often it happens here.
# - `u.mask_owner`: the latent that **owns** each pixel, the one with the largest
#   P(not "no object") × mask there (MaskFormer's panoptic assignment).

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
# Over the test set, 366 of the 513 objects are claimed by exactly one latent, 147 by none, and
# none by several, which competing masks all but rule out. Only 6 of the 16 latents claim any
# object at all.
#
# The sample image of section 2.2, coloured by latent: which latent owns each pixel, and each
# object in the colour of the latent that claims it (grey: claimed by none or by several). Latents
# get their own palette (`tab20`), never the class colours. Look for an object that is grey on the
# right, and find its colour in the owner map: is that latent's colour on another object too?

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
# Here the triangle is the unclaimed object. In the owner map it has the colour of latent 10,
# which also owns the upper circle and claims it: one latent holds two objects, a failure that
# section 3.3 calls a merge. Latent 11 claims the lower circle, though patches of it belong to
# other latents, and latent 0 owns the background.
#
# ### 3.3 Where it fails
#
# The objects that no latent claims, sorted by what happened to them, from the owner map (never
# by eye, and never by picking images). Over an object's pixels we count each latent's share, and
# look only at the latents that answer a shape in that image:
#
# - **missed**: shape latents own less than half of the object's pixels; the background latent,
#   or latents that answer "no object", took it. We compare the size of such objects with all
#   objects.
# - **merged**: the object's main shape latent also owns at least half of another object in the
#   image: one latent for two objects.
# - **split**: a second shape latent owns at least `SPLIT_SHARE` of the object's pixels.
# - **rough**: one shape latent owns most of it, but its thresholded mask's IoU with the object
#   is below one half (a mask too large, too faint or too ragged). With competing masks, too
#   faint can also mean shared: the pixel's probability is spread over several latents and none
#   holds half of it.
# - **claimed by several**: more than one latent claims it (duplicates).
#
# Competition changes what a duplicate looks like. With independent sigmoids, two latents that
# both want an object can both cover it and are "claimed by several"; with competing masks they
# have to share it. Either they divide its pixels, and the duplicate shows up as **split**, or
# they share each pixel, one of them winning every pixel by a little but holding less than half
# of it, and it shows up as **rough**. "Merged" and "missed" mean what they meant: the
# competition is per pixel, so one latent can still hold two objects, and the background latent
# can still hold an object.

# %%
SPLIT_SHARE = 0.25
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

# %% [markdown]
# Of the 147 unclaimed objects, 108 are merged: the commonest failure in this run is one latent
# holding two objects, far ahead of split (20), missed (10) and rough (9). Missed objects are
# smaller than most (median 253 px against 357 px for all objects), rough ones smaller still.
#
# The first example of each kind found (in test-set order): the image, the owner map with the
# object outlined in white, and the truth. In each column, compare the colours inside the white
# outline with those on the other objects of the image: in the merged example, the square and the
# triangle have one colour.

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
# The shares printed under the figure say the same in numbers. In the merged example latent 11
# owns 0.96 of the square and at least half of the triangle; in the split one the circle is
# divided between latents 11 and 15; in the missed one the shape latents own less than half of
# the square, and most of the rest has the background latent's colour.
#
# ### 3.4 The matching after training
#
# Section 2.2's cost matrix for the same image, now with the trained model. Look along each row
# for one clearly cheapest latent. The background row has one, latent 0; on the three object rows
# the colour scale, stretched by the background row's large costs, hardly separates the latents,
# so read their cheapest latents in the printout under the figure.

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
# Latent 10 is the cheapest for both the upper circle (segment 2) and the triangle (segment 3),
# the merge of section 3.2. The matching may use each latent once, so in training it gives the
# triangle to latent 10 and the upper circle to latent 8.
#
# ## 4. The verdict on this run
#
# Four targets, the ones `benchmarks/mask_experts.py` checks over seeds (section 5), all on the
# 256 test images:
#
# 1. the mask head's **semantic test mIoU** is at most 0.03 below the final model's: owning
#    segments must not cost the class map;
# 2. its **panoptic quality** is at least 0.75. PQ (*Panoptic Segmentation*, Kirillov et al.,
#    CVPR 2019) matches a predicted and a true object of one class when their IoU is above one
#    half; PQ = SQ × RQ, where SQ is the mean IoU of the matches and RQ =
#    TP / (TP + FP/2 + FN/2) (`u.panoptic_quality`, over the three shapes);
# 3. at least 90% of test objects are **claimed by exactly one latent** (section 3.2);
# 4. the **mutual-information share for "which shape"** of the pixel's owner is at least 0.3.
#    This is notebook 06's specialisation measure, `u.specialisation`: the fraction of the
#    uncertainty about a pixel's shape (over the object pixels) that knowing its latent removes.
#
# The measurements first. For the final model the owner is what notebook 06 used: each 4×4 token's
# main expert (the argmax of its head-mean pixel-to-latent weights) against the token's majority
# class; for the mask head, `u.mask_owner` per pixel against the pixel's class.

# %%
mask_scores = u.evaluate(mask_model, test_images, test_labels)
final_scores = u.evaluate(final, test_images, test_labels)
pred_instances, pred_classes = u.predict_instances(mask_model, test_images)
pq = u.panoptic_quality(pred_instances, pred_classes, test_instances, test_labels)
claimed_once = sum(k >= 0 for k in verdicts) / len(verdicts)
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
print(f"test objects claimed by exactly one latent: {100 * claimed_once:.1f}% "
      f"({len(used)} latents claim at least one)")
print(f"MI share for which shape: mask head {mask_spec['which shape']:.3f}, "
      f"LatentSegNet()'s main expert {final_spec['which shape']:.3f}")

# %% [markdown]
# The verdict, one line per target. The suite compares these lines on every run of the notebook;
# a `False` is a result of this run, not a bug in it, and section 5 shows whether the targets hold
# over seeds.

# %% tags=["nbval-check-output"]
print("semantic test mIoU at least LatentSegNet()'s minus 0.03:",
      mask_scores["miou"] >= final_scores["miou"] - 0.03)
print("PQ at least 0.75:", pq["pq"] >= 0.75)
print("at least 90% of test objects claimed by exactly one latent:", claimed_once >= 0.90)
print("MI share for which shape at least 0.3:", mask_spec["which shape"] >= 0.3)

# %% [markdown]
# This run misses all four targets. With section 3, the measurements say where it goes wrong:
#
# - **Class map**: mIoU 0.538 against the final model's 0.932. Section 3.1 shows a likely reason:
#   the latent that holds an object's mask often answers the wrong shape, and in the images shown
#   there with a probability of a half at most.
# - **Panoptic quality**: the predicted objects that do match a true one fit it well (SQ 0.804).
#   What is low is RQ, 0.332: 300 true objects are missed and 492 predicted objects match
#   nothing. A PQ match also needs the right class, which section 3.2's claims do not look at;
#   that is one reason why only 213 predicted objects match, although 366 objects have a
#   claiming latent.
# - **Claims**: 71.3%, short of 90% mostly through merges (108 of the 147 unclaimed objects,
#   section 3.3), and only 6 of the 16 latents claim any object.
# - **Which shape**: 0.011, far below 0.3. Section 4.1 looks at why.
#
# ### 4.1 Notebook 06's measure, both models side by side
#
# All three of notebook 06's questions for both models: how much the owner tells about the class
# overall, about object or background, and about which shape. Keep the difference in grain in
# mind: the final model's owner is per token (a 4×4 block), the mask head's per pixel. In the
# chart, look at the "which shape" pair of bars against the dashed target line.

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
ax.axhline(0.3, ls="--", color="grey", lw=1, label="target for which shape")
ax.set_xticks(positions.numpy(), questions)
ax.set(ylim=(0, 1.1), ylabel="I(owner; class) / H(class)",
       title="How much the owning latent tells about the class (test set)")
ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False)
fig.tight_layout()
plt.show()

# %% [markdown]
# How to read it: the measure is 0 when knowing the latent tells nothing about the class and 1
# when it tells everything. On "which shape" both models are far below the target, and on the
# other two questions neither tells much. The measure pools all test pixels, so owning one object
# per image is not enough to score high on "which shape": the same latent must own the same shape
# across images. Nothing in the loss asks for that: the matching pairs segments with latents
# image by image, whatever they were paired with in other images. Exercise 2 counts which shapes
# each latent claims. The background question would be answered by one latent that owns the
# background in every image, but in this run the background goes to different latents in
# different images (latent 11 in test image 0, latent 8 in images 1 and 2, latent 0 in image 4:
# section 3.1 and section 3.4), and the same latents claim objects elsewhere. The differences
# between the two models in this chart are one seed's, not findings; section 5 has "which shape"
# over three seeds.

# %% [markdown]
# ### 4.2 Inference first: a better rule, or better masks?
#
# Much of the low RQ is predicted objects that match nothing. Part of that could be the
# inference rule of section 2.4: every latent whose "no object" probability is below one half
# makes a segment, however small it is and however much of its mask other latents took.
# Mask2Former's panoptic inference, `u.panoptic_inference`, is stricter: it keeps a latent only
# if its most likely class is not "no object" and that class's probability is above a score
# threshold, gives each pixel to the kept latent with the highest score × mask probability, and
# drops a segment that keeps less than a share (the overlap threshold) of its own mask, or that
# is smaller than a minimum area. No retraining: the same masks, read another way.
#
# Two references tell what a good PQ is here, and neither uses latents: split the final model's
# class map into connected components (`u.connected_component_instances`; two same-class objects
# that touch become one), and do the same to the *true* class map: the ceiling of that method,
# which says how often same-class objects touch in this data.
#
# `python benchmarks/mask_inference.py` (benchmarks/results/mask_inference.md) chose the three
# settings on the validation split, over three seeds; the test split only reports:
#
# | data | method | validation PQ per seed | validation mean | test PQ per seed | test mean |
# |---|---|---|---:|---|---:|
# | shapes | mask head, plain inference (u.predict_instances) | 0.312, 0.289, 0.207 | 0.269 | 0.266, 0.256, 0.172 | 0.232 |
# | shapes | mask head, panoptic inference (score>0.0, overlap>=0.8, area>=32) | 0.375, 0.352, 0.255 | 0.327 | 0.313, 0.307, 0.218 | 0.279 |
# | shapes | components of LatentSegNet()'s prediction | 0.656, 0.655, 0.664 | 0.658 | 0.661, 0.668, 0.676 | 0.668 |
# | shapes | components of the true class map (ceiling) | | | | 0.849 |
#
# The same rule and the same references on this notebook's models:

# %%
inference = dict(score_threshold=0.0, overlap_threshold=0.8, min_area=32)   # the benchmark's choice
strict_instances, strict_classes = u.panoptic_inference(test_classes, test_masks, **inference)
pq_strict = u.panoptic_quality(strict_instances, strict_classes, test_instances, test_labels)
pq_components = u.panoptic_quality(*u.connected_component_instances(u.predict(final, test_images)),
                                   test_instances, test_labels)
pq_ceiling = u.panoptic_quality(*u.connected_component_instances(test_labels), test_instances,
                                test_labels)
for name, result in (("mask head, plain inference", pq),
                     ("mask head, Mask2Former's inference", pq_strict),
                     ("components of LatentSegNet()'s class map", pq_components),
                     ("components of the true class map", pq_ceiling)):
    print(f"{name:<42} PQ {result['pq']:.3f}  (RQ {result['rq']:.3f}: {result['tp']} matched, "
          f"{result['fp']} false, {result['fn']} missed)")

# %% [markdown]
# How to read it. The stricter rule removes false segments and raises PQ a little; in the
# benchmark it does so on every seed, but the gap between the means is smaller than the spread
# over the seeds, so by the series' rule it is not yet a finding. Either way it stays far below
# the connected components of the final model's class map, a method that knows nothing about
# instances. So the mask head's shortfall is in its masks and classes, not in how they are read:
# the next things to try are training changes (coordinate channels, an auxiliary semantic loss,
# deep supervision, longer training: section 7's anchors), each measured on the validation split
# over seeds.
# The gap between the components of the true class map and a perfect 1 is what any method that
# cannot separate touching objects of one class loses on this data.

# %% [markdown]
# ## 5. Over three seeds: the committed benchmark
#
# One run is one seed's luck. `benchmarks/mask_experts.py` trains both models with the recipe of
# section 3 (by default 800 steps of batches of 16) on seeds 0, 1 and 2, scores them on the same
# 256 test images and checks the same four targets. The rows below are from
# `python benchmarks/mask_experts.py` (benchmarks/results/mask_experts.md), copied verbatim; a
# test checks every row against that file. Its strip plot, one dot per seed, is
# `benchmarks/results/mask_experts.png`, and the file ends with the four targets as PASS or MISS.
#
# | model | test mIoU per seed | mean | spread | PQ per seed | % objects claimed once | latents used | MI share, which shape |
# |---|---|---:|---:|---|---|---|---|
# | mask-head | 0.568, 0.553, 0.551 | 0.558 | 0.018 | 0.313, 0.313, 0.299 | 77.0, 72.5, 70.0 | 5, 5, 5 | 0.004, 0.008, 0.011 |
# | final | 0.929, 0.934, 0.932 | 0.932 | 0.005 |  |  |  | 0.019, 0.143, 0.067 |
#
# - **MISS** semantic test mIoU at least LatentSegNet()'s minus 0.03: 0.558 vs 0.932
# - **MISS** PQ at least 0.75: 0.308 (SQ 0.807, RQ 0.382)
# - **MISS** at least 90% of test objects claimed by exactly one latent: 73.2%
# - **MISS** MI share for which shape at least 0.3: 0.008 (LatentSegNet()'s main expert: 0.077)
#
# Read it as notebook 05 taught: a difference between the two models counts as a finding only
# when it has the same sign on every seed and is larger than both models' spread.
#
# Applied to the table: the mask head's mIoU is below the final model's on every seed, by far more
# than either model's spread, so its weaker class map is a finding. Its "which shape" share is
# below the final model's on every seed too, but the final model's own three values differ among
# themselves by more than the gap on two of the seeds, so that difference is not a finding; what
# holds on every seed is that both models are far below the target of 0.3. PQ, claims and latents
# used exist for the mask head only: on every seed PQ is far under 0.75, the claims are under 90%,
# and only five of the 16 latents claim any object. So the three seeds miss all four targets, as
# this run does. The table's seed-0 row does not repeat section 4's numbers, although both use
# seed 0, so read this notebook's run as one more draw: its mIoU and PQ are lower than on any of
# the three seeds, and its claims fall within their range.

# %% [markdown]
# ## 6. Explore it yourself: each latent's mask
#
# `latentseg_widgets.latent_masks` puts section 3.1 under a slider: pick a latent, and see its mask
# over six test images, each titled with the latent's most likely answer in that image and its
# probability. It needs a running notebook (Jupyter or Colab); in a static view of this page the
# cell shows nothing. If the widgets module is missing, the cell says so instead of failing.

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
# al., CVPR 2022) keeps MaskFormer's mask classification and changes how the queries read the
# image: each query's cross-attention is restricted to the foreground of its own mask from the
# previous layer, so a query that has found its segment keeps reading only that segment. Our
# latents read every pixel in every round; restricting them to their masks is the next step this
# head could take. Both papers configure 100 queries of width 256 (ours: 16 latents of width 64),
# and on real images they report 55.6 mIoU on ADE20K for MaskFormer, and 57.7 mIoU on ADE20K and
# 57.8 PQ on COCO for Mask2Former. Those say what the design reaches at scale on real data; they
# say nothing about our head on 64×64 synthetic images, which only this notebook's own
# measurements describe.
#
# **Slot Attention** (*Object-Centric Learning with Slot Attention*, Locatello et al., NeurIPS
# 2020) gets latents that own objects without any labels, by the softmax over the slots of section
# 1: the slots compete for each pixel in every forward pass. MaskFormer's masks do not compete in
# the forward pass (each is its own sigmoid); its competition is in the loss, through the
# one-to-one matching and "no object". Our head takes both: its masks compete through Slot
# Attention's softmax over the latents, and its loss is MaskFormer's. Where they compete differs:
# Slot Attention's slots compete as they read the image, while our latents still read it with a
# softmax over the pixels and compete only in the masks they write. For supervised set
# prediction the Slot Attention paper matches slots to objects with the same Hungarian algorithm,
# as DETR and MaskFormer do.
#
# **DeepSeekMoE** (*DeepSeekMoE: Towards Ultimate Expert Specialization in Mixture-of-Experts
# Language Models*, Dai et al., 2024) means by "fine-grained expert segmentation" splitting each
# feed-forward expert into m smaller ones and routing each token to m times as many, plus shared
# experts that are always on; at its 2B scale, m = 4: 64 experts, of which 1 shared and 7 routed
# are active per token. With 16 experts and 2 active there are 120 combinations; with 64 and 8,
# 4,426,165,368. Its experts specialise because a router sends each token to a few of them, with
# a load-balancing loss. Notebook 07 tried the split on our latents, without routing, and the
# latents did not become more class-specific. The mask head tries to specialise its latents by a
# different mechanism: not by routing tokens to experts but by giving each latent one segment to
# answer for, and telling the rest to answer "no object". Its specialisation is by segment;
# whether that also makes a latent prefer one shape is what section 4's "which shape" share
# measures, and in this run and on all three seeds of section 5 it does not.

# %% [markdown]
# ## Summary
#
# - Latents that read the pixels with a softmax over the pixels never have to divide the image:
#   what one reads does not change what another can read, so nothing stops them from reading the
#   same thing. A softmax over the latents (Slot Attention) makes them compete for each pixel;
#   MaskFormer makes them compete in training, by matching each true segment to exactly one
#   latent and teaching the rest to say "no object". The head built here does both.
# - The mask head, built and checked piece by piece against the module: each latent predicts a
#   class (or "no object") and a mask from a dot product with per-pixel embeddings; the masks
#   compete for each pixel through a softmax over the latents (Slot Attention's idea, which
#   MaskFormer does not use), and the class also reads the features under the latent's own mask;
#   the Hungarian matching on class probability, mask BCE and dice cost; the loss; semantic
#   inference (a class map, so the series' metrics apply) and instance inference (an object map,
#   which per-pixel classification cannot give).
# - Trained with the series' recipe, it is judged by what a segment-owning latent must do: keep
#   the class map's quality, find the objects (panoptic quality), give each object one latent
#   (claims), and carry what the object is (notebook 06's specialisation measure). Section 4 prints
#   whether this run meets each target, section 5 whether three seeds do, and section 3.3 shows
#   what the failures look like.
# - It misses all four targets, in this run and on all three seeds of the benchmark. The outputs
#   show where: one latent takes the background in each image shown, but the latent that holds
#   an object often answers the wrong shape, one latent often holds two objects (merges are this
#   run's commonest failure), and only a few latents claim objects, the same ones holding the
#   background in some images and objects in others.
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
# Section 4 measured specialisation in one number. Look behind it: write
# `shape_counts(claims, instances, labels, K)` that returns a `[K, 3]` tensor, how many circles,
# squares and triangles of the test set each latent claims (use `claims` from section 3.2; a
# claimed object's class is the label of any of its pixels). Do the busiest latents stick to one
# shape, or do they take any shape (in one region of the image, say)?

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
