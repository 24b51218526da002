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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/latentseg/latentseg/blob/v0.2/notebooks/07_beyond.ipynb)
#
# # 07 · Multi-head Latent Attention: a different idea under a similar name
#
# The tutorial calls its attention "multi-head latent attention", and DeepSeek-V2 gave that name to
# something else. After this notebook you can build DeepSeek-V2's Multi-head Latent Attention (MLA)
# from the paper's equations, check it, count what its cache saves, and say how it differs from the
# series' latents.
#
# **Run time:** under 10 seconds on a quiet 2-core CPU. Nothing is trained.
#
# **What you will learn**
# 1. What a language model's KV cache is, and what DeepSeek-V2 calls a "latent": one compressed
#    vector per token.
# 2. A tiny MLA layer built piece by piece: the latent, the decoupled rotary part, the cache and
#    the absorb trick.
# 3. Three checks: without its rotary part MLA is ordinary multi-head attention with low-rank
#    projections, the absorb trick computes the same attention, and generating token by token
#    with the latent cache gives the same outputs.
# 4. What it saves: the numbers cached per token for MHA, GQA, MQA and MLA, for our tiny layer and
#    at DeepSeek-V2's sizes.
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
# Imports, the seed, and the device. The layers here are tiny, so nothing is moved to `device`:
# everything runs on the CPU. The device is printed, with the torch version, only so that a bug
# report says what you ran.

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
import latentseg_utils as u

torch.manual_seed(0)
device = u.get_device()
print(f"torch {torch.__version__}, device available: {device} (unused: this notebook runs on the CPU)")
plt.rcParams["figure.dpi"] = 72   # small figures


# %% [markdown]
# ## 1. Two kinds of "latent"
#
# Where the tutorial's own latents come from is notebook 03's section 6, and notebook 09 takes up
# another phrase the tutorial borrows from DeepSeek. This notebook leaves images for language
# models, where the name "multi-head latent attention" comes from. A language model generates text
# one token at a time, and each new token's query attends to the keys and values of all the tokens
# before it. In causal attention those keys and values never change once computed, since an
# earlier token never sees a later one. So the model stores them instead of recomputing them at
# every step: the **KV cache**. It grows by one entry per token per layer, and its size is what the
# paper below sets out to cut. There, a "latent" is a compressed copy of *one token's* keys and
# values, one latent per token. Our latents are something else, as the table further down shows.
#
# *DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts Language Model*
# (DeepSeek-AI, 2024, section 2.1) introduces **Multi-head Latent Attention (MLA)**. In standard
# multi-head attention (MHA) the cache holds a key and a value of width $d_h$ for each of the $n_h$
# heads: $2 n_h d_h$ numbers per token per layer. MLA shrinks the cache. In the paper's names, D
# marks a down-projection, U an up-projection, C what is computed from the compressed latent and
# R the rotary part:
#
# - Each token's hidden state $h_t$ is compressed to one **latent vector** $c^{KV}_t = W^{DKV} h_t$ of
#   small width $d_c$. Keys and values of every head are **up-projected** from it:
#   $k^C_t = W^{UK} c^{KV}_t$, $v^C_t = W^{UV} c^{KV}_t$. Queries are compressed and expanded the same way
#   ($W^{DQ}$, $W^{UQ}$).
# - Positions enter through rotary position embedding (RoPE, built in section 2), which rotates
#   queries and keys by angles that grow with the position. MLA does not rotate $k^C$; positions get
#   a **decoupled rotary part** instead: a small query part per head ($W^{QR}$) and one small key
#   part $k^R_t = \mathrm{RoPE}(W^{KR} h_t)$ of width $d^R_h$, **shared by all heads**.
# - A head's score is $(q^C \cdot k^C + q^R \cdot k^R) / \sqrt{d_h + d^R_h}$, then the usual causal
#   softmax and weighted sum of values, and an output projection $W^O$.
# - At inference only $c^{KV}_t$ and $k^R_t$ are cached: $d_c + d^R_h$ numbers per token. The
#   **absorb** trick (section 2 shows why it works, and why it needs the decoupled rotary part)
#   folds $W^{UK}$ into the query side and $W^{UV}$ into $W^O$, so the full keys and values are
#   never built.
#
# How this differs from the tutorial's "latent attention":
#
# | | the series' latents (notebooks 02-03) | DeepSeek-V2 MLA |
# |---|---|---|
# | what a latent is | one of K learned vectors, shared by all images | one compressed vector **per token** |
# | attention | cross-attention: K latents ↔ N pixels | ordinary causal self-attention: still one key per token |
# | what it saves | compute: K·N scores instead of N² | memory: the inference cache |
# | up-projections, absorb trick, rotary part | none | all three |

