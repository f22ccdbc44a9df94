"""Weak and strong image augmentations for AdaMatch, batched on tensors.

Both functions take float images in [0, 1] of shape (N, C, H, W) on any device and an explicit
``torch.Generator`` on that device; every random number comes from it, so one seed gives the same batch on
every run. Each sample gets its own random parameters; the work is vectorised over the batch
(per-sample parameters broadcast, affine warps through one batched ``affine_grid``/``grid_sample``).

**Weak** (the reference's ``s``/``sm`` primitive, Berthelot et al. 2022): reflect-pad by ``max_shift``
pixels and crop back at a random offset, i.e. a random translation by up to ``max_shift`` pixels in each
direction; then, only if ``flip=True``, a horizontal flip with probability 1/2. The reference uses
shift + mirror (``sm``) with ``max_shift = size // 8`` on natural images; digits must not be mirrored, so
``flip`` is an explicit argument that defaults to ``False``.

**Strong** = an independent weak draw, then ``num_ops`` operations chosen uniformly per sample from
:data:`STRONG_OPS`, each with a magnitude drawn uniformly from [0, 1], then a cutout of half the image
side filled with grey 0.5 (the reference's ``cutout`` at level 1, which it always appends).
The operations and their magnitude ranges are those of the reference's CTAugment list.
**Deviation from the reference:** this is RandAugment-style, not CTAugment: magnitudes are uniform instead
of being drawn from bins whose weights CTAugment learns from the model's accuracy on probe images.
Further differences: ``equalize`` is left out (a per-image histogram look-up, not cheap to vectorise);
the reference's ``translate_x/y`` and ``rescale`` filter choice are left out (its translate offsets are in
pixels, at most 0.3 px, so they are no-ops there); shears turn about the image centre instead of the
corner; values stay float in [0, 1] instead of passing through uint8 PIL images.

Cost: O(N C H W) per operation; every sample goes through exactly ``num_ops`` operations (the batch is
split by chosen operation, not computed for all operations and then selected).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Op = Callable[[Tensor, Tensor, Tensor], Tensor]
"""An operation: (images (n, C, H, W), level (n,) in [0, 1], position (n, 2) in [0, 1)) -> images."""

_LUMA = (0.299, 0.587, 0.114)
_SMOOTH_KERNEL = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))  # PIL SMOOTH / SHARPNESS, divided by 13
_BLUR_KERNEL = tuple(tuple(1.0 if r in (0, 4) or c in (0, 4) else 0.0 for c in range(5)) for r in range(5))  # /16
_CUTOUT_GREY = 0.5


def _check_images(images: Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in [0, 1], got dtype {images.dtype}")


def _check_shift(max_shift: int, images: Tensor) -> None:
    height, width = images.shape[-2:]
    if not isinstance(max_shift, int) or not 0 <= max_shift < min(height, width):
        raise ValueError(f"max_shift must be an int in [0, {min(height, width) - 1}] for {height}x{width} images, "
                         f"got {max_shift!r}")


def _per_sample(values: Tensor) -> Tensor:
    """(n,) -> (n, 1, 1, 1) for broadcasting over (n, C, H, W)."""
    return values.view(-1, 1, 1, 1)


def _blend(images: Tensor, other: Tensor, weight: Tensor) -> Tensor:
    """PIL ``Image.blend``/``ImageEnhance``: ``images + weight (other - images)``, weight (n,) may exceed 1."""
    return images + _per_sample(weight) * (other - images)


def _enhance_factor(level: Tensor) -> Tensor:
    """The reference's enhancement factor 0.1 + 1.9 level (1 = unchanged)."""
    return 0.1 + 1.9 * level


def _grey(images: Tensor) -> Tensor:
    """Luma (ITU-R 601, as PIL's "L" mode) of RGB images, or the image itself for one channel: (n, 1, H, W)."""
    if images.shape[1] != 3:
        return images.mean(dim=1, keepdim=True)
    weights = images.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _filter(images: Tensor, kernel: tuple[tuple[float, ...], ...], keep_border: bool) -> Tensor:
    """Depthwise convolution with a normalised ``kernel``; borders either keep the input (PIL SMOOTH,
    SHARPNESS) or use replicate padding (PIL BLUR)."""
    weight = images.new_tensor(kernel)
    weight = (weight / weight.sum()).expand(images.shape[1], 1, *weight.shape)
    pad = weight.shape[-1] // 2
    if keep_border:
        filtered = F.conv2d(images, weight, groups=images.shape[1])
        out = images.clone()
        out[..., pad:-pad, pad:-pad] = filtered
        return out
    return F.conv2d(F.pad(images, (pad,) * 4, mode="replicate"), weight, groups=images.shape[1])


