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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/latentseg/latentseg/blob/v0.2/notebooks/09_finer_experts.ipynb)
#
# # 09 · Finer experts: DeepSeekMoE's fine-grained segmentation, tried on our latents
#
# The tutorial whose model this series rebuilds (notebook 01) speaks of "fine-grained expert
# segmentation". In DeepSeekMoE that phrase means splitting the experts of a mixture of experts into
# more, smaller ones. After this notebook you can say what that split does for routed experts, build
# the closest analogue our model allows (the same latent width split into more, narrower latents),
# measure whether it makes the latents more specialised, and build a routed mixture of experts with
# a shared expert to see what our latents lack.
#
# **Run time:** about three minutes on a quiet 2-core CPU (three short trainings in section 3, under
# a minute each); well under a minute on a GPU.
#
# **What you will learn**
# 1. DeepSeekMoE's two changes, fine-grained expert segmentation and shared experts, and which part
#    of them carries over to latents that every pixel reads.
# 2. A model whose latents are narrower than its tokens, checked against the module where the two
#    must agree.
# 3. Three splits of the same latent width, trained and measured: their accuracy, and how many
#    latents each class really uses.
# 4. A routed mixture of experts with a shared expert, DeepSeekMoE-style: the same expert parameters
#    and compute per token as a conventional one, and far more combinations of experts.
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
# Imports, the seed, and the device. Only section 3 trains, on `device`; everything else is small
# enough to run on the CPU. The numbers printed in this notebook were produced on a CPU.

# %%
import math

import matplotlib.pyplot as plt
from matplotlib.colors import TwoSlopeNorm
import torch
import torch.nn as nn
import torch.nn.functional as F
import latentseg_utils as u

torch.manual_seed(0)
device = u.get_device()
print(f"torch {torch.__version__}, device: {device}")
plt.rcParams["figure.dpi"] = 72   # small committed figures


# %% [markdown]
# ## 1. What DeepSeekMoE means by "fine-grained expert segmentation"
#
# In *DeepSeekMoE: Towards Ultimate Expert Specialization in Mixture-of-Experts Language Models*
# (Dai et al., 2024), "segmentation" means **splitting experts**, not images. A mixture-of-experts
# (MoE) layer replaces a transformer's feed-forward network (the MLP applied to each token) by $N_e$
# expert networks, and a router sends each token to its top $K_e$ (e for experts; everywhere else K
# and N are our latents and tokens). DeepSeekMoE makes two changes:
#
# - **Fine-grained expert segmentation:** split each expert into m smaller ones, each 1/m as wide,
#   and route each token to m times as many. That gives $mN_e$ experts with the top $mK_e$ active,
#   at the same expert parameters and the same compute per token. Far more combinations become
#   possible: with 16 experts and 2 active there are 120, with 64 and 8 active there are
#   4,426,165,368. So experts can specialise more finely.
# - **Shared experts:** $K_s$ experts are always on, to hold common knowledge, so the routed ones
#   need not each relearn it.
#
# At the 2B scale (m = 4: 1 shared and 63 routed experts, 7 routed ones active per token), the
# DeepSeekMoE paper (Dai et al., 2024) reports a Pile loss (language-model loss on the Pile text
# corpus) of 1.808 against 1.867 for GShard (Google's 2020 mixture-of-experts transformer) with the
# same total and active parameters, and performance comparable to a GShard with 1.5× the expert
# parameters and computation.
#
# **What our model can and cannot borrow.** The tutorial calls its latents "experts", but they are
# not experts in the MoE sense. A latent has no weights of its own, only a starting vector. Every
# pixel mixes *all* of them densely through a softmax, nothing is routed, and there is no
# load-balancing loss (a penalty that spreads the tokens evenly over the experts). The Perceiver
# paper's reading fits them better: cluster centres that the pixels are grouped around. What *does*
# carry over is the split itself: the **same total latent width, divided into more, smaller latents,
# at the same attention compute**. If that helps specialisation, each class of pixels should come to
# rely on a smaller share of the latents. Top-k routing, load balancing and the compute savings of
# sparsity do **not** carry over, so we make no claim about them.

