"""latentseg.data: the series' synthetic data, made here from a seed (nothing is
downloaded): the tutorial's noise (make_noise_batch), the shapes data (make_shapes_batch),
its variants (DATA_VARIANTS, variant_data), the fixed validation and test sets (make_split,
make_heldout_set), and each pixel's distance from a long-range variant's cue (cue_distance).
"""
from __future__ import annotations

from typing import Callable

import torch

from latentseg.checks import check_positive

__all__ = ["CLASS_NAMES", "KEY_COLORS", "as_generator", "make_noise_batch", "make_shapes_batch",
           "HELDOUT_SEED", "VALIDATION_SEED", "DATA_VARIANTS", "LONG_RANGE_VARIANTS",
           "variant_data", "make_split", "make_heldout_set", "DISTANCE_EDGES", "cue_distance"]


CLASS_NAMES = ("background", "circle", "square", "triangle")
KEY_COLORS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9]])  # circle, square, triangle


def as_generator(seed: "int | torch.Generator | None") -> torch.Generator:
    """A torch.Generator from a seed (None: seed 0); a Generator is returned as it is, so a
    caller can continue a stream.

    Taught in notebook 04, section "2. A data set with something to learn".
    """
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g


def make_noise_batch(batch_size: int = 16, image_size: int = 64, num_classes: int = 2,
                     in_channels: int = 3, seed: "int | torch.Generator | None" = None):
    """The tutorial's own data: uniform-noise images and independent random labels.

    Returns images [B, in_channels, H, W] and labels [B, H, W]. Image and label are
    independent, so nothing can be learned: the best possible cross-entropy is ln(num_classes).

    Taught in notebook 04, section "1. The tutorial's data: noise in, noise out".
    """
    check_positive(batch_size=batch_size, image_size=image_size)
    g = as_generator(seed)
    images = torch.rand(batch_size, in_channels, image_size, image_size, generator=g)
    labels = torch.randint(0, num_classes, (batch_size, image_size, image_size), generator=g)
    return images, labels


def _shape_masks(kinds: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor,
                 S: int) -> torch.Tensor:
    """Boolean masks [B, M, S, S] of M shapes per image: kinds [B, M] (1 circle, 2 square,
    3 triangle), centres [B, M, 2] as (x, y) and radii [B, M], in pixels."""
    B, M = kinds.shape
    coords = torch.arange(S, dtype=torch.float32) + 0.5
    dy = coords.view(1, 1, S, 1) - centre[..., 1].view(B, M, 1, 1)             # [B, M, S, 1]
    dx = coords.view(1, 1, 1, S) - centre[..., 0].view(B, M, 1, 1)             # [B, M, 1, S]
    r = radius.view(B, M, 1, 1)
    circle = dx ** 2 + dy ** 2 <= r ** 2
    square = (dx.abs() <= 0.85 * r) & (dy.abs() <= 0.85 * r)
    triangle = (dy.abs() <= r) & (dx.abs() <= (dy + r) / 2)
    k = kinds.view(B, M, 1, 1)
    return torch.where(k == 1, circle, torch.where(k == 2, square, triangle))