def _warp(images: Tensor, matrix: Tensor) -> Tensor:
    """Apply per-sample 2x2 ``matrix`` (n, 2, 2), mapping output pixel offsets (x, y) from the image centre
    to input offsets, with bilinear sampling; pixels that come from outside the image are black (as PIL)."""
    height, width = images.shape[-2:]
    half = images.new_tensor([width / 2.0, height / 2.0])
    theta = matrix * half.view(1, 1, 2) / half.view(1, 2, 1)  # normalised coordinates: D^-1 A D
    theta = torch.cat([theta, theta.new_zeros(theta.shape[0], 2, 1)], dim=2)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _identity(images: Tensor, level: Tensor, position: Tensor) -> Tensor:
    return images


def _autocontrast(images: Tensor, level: Tensor, position: Tensor) -> Tensor:
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    span = high - low
    stretched = torch.where(span > 0, (images - low) / span.clamp_min(1e-12), images)
    return _blend(images, stretched, level)


def _blur(images: Tensor, level: Tensor, position: Tensor) -> Tensor:
    return _blend(images, _filter(images, _BLUR_KERNEL, keep_border=False), level)


def _brightness(images: Tensor, level: Tensor, position: Tensor) -> Tensor:
    return _blend(torch.zeros_like(images), images, _enhance_factor(level))


def _color(images: Tensor, level: Tensor, position: Tensor) -> Tensor:
    return _blend(_grey(images).expand_as(images), images, _enhance_factor(level))