# %% [markdown]
# ## 2. A model whose latents can be narrower than its tokens
#
# In `u.LatentSegNet` every latent has the tokens' width D = 64. To split K × 64 into (mK) × (64/m)
# we need latents of width d < D. `WidthBlock` is the series' `AttentionBlock` with the attention
# computed at width d. When latents read the pixels, the latents are the queries at width d, and the
# pixel tokens are projected down to d as keys and values. When pixels read the latents, each
# pixel's query is projected down to d, attends, and its answer is projected back up to D. The
# attention core, K·N scores in each direction, each a dot product of width d, costs the same for
# 16 × 64, 32 × 32 and 64 × 16. The rest needs fewer parameters as d shrinks: the projections, and
# the latents' own MLP, which works at width d (the parameter counts in section 4 show it).
#
# When d = D the projections are left out, and `WidthBlock` is `u.AttentionBlock`; the check
# below tests it.

# %%
class WidthBlock(nn.Module):
    """u.AttentionBlock with the attention at width attn_dim (pre-norm, residual, then an MLP).

    x [B, M, dim] reads context [B, N, context_dim] -> x [B, M, dim] (and weights [B, heads, M, N]).
    detach_query: the query carries no gradient back into x (LatentSegNet's detach_attention).
    """

    def __init__(self, dim, context_dim, attn_dim, num_heads, mlp_ratio=2, detach_query=False):
        super().__init__()
        self.detach_query = detach_query
        self.norm_x = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim)
        self.down = nn.Identity() if dim == attn_dim else nn.Linear(dim, attn_dim, bias=False)
        self.attention = nn.MultiheadAttention(attn_dim, num_heads, kdim=context_dim,
                                               vdim=context_dim, batch_first=True)
        self.up = nn.Identity() if dim == attn_dim else nn.Linear(attn_dim, dim, bias=False)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x, context, return_attention=False):
        context = self.norm_context(context)
        query = x.detach() if self.detach_query else x
        attended, weights = self.attention(self.down(self.norm_x(query)), context, context,
                                           need_weights=return_attention,
                                           average_attn_weights=False)
        x = x + self.up(attended)
        x = x + self.mlp(self.norm_mlp(x))
        return (x, weights) if return_attention else x


# %% [markdown]
# `FineGrainedLatentSegNet` is `u.LatentSegNet` with K latents of width d. If d equals the
# model's width it changes nothing. Otherwise it swaps the latents and the read and write blocks
# for `WidthBlock`s. Everything else is inherited: encoder, positions, the colour tokens, local
# loss, refinement and `forward`, which also detaches the tokens the latents read. The write blocks
# detach their queries (`detach_query=True`), as `u.LatentSegNet`'s do, so the attention sends no
# gradient into the convolutions here either.

# %%
class FineGrainedLatentSegNet(u.LatentSegNet):
    """u.LatentSegNet with num_latents latents of width latent_width (<= feature_dim)."""

    def __init__(self, num_latents=16, latent_width=64, num_heads=4, **options):
        super().__init__(num_latents=num_latents, num_heads=num_heads, **options)
        D, rounds = self.config["feature_dim"], self.config["rounds"]
        self.latent_width = latent_width
        if latent_width != D:
            self.latents = nn.Parameter(torch.randn(num_latents, latent_width) * 0.02)
            self.reads = nn.ModuleList(WidthBlock(latent_width, D, latent_width, num_heads)
                                       for _ in range(rounds))
            self.writes = nn.ModuleList(WidthBlock(D, latent_width, latent_width, num_heads,
                                                   detach_query=True)
                                        for _ in range(rounds))


# %% [markdown]
# The checks below, and the mixture of experts in section 5, need a batch of the series' shapes
# images (every pixel one of four classes: background, circle, square, triangle) and what the
# latents read. We catch the inputs of `reads[0]` in an untrained `u.LatentSegNet` with a forward
# hook: the starting latents and the pixel tokens (the encoder's tokens plus their positions plus a
# projection of each 4×4 block's mean colour, as notebook 05 built them). A hook sees exactly what
# the model passes, so nothing here is re-implemented.

