"""latentseg.tutorial: the tutorial's model, faithfully (names, arguments and defaults kept):
SimpleEncoder (notebook 01), LatentAttention (02), ExpertSegmentation and SegmentationModel
(03), and count_parameters.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from latentseg.checks import check_heads, check_images, check_positive

__all__ = ["count_parameters", "SimpleEncoder", "LatentAttention", "ExpertSegmentation",
           "SegmentationModel"]


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of a module.

    Taught in notebook 01, section "2. The tutorial's encoder, one layer at a time".
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class SimpleEncoder(nn.Module):
    """The tutorial's CNN encoder: two (conv3x3 + ReLU + maxpool2) stages, stride 4.

    [B, in_channels, H, W] -> [B, feature_dim, H/4, W/4]

    Taught in notebook 01, section "2. The tutorial's encoder, one layer at a time".
    """

    def __init__(self, in_channels: int = 3, feature_dim: int = 64):
        super().__init__()
        check_positive(in_channels=in_channels, feature_dim=feature_dim)
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, feature_dim, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = self.pool(x)
        x = F.relu(self.conv2(x))
        x = self.pool(x)
        return x


class LatentAttention(nn.Module):
    """K learned latent vectors ("experts") refined by multi-head cross-attention.

    The latents are the queries; the pixel features are the keys and values.
    [B, N, feature_dim] -> [B, num_latents, latent_dim]
    With return_attention=True also returns the weights [B, num_heads, num_latents, N]
    (each latent's distribution over the N pixels, per head).

    Taught in notebook 02, section "4. `LatentAttention`: K learned latents read the pixels".
    """

    def __init__(self, feature_dim: int, latent_dim: int, num_latents: int, num_heads: int):
        super().__init__()
        check_positive(feature_dim=feature_dim, num_latents=num_latents)
        check_heads(latent_dim, num_heads)
        self.num_latents = num_latents
        self.latent_dim = latent_dim
        self.latents = nn.Parameter(torch.randn(num_latents, latent_dim))
        self.key_proj = nn.Linear(feature_dim, latent_dim)
        self.value_proj = nn.Linear(feature_dim, latent_dim)
        self.query_proj = nn.Linear(latent_dim, latent_dim)
        self.attention = nn.MultiheadAttention(embed_dim=latent_dim, num_heads=num_heads,
                                               batch_first=True)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        B, N, _ = x.shape
        keys = self.key_proj(x)
        values = self.value_proj(x)
        queries = self.latents.unsqueeze(0).expand(B, -1, -1)
        queries = self.query_proj(queries)
        latent_output, weights = self.attention(query=queries, key=keys, value=values,
                                                need_weights=return_attention,
                                                average_attn_weights=False)
        return (latent_output, weights) if return_attention else latent_output


class ExpertSegmentation(nn.Module):
    """Each pixel feature attends over the refined experts; a linear layer gives class logits.

    pixel_features [B, N, feature_dim], experts [B, K, latent_dim] -> logits [B, N, num_classes]
    With return_attention=True also returns the weights [B, num_heads, N, K]
    (each pixel's distribution over the K experts, per head).

    Taught in notebook 03, section "2. Pixels as queries over the experts".
    """

    def __init__(self, feature_dim: int, latent_dim: int, num_heads: int, num_classes: int):
        super().__init__()
        check_heads(latent_dim, num_heads)
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: segmentation needs at least 2 classes "
                             "(background and one object class).")
        self.pixel_proj = nn.Linear(feature_dim, latent_dim)
        self.attention = nn.MultiheadAttention(embed_dim=latent_dim, num_heads=num_heads,
                                               batch_first=True)
        self.segmentation_head = nn.Linear(latent_dim, num_classes)

    def forward(self, pixel_features: torch.Tensor, experts: torch.Tensor,
                return_attention: bool = False):
        queries = self.pixel_proj(pixel_features)
        attended, weights = self.attention(query=queries, key=experts, value=experts,
                                           need_weights=return_attention,
                                           average_attn_weights=False)
        logits = self.segmentation_head(attended)
        return (logits, weights) if return_attention else logits


class SegmentationModel(nn.Module):
    """The tutorial's published model: encoder -> latent attention -> expert head
    -> 3x3 conv on the logits -> x4 bilinear upsample.

    [B, in_channels, H, W] -> logits [B, num_classes, H, W]   (H, W multiples of 4)
    70,504 parameters with the defaults (num_classes=2).

    Taught in notebook 03, section "4. The whole model, with the tutorial's decoder".
    """

    def __init__(self, in_channels: int = 3, feature_dim: int = 64, latent_dim: int = 64,
                 num_latents: int = 16, num_heads: int = 4, num_classes: int = 2):
        super().__init__()
        self.config = dict(in_channels=in_channels, feature_dim=feature_dim, latent_dim=latent_dim,
                           num_latents=num_latents, num_heads=num_heads, num_classes=num_classes)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.encoder = SimpleEncoder(in_channels, feature_dim)
        self.latent_attention = LatentAttention(feature_dim, latent_dim, num_latents, num_heads)
        self.expert_segmentation = ExpertSegmentation(feature_dim, latent_dim, num_heads,
                                                      num_classes)
        self.decoder = nn.Sequential(
            nn.Conv2d(num_classes, num_classes, kernel_size=3, padding=1),
            nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False),
        )

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """With return_attention=True returns (logits, {"latent": [B, heads, K, N],
        "pixel": [B, heads, N, K]}), N = (H/4)*(W/4)."""
        check_images(x, self.in_channels)
        features = self.encoder(x)                                  # [B, D, h, w]
        B, D, h, w = features.shape
        tokens = features.flatten(2).transpose(1, 2)                # [B, N, D]
        experts, latent_w = self.latent_attention(tokens, return_attention=True) \
            if return_attention else (self.latent_attention(tokens), None)
        logits, pixel_w = self.expert_segmentation(tokens, experts, return_attention=True) \
            if return_attention else (self.expert_segmentation(tokens, experts), None)
        logits = logits.transpose(1, 2).reshape(B, self.num_classes, h, w)
        logits = self.decoder(logits)
        if return_attention:
            return logits, {"latent": latent_w, "pixel": pixel_w}
        return logits
