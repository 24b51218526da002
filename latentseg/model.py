"""latentseg.model: LatentSegNet, the series' final model, written out without switches.

Notebook 05 builds it one measured step at a time (the steps' switches live in
latentseg.ablation's LatentSegNetAblation); this is the result, readable top to bottom, each
line marked with the step that added it. Its options are its sizes, `rounds`, `local_loss` and
`attention` (False: its twin without attention, the pixel path alone).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from latentseg.blocks import AttentionBlock, conv_bn_relu, fourier_positions
from latentseg.checks import check_heads, check_images, check_positive

__all__ = ["LatentSegNet"]


class LatentSegNet(nn.Module):
    """The series' improved latent-attention segmenter: notebook 05's final model.

    stem (full resolution) -> encoder (stride 4, two BatchNorm convolutions per stage) ->
    tokens [B, N, D] + Fourier positions -> `rounds` x (latents read the tokens, which they do
    not teach, plus each 4x4 block's mean colour; tokens read the latents) -> the tokens beside
    the encoder's own features (`fuse`) -> full-resolution refinement with the stem's features.
    training_loss adds `local_loss` times the loss of a linear classifier on the encoder's
    own features (0 switches it off). attention=False removes the latents and every attention
    (the pixels' MLP stays): the model's twin without attention.

    [B, in_channels, H, W] -> logits [B, num_classes, H, W]   (H, W multiples of 4)

    Taught in notebook 05, section "4. The fixes, one at a time".
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 4, feature_dim: int = 64,
                 num_latents: int = 16, num_heads: int = 4, rounds: int = 1,
                 local_loss: float = 0.5, attention: bool = True, stem_dim: int = 8,
                 refine_dim: int = 16):
        super().__init__()
        check_positive(in_channels=in_channels, feature_dim=feature_dim, num_latents=num_latents,
                       rounds=rounds, stem_dim=stem_dim, refine_dim=refine_dim)
        if not (local_loss >= 0 and math.isfinite(local_loss)):
            raise ValueError(f"local_loss={local_loss} must be a finite number >= 0 (0 turns it off).")
        check_heads(feature_dim, num_heads)
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: segmentation needs at least 2 classes.")
        self.config = dict(in_channels=in_channels, num_classes=num_classes,
                           feature_dim=feature_dim, num_latents=num_latents, num_heads=num_heads,
                           rounds=rounds, local_loss=local_loss, attention=attention,
                           stem_dim=stem_dim, refine_dim=refine_dim)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.local_loss, self.attention = float(local_loss), attention
        D = feature_dim
        self.stem = conv_bn_relu(in_channels, stem_dim)                        # 1f: full resolution
        self.down = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(stem_dim, D // 2),
                                  conv_bn_relu(D // 2, D // 2), nn.MaxPool2d(2),  # 5: two convs
                                  conv_bn_relu(D // 2, D), conv_bn_relu(D, D))    # per stage
        self.position_proj = nn.Linear(16, D)                                  # 2: positions
        if attention:
            self.latents = nn.Parameter(torch.randn(num_latents, D) * 0.02)
            self.colour_proj = nn.Linear(in_channels, D)                       # 7: block colours
            self.reads = nn.ModuleList(AttentionBlock(D, num_heads)            # 1b-1d
                                       for _ in range(rounds))
        self.writes = nn.ModuleList(AttentionBlock(D, num_heads, attention=attention,
                                                   detach_query=True)          # 1b-1d, 6
                                    for _ in range(rounds))
        self.norm_out = nn.LayerNorm(D)                                        # 1c
        if local_loss > 0:
            self.local_classifier = nn.Conv2d(D, num_classes, 1)               # 4: local loss
        self.fuse = conv_bn_relu(2 * D, D, kernel_size=1)                      # 1g: local beside
        self.refine_proj = nn.Conv2d(D, refine_dim, 1)                         # 3: refinement
        self.refine = nn.Sequential(conv_bn_relu(refine_dim + stem_dim, refine_dim),
                                    nn.Conv2d(refine_dim, num_classes, 1))

    def _run(self, x: torch.Tensor, want_attention: bool):
        """-> (logits [B, C, H, W], local logits [B, C, h, w] or None, attention dict)."""
        check_images(x, self.in_channels)
        H, W = x.shape[-2:]
        stem = self.stem(x)                                                    # [B, S, H, W]
        local = self.down(stem)                                                # [B, D, h, w]
        B, D, h, w = local.shape
        local_logits = self.local_classifier(local) if self.local_loss > 0 else None   # 4
        tokens = local.flatten(2).transpose(1, 2) + \
            self.position_proj(fourier_positions(h, w, device=x.device))       # [B, N, D]
        attention = {"latent": None, "pixel": None}

        def attend(block, x, context, key):
            if not want_attention:
                return block(x, context)
            x, attention[key] = block(x, context, return_attention=True)
            return x

        latents = colours = None
        if self.attention:
            latents = self.latents.expand(B, -1, -1)
            colours = self.colour_proj(F.avg_pool2d(x, H // h).flatten(2).transpose(1, 2))  # 7
        for i, write in enumerate(self.writes):
            if self.attention:                                                 # 6: read, not teach
                latents = attend(self.reads[i], latents, tokens.detach() + colours, "latent")
            tokens = attend(write, tokens, latents, "pixel")                   # pixels read latents
        features = self.norm_out(tokens).transpose(1, 2).reshape(B, D, h, w)
        features = self.fuse(torch.cat([local, features], dim=1))
        up = F.interpolate(self.refine_proj(features), size=(H, W), mode="bilinear",
                           align_corners=False)
        logits = self.refine(torch.cat([up, stem], dim=1))
        return logits, local_logits, attention

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """With return_attention=True returns (logits, {"latent": [B, heads, K, N],
        "pixel": [B, heads, N, K]}) from the last round (None where attention=False)."""
        logits, _, attention = self._run(x, return_attention)
        return (logits, attention) if return_attention else logits

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the output, plus (if local_loss > 0) local_loss times the
        cross-entropy of a linear classifier on the encoder's own features (before attention)."""
        logits, local_logits, _ = self._run(images, False)
        loss = F.cross_entropy(logits, labels)
        if local_logits is not None:
            local_logits = F.interpolate(local_logits, size=labels.shape[-2:], mode="bilinear",
                                         align_corners=False)
            loss = loss + self.local_loss * F.cross_entropy(local_logits, labels)
        return loss