# %% tags=["nbval-check-output"]
images, labels = u.make_shapes_batch(8, seed=7)
caught = {}

def catch(module, args, output):
    caught["latents"], caught["tokens"] = args[0].detach(), args[1].detach()

series = u.LatentSegNet().eval()
handle = series.reads[0].register_forward_hook(catch)
with torch.no_grad():
    series(images)
handle.remove()
latents_in, tokens = caught["latents"], caught["tokens"]       # [B, K, D], [B, N, D]
B, N, D = tokens.shape
print("pixel tokens", tuple(tokens.shape), "  latents", tuple(latents_in.shape))

# %% [markdown]
# This series' rule: where a notebook builds something the module also holds, it checks that the two
# agree. At d = D, `WidthBlock` must be `u.AttentionBlock`, and with 16 latents of width 64 (where
# it uses no `WidthBlock` at all) `FineGrainedLatentSegNet` must be `u.LatentSegNet()`: the same
# parameter names and shapes and, built from the same seed, the same weights and outputs.

# %% tags=["nbval-check-output"]
torch.manual_seed(0)
reference = u.LatentSegNet().eval()
torch.manual_seed(0)
mine = FineGrainedLatentSegNet(16, 64).eval()
same_weights = all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(),
                                                     mine.state_dict().values()))
same_names = list(reference.state_dict()) == list(mine.state_dict())
with torch.no_grad():
    same_output = torch.allclose(reference(images), mine(images), atol=1e-6)
print("16 x 64 is u.LatentSegNet(): same names", same_names, "| same weights", same_weights,
      "| same output", same_output, f"| {u.count_parameters(mine):,} parameters")
torch.manual_seed(0)
block = u.AttentionBlock(64, 4).eval()
torch.manual_seed(0)
width_block = WidthBlock(64, 64, 64, 4).eval()
block_names = list(block.state_dict()) == list(width_block.state_dict())
block_weights = all(torch.equal(a, b) for a, b in zip(block.state_dict().values(),
                                                      width_block.state_dict().values()))
with torch.no_grad():
    block_output = torch.allclose(block(latents_in, tokens), width_block(latents_in, tokens), atol=1e-6)
print("WidthBlock(64, 64, 64) is u.AttentionBlock(64): same names", block_names,
      "| same weights", block_weights, "| same output", block_output)

# %% [markdown]
# ## 3. Train three splits of the same latent width
#
# Three variants: 16 latents of width 64 (the series' final model), 32 × 32 and 64 × 16, so
# 16 × 64 = 32 × 32 = 64 × 16 = 1,024 latent numbers each. Every split keeps 4 heads, so narrower
# latents also mean narrower heads: each head attends at width 16 in 16 × 64, 8 in 32 × 32 and 4 in
# 64 × 16. The splits therefore change two things at once, the number of latents and the width of
# each head, and this experiment cannot tell their effects apart.
#
# Each is trained as in notebook 05: AdamW, learning rate 3e-3 with warm-up and cosine decay,
# batches of 16, seed 0, and scored on the fixed held-out set by mIoU (intersection over union of
# predicted and true pixels, per class, averaged over the classes). To fit three trainings into this
# notebook's CPU budget each gets **500 steps** instead of the final model's 800, so the scores need
# not reach the final model's. The cell after the table in section 4 prints that model's score, read
# from notebook 05's checkpoint when the file is there. The scores are for one seed each: read
# differences of a hundredth or two as noise, not as a ranking (set both seeds in `train_variant` to
# 1 to see the spread).

# %%
STEPS = 500
heldout = u.make_heldout_set()          # 256 images, the same on every call
variants = {}

def train_variant(num_latents, width):
    """Seed, build, train and score one split; store it in `variants`."""
    torch.manual_seed(0)
    model = FineGrainedLatentSegNet(num_latents, width)
    history = u.train(model, steps=STEPS, batch_size=16, lr=3e-3, seed=0, heldout=heldout,
                      eval_every=STEPS, device=device)
    name = f"{num_latents} x {width}"
    variants[name] = dict(model=model, history=history, scores=u.evaluate(model, *heldout))
    print(f"{name}: held-out mIoU {variants[name]['scores']['miou']:.3f} "
          f"after {history['steps_done']} steps, {history['seconds']:.0f} s")


