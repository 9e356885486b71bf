"""Augmentation: differentiable DSA, plain crop+flip, and SelMatch's combined augmentation.

DSA (Zhao & Bilen, 2021) transforms a batch with operations that are differentiable with
respect to the *images*, so a distillation loss can back-propagate through them. A transform
is split in two steps: :func:`sample_dsa` draws every random quantity from a
``torch.Generator`` into a :class:`DSADraw`, and :func:`apply_dsa` applies a draw. Replaying a
draw applies exactly the same transform again (to another tensor, or in another
implementation), which is how the tests and the benchmark compare two code paths.

All random numbers are drawn on the CPU from the caller's generator, so a seed gives the same
augmentation on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from selmatch.core.config import Config, ConfigError, check_choice, check_float, setting

DSA_OPERATIONS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"
AUGMENTATIONS = ("none", "crop_flip", "dsa", "combined")


@dataclass(frozen=True)
class DSAConfig(Config):
    """DSA settings. Defaults are those of the DSA paper's ``ParamDiffAug``, as used by MTT
    and SelMatch. ``single=True`` applies one randomly chosen operation per batch (their
    'S' mode); ``False`` applies every operation of ``strategy`` in turn."""

    strategy: str = setting(
        DEFAULT_DSA_STRATEGY,
        flag="--dsa-strategy",
        metavar="OPS",
        help="'_'-joined DSA operations, from color, crop, cutout, flip, scale and rotate",
    )
    single: bool = setting(
        True,
        cli=False,
        help="draw one operation per batch (DSA's 'S' mode, as MTT and SelMatch); false: "
        "apply every operation of strategy in turn",
    )
    prob_flip: float = setting(0.5, cli=False, help="probability of the horizontal flip, in [0, 1]")
    ratio_scale: float = setting(
        1.2, cli=False, help="scale: factors drawn per axis from [1/r, r], r in [1, 4]"
    )
    ratio_rotate: float = setting(
        15.0, cli=False, help="rotate: angles drawn from [-r, r] degrees, r in [0, 180]"
    )
    ratio_crop_pad: float = setting(
        0.125, cli=False, help="crop: shifts of up to this fraction of the image side, in [0, 0.5]"
    )
    ratio_cutout: float = setting(
        0.5, cli=False, help="cutout: side of the erased square, a fraction of the image side"
    )
    brightness: float = setting(
        1.0, cli=False, help="color: brightness shifts drawn from [-b/2, b/2]"
    )
    saturation: float = setting(2.0, cli=False, help="color: saturation factors drawn from [0, s]")
    contrast: float = setting(0.5, cli=False, help="color: contrast factors drawn from [c, c + 1]")

    def __post_init__(self) -> None:
        operations = self.operations
        if not operations:
            raise ConfigError(
                f"--dsa-strategy must be '_'-joined names from {', '.join(DSA_OPERATIONS)}; "
                f"got {self.strategy!r}"
            )
        for op in operations:
            check_choice("dsa_strategy", op, DSA_OPERATIONS)
        check_float("prob_flip", self.prob_flip, 0.0, 1.0)
        check_float("ratio_scale", self.ratio_scale, 1.0, 4.0)
        check_float("ratio_rotate", self.ratio_rotate, 0.0, 180.0)
        check_float("ratio_crop_pad", self.ratio_crop_pad, 0.0, 0.5)
        check_float("ratio_cutout", self.ratio_cutout, 0.0, 1.0)

    @property
    def operations(self) -> tuple[str, ...]:
        return tuple(op for op in self.strategy.split("_") if op)


@dataclass
class DSADraw:
    """Every random quantity of one DSA call; replaying it repeats the same transform."""

    operations: tuple[str, ...]
    params: dict[str, torch.Tensor] = field(default_factory=dict)


def _uniform(n: int, generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(n, *shape, generator=generator)


def sample_dsa(
    config: DSAConfig, batch_size: int, image_size: tuple[int, int], generator: torch.Generator
) -> DSADraw:
    """Draw the random parameters of one DSA transform of a batch."""
    operations = config.operations
    if config.single:
        chosen = int(torch.randint(len(operations), (1,), generator=generator))
        operations = (operations[chosen],)
    height, width = image_size
    n = batch_size
    params: dict[str, torch.Tensor] = {}
    for op in operations:
        if op == "color":
            params["brightness"] = (_uniform(n, generator) - 0.5) * config.brightness
            params["saturation"] = _uniform(n, generator) * config.saturation
            params["contrast"] = _uniform(n, generator) + config.contrast
        elif op == "crop":
            pad_h = int(height * config.ratio_crop_pad + 0.5)
            pad_w = int(width * config.ratio_crop_pad + 0.5)
            params["crop_pad"] = torch.tensor([pad_h, pad_w])
            params["crop_dy"] = torch.randint(-pad_h, pad_h + 1, (n,), generator=generator)
            params["crop_dx"] = torch.randint(-pad_w, pad_w + 1, (n,), generator=generator)
        elif op == "cutout":
            size_h = int(height * config.ratio_cutout + 0.5)
            size_w = int(width * config.ratio_cutout + 0.5)
            params["cutout_size"] = torch.tensor([size_h, size_w])
            params["cutout_cy"] = torch.randint(
                0, height + (1 - size_h % 2), (n,), generator=generator
            )
            params["cutout_cx"] = torch.randint(
                0, width + (1 - size_w % 2), (n,), generator=generator
            )
        elif op == "flip":
            params["flip"] = _uniform(n, generator) < config.prob_flip
        elif op == "scale":
            low, high = 1.0 / config.ratio_scale, config.ratio_scale
            params["scale"] = _uniform(n, generator, 2) * (high - low) + low
        elif op == "rotate":
            params["rotate"] = (
                (_uniform(n, generator) - 0.5) * 2 * config.ratio_rotate / 180 * math.pi
            )
    return DSADraw(operations, params)


def shift_images(
    x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: tuple[int, int]
) -> torch.Tensor:
    """Translate each image by (dy, dx) pixels, filling with zeros; differentiable in ``x``.
    A shift of d within a zero padding of ``pad`` is a random crop of the padded image."""
    n, channels, height, width = x.shape
    pad_h, pad_w = pad
    padded = F.pad(x, [pad_w, pad_w, pad_h, pad_h])
    rows = torch.arange(height, device=x.device)[None, :] + pad_h + dy.to(x.device)[:, None]
    cols = torch.arange(width, device=x.device)[None, :] + pad_w + dx.to(x.device)[:, None]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(channels, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _apply_op(x: torch.Tensor, op: str, p: dict[str, torch.Tensor]) -> torch.Tensor:
    device = x.device
    if op == "color":
        x = x + p["brightness"].to(device).view(-1, 1, 1, 1)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * p["saturation"].to(device).view(-1, 1, 1, 1) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * p["contrast"].to(device).view(-1, 1, 1, 1) + mean
    if op == "crop":
        pad = (int(p["crop_pad"][0]), int(p["crop_pad"][1]))
        return shift_images(x, p["crop_dy"], p["crop_dx"], pad)
    if op == "cutout":
        size_h, size_w = int(p["cutout_size"][0]), int(p["cutout_size"][1])
        rows = torch.arange(x.shape[2], device=device)[None, :]
        cols = torch.arange(x.shape[3], device=device)[None, :]
        top = p["cutout_cy"].to(device)[:, None] - size_h // 2
        left = p["cutout_cx"].to(device)[:, None] - size_w // 2
        in_rows = (rows >= top) & (rows < top + size_h)
        in_cols = (cols >= left) & (cols < left + size_w)
        keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
        return x * keep[:, None, :, :].to(x.dtype)
    if op == "flip":
        return torch.where(p["flip"].to(device).view(-1, 1, 1, 1), x.flip(3), x)
    if op == "scale":
        s = p["scale"]
        zeros = torch.zeros_like(s[:, 0])
        theta = torch.stack(
            [torch.stack([s[:, 0], zeros, zeros], 1), torch.stack([zeros, s[:, 1], zeros], 1)], 1
        )
        return _affine(x, theta)
    if op == "rotate":
        angle = p["rotate"]
        cos, sin, zeros = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
        theta = torch.stack(
            [torch.stack([cos, sin, zeros], 1), torch.stack([-sin, cos, zeros], 1)], 1
        )
        return _affine(x, theta)
    raise ValueError(f"unknown DSA operation {op!r}")


def apply_dsa(x: torch.Tensor, draw: DSADraw) -> torch.Tensor:
    """Apply a previously drawn DSA transform; gradients flow to ``x``."""
    for op in draw.operations:
        x = _apply_op(x, op, draw.params)
    return x.contiguous()


def dsa(x: torch.Tensor, config: DSAConfig, generator: torch.Generator) -> torch.Tensor:
    """Draw and apply one DSA transform to the batch ``x``."""
    return apply_dsa(x, sample_dsa(config, x.shape[0], (x.shape[2], x.shape[3]), generator))


def dsa_per_image(x: torch.Tensor, config: DSAConfig, generator: torch.Generator) -> torch.Tensor:
    """DSA with the operation drawn for every image, not once per batch (``single`` mode): how
    the SelMatch authors augment ``D_distill`` under combined augmentation, where each image
    is transformed on its own. Without ``single`` every image gets every operation anyway."""
    if not config.single:
        return dsa(x, config, generator)
    operations = config.operations
    choice = torch.randint(len(operations), (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for k, op in enumerate(operations):
        rows = (choice == k).nonzero().squeeze(1).to(x.device)
        if len(rows):
            one = DSAConfig(**{**config.to_dict(), "strategy": op})
            out[rows] = dsa(x[rows], one, generator)
    return out


def crop_flip(
    x: torch.Tensor, generator: torch.Generator, pad: int = 4, fill: torch.Tensor | None = None
) -> torch.Tensor:
    """The plain augmentation: random crop after padding by ``pad``, horizontal flip.

    ``fill`` is the per-channel value of the padding, in the images' own (normalised) space;
    :func:`black` gives torchvision's convention, padding with black pixels. Without it the
    padding is 0 in normalised space, i.e. the mean colour (grey on Fashion-MNIST's black
    background)."""
    n = x.shape[0]
    dy = torch.randint(-pad, pad + 1, (n,), generator=generator)
    dx = torch.randint(-pad, pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    if fill is None:
        out = shift_images(x, dy, dx, (pad, pad))
    else:  # shifting is linear with zero fill: shift(x − f) + f pads with f
        value = fill.to(x).view(1, -1, 1, 1)
        out = shift_images(x - value, dy, dx, (pad, pad)) + value
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), out.flip(3), out)


def black(normalize: Callable[[torch.Tensor], torch.Tensor], channels: int) -> torch.Tensor:
    """The normalised value of a black pixel, per channel (the padding torchvision's
    ``RandomCrop`` adds to an image before it is normalised)."""
    return normalize(torch.zeros(1, channels, 1, 1, dtype=torch.uint8)).reshape(channels)


def combined(
    x: torch.Tensor,
    dsa_mask: torch.Tensor,
    config: DSAConfig,
    generator: torch.Generator,
    fill: torch.Tensor | None = None,
) -> torch.Tensor:
    """SelMatch's combined augmentation: DSA on the samples where ``dsa_mask`` is True
    (``D_distill``), one operation drawn per image as the authors do, and crop+flip (padded
    with ``fill``) on the others (``D_select``), in one batch, order kept."""
    mask = dsa_mask.to(torch.bool).to(x.device)
    out = torch.empty_like(x)
    if bool(mask.any()):
        out[mask] = dsa_per_image(x[mask], config, generator)
    if bool((~mask).any()):
        out[~mask] = crop_flip(x[~mask], generator, fill=fill)
    return out


Augmenter = Callable[[torch.Tensor, "torch.Tensor | None", torch.Generator], torch.Tensor]


def make_augmenter(
    kind: str, config: DSAConfig | None = None, *, fill: torch.Tensor | None = None
) -> Augmenter:
    """An augmentation ``f(images, dsa_mask, generator)`` by name: ``none``, ``crop_flip``,
    ``dsa`` or ``combined`` (needs a mask; without one, every sample gets crop+flip).
    ``fill`` is crop+flip's padding value (see :func:`crop_flip`)."""
    check_choice("augment", kind, AUGMENTATIONS)
    dsa_config = config or DSAConfig()
    if kind == "none":
        return lambda x, mask, gen: x
    if kind == "crop_flip":
        return lambda x, mask, gen: crop_flip(x, gen, fill=fill)
    if kind == "dsa":
        return lambda x, mask, gen: dsa(x, dsa_config, gen)

    def _combined(x: torch.Tensor, mask: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        if mask is None:
            mask = torch.zeros(x.shape[0], dtype=torch.bool)
        return combined(x, mask, dsa_config, gen, fill=fill)

    return _combined
