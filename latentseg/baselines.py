"""latentseg.baselines: the models the series' models are measured against.
`PixelClassifier` (notebook 04: each pixel from its own colour alone) and `SmallUNet`, the UNet a
practitioner would reach for (benchmarks/train_budget.py and benchmarks/robustness.py)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from latentseg.checks import check_images

__all__ = ["PixelClassifier", "SmallUNet", "double_conv"]


class PixelClassifier(nn.Module):
    """The per-pixel baseline: a 1x1 convolution, so each pixel is classified from its
    own colour alone. [B, in_channels, H, W] -> [B, num_classes, H, W]

    Taught in notebook 04, section "3. The data needs spatial context".
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 4, hidden: int = 32):
        super().__init__()
        self.config = dict(in_channels=in_channels, num_classes=num_classes, hidden=hidden)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.net = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.ReLU(),
                                 nn.Conv2d(hidden, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.in_channels)
        return self.net(x)


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    """Two (3x3 conv, BatchNorm, ReLU): [B, c_in, H, W] -> [B, c_out, H, W]."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True))


class SmallUNet(nn.Module):
    """A small UNet (Ronneberger et al. 2015, with BatchNorm and bilinear upsampling).

    Encoder: one double conv per level with the given widths, a 2x max-pool between levels
    (the last level, at stride 2**(levels-1), is the bottleneck). Decoder: at each level going
    up, a x2 bilinear upsample, concatenation with the encoder's features of that level (the
    skip), a double conv back to that level's width. A 1x1 conv gives the class logits.

    [B, in_channels, H, W] -> logits [B, num_classes, H, W]   (H, W multiples of 2**(levels-1))
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 4,
                 widths: tuple = (8, 16, 32, 80)):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"widths={widths}: give at least 2 levels, each at least 1 wide.")
        self.config = dict(in_channels=in_channels, num_classes=num_classes, widths=widths)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.widths = widths
        levels = len(widths)
        self.down = nn.ModuleList(
            [double_conv(in_channels, widths[0])]
            + [double_conv(widths[i - 1], widths[i]) for i in range(1, levels)])
        self.up = nn.ModuleList(
            double_conv(widths[i] + widths[i - 1], widths[i - 1])
            for i in reversed(range(1, levels)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2 ** (len(self.widths) - 1)
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[-1] % factor \
                or x.shape[-2] % factor:
            raise ValueError(f"SmallUNet needs images [B, {self.in_channels}, H, W] with H, W "
                             f"multiples of {factor}; got {tuple(x.shape)}.")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()                                                   # the bottleneck
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)