# %% [markdown]
# 16 latents of width 64, the series' final model (one cell per training keeps each progress bar
# short; the saved progress bar may show 0/500: the line after it says the training ran):

# %% tags=["nbval-ignore-output"]
train_variant(16, 64)

# %% [markdown]
# 32 latents of width 32:

# %% tags=["nbval-ignore-output"]
train_variant(32, 32)

# %% [markdown]
# 64 latents of width 16:

# %% tags=["nbval-ignore-output"]
train_variant(64, 16)


# %% [markdown]
# ## 4. How specialised do the latents become?
#
# For each class we take the pixels of that class and average their weights over the latents (mean
# over the 4 heads). The result is a **usage distribution**, the share of that class's attention
# that each latent receives. The pixel weights live on the 16×16 token grid, so the labels are
# brought down to it by a majority vote in each 4×4 block. The entropy of that distribution,
# divided by its maximum $\ln K$, measures specialisation: 1 means the class spreads evenly over
# all K latents, and lower means it concentrates on a few. Its exponential, the **effective number
# of latents**, says how many latents the class really uses.
#
# We also measure each pixel's own mix: the mean normalised entropy of one pixel's weights, per head.
# Low values mean each pixel mostly reads a few latents, close to "activating" only those.

# %%
def token_labels(labels, stride=4):
    """Majority class of each stride x stride block: [B, H, W] -> [B, (H/stride)*(W/stride)]."""
    one_hot = F.one_hot(labels, len(u.CLASS_NAMES)).permute(0, 3, 1, 2).float()
    return F.avg_pool2d(one_hot, stride).argmax(1).flatten(1)

@torch.no_grad()
def expert_usage(model, images, labels, batch_size=64):
    """-> usage [C, K] (mean pixel->latent weight over the pixels of each class) and the mean
    normalised entropy of single pixels' weights."""
    model.eval()
    C = len(u.CLASS_NAMES)
    totals, counts, pixel_entropy = 0, torch.zeros(C), []
    for i in range(0, len(images), batch_size):
        _, att = model(images[i:i + batch_size].to(device), return_attention=True)
        w = att["pixel"].cpu()                                       # [B, heads, N, K]
        K = w.shape[-1]
        pixel_entropy.append(-(w * w.clamp_min(1e-12).log()).sum(-1).mean() / math.log(K))
        classes = F.one_hot(token_labels(labels[i:i + batch_size]), C).float()   # [B, N, C]
        totals = totals + torch.einsum("bnc,bnk->ck", classes, w.mean(1))
        counts += classes.sum((0, 1))
    return totals / counts.unsqueeze(1), float(torch.stack(pixel_entropy).mean())

def normalised_entropy(p):
    """Entropy of each row of p [..., K], divided by ln K."""
    return -(p * p.clamp_min(1e-12).log()).sum(-1) / math.log(p.shape[-1])


# %% [markdown]
# The table. The attention-core cost is counted by formula, in MACs (multiply-accumulates): K·N
# scores and K·N weighted sums, each of width d, in both directions, for the N = 256 tokens of one
# 64×64 image. Parameters are counted. Seconds are this machine's wall time for one training run,
# and noisy: they need not follow the parameter count (32 × 32 took longest here with fewer
# parameters than 16 × 64).

# %%
results = []
for name, v in variants.items():
    model = v["model"]
    usage, pixel_entropy = expert_usage(model, *heldout)
    class_entropy = normalised_entropy(usage)                         # [C]
    num_latents, width = model.config["num_latents"], model.latent_width
    results.append(dict(name=name, K=num_latents, d=width, params=u.count_parameters(model),
                        core_macs=4 * num_latents * 256 * width, miou=v["scores"]["miou"],
                        class_entropy=class_entropy,
                        effective=class_entropy.mul(math.log(num_latents)).exp(),
                        pixel_entropy=pixel_entropy, usage=usage, seconds=v["history"]["seconds"]))

