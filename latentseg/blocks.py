"""latentseg.blocks: the parts the series' models are built from: fourier_positions (where
each token is), AttentionBlock (pre-norm residual cross-attention + MLP) and conv_bn_relu.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from latentseg.checks import check_heads

__all__ = ["fourier_positions", "AttentionBlock", "conv_bn_relu"]


def fourier_positions(h: int, w: int, num_frequencies: int = 4,
                      device: Optional[torch.device] = None) -> torch.Tensor:
    """2-D sinusoidal position features for an h x w grid, resolution independent.

    Coordinates are scaled to [-1, 1]; returns [h * w, 4 * num_frequencies]
    (sin and cos of x and y at frequencies (pi/2) * 2**k; the lowest has period 4,
    so the two edges of the image never alias), row-major like flatten(2).

    Taught in notebook 05, section "4. The fixes, one at a time".
    """
    ys = torch.linspace(-1.0, 1.0, h, device=device)
    xs = torch.linspace(-1.0, 1.0, w, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    freqs = 0.5 * math.pi * 2.0 ** torch.arange(num_frequencies, device=device, dtype=torch.float32)
    angles = torch.cat([grid_x.reshape(-1, 1) * freqs, grid_y.reshape(-1, 1) * freqs], dim=1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class AttentionBlock(nn.Module):
    """Pre-norm residual cross-attention followed by a pre-norm residual MLP.

    x [B, M, dim] reads context [B, N, dim]:
        x = x + Attention(LayerNorm(x), LayerNorm(context))
        x = x + MLP(LayerNorm(x))
    The residual keeps x's own content: attention adds to it instead of replacing it.
    With attention=False only the MLP remains (used to measure what attention adds).
    With attention_scale=s the attention branch is multiplied by a learned per-channel scale
    that starts at s (LayerScale; s=0 starts the block as if it had no attention).
    residual=False, layer_norm=False and mlp=False take away the residual (each branch then
    replaces x), the LayerNorms and the MLP: all three False is the tutorial's plain attention,
    x = Attention(x, context). Notebook 05 switches them on one at a time (steps 1b-1d).

    Taught in notebook 05, section "4. The fixes, one at a time".
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 2, attention: bool = True,
                 attention_scale: Optional[float] = None, detach_query: bool = False,
                 residual: bool = True, layer_norm: bool = True, mlp: bool = True):
        super().__init__()
        check_heads(dim, num_heads)
        self.use_attention, self.detach_query = attention, detach_query
        self.residual, self.use_mlp = residual, mlp
        norm = (lambda: nn.LayerNorm(dim)) if layer_norm else nn.Identity
        if attention:
            self.norm_x = norm()
            self.norm_context = norm()
            self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
            if attention_scale is not None:
                self.attention_scale = nn.Parameter(torch.full((dim,), float(attention_scale)))
        if mlp:
            self.norm_mlp = norm()
            self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                     nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                return_attention: bool = False, attention_mask: Optional[torch.Tensor] = None):
        """x [B, M, dim], context [B, N, dim] -> x [B, M, dim] (and weights [B, heads, M, N]).
        With detach_query set, the attention's queries carry no gradient back into x.
        attention_mask [B * heads, M, N] bool: True where a query may NOT read (masked attention)."""
        weights = None
        if self.use_attention:
            context = self.norm_context(context)
            query = x.detach() if self.detach_query else x
            attended, weights = self.attention(self.norm_x(query), context, context,
                                               need_weights=return_attention,
                                               average_attn_weights=False,
                                               attn_mask=attention_mask)
            if hasattr(self, "attention_scale"):
                attended = self.attention_scale * attended
            x = x + attended if self.residual else attended
        if self.use_mlp:
            out = self.mlp(self.norm_mlp(x))
            x = x + out if self.residual else out
        return (x, weights) if return_attention else x


def conv_bn_relu(c_in: int, c_out: int, batchnorm: bool = True, kernel_size: int = 3) -> nn.Sequential:
    """Conv + BatchNorm + ReLU (batchnorm=False: Conv with a bias + ReLU, as the tutorial's).

    Taught in notebook 05, section "4. The fixes, one at a time".
    """
    if not batchnorm:
        return nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2),
                             nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