def _cue_mask(where: str, size: int) -> torch.Tensor:
    """Where the long-range variants' cue is drawn: [size, size] bool."""
    cue = torch.zeros(size, size, dtype=torch.bool)
    if where == "frame":
        k = size // 16
        cue[:] = True
        cue[k:size - k, k:size - k] = False
    else:
        cue[:max(2, size // 10), :max(2, size // 10)] = True
    return cue


def _add_key(images: torch.Tensor, labels: torch.Tensor, kinds: torch.Tensor,
             num_objects: torch.Tensor, g: torch.Generator, where: str = "frame"):
    """The long-range variants: a cue in one of KEY_COLORS names one shape kind of the
    image's own objects (so there is a target); every other kind becomes background. The cue
    is a frame around the image (where="frame") or a small square in the top-left corner
    (where="swatch", a tenth of the side)."""
    B, S = images.shape[0], images.shape[-1]
    pick = (torch.rand(B, generator=g) * num_objects.view(B)).long()
    key_kind = kinds.gather(1, pick.view(B, 1)).view(B, 1, 1)
    labels = torch.where(labels == key_kind, labels, 0)
    cue = _cue_mask(where, S)
    images = torch.where(cue, KEY_COLORS[key_kind.view(B) - 1].view(B, 3, 1, 1), images)
    return images, torch.where(cue, 0, labels)


def make_shapes_batch(batch_size: int = 16, image_size: int = 64,
                      seed: "int | torch.Generator | None" = None, max_objects: int = 3,
                      radius_range: tuple = (0.14, 0.25), noise: float = 0.08,
                      key: "bool | str" = False, contrast: tuple = (0.25, 0.75),
                      instances: bool = False):
    """The series' learnable data: circles, squares and triangles on a coloured background.

    Every object and every background gets a random colour (each channel at least 0.25
    away from the background's), so colour says "object here" but never which class: the
    class is the shape, which only spatial context can tell. Later objects occlude earlier
    ones. radius_range is a fraction of image_size; contrast is the range of each colour
    channel's shift between an object and the background (small values: low contrast).

    key=True (or "frame") gives the long-range variant: a frame around the image, in one of
    KEY_COLORS, names the one shape kind that counts; objects of the other kinds are
    labelled background. A pixel's class then depends on something far away from it.
    key="swatch": the same rule, but the cue is a small square in the top-left corner.
    DATA_VARIANTS names the settings the series tests on.

    Returns images [B, 3, H, W] (float, roughly [0, 1]) and labels [B, H, W] (int64,
    0 = background, 1 = circle, 2 = square, 3 = triangle; see CLASS_NAMES). With
    instances=True also an instance map [B, H, W] (int64): 0 where the label is background,
    else the id (1..max_objects) of the object seen at that pixel; each id has one class.

    Taught in notebook 04, section "2. A data set with something to learn".
    """
    check_positive(batch_size=batch_size, image_size=image_size, max_objects=max_objects)
    if image_size < 16:
        raise ValueError(f"image_size={image_size} is too small to draw shapes; use 16 or more.")
    if key not in (False, True, "frame", "swatch"):
        raise ValueError(f"key={key!r}: use False, True or 'frame' (a frame), or 'swatch' "
                         "(a corner square).")
    if not 0 <= contrast[0] <= contrast[1] <= 1:
        raise ValueError(f"contrast={contrast}: give (low, high) with 0 <= low <= high <= 1.")
    g = as_generator(seed)
    B, S, M = batch_size, image_size, max_objects
    lo, hi = radius_range
    background = torch.rand(B, 3, 1, 1, generator=g)
    num_objects = torch.randint(1, M + 1, (B, 1), generator=g)
    present = torch.arange(M).unsqueeze(0) < num_objects                       # [B, M]
    kinds = torch.randint(1, 4, (B, M), generator=g)
    radius = (lo + (hi - lo) * torch.rand(B, M, generator=g)) * S
    centre = radius.unsqueeze(-1) + torch.rand(B, M, 2, generator=g) * (S - 2 * radius.unsqueeze(-1))
    shift = contrast[0] + (contrast[1] - contrast[0]) * torch.rand(B, M, 3, generator=g)
    colour = background.view(B, 1, 3) + shift                                  # [B, M, 3]
    # Past 1 a channel wraps round (the default: at least 0.25 away on the colour circle); in
    # a low-contrast range (below 0.25) it turns back instead, so the object stays close.
    colour = torch.where(colour <= 1, colour, colour - 1 if contrast[0] >= 0.25
                         else background.view(B, 1, 3) - shift)

    inside = _shape_masks(kinds, centre, radius, S) & present.view(B, M, 1, 1)  # [B, M, S, S]

    # Painter's algorithm: the last object drawn at a pixel is the one you see.
    order = torch.arange(1, M + 1).view(1, M, 1, 1)
    top = (inside * order).amax(dim=1)                                          # [B, S, S], 0 = none
    top_index = (top - 1).clamp(min=0)
    labels = torch.where(top > 0, kinds.gather(1, top_index.view(B, -1)).view(B, S, S), 0)
    obj_colour = colour.gather(1, top_index.view(B, -1, 1).expand(-1, -1, 3)).view(B, S, S, 3)
    images = torch.where((top > 0).unsqueeze(1), obj_colour.permute(0, 3, 1, 2),
                         background.expand(B, 3, S, S))
    if key:
        images, labels = _add_key(images, labels, kinds, num_objects, g,
                                  "swatch" if key == "swatch" else "frame")
    images = images + noise * torch.randn(B, 3, S, S, generator=g)
    if instances:
        return images, labels.long(), torch.where(labels > 0, top, 0).long()
    return images, labels.long()


HELDOUT_SEED = 1_000_003     # the test sets; training streams use small seeds
VALIDATION_SEED = 2_000_029  # the validation sets, for design choices

# The data the series tests its models on: make_shapes_batch's settings per variant. The last
# two are long-range: the cue that decides a pixel's class is far from the pixel.
DATA_VARIANTS = {
    "shapes": {},                                              # the series' own data
    "low_contrast": {"contrast": (0.05, 0.25)},                # objects close to the background
    "small": {"radius_range": (0.06, 0.12)},                   # objects a few pixels across
    "noisy": {"noise": 0.25},                                  # three times the noise
    "crowded": {"max_objects": 8, "radius_range": (0.12, 0.22)},  # up to 8, occluding each other
    "frame_key": {"key": "frame"},                             # a frame names the target kind
    "corner_key": {"key": "swatch"},                           # a corner square names it
}
LONG_RANGE_VARIANTS = ("frame_key", "corner_key")


def _variant_options(variant: str) -> dict:
    if variant not in DATA_VARIANTS:
        raise ValueError(f"unknown data variant {variant!r}; choose from {sorted(DATA_VARIANTS)}.")
    return DATA_VARIANTS[variant]


def variant_data(variant: str, instances: bool = False) -> Callable:
    """A data function for `train`: (batch_size, image_size, seed) -> a batch of `variant`
    (with instances=True: images, labels and instance maps, for the mask head).

    Taught in notebook 04, section "2. A data set with something to learn".
    """
    options = _variant_options(variant)

    def data(batch_size: int, image_size: int, seed=None):
        return make_shapes_batch(batch_size, image_size, seed=seed, instances=instances,
                                 **options)

    data.__name__ = f"variant_data_{variant}"
    return data


def make_split(variant: str = "shapes", split: str = "test", num_images: int = 256,
               image_size: int = 64, instances: bool = False):
    """A fixed evaluation set of a data variant: split="validation" for design choices,
    split="test" for reported scores (no choice looks at it). The shapes test set is
    make_heldout_set()'s. Same images on every call.

    Returns images [num_images, 3, H, W] and labels [num_images, H, W] (and, with
    instances=True, instance maps [num_images, H, W]).

    Taught in notebook 04, section "2. A data set with something to learn".
    """
    seeds = {"test": HELDOUT_SEED, "validation": VALIDATION_SEED}
    if split not in seeds:
        raise ValueError(f"split={split!r}: use 'validation' (for choices) or 'test' (for scores).")
    return make_shapes_batch(num_images, image_size, seed=seeds[split], instances=instances,
                             **_variant_options(variant))


def make_heldout_set(num_images: int = 256, image_size: int = 64, **shape_options):
    """The fixed held-out set every notebook evaluates on (same images on every call).

    Returns images [num_images, 3, H, W] and labels [num_images, H, W].

    Taught in notebook 04, section "2. A data set with something to learn".
    """
    return make_shapes_batch(num_images, image_size, seed=HELDOUT_SEED, **shape_options)


DISTANCE_EDGES = (1, 8, 16, 24, 32, 48, 64, 91)   # pixels from the cue; 64-px images


def cue_distance(variant: str, image_size: int = 64) -> torch.Tensor:
    """For a long-range variant (LONG_RANGE_VARIANTS): each pixel's distance, in pixels, to
    the nearest pixel of the cue that names the target (0 on the cue). [H, W] float.

    Taught in notebook 05, section "6. Does the latent attention earn its place?".
    """
    where = _variant_options(variant).get("key")
    if not where:
        raise ValueError(f"variant {variant!r} has no cue; use one of {LONG_RANGE_VARIANTS}.")
    where = "frame" if where in (True, "frame") else where
    cue = _cue_mask(where, image_size)
    grid = torch.stack(torch.meshgrid(torch.arange(image_size), torch.arange(image_size),
                                      indexing="ij"), -1).reshape(-1, 2).float()
    return torch.cdist(grid, grid[cue.reshape(-1)]).min(1).values.reshape(image_size, image_size)