print(f"{'latents x width':<16}{'params':>9}{'core MACs':>11}{'mIoU':>7}{'class H/lnK':>13}"
      f"{'eff. latents':>14}{'pixel H/lnK':>13}{'seconds':>9}")
for r in results:
    print(f"{r['name']:<16}{r['params']:>9,}{r['core_macs']:>11,}{r['miou']:>7.3f}"
          f"{float(r['class_entropy'].mean()):>13.3f}"
          f"{float(r['effective'].mean()):>8.1f} of {r['K']:<3}{r['pixel_entropy']:>13.3f}{r['seconds']:>9.1f}")
print("\nper class, class H/lnK:")
for r in results:
    print(f"  {r['name']:<10}" + "".join(f"{n} {float(h):.3f}   " for n, h in zip(u.CLASS_NAMES, r["class_entropy"])))

# %% [markdown]
# The figure. At the top is each variant's usage matrix: a row per class, a column per latent, with
# the latents sorted by the class that uses them most. Each entry is multiplied by K, so 1 (white)
# means the uniform share 1/K. Below are the specialisation per class and the held-out mIoU. In the
# lower-left chart, look for the one bar that falls clearly below the dashed line: the background of
# 16 × 64.

# %%
fig = plt.figure(figsize=(11, 7), layout="constrained")
grid = fig.add_gridspec(2, 3, height_ratios=(1, 1.25))
vmax = max(float((r["usage"] * r["K"]).max()) for r in results)
for i, r in enumerate(results):
    ax = fig.add_subplot(grid[0, i])
    relative = r["usage"] * r["K"]
    order = sorted(range(r["K"]), key=lambda k: (int(relative[:, k].argmax()), -float(relative[:, k].max())))
    image = ax.imshow(relative[:, order], cmap="PuOr_r", aspect="auto", interpolation="nearest",
                      norm=TwoSlopeNorm(vmin=0, vcenter=1, vmax=vmax))
    ax.set(title=f"{r['name']}: usage x K", xlabel=f"latent (sorted), K = {r['K']}",
           yticks=range(len(u.CLASS_NAMES)), yticklabels=u.CLASS_NAMES if i == 0 else [])
fig.colorbar(image, ax=fig.axes[:3], label="share x K (1 = uniform)", fraction=0.03, pad=0.02)

ax = fig.add_subplot(grid[1, :2])
width = 0.8 / len(u.CLASS_NAMES)
for c, name in enumerate(u.CLASS_NAMES):
    ax.bar([i + (c - 1.5) * width for i in range(len(results))],
           [float(r["class_entropy"][c]) for r in results], width, color=u.CLASS_COLORS[c],
           edgecolor="grey", label=name)
ax.axhline(1, ls="--", color="grey", lw=1, label="every latent used equally")
ax.set(xticks=range(len(results)), xticklabels=[r["name"] for r in results], ylim=(0, 1.25),
       xlabel="latents x width (same total width, same attention compute)",
       ylabel="entropy of class usage / ln K", title="Specialisation per class (lower = more specialised)")
ax.legend(fontsize=8, ncol=5, loc="upper center")
ax = fig.add_subplot(grid[1, 2])
ax.bar(range(len(results)), [r["miou"] for r in results], color=u.CLASS_COLORS[5])
for i, r in enumerate(results):
    ax.text(i, r["miou"] + 0.01, f"{r['miou']:.3f}", ha="center", fontsize=8)
ax.set(xticks=range(len(results)), xticklabels=[r["name"] for r in results], ylim=(0, 1.05),
       xlabel="latents x width", ylabel="held-out mIoU", title=f"Held-out mIoU after {STEPS} steps")
fig.suptitle("Fine-grained latents: same total width split into more, smaller latents")
plt.show()

# %% [markdown]
# The measured facts, printed from the table, and notebook 05's final model for comparison. Each row
# is one training run, so differences of a hundredth or two between the splits are noise and can
# flip on another machine or seed. The splits trained 500 steps against the final model's 800, so
# "below it" in the last line is about the training budget, not about the split.

