"""latentseg.ablation: notebook 05's ablation. AblationOptions (a frozen dataclass whose
defaults are the final model), LatentSegNetAblation (LatentSegNet with every step's switch),
ABLATION_STEPS (the steps, each one `dataclasses.replace` of the step before) and
ablation_rows (the table benchmarks/ablation.py trains over seeds).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from latentseg.blocks import AttentionBlock, conv_bn_relu, fourier_positions
from latentseg.checks import check_heads, check_images, check_positive
from latentseg.model import LatentSegNet
from latentseg.tutorial import SegmentationModel

__all__ = ["AblationOptions", "LatentSegNetAblation", "ABLATION_STEPS", "ablation_rows"]


@dataclasses.dataclass(frozen=True)
class AblationOptions:
    """The switches of notebook 05's ablation; the defaults are the series' final model
    (LatentSegNetAblation() is LatentSegNet()).

      positions      add 2-D Fourier position features to the tokens, so they know where they are
      refine         full-resolution refinement path instead of a plain x4 upsample
      local_loss     weight of an auxiliary loss on a linear classifier of the encoder's own
                     features; it keeps the convolutions learning shapes even when attention
                     offers an easier global cue (0 switches it off)
      encoder_depth  conv layers per encoder stage (1 = the tutorial's two-conv encoder)
      attention      False removes every attention layer and the latents (the pixel path
                     alone; the pixels' MLP stays)
      attention_scale None, or the start value of a learned per-channel scale on what the
                     pixels read from the latents (0: the model starts as its no-attention twin)
      detach_attention  True: the attention reads the encoder's tokens (the latents' keys and
                     values, the pixels' queries) without sending gradient back into the
                     encoder, so the convolutions learn only through the pixel path (the
                     attention's gradient made them worse on small objects; see
                     benchmarks/robustness.py)
      colour_tokens  True: what the latents read also carries each token's mean input colour
                     (a learned linear projection of the 4x4 block's average), so what the
                     attention can read does not depend on what the convolutions chose to keep
                     (with detach_attention the convolutions never learn to keep a cue for it)
    and the six options of notebook 05's steps 1b-1g; all six False (with encoder_depth=1 and
    positions, refine, local_loss, detach_attention and colour_tokens off) is the tutorial's
    design written with these parts (step 1a):
      residual       attention and MLP add to what they read (x + f(x)) instead of replacing it
      layer_norm     LayerNorm before every attention and MLP, and on the output tokens
      mlp            an MLP after every attention
      batchnorm      BatchNorm after every convolution
      stem           a cheap full-resolution convolution (stem_dim channels) first, then one per
                     stage after each pool; False is the tutorial's layout (conv, pool, conv,
                     pool). The refinement path reuses the stem's features, so refine needs it
      fuse           the encoder's own features concatenated beside the attention's output
                     before the decoder (a second route around the attention)

    Taught in notebook 05, section "4. The fixes, one at a time".
    """

    positions: bool = True
    refine: bool = True
    attention: bool = True
    local_loss: float = 0.5
    encoder_depth: int = 2
    attention_scale: Optional[float] = None
    detach_attention: bool = True
    colour_tokens: bool = True
    residual: bool = True
    layer_norm: bool = True
    mlp: bool = True
    batchnorm: bool = True
    stem: bool = True
    fuse: bool = True


class LatentSegNetAblation(nn.Module):
    """LatentSegNet with every switch of notebook 05's ablation (AblationOptions), so each step
    can be built and measured. LatentSegNetAblation() is LatentSegNet(): the same parameter
    names, outputs, training loss and gradients (tests/test_model.py checks it).

    Built from an AblationOptions (or from its fields as keywords, which override it) and the
    sizes LatentSegNet takes: LatentSegNetAblation(ABLATION_STEPS[name]),
    LatentSegNetAblation(step, attention=False), LatentSegNetAblation(**config).
    `options` holds the switches; `config` the sizes and every switch (what a checkpoint saves).

    [B, in_channels, H, W] -> logits [B, num_classes, H, W]   (H, W multiples of 4)

    Taught in notebook 05, section "4. The fixes, one at a time".
    """

    def __init__(self, options: AblationOptions = AblationOptions(), *, in_channels: int = 3,
                 num_classes: int = 4, feature_dim: int = 64, num_latents: int = 16,
                 num_heads: int = 4, rounds: int = 1, stem_dim: int = 8, refine_dim: int = 16,
                 **switches):
        super().__init__()
        if not isinstance(options, AblationOptions):
            raise TypeError(f"options must be an AblationOptions, got {type(options).__name__}; "
                            "pass single switches as keywords, e.g. attention=False.")
        unknown = sorted(set(switches) - {f.name for f in dataclasses.fields(AblationOptions)})
        if unknown:
            raise TypeError(f"LatentSegNetAblation has no option {unknown}; the switches are "
                            f"{[f.name for f in dataclasses.fields(AblationOptions)]}.")
        options = dataclasses.replace(options, **switches)
        o = self.options = options
        check_positive(in_channels=in_channels, feature_dim=feature_dim,
                       num_latents=num_latents, rounds=rounds, stem_dim=stem_dim,
                       refine_dim=refine_dim, encoder_depth=o.encoder_depth)
        if not (o.local_loss >= 0 and math.isfinite(o.local_loss)):
            raise ValueError(f"local_loss={o.local_loss} must be a finite number >= 0 (0 turns it off).")
        check_heads(feature_dim, num_heads)
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: segmentation needs at least 2 classes.")
        if o.refine and not o.stem:
            raise ValueError("refine=True needs the stem's full-resolution features: set stem=True, "
                             "or refine=False for the tutorial's plain x4 upsample.")
        self.config = dict(in_channels=in_channels, num_classes=num_classes,
                           feature_dim=feature_dim, num_latents=num_latents,
                           num_heads=num_heads, rounds=rounds, stem_dim=stem_dim,
                           refine_dim=refine_dim, **dataclasses.asdict(o))
        self.in_channels, self.num_classes = in_channels, num_classes
        self.local_loss = float(o.local_loss)
        positions, refine, attention, local_loss = o.positions, o.refine, o.attention, o.local_loss
        encoder_depth, attention_scale, detach_attention = o.encoder_depth, o.attention_scale, o.detach_attention
        colour_tokens, residual, layer_norm, mlp = o.colour_tokens, o.residual, o.layer_norm, o.mlp
        batchnorm, stem, fuse = o.batchnorm, o.stem, o.fuse
        D = feature_dim

        def convs(c_in: int, c_out: int) -> list:
            return [conv_bn_relu(c_in, c_out, batchnorm),
                    *(conv_bn_relu(c_out, c_out, batchnorm) for _ in range(encoder_depth - 1))]
        if stem:
            self.stem = conv_bn_relu(in_channels, stem_dim, batchnorm)     # full resolution
            self.down = nn.Sequential(nn.MaxPool2d(2), *convs(stem_dim, D // 2),
                                      nn.MaxPool2d(2), *convs(D // 2, D))   # stride 4
        else:                                                               # the tutorial's layout
            self.stem = None
            self.down = nn.Sequential(*convs(in_channels, D // 2), nn.MaxPool2d(2),
                                      *convs(D // 2, D), nn.MaxPool2d(2))
        if positions:
            self.position_proj = nn.Linear(16, D)
        block = dict(residual=residual, layer_norm=layer_norm, mlp=mlp)
        if attention:
            self.latents = nn.Parameter(torch.randn(num_latents, D) * 0.02)
            if colour_tokens:
                self.colour_proj = nn.Linear(in_channels, D)
            self.reads = nn.ModuleList(AttentionBlock(D, num_heads, **block) for _ in range(rounds))
        self.writes = nn.ModuleList(AttentionBlock(D, num_heads, attention=attention,
                                                   attention_scale=attention_scale,
                                                   detach_query=detach_attention, **block)
                                    for _ in range(rounds))
        self.norm_out = nn.LayerNorm(D) if layer_norm else nn.Identity()
        if local_loss > 0:
            self.local_classifier = nn.Conv2d(D, num_classes, 1)
        if fuse:
            self.fuse = conv_bn_relu(2 * D, D, batchnorm, kernel_size=1)
        if refine:
            self.refine_proj = nn.Conv2d(D, refine_dim, 1)
            self.refine = nn.Sequential(conv_bn_relu(refine_dim + stem_dim, refine_dim, batchnorm),
                                        nn.Conv2d(refine_dim, num_classes, 1))
        else:
            self.classifier = nn.Conv2d(D, num_classes, 1)

    def _run(self, x: torch.Tensor, want_attention: bool):
        """-> (logits [B, C, H, W], local logits [B, C, h, w] or None, attention dict)."""
        check_images(x, self.in_channels)
        H, W = x.shape[-2:]
        stem = self.stem(x) if self.stem is not None else x          # [B, S, H, W]
        local = self.down(stem)                                      # [B, D, h, w]: the encoder's own view
        B, D, h, w = local.shape
        local_logits = self.local_classifier(local) if self.local_loss > 0 else None
        tokens = local.flatten(2).transpose(1, 2)                    # [B, N, D]
        if self.options.positions:
            tokens = tokens + self.position_proj(fourier_positions(h, w, device=x.device))
        attention = {"latent": None, "pixel": None}

        def apply(block, x, context, key):
            if not want_attention:
                return block(x, context)
            x, attention[key] = block(x, context, return_attention=True)
            return x

        latents = self.latents.expand(B, -1, -1) if self.options.attention else None
        colours = None
        if self.options.attention and self.options.colour_tokens:   # each token's mean colour
            colours = self.colour_proj(F.avg_pool2d(x, H // h).flatten(2).transpose(1, 2))
        for i, write in enumerate(self.writes):
            if self.options.attention:
                context = tokens.detach() if self.options.detach_attention else tokens
                if colours is not None:
                    context = context + colours
                latents = apply(self.reads[i], latents, context, "latent")  # latents read pixels
            tokens = apply(write, tokens, latents, "pixel")                # pixels read latents
        features = self.norm_out(tokens).transpose(1, 2).reshape(B, D, h, w)
        if self.options.fuse:
            features = self.fuse(torch.cat([local, features], dim=1))   # attention beside, not over, local
        if self.options.refine:
            up = F.interpolate(self.refine_proj(features), size=(H, W), mode="bilinear",
                               align_corners=False)
            logits = self.refine(torch.cat([up, stem], dim=1))
        else:
            logits = F.interpolate(self.classifier(features), size=(H, W), mode="bilinear",
                                   align_corners=False)
        return logits, local_logits, attention

    # The same two entry points as the final model's (only _run differs), one definition.
    forward = LatentSegNet.forward
    training_loss = LatentSegNet.training_loss


# Notebook 05's ablation: each step switches on one more option; the last is AblationOptions()
# with its defaults, the final model. benchmarks/ablation.py trains every step over seeds.
ABLATION_STEPS = {"1a the tutorial's design in LatentSegNet's parts": AblationOptions(
    encoder_depth=1, positions=False, refine=False, local_loss=0.0, detach_attention=False,
    colour_tokens=False, residual=False, layer_norm=False, mlp=False, batchnorm=False,
    stem=False, fuse=False)}
_previous = ABLATION_STEPS["1a the tutorial's design in LatentSegNet's parts"]
for _name, _switch in (("1b + residual", dict(residual=True)),
                       ("1c + LayerNorm", dict(layer_norm=True)),
                       ("1d + MLP", dict(mlp=True)),
                       ("1e + BatchNorm", dict(batchnorm=True)),
                       ("1f + full-resolution stem", dict(stem=True)),
                       ("1g + encoder features beside the attention", dict(fuse=True)),
                       ("2 + positions", dict(positions=True)),
                       ("3 + full-resolution refinement", dict(refine=True)),
                       ("4 + local loss on the encoder", dict(local_loss=0.5)),
                       ("5 + deeper encoder", dict(encoder_depth=2)),
                       ("6 + attention reads without teaching", dict(detach_attention=True)),
                       ("7 + latents read block colours", dict(colour_tokens=True))):
    ABLATION_STEPS[_name] = _previous = dataclasses.replace(_previous, **_switch)
del _name, _switch, _previous


def ablation_rows() -> "list[tuple[str, Callable[[], nn.Module], Optional[str]]]":
    """Notebook 05's ablation table, row by row: (name, a function that builds the model, the
    name of the row it is compared with). The tutorial's model, every step of ABLATION_STEPS
    (step 1a against the tutorial's model: the same design rewritten with LatentSegNet's
    parts), step 1e's BatchNorm in the other order (on step 1a, before the block's residual,
    LayerNorm and MLP), and the twins without attention of steps 3 and 7. benchmarks/ablation.py trains
    them over seeds, and so does notebook 05 itself on a GPU.

    Taught in notebook 05, section "4. The fixes, one at a time".
    """
    rows = [("0 tutorial's model", lambda: SegmentationModel(num_classes=4), None)]
    previous, first = rows[0][0], next(iter(ABLATION_STEPS))
    for name, options in ABLATION_STEPS.items():
        rows.append((name, lambda o=options: LatentSegNetAblation(o), previous))
        if name.startswith("1e "):     # the other order: BatchNorm before steps 1b-1d
            rows.append(("1e' BatchNorm alone: step 1a + BatchNorm",
                         lambda: LatentSegNetAblation(ABLATION_STEPS[first], batchnorm=True), first))
        if name.startswith("3 "):
            rows.append(("3' step 3 without attention",
                         lambda o=options: LatentSegNetAblation(o, attention=False), name))
        previous = name
    rows.append(("7' step 7 without attention",
                 lambda o=options: LatentSegNetAblation(o, attention=False), previous))
    return rows