# %% [markdown]
# ## 2. A tiny MLA layer, built piece by piece
#
# We build a rotary embedding, a standard MHA layer, and a tiny MLA layer with $d_{model}=64$,
# $n_h=4$ heads of $d_h=16$, $d_c=16$, a query latent of 32 and a rotary part $d^R_h=8$.
#
# Rotary position embedding (*RoFormer*, Su et al., 2021) rotates pairs of channels by an angle
# that grows with the position. The dot product of a query rotated at position i and a key rotated
# at position j then depends on the signed offset i − j alone, not on i and j themselves. The cell
# checks both halves: positions (3, 1) and (12, 10) have the same offset and give the same score;
# (1, 3) has the opposite offset and gives a different score. So the score can tell how far back a
# key lies and in which direction.

# %%
def rotary(x, positions):
    """Rotate channel pairs (x[2i], x[2i+1]) of x [..., T, width] by position * 10000^(-2i/width).

    positions [T] gives each row's position; a single position (a 0-d tensor) goes with x [width].
    """
    half = x.shape[-1] // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
    angles = positions.float().unsqueeze(-1) * freqs       # [T, half] ([half] for one position)
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)

q, k = torch.randn(8), torch.randn(8)
def at(i, j):
    return float(rotary(q, torch.tensor(i)) @ rotary(k, torch.tensor(j)))


print(f"score at positions (3, 1): {at(3, 1):.4f}; at (12, 10): {at(12, 10):.4f} (the same offset, i - j = 2)")
print(f"score at positions (1, 3): {at(1, 3):.4f} (offset i - j = -2: a different score)")


# %% [markdown]
# Now the two layers. First the standard one: PyTorch's `nn.MultiheadAttention`, the layer the
# series' `AttentionBlock` uses, here without biases (as in DeepSeek's code). A language model's
# attention is causal: the token at position t sees only the tokens up to t. `causal_mask` marks
# what each query may not see. With a cache, the T new tokens are the last T of the S tokens
# attended to: the mask is T × S, and `tril(S - T)` shifts the visible lower triangle right by
# S − T, so that new token t sees keys 0 to S − T + t. The cell prints it for 3 new tokens after 2
# cached ones (1 = hidden).

# %%
def causal_mask(T, S):
    """[T, S] True where query t may NOT see key s (the last T of S positions are the queries)."""
    return ~torch.ones(T, S, dtype=torch.bool).tril(S - T)

def standard_mha(d_model=64, n_heads=4):
    return nn.MultiheadAttention(d_model, n_heads, bias=False, batch_first=True)

print(causal_mask(3, 5).int().numpy())