# %%
mious = [r["miou"] for r in results]
print(f"every split above 0.8 held-out mIoU: {min(mious) > 0.8}; spread {max(mious) - min(mious):.3f}")
print("class usage entropy / ln K:  " + "  ->  ".join(
      f"{r['name']}: {float(r['class_entropy'].mean()):.3f}" for r in results))
print("effective latents per class: " + "  ->  ".join(
      f"{float(r['effective'].mean()):.1f} of {r['K']} ({float(r['effective'].mean()) / r['K']:.0%})"
      for r in results))
print("finer splits more class-specialised (entropy falls with every split):",
      all(float(a["class_entropy"].mean()) > float(b["class_entropy"].mean())
          for a, b in zip(results, results[1:])))
print("every class spreads over at least 80% of the latents in every split:",
      all(float((r["effective"] / r["K"]).min()) >= 0.8 for r in results))
try:   # notebook 05's final model, if its checkpoint lies next to the notebooks
    _, final_extra = u.load_checkpoint(u.checkpoint_path("latentsegnet.pt"))
    print(f"notebook 05's final model ({final_extra['steps']} steps), from its checkpoint: held-out "
          f"mIoU {final_extra['miou']:.3f}; every split here below it: {max(mious) < final_extra['miou']}")
except (FileNotFoundError, ValueError, KeyError):
    print("no usable checkpoint of notebook 05's final model at checkpoints/latentsegnet.pt "
          "(run notebook 05 to compare)")


# %% [markdown]
# **What the measurement says.** In this run, splitting the latent width more finely did **not** make
# the latents more specialised. If anything the numbers moved the other way: the class-usage entropy,
# averaged over the classes, rose from 0.969 (16 × 64) to 0.980 (32 × 32) and 0.987 (64 × 16), and
# each pixel's own entropy rose from 0.736 to 0.943. Each split was trained once, so that rise is one
# seed, not a finding; what the run does show is no sign of the specialisation we looked for.
#
# In every split most classes spread their attention almost evenly over nearly all the latents: the
# effective number of latents per class averages 92% of K in 16 × 64 and 95% in 64 × 16. The
# exception is the background in 16 × 64 (0.906 in the per-class list), which uses only about three
# quarters of the latents; that is why the check "every class spreads over at least 80% of the
# latents" prints False. In the heat maps most entries are pale (a share close to 1/K). In this run
# each panel has one exception: in 16 × 64 the background row leans strongly on a few latents and
# avoids several others; in 32 × 32 one latent (the leftmost column) is favoured by every class, a
# shared latent; in 64 × 16 a group of latents is favoured by the shapes together, the circle most
# of all. None tells one shape from another. Notebook 06 found the same weak, hardly shape-wise
# specialisation in the fully trained model. The held-out mIoU of the three splits lies within
# 0.005, one seed each: no measurable difference.
#
# That is what the differences listed in section 1 predict. DeepSeekMoE's experts specialise because
# a router sends each token to only a few of them, so each expert's own weights are trained only on
# its tokens. Our latents have no weights of their own, every pixel reads all of them, and no loss
# asks them to share out the work. The data may add a reason: notebook 05's ablation found, over
# three seeds, that on this data attention adds nothing measurable, which leaves the latents little
# reason to specialise. Fine-grained segmentation is a property of *routed* experts. A dense softmax
# over latents is not a mixture of experts, and splitting it more finely did not bring that benefit
# here.

# %% [markdown]
# ## 5. A routed mixture of experts with a shared expert, DeepSeekMoE-style
#
# For contrast, here is what real experts look like: feed-forward networks with their own weights,
# a router (a linear layer, softmax, top-k) that picks a few per token, and shared experts that
# every token uses. DeepSeek's code fuses the shared experts into one wider MLP, and so do we. We
# build three layers with the same total expert parameters and the same compute per token:
#
# - **conventional**: 16 experts of width 32, top 2;
# - **fine-grained** (m = 4): 64 experts of width 8, top 8;
# - **DeepSeekMoE**: 1 shared + 63 routed experts of width 8, top 7.
#
# We run them on the pixel tokens caught in section 2 (untrained, so this checks the bookkeeping and
# learns nothing), count the parameters each token actually used, and count the combinations.
# Training such a layer in our pixel path, with the load-balancing loss it needs, is beyond this
# notebook's budget.