def _contrast(images: Tensor, level: Tensor, position: Tensor) -> Tensor:
    mean = _grey(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(mean.expand_as(images), images, _enhance_factor(level))


def _cutout_mask(images: Tensor, side: Tensor, position: Tensor) -> Tensor:
    """True inside a square of ``side`` (n,) pixels centred at ``position`` (n, 2) (fractions of H, W), as
    the reference: rows [y - side//2, y + side//2) clipped to the image, likewise columns."""
    height, width = images.shape[-2:]
    centre_y = (position[:, 0] * height).floor()
    centre_x = (position[:, 1] * width).floor()
    half = (side // 2).to(images.dtype)
    rows = torch.arange(height, device=images.device, dtype=images.dtype).view(1, height, 1)
    cols = torch.arange(width, device=images.device, dtype=images.dtype).view(1, 1, width)
    inside_rows = (rows >= (centre_y - half).view(-1, 1, 1)) & (rows < (centre_y + half).view(-1, 1, 1))
    inside_cols = (cols >= (centre_x - half).view(-1, 1, 1)) & (cols < (centre_x + half).view(-1, 1, 1))
    return (inside_rows & inside_cols).unsqueeze(1)


def _cutout(images: Tensor, level: Tensor, position: Tensor) -> Tensor:
    side = 1 + (level * min(images.shape[-2:]) * 0.499).floor()
    return images.masked_fill(_cutout_mask(images, side, position), _CUTOUT_GREY)


def _invert(images: Tensor, level: Tensor, position: Tensor) -> Tensor:
    return _blend(images, 1.0 - images, level)


def _posterize(images: Tensor, level: Tensor, position: Tensor) -> Tensor:
    bits = 1 + (level * 7.999).floor()
    step = _per_sample(torch.pow(2.0, 8 - bits))
    return ((images * 255).round() / step).floor() * step / 255


def _rescale(images: Tensor, level: Tensor, position: Tensor) -> Tensor:
    zoom = 1 - 2 * 0.25 * level  # the reference crops a border of 0.25 level on each side, then resizes back
    eye = torch.eye(2, device=images.device, dtype=images.dtype)
    return _warp(images, zoom.view(-1, 1, 1) * eye)


def _rotate(images: Tensor, level: Tensor, position: Tensor) -> Tensor:
    angle = (2 * level - 1) * (45 * math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    matrix = torch.stack([torch.stack([cos, -sin], dim=-1), torch.stack([sin, cos], dim=-1)], dim=1)
    return _warp(images, matrix)


def _shear(images: Tensor, level: Tensor, axis: int) -> Tensor:
    shear = (2 * level - 1) * 0.3
    matrix = torch.eye(2, device=images.device, dtype=images.dtype).repeat(len(level), 1, 1)
    matrix[:, axis, 1 - axis] = shear
    return _warp(images, matrix)


def _shear_x(images: Tensor, level: Tensor, position: Tensor) -> Tensor:
    return _shear(images, level, axis=0)


def _shear_y(images: Tensor, level: Tensor, position: Tensor) -> Tensor:
    return _shear(images, level, axis=1)


def _sharpness(images: Tensor, level: Tensor, position: Tensor) -> Tensor:
    return _blend(_filter(images, _SMOOTH_KERNEL, keep_border=True), images, _enhance_factor(level))


def _smooth(images: Tensor, level: Tensor, position: Tensor) -> Tensor:
    return _blend(images, _filter(images, _SMOOTH_KERNEL, keep_border=True), level)


def _solarize(images: Tensor, level: Tensor, position: Tensor) -> Tensor:
    threshold = _per_sample((level * 255.999).floor() / 255)
    return torch.where(images >= threshold, 1.0 - images, images)


STRONG_OPS: dict[str, Op] = {
    "identity": _identity,
    "autocontrast": _autocontrast,
    "blur": _blur,
    "brightness": _brightness,
    "color": _color,
    "contrast": _contrast,
    "cutout": _cutout,
    "invert": _invert,
    "posterize": _posterize,
    "rescale": _rescale,
    "rotate": _rotate,
    "sharpness": _sharpness,
    "shear_x": _shear_x,
    "shear_y": _shear_y,
    "smooth": _smooth,
    "solarize": _solarize,
}
"""The strong operations and their magnitude maps (level in [0, 1], as the reference's CTAugment):
blends and enhancements use factor ``0.1 + 1.9 level`` (brightness, color, contrast, sharpness) or weight
``level`` (autocontrast, blur, invert, smooth); posterize keeps ``1 + floor(7.999 level)`` bits; solarize
inverts values >= ``floor(255.999 level) / 255``; rotate by ``(2 level - 1) 45`` degrees; shear by
``(2 level - 1) 0.3``; rescale zooms in by cropping ``0.25 level`` of each side; cutout blanks a grey
square of side ``1 + floor(0.499 level min(H, W))``."""


def weak_augment(images: Tensor, *, max_shift: int, generator: torch.Generator, flip: bool = False) -> Tensor:
    """Random translation by up to ``max_shift`` pixels (reflect padding) and, if ``flip``, a random
    horizontal flip; (N, C, H, W) float -> same shape, dtype and device, values unchanged in range."""
    _check_images(images)
    _check_shift(max_shift, images)
    n, _, height, width = images.shape
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator, device=images.device)
    flips = torch.rand(n, generator=generator, device=images.device) < 0.5
    if max_shift > 0:
        padded = F.pad(images, (max_shift,) * 4, mode="reflect")
        rows = offsets[:, 0].view(n, 1, 1) + torch.arange(height, device=images.device).view(1, height, 1)
        cols = offsets[:, 1].view(n, 1, 1) + torch.arange(width, device=images.device).view(1, 1, width)
        flat = (rows * padded.shape[-1] + cols).view(n, 1, height * width).expand(-1, images.shape[1], -1)
        images = padded.flatten(2).gather(2, flat).view_as(images)
    if flip:
        images = torch.where(_per_sample(flips), images.flip(-1), images)
    return images


def strong_augment(
    images: Tensor, *, max_shift: int, generator: torch.Generator, flip: bool = False, num_ops: int = 2
) -> Tensor:
    """Weak augmentation, then ``num_ops`` random operations of :data:`STRONG_OPS` per sample with uniform
    magnitudes, then a cutout of side ``1 + floor(0.499 min(H, W))`` (RandAugment-style, see the module
    docstring); (N, C, H, W) float in [0, 1] -> same shape, dtype and device, clamped to [0, 1]."""
    if not isinstance(num_ops, int) or num_ops < 0:
        raise ValueError(f"num_ops must be a non-negative int, got {num_ops!r}")
    images = weak_augment(images, max_shift=max_shift, generator=generator, flip=flip)
    n, device = images.shape[0], images.device
    ops = list(STRONG_OPS.values())
    choices = torch.randint(0, len(ops), (num_ops, n), generator=generator, device=device)
    levels = torch.rand(num_ops, n, generator=generator, device=device, dtype=images.dtype)
    positions = torch.rand(num_ops + 1, n, 2, generator=generator, device=device, dtype=images.dtype)
    for slot in range(num_ops):
        out = images.clone()
        for index, op in enumerate(ops):
            chosen = (choices[slot] == index).nonzero().squeeze(1)
            if chosen.numel():
                out[chosen] = op(images[chosen], levels[slot, chosen], positions[slot, chosen]).clamp(0.0, 1.0)
        images = out
    return _cutout(images, torch.ones(n, device=device, dtype=images.dtype), positions[num_ops])