# %% [markdown]
# **The MLA layer** is one class, in the next cell. Its methods come in five groups, in this order,
# each under a comment with its name:
#
# 1. **The latent.** The weights carry the names of the DeepSeek-V2 paper. `W_DKV` compresses each
#    token to its latent $c^{KV}$ (width 64 to $d_c$ = 16), and `W_UK` and `W_UV` expand that latent
#    into the keys and the values of all 4 heads (16 to 64 each). Queries get a compression of their
#    own: `W_DQ` compresses each token to $c^Q$ (64 to 32) and `W_UQ` expands it into the 4 heads'
#    queries $q^C$. $c^Q$ is never cached; the DeepSeek-V2 paper uses it to save activation memory in
#    training. DeepSeek's code also normalises the latents (RMSNorm). We leave that out, so that
#    without its rotary part (`d_rope=0`) the layer is exactly an `nn.MultiheadAttention` whose
#    projections are products of MLA's matrices, which check 1 tests.
#    `explicit_scores` and `explicit_values` use the latent the plain way: up-project every token's
#    latent into all the heads' keys and score them, and into all the heads' values and weight them.
# 2. **The decoupled rotary part.** Positions travel in a small part of their own (item 4 says
#    why). Each token gets one rotary key $k^R = \mathrm{RoPE}(W^{KR} h)$ of width $d^R_h$ = 8,
#    shared by all heads (`rotary_key`). Each head's query gets a rotary part
#    $q^R = \mathrm{RoPE}(W^{QR} c^Q)$ of the same width. Their dot product is added to the content
#    score (`rotary_scores`), so positions enter the score only through the offset between the
#    query's and the key's positions, as the cell with `rotary` showed.
# 3. **The cache.** `compress` computes the new tokens' latents $c^{KV}$ and rotary keys $k^R$,
#    all that a token leaves for later ones. Given a cache (a dict), it appends them and returns
#    everything cached so far, so that the new tokens attend over all S tokens seen.
# 4. **The absorb trick.** The explicit methods rebuild every cached token's keys and values for
#    every head at every step, the very tensors the cache avoids storing. Both steps are linear,
#    so they can be moved. For scores, $q^C \cdot (W^{UK}_h c^{KV}_s) = ((W^{UK}_h)^\top q^C) \cdot c^{KV}_s$:
#    multiply each head's query by its block of $W^{UK}$ once, and score it against the latents
#    themselves (`absorbed_scores`). For values, weight the latents first and up-project each
#    head's weighted sum with $W^{UV}$ afterwards, once per query instead of once per cached token
#    (`absorbed_values`). Had RoPE rotated $k^C$, a rotation that changes with the key's position
#    would sit between the query and $W^{UK}_h$, and the matrix folded into the query would differ
#    for every cached token: hence the decoupled rotary part.
# 5. **The whole layer.** `latent_scores` is one attention step: compress the new tokens (and
#    append them to the cache), compute the queries, score by either route, add the rotary part,
#    then scale, mask and softmax. `forward` mixes the values by the matching route and applies
#    $W^O$. `latent_outputs` stops at the absorb route's weighted sums of latents (exercise 2 uses
#    it).