# %%
class Expert(nn.Module):
    """A feed-forward expert: dim -> hidden -> dim (GELU, no biases)."""
    def __init__(self, dim, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.GELU(),
                                 nn.Linear(hidden, dim, bias=False))

    def forward(self, x):
        return self.net(x)


class MoE(nn.Module):
    """Routed experts (top_k per token, softmax gate) plus always-on shared experts.

    x [T, dim] -> (y [T, dim], chosen expert ids [T, top_k]).
    """

    def __init__(self, dim, hidden, num_routed, top_k, num_shared=0):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(dim, num_routed, bias=False)
        self.experts = nn.ModuleList(Expert(dim, hidden) for _ in range(num_routed))
        self.shared = Expert(dim, hidden * num_shared) if num_shared else None   # fused

    def forward(self, x):
        weights, chosen = self.gate(x).softmax(-1).topk(self.top_k, dim=-1)   # [T, top_k]
        y = self.shared(x) if self.shared is not None else torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = (chosen == e).nonzero(as_tuple=True)
            if len(token):
                y = y.index_add(0, token, weights[token, slot, None] * expert(x[token]))
        return y, chosen


# %% [markdown]
# The table. "Active per token" is measured: for every token, the parameters of the experts it was
# routed to, plus the shared expert.

# %% tags=["nbval-check-output"]
moe_tokens = tokens.reshape(-1, D)                                   # 8 images x 256 tokens
configs = [("conventional", dict(hidden=32, num_routed=16, top_k=2, num_shared=0)),
           ("fine-grained, m = 4", dict(hidden=8, num_routed=64, top_k=8, num_shared=0)),
           ("DeepSeekMoE, 1 shared", dict(hidden=8, num_routed=63, top_k=7, num_shared=1))]
print(f"{'layer':<24}{'experts':>16}{'width':>6}{'expert params':>15}{'gate':>6}"
      f"{'active/token':>14}{'combinations':>16}")
for name, cfg in configs:
    torch.manual_seed(0)
    moe = MoE(D, **cfg)
    with torch.no_grad():
        y, chosen = moe(moe_tokens)
    per_expert = u.count_parameters(moe.experts[0])
    shared = u.count_parameters(moe.shared) if moe.shared is not None else 0
    active = {int(n) * per_expert + shared for n in (chosen.unsqueeze(-1) ==
              torch.arange(cfg["num_routed"])).any(1).sum(-1)}          # distinct experts per token
    expert_params = per_expert * cfg["num_routed"] + shared
    experts = f"{cfg['num_shared']} + {cfg['num_routed']} (top {cfg['top_k']})"
    print(f"{name:<24}{experts:>16}{cfg['hidden']:>6}{expert_params:>15,}{u.count_parameters(moe.gate):>6,}"
          f"{', '.join(f'{a:,}' for a in sorted(active)):>14}{math.comb(cfg['num_routed'], cfg['top_k']):>16,}")
print("output shape", tuple(y.shape), "= input shape", tuple(moe_tokens.shape))


# %% [markdown]
# All three layers have the same expert parameters and the same parameters active per token. Yet the
# fine-grained router can choose among 4,426,165,368 combinations of experts, and the DeepSeekMoE
# layer among 553,270,671 (plus its shared expert), against 120 for the conventional one. That is the
# DeepSeekMoE argument in one table. Compare it with our latents: there, every pixel spreads its
# weight over many of the K latents at once (the "pixel H/lnK" column of section 4 runs from 0.736 to
# 0.943, far from the 0 of a pixel that reads a single latent), and none of them holds an expert
# network.

