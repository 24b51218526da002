"""latentseg.checks: the input checks the models, the training loop, train.py and the
training panel share, each a clear ValueError (or TypeError) instead of a deep PyTorch
traceback: check_heads, check_positive, check_images, check_labels.
"""
from __future__ import annotations

import torch

__all__ = ["check_heads", "check_positive", "check_images", "check_labels"]


def check_heads(latent_dim: int, num_heads: int) -> None:
    """Refuse a head count that does not divide the width: each head gets
    latent_dim // num_heads channels. The one check the models, train.py and the training
    panel all use.

    Taught in notebook 02, section "4. `LatentAttention`: K learned latents read the pixels".
    """
    if num_heads < 1 or latent_dim < 1 or latent_dim % num_heads != 0:
        raise ValueError(
            f"latent_dim={latent_dim} must be a positive multiple of num_heads={num_heads}: "
            "each head gets latent_dim // num_heads channels. "
            f"Pick num_heads from {[h for h in range(1, max(latent_dim, 1) + 1) if latent_dim % h == 0][:8]} "
            "or change latent_dim."
        )


def check_positive(**settings: int) -> None:
    """Refuse any setting (name=value) below 1, naming it.

    Taught in notebook 05, section "7. Try it yourself: the training panel".
    """
    for name, value in settings.items():
        if int(value) < 1:
            raise ValueError(f"{name}={value} must be at least 1.")


def check_images(x: torch.Tensor, in_channels: int) -> None:
    """Refuse what a model cannot take: not [B, C, H, W], the wrong channels, integers, a size
    that is not a multiple of 4 (the encoder's stride), NaN or infinite values.

    Taught in notebook 01, section "3. Why stride 4?".
    """
    if not torch.is_tensor(x) or x.dim() != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"images must be a tensor of shape [B, C, H, W]; got {shape}. "
                         "For a single image [C, H, W] use image.unsqueeze(0).")
    if x.shape[1] != in_channels:
        raise ValueError(f"images have {x.shape[1]} channels but the model was built with "
                         f"in_channels={in_channels}; convert the images or build the model "
                         f"with in_channels={x.shape[1]}.")
    if not torch.is_floating_point(x):
        raise TypeError(f"images are integers ({x.dtype}) but the model expects floats in [0, 1]; "
                        "convert with images.float() / 255.")
    h, w = x.shape[-2:]
    if h % 4 or w % 4 or h < 4 or w < 4:
        raise ValueError(f"image size {h}x{w} is not a multiple of 4: the encoder halves it twice "
                         f"and the decoder upsamples x4. Crop or resize to {max(4, h // 4 * 4)}x"
                         f"{max(4, w // 4 * 4)}.")
    if not torch.isfinite(x).all():
        raise ValueError("images contain NaN or infinite values; clean the input "
                         "(for example torch.nan_to_num) before calling the model.")


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Refuse label maps that are not integers in [0, num_classes).

    Taught in notebook 04, section "3. The data needs spatial context".
    """
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"labels must be an integer tensor of class ids; got dtype {labels.dtype}. "
                         "Use labels.long().")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) for num_classes={num_classes}; "
                         f"found values from {int(labels.min())} to {int(labels.max())}. "
                         "Build the model with more classes or fix the labels.")