# %%
class MultiHeadLatentAttention(nn.Module):
    """DeepSeek-V2's MLA, small. x [B, T, d_model] -> [B, T, d_model], causal.

    cache (a dict, optional) keeps per token only c_kv [B, S, d_c] and k_rope [B, S, d_rope].
    """

    def __init__(self, d_model=64, n_heads=4, d_head=16, d_c=16, d_c_q=32, d_rope=8):
        super().__init__()
        self.n_h, self.d_h, self.d_c, self.d_r = n_heads, d_head, d_c, d_rope
        self.W_DQ = nn.Linear(d_model, d_c_q, bias=False)            # query down-projection
        self.W_UQ = nn.Linear(d_c_q, n_heads * d_head, bias=False)   # query up-projection
        self.W_DKV = nn.Linear(d_model, d_c, bias=False)             # the shared KV latent
        self.W_UK = nn.Linear(d_c, n_heads * d_head, bias=False)     # latent -> keys
        self.W_UV = nn.Linear(d_c, n_heads * d_head, bias=False)     # latent -> values
        if d_rope:
            self.W_QR = nn.Linear(d_c_q, n_heads * d_rope, bias=False)   # rotary query per head
            self.W_KR = nn.Linear(d_model, d_rope, bias=False)           # one rotary key, shared
        self.W_O = nn.Linear(n_heads * d_head, d_model, bias=False)
        self.scale = 1 / math.sqrt(d_head + d_rope)

    # 1. The latent, used the plain way: every head's keys and values built from it.
    def explicit_scores(self, q_c, c_kv):
        """Queries [B, T, n_h, d_h] . keys up-projected from the latents c_kv [B, S, d_c] -> [B, n_h, T, S]."""
        B, S, _ = c_kv.shape
        k_c = self.W_UK(c_kv).view(B, S, self.n_h, self.d_h)          # every head's keys, built
        return torch.einsum("bthd,bshd->bhts", q_c, k_c)

    def explicit_values(self, weights, c_kv):
        """Weights [B, n_h, T, S] x values up-projected from c_kv -> [B, T, n_h, d_h]."""
        v = self.W_UV(c_kv).view(c_kv.shape[0], -1, self.n_h, self.d_h)   # every head's values
        return torch.einsum("bhts,bshd->bthd", weights, v)

    # 2. The decoupled rotary part: one rotary key per token, shared by all heads.
    def rotary_key(self, x, positions):
        """Each token's rotary key, shared by all heads: RoPE(W_KR x) [B, T, d_rope]."""
        return rotary(self.W_KR(x), positions)

    def rotary_scores(self, c_q, k_r, positions):
        """Each head's rotary query (from c_q [B, T, d_c_q]) . the rotary keys k_r [B, S, d_rope] -> [B, n_h, T, S]."""
        B, T, _ = c_q.shape
        q_r = rotary(self.W_QR(c_q).view(B, T, self.n_h, self.d_r).transpose(1, 2), positions)
        return torch.einsum("bhtr,bsr->bhts", q_r, k_r)

    # 3. The cache: per token only c_kv and k_rope, appended as tokens arrive.
    def compress(self, x, positions, cache=None):
        """The new tokens' c_kv [B, T, d_c] and k_rope [B, T, d_rope] (None without a rotary part).

        With a cache, append them to it and return those of all S cached tokens instead.
        """
        c_kv = self.W_DKV(x)
        k_r = self.rotary_key(x, positions) if self.d_r else None
        if cache is not None:                                            # append, then use all
            cache["c_kv"] = torch.cat([cache["c_kv"], c_kv], 1) if "c_kv" in cache else c_kv
            c_kv = cache["c_kv"]
            if self.d_r:
                cache["k_rope"] = torch.cat([cache["k_rope"], k_r], 1) if "k_rope" in cache else k_r
                k_r = cache["k_rope"]
        return c_kv, k_r

    # 4. The absorb trick: W_UK folded into the queries, W_UV applied after the weighted sum.
    def absorbed_scores(self, q_c, c_kv):
        """Queries [B, T, n_h, d_h] with W_UK folded in . the latents c_kv [B, S, d_c] -> [B, n_h, T, S]."""
        W_UK = self.W_UK.weight.view(self.n_h, self.d_h, self.d_c)      # each head's block
        q_latent = torch.einsum("bthd,hdc->bthc", q_c, W_UK)
        return torch.einsum("bthc,bsc->bhts", q_latent, c_kv)

    def absorbed_values(self, latent):
        """Each head's weighted sum of latents [B, T, n_h, d_c], up-projected by W_UV -> [B, T, n_h, d_h]."""
        return torch.einsum("bthc,hdc->bthd", latent, self.W_UV.weight.view(self.n_h, self.d_h, self.d_c))

    # 5. The whole layer: one attention step, then the values by the matching route, then W_O.
    def latent_scores(self, x, cache=None, start=0, absorb=False):
        """-> attention weights [B, n_h, T, S] and the latents c_kv [B, S, d_c] of the S tokens seen."""
        B, T, _ = x.shape
        positions = torch.arange(start, start + T)                       # the new tokens' positions
        c_kv, k_r = self.compress(x, positions, cache)
        S = c_kv.shape[1]
        c_q = self.W_DQ(x)
        q_c = self.W_UQ(c_q).view(B, T, self.n_h, self.d_h)
        scores = self.absorbed_scores(q_c, c_kv) if absorb else self.explicit_scores(q_c, c_kv)
        if self.d_r:
            scores = scores + self.rotary_scores(c_q, k_r, positions)
        scores = (scores * self.scale).masked_fill(causal_mask(T, S), float("-inf"))
        return scores.softmax(-1), c_kv

    def latent_outputs(self, x, **kwargs):
        """Absorb mode up to the values: each head's weighted sum of latents [B, T, n_h, d_c]."""
        weights, c_kv = self.latent_scores(x, absorb=True, **kwargs)
        return torch.einsum("bhts,bsc->bthc", weights, c_kv)

    def forward(self, x, cache=None, start=0, absorb=False):
        """x [B, T, d_model] (the tokens at positions start, ..., start + T - 1) -> [B, T, d_model]."""
        B, T, _ = x.shape
        if absorb:   # values up-projected once, after the weighted sum
            out = self.absorbed_values(self.latent_outputs(x, cache=cache, start=start))
        else:
            weights, c_kv = self.latent_scores(x, cache=cache, start=start)
            out = self.explicit_values(weights, c_kv)
        return self.W_O(out.reshape(B, T, -1))


# %% [markdown]
# ## 3. Three checks
#
# ### Check 1: without its rotary part, MLA *is* multi-head attention with low-rank projections
#
# Write out one head's score without the rotary part:
# $q^C\cdot k^C = (W^{UQ} W^{DQ} h_t)\cdot(W^{UK} W^{DKV} h_s)$. That is the score of an ordinary
# MHA whose key projection is the product $W^K = W^{UK} W^{DKV}$, and likewise for queries and
# values. So we build an MLA without the rotary part, load the three products into
# `nn.MultiheadAttention`, and compare the outputs. The key and value products have rank at most
# $d_c = 16$ (the query product at most 32, the width of $c^Q$), where the $W^K$ of a new
# `standard_mha()` (not the one loaded here) has full rank 64. All heads' keys of a token are
# computed from the same 16 numbers, its latent, and so are its values. That is the price of the
# small cache.