# %% [markdown]
# ## 6. Reading list
#
# - *Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts Layer* (Shazeer et
#   al., 2017): the routed MoE layer.
# - *GShard: Scaling Giant Models with Conditional Computation and Automatic Sharding* (Lepikhin et
#   al., 2020): the baseline DeepSeekMoE compares against.
# - *DeepSeekMoE: Towards Ultimate Expert Specialization in Mixture-of-Experts Language Models*
#   (Dai et al., 2024): fine-grained expert segmentation and shared experts.
# - Code: deepseek-ai/DeepSeek-V3, `inference/model.py`, classes `Gate`, `Expert`, `MoE`.
#
# ## Summary
#
# - DeepSeekMoE splits experts into more, smaller routed experts, plus shared ones, at equal expert
#   parameters and compute per token. The router can then choose among far more combinations of
#   experts (section 5 counts them), so each expert can specialise more finely.
# - Our analogue splits the same latent width into more, narrower latents (and, with 4 heads kept,
#   narrower heads) at equal attention compute. Measured here, with one seed per split, it made no
#   measurable difference to accuracy and did not make the latents more class-specific: most classes
#   still spread over nearly all of them, and the one that leans most on a few latents, the
#   background, does so in the coarsest split, 16 × 64.
# - Routing, sparsity and load balancing, which make DeepSeekMoE's experts specialise, have no
#   counterpart in our model: its latents have no weights of their own and every pixel reads all of
#   them. Notebook 08 tries another way to make latents specialise: each latent answers for one
#   segment.
#
# ## Exercises
#
# ### Exercise 1: the effective number of latents
#
# Section 4 reads specialisation off the **effective number of latents** of each class: the
# exponential of the entropy (natural logarithm) of the class's usage distribution. Write
# `effective_latents(usage)`, which takes a usage matrix `[C, K]` whose rows sum to 1 and returns
# the effective number of latents of each class, `[C]`. The check first tries three rows whose
# answer you can tell by eye, then the three trained splits against the table of section 4.

# %%
def check_effective_latents(fn):
    rows = {"spread evenly over 8 latents": (torch.full((1, 8), 1 / 8), 8.0),
            "all on one latent": (F.one_hot(torch.tensor([3]), 8).float(), 1.0),
            "evenly over 4 of 8 latents": (torch.tensor([[0.25] * 4 + [0.0] * 4]), 4.0)}
    for what, (usage, expected) in rows.items():
        got = fn(usage)
        assert tuple(got.shape) == (1,), f"expected one number per class, got shape {tuple(got.shape)}"
        assert abs(float(got[0]) - expected) < 1e-4, f"{what}: expected {expected}, got {float(got[0]):.4f}"
    for r in results:
        assert torch.allclose(fn(r["usage"]), r["effective"], atol=1e-3), \
            f"{r['name']}: differs from the table's effective latents"
    print("correct: uniform over K gives K, one latent gives 1, and the three splits match the table")


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def effective_latents(usage):
    entropy = -(usage * usage.clamp_min(1e-12).log()).sum(-1)    # 0 * log 0 counts as 0
    return entropy.exp()

check_effective_latents(effective_latents)


# %% [markdown]
# ### Exercise 2: how many combinations at the same compute?
#
# Start from 16 experts with the top 2 active and split every expert into m. Write
# `n_combinations(m)`, the number of ways a token can choose its active experts, for m = 1 … 8.
# Then find the smallest m that gives more than a trillion ($10^{12}$).

# %%
def check_combinations(fn, smallest_m):
    for m, expected in ((1, 120), (4, 4_426_165_368)):
        assert fn(m) == expected, f"m={m}: expected {expected:,}, got {fn(m):,}"
    assert all(fn(m) == math.comb(16 * m, 2 * m) for m in range(1, 9)), "check m = 2, 3, 5, ..."
    assert fn(smallest_m) > 10 ** 12 >= fn(smallest_m - 1), f"m={smallest_m} is not the smallest"
    print(f"correct: m = {smallest_m} gives {fn(smallest_m):,} combinations")


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def n_combinations(m):
    return math.comb(16 * m, 2 * m)     # choose the 2m active among 16m experts

smallest = next(m for m in range(1, 9) if n_combinations(m) > 10 ** 12)
check_combinations(n_combinations, smallest)