# %% tags=["nbval-check-output"]
torch.manual_seed(0)
x = torch.randn(2, 10, 64)                                  # 2 sequences of 10 tokens
mla_plain = MultiHeadLatentAttention(d_rope=0)
mha = standard_mha()
with torch.no_grad():
    W_Q = mla_plain.W_UQ.weight @ mla_plain.W_DQ.weight     # [64, 64]
    W_K = mla_plain.W_UK.weight @ mla_plain.W_DKV.weight
    W_V = mla_plain.W_UV.weight @ mla_plain.W_DKV.weight
    mha.in_proj_weight.copy_(torch.cat([W_Q, W_K, W_V]))
    mha.out_proj.weight.copy_(mla_plain.W_O.weight)
    mha_out, _ = mha(x, x, x, attn_mask=causal_mask(10, 10), need_weights=False)
    mla_out = mla_plain(x)
print("MLA without rotary part == nn.MultiheadAttention with the product weights:",
      torch.allclose(mla_out, mha_out, atol=1e-5))
rank_k, rank_v, rank_std = (int(torch.linalg.matrix_rank(W))
                            for W in (W_K, W_V, standard_mha().in_proj_weight[64:128]))
print(f"rank of MLA's key projection W_UK @ W_DKV: {rank_k}, of its value projection W_UV @ W_DKV: "
      f"{rank_v}; of a new standard MHA's W_K: {rank_std}")

# %% [markdown]
# ### Check 2: the absorb trick computes the same attention
#
# Now the full layer, with its rotary part. Scoring against the latents themselves (absorb) and
# scoring against explicitly up-projected keys must give the same weights and the same output, and
# the weights must be causal: zero on every later token.

# %% tags=["nbval-check-output"]
torch.manual_seed(0)
mla = MultiHeadLatentAttention()
with torch.no_grad():
    w_explicit, _ = mla.latent_scores(x)
    w_absorb, _ = mla.latent_scores(x, absorb=True)
    out_explicit, out_absorb = mla(x), mla(x, absorb=True)
print("attention weights, absorb == explicit keys:", torch.allclose(w_absorb, w_explicit, atol=1e-5))
print("outputs, absorb == explicit:               ", torch.allclose(out_absorb, out_explicit, atol=1e-5))
print("weights are causal (no token sees a later one):", bool((w_absorb.triu(1) == 0).all()))

# %% [markdown]
# ### Check 3: generating with a cache that holds only $c^{KV}$ and $k^R$
#
# A language model generates one token at a time. We feed the 10 tokens one by one, keep only
# what MLA caches, and compare with the full pass. Then we measure the cache: numbers stored per
# token, read off the cache tensors themselves. For the standard layer we measure the keys and
# values that a fresh `standard_mha()` would have to keep (the `mha` of check 1 holds MLA's products).

# %% tags=["nbval-check-output"]
cache = {}
with torch.no_grad():
    steps = [mla(x[:, t:t + 1], cache=cache, start=t, absorb=True) for t in range(10)]
    mha_fresh = standard_mha()                               # its own weights
    k_std = F.linear(x, mha_fresh.in_proj_weight[64:128])    # what MHA must cache: keys ...
    v_std = F.linear(x, mha_fresh.in_proj_weight[128:])      # ... and values, all heads
print("token-by-token with the latent cache == full pass:",
      torch.allclose(torch.cat(steps, 1), out_explicit, atol=1e-5))
print("cache tensors:", {name: tuple(t.shape) for name, t in cache.items()})
tokens_cached = x.shape[0] * x.shape[1]
mla_cache = sum(t.numel() for t in cache.values()) // tokens_cached
mha_cache = (k_std.numel() + v_std.numel()) // tokens_cached
print(f"numbers cached per token: MHA {mha_cache}, MLA {mla_cache}")


# %% [markdown]
# ## 4. What it saves
#
# The table gives the cache per token per layer, in numbers, by the formulas of section 2.1 of the
# DeepSeek-V2 paper: $2 n_h d_h$ for MHA and $d_c + d^R_h$ for MLA. Grouped-query attention (GQA,
# $n_g$ groups of heads sharing one key and value) and multi-query attention (MQA, one key and
# value shared by all heads) are included for comparison. Four rows are at our tiny sizes; for MHA
# and MLA the cache is also measured (check 3) and the parameters counted from the modules. Two
# rows are at DeepSeek-V2's own sizes ($n_h = 128$, $d_h = 128$, $d_c = 512$, $d^R_h = 64$). "vs
# MHA" divides each cache by that of the MHA row at the same sizes.

# %% tags=["nbval-check-output"]
def cache_per_token(kind, n_h, d_h, d_c=None, d_rope=None, n_g=None):
    """Numbers cached per token per layer (DeepSeek-V2, section 2.1)."""
    return {"MHA": 2 * n_h * d_h, "GQA": 2 * (n_g or 1) * d_h, "MQA": 2 * d_h,
            "MLA": (d_c or 0) + (d_rope or 0)}[kind]

tiny = dict(n_h=4, d_h=16, d_c=16, d_rope=8)
v2 = dict(n_h=128, d_h=128, d_c=512, d_rope=64)
table = [("tiny MHA (nn.MultiheadAttention)", cache_per_token("MHA", **tiny), mha_cache, u.count_parameters(mha_fresh)),
         ("tiny GQA, 2 groups (formula)", cache_per_token("GQA", **tiny, n_g=2), None, None),
         ("tiny MQA (formula)", cache_per_token("MQA", **tiny), None, None),
         ("tiny MLA (the layer above)", cache_per_token("MLA", **tiny), mla_cache, u.count_parameters(mla)),
         ("DeepSeek-V2 sizes, MHA", cache_per_token("MHA", **v2), None, None),
         ("DeepSeek-V2 sizes, MLA", cache_per_token("MLA", **v2), None, None)]
print(f"{'layer':<36}{'cache/token':>12}{'measured':>10}{'params':>9}{'vs MHA':>9}")
for name, formula, measured, params in table:
    base = table[0][1] if name.startswith("tiny") else table[4][1]
    print(f"{name:<36}{formula:>12,}{'' if measured is None else f'{measured:,}':>10}"
          f"{'' if params is None else f'{params:,}':>9}{formula / base:>9.1%}")

# %% [markdown]
# The same caches as bars, on a logarithmic axis. Look at how far MLA's bar falls below MHA's at
# DeepSeek-V2's sizes, and where it sits among the tiny layers: below even MQA, which keeps a
# single key and value for all heads.

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained",
                         gridspec_kw=dict(width_ratios=(2, 1)))
panels = [("our tiny layer", ["MHA", "GQA, 2 groups", "MQA", "MLA"], table[:4]),
          ("DeepSeek-V2's sizes", ["MHA", "MLA"], table[4:])]
for ax, (title, labels, rows) in zip(axes, panels):
    cached = [formula for _, formula, _, _ in rows]
    bars = ax.bar(labels, cached, color=["tab:orange" if label == "MLA" else "tab:blue"
                                         for label in labels])
    ax.bar_label(bars, [f"{n:,}" for n in cached], fontsize=8)
    ax.set(yscale="log", ylim=(10, 4 * max(cached)), title=title, xlabel="attention",
           ylabel="numbers cached per token per layer")
fig.suptitle("KV cache per token: MLA (orange) against multi-head, grouped- and multi-query attention")
plt.show()


# %% [markdown]
# With DeepSeek-V2's sizes MLA caches 576 numbers per token per layer against MHA's 32,768, less
# than 2%. The DeepSeek-V2 paper (DeepSeek-AI, 2024) also reports, in its abstract, the KV cache
# down 93.3% and the maximum generation throughput up 5.76×. Those two figures compare DeepSeek-V2
# with DeepSeek 67B, a different model, so they are not the ratio in the table. Our tiny MLA also
# has fewer parameters than the standard layer (12,800 against 16,384), because its queries, keys
# and values pass through narrow latents; only $W^O$ is as large as in MHA. Whether that low rank
# costs accuracy, the paper measures at its own scale; this notebook shows only the mechanism and
# the count.

# %% [markdown]
# ## 5. Reading list
#
# - *Attention Is All You Need* (Vaswani et al., 2017): multi-head attention.
# - *Fast Transformer Decoding: One Write-Head is All You Need* (Shazeer, 2019): multi-query attention.
# - *GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints*
#   (Ainslie et al., 2023): grouped-query attention.
# - *RoFormer: Enhanced Transformer with Rotary Position Embedding* (Su et al., 2021).
# - *DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts Language Model*
#   (DeepSeek-AI, 2024), section 2.1: MLA.
# - Code: deepseek-ai/DeepSeek-V3, `inference/model.py`, class `MLA` (`wkv_a` is $W^{DKV}$ stacked
#   with $W^{KR}$, `wkv_b` is $W^{UK}$ stacked with $W^{UV}$; the absorb mode keeps `kv_cache` and `pe_cache`).
#
# ## Summary
#
# - A language model caches every token's keys and values, so that each new token does not
#   recompute them. DeepSeek-V2's MLA compresses each token's keys and values into one latent of
#   width $d_c$ and caches only that, plus a small rotary key shared by all heads.
# - Without its rotary part it is ordinary multi-head attention with low-rank projections (checked
#   against `nn.MultiheadAttention`). The absorb trick and the token-by-token cache give the same
#   outputs as the explicit full pass.
# - At DeepSeek-V2's sizes it caches 576 numbers per token per layer instead of MHA's 32,768; our
#   tiny layer caches 24 instead of 128.
# - The tutorial's latents are something else: K learned vectors, the same for every image, that
#   read all the pixels. They save compute (K·N scores instead of N²), cache nothing, and have no
#   up-projections, absorb trick or rotary part. The two share only the word "latent".
#
# ## Exercises
#
# ### Exercise 1: MLA as a number of GQA groups
#
# GQA with $n_g$ groups caches $2 n_g d_h$ numbers per token. How many groups would give the same
# cache as MLA, (a) with DeepSeek-V2's sizes and (b) with our tiny layer? Write `gqa_groups(sizes)`
# that returns that (possibly fractional) number for a dict like `v2` or `tiny`. The check prints
# both answers; run the solution cell to see them.

# %%
def check_gqa_groups(fn):
    for sizes in (v2, tiny, dict(n_h=8, d_h=64, d_c=128, d_rope=32)):
        n_g = fn(sizes)
        assert abs(2 * n_g * sizes["d_h"] - (sizes["d_c"] + sizes["d_rope"])) < 1e-9, \
            f"{sizes}: a GQA with {n_g} groups does not cache d_c + d_rope numbers per token"
    print(f"correct: DeepSeek-V2's MLA caches as much as GQA with {fn(v2)} groups, "
          f"the tiny layer as much as {fn(tiny)} groups (less than MQA's 1)")


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def gqa_groups(sizes):
    return (sizes["d_c"] + sizes["d_rope"]) / (2 * sizes["d_h"])

check_gqa_groups(gqa_groups)


# %% [markdown]
# ### Exercise 2: absorb $W^{UV}$ into the output projection
#
# In absorb mode the values are up-projected by $W^{UV}$ and then mixed by $W^O$: two matrices in a
# row. Fold them into one per head, `W_OV` of shape `[n_h, d_model, d_c]`, so that the output is
# $\sum_h W^{OV}_h\,\text{latent}_h$, with `latent = mla.latent_outputs(x)` of shape `[B, T, n_h, d_c]`.
# The check compares your fold with `mla(x)`.

# %%
def check_absorbed_output(fn):
    W_OV = fn(mla)
    assert tuple(W_OV.shape) == (mla.n_h, 64, mla.d_c), f"expected shape {(mla.n_h, 64, mla.d_c)}, got {tuple(W_OV.shape)}"
    with torch.no_grad():
        folded = torch.einsum("bthc,hmc->btm", mla.latent_outputs(x), W_OV)
        assert torch.allclose(folded, mla(x), atol=1e-5), "the folded output differs from mla(x)"
    print("correct: the folded output equals mla(x)")


# %% cellView="form" jupyter={"source_hidden": true}
# @title Solution (double-click to show)
def fold_values(layer):
    W_O = layer.W_O.weight.view(-1, layer.n_h, layer.d_h)              # [d_model, n_h, d_h]
    W_UV = layer.W_UV.weight.view(layer.n_h, layer.d_h, layer.d_c)     # [n_h, d_h, d_c]
    return torch.einsum("mhd,hdc->hmc", W_O, W_UV).detach()

check_absorbed_output(fold_values)
