"""Batched image-synthesis operations shared by the embedded generators (street digits, shapes, night rendering).

All functions work on float32 batches in [0, 1] and draw randomness only from the ``torch.Generator`` they are
given (never the global RNG), so a generator seeded once reproduces a whole data set. ``stream`` derives
independent, reproducible generators from one user seed and a stream name ("train", "test", "night", ...).
"""

from __future__ import annotations

import zlib
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .convert import LUMINANCE_WEIGHTS
from .imageset import DatasetBundle, ImageSet


def stream(seed: int, name: str) -> torch.Generator:
    """A CPU ``torch.Generator`` for the named random stream of ``seed`` (NumPy ``SeedSequence`` spawn key)."""
    sequence = np.random.SeedSequence(seed, spawn_key=(zlib.crc32(name.encode()),))
    return torch.Generator().manual_seed(int(sequence.generate_state(1, dtype=np.uint64)[0]))


def uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> Tensor:
    """Float32 samples of U(low, high) with the given shape."""
    return torch.rand(shape, generator=generator) * (high - low) + low


def luminance(rgb: Tensor) -> Tensor:
    """BT.601 luminance of RGB values along dim 1: (N, 3, ...) -> (N, ...)."""
    weights = torch.tensor(LUMINANCE_WEIGHTS, dtype=rgb.dtype).view(1, 3, *([1] * (rgb.dim() - 2)))
    return (rgb * weights).sum(dim=1)


def contrasting_colours(reference: Tensor, low: float, high: float, generator: torch.Generator) -> Tensor:
    """Random RGB colours (N, 3) whose luminance differs from ``reference`` (N,) by a contrast c ~ U(low, high).

    The sign of the difference is random where both directions fit in [0, 1], otherwise the direction with room
    (or, where neither fits, the one with more room, clamped). A random hue r ~ U[0, 1]^3 is brought to the target
    luminance L exactly by mixing with white, r + (1 - r) (L - Y(r)) / (1 - Y(r)), or scaling, r L / Y(r).
    """
    count = reference.shape[0]
    contrast = uniform((count,), low, high, generator)
    can_up, can_down = reference + contrast <= 1, reference - contrast >= 0
    want_up = torch.rand(count, generator=generator) < 0.5
    up = torch.where(can_up & can_down, want_up, torch.where(can_up | can_down, can_up, reference < 0.5))
    target = torch.where(up, reference + contrast, reference - contrast).clamp(0, 1)
    hue = torch.rand((count, 3), generator=generator)
    hue_luma = luminance(hue).clamp(1e-4, 1 - 1e-4)
    lighter = hue + (1 - hue) * ((target - hue_luma) / (1 - hue_luma)).unsqueeze(1)
    darker = hue * (target / hue_luma).unsqueeze(1)
    return torch.where((target > hue_luma).unsqueeze(1), lighter, darker).clamp(0, 1)


def illumination(count: int, size: int, strength: float, generator: torch.Generator) -> Tensor:
    """Multiplicative linear light ramps (count, 1, size, size): 1 + a (u cos phi + v sin phi), a ~ U(0, strength).

    u, v are pixel-centre coordinates in [-1, 1], phi ~ U(0, 2 pi).
    """
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    angle = uniform((count, 1, 1), 0, 2 * torch.pi, generator)
    amount = uniform((count, 1, 1), 0, strength, generator)
    ramp = axis.view(1, 1, size) * torch.cos(angle) + axis.view(1, size, 1) * torch.sin(angle)
    return (1 + amount * ramp).unsqueeze(1)


def gaussian_blur(images: Tensor, sigma: Tensor, radius: int = 3) -> Tensor:
    """Separable Gaussian blur of (N, C, H, W) with a per-image ``sigma`` (N,); reflect padding at the borders.

    Kernel taps exp(-k^2 / (2 sigma^2)), k = -radius..radius, normalised to sum 1, applied along the width and
    then the height as a weighted sum of the 2 radius + 1 shifted copies: cost O(N C H W radius). sigma -> 0 gives
    the identity.
    """
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    taps = torch.exp(-offsets.view(1, -1) ** 2 / (2 * sigma.clamp_min(1e-3).view(-1, 1) ** 2))
    taps = (taps / taps.sum(dim=1, keepdim=True)).view(-1, 2 * radius + 1, 1, 1, 1)
    height, width = images.shape[2:]
    padded = F.pad(images, (radius, radius, 0, 0), mode="reflect")
    images = sum(taps[:, k] * padded[..., k:k + width] for k in range(2 * radius + 1))
    padded = F.pad(images, (0, 0, radius, radius), mode="reflect")
    return sum(taps[:, k] * padded[..., k:k + height, :] for k in range(2 * radius + 1))


def to_uint8(images: Tensor) -> Tensor:
    """Float images in [0, 1] (values outside are clamped) -> uint8 0..255, rounded to nearest."""
    return images.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def blur_and_noise(images: Tensor, blur: tuple[float, float], noise: float, generator: torch.Generator) -> Tensor:
    """Per-image Gaussian blur (sigma ~ U(blur)) then sensor noise (std ~ U(0, noise)), as uint8 images."""
    count = images.shape[0]
    images = gaussian_blur(images, uniform((count,), *blur, generator))
    images = images + torch.randn(images.shape, generator=generator) * uniform((count, 1, 1, 1), 0, noise, generator)
    return to_uint8(images)


def generated_bundle(name: str, make: Callable[[int, torch.Generator, str], ImageSet], seed: int,
                     train_size: int, test_size: int, image_size: int) -> DatasetBundle:
    """Train and test sets of a generated RGB 10-class set from the seed's "<name>/train" and "<name>/test" streams."""
    return DatasetBundle(
        name=name,
        train=make(train_size, stream(seed, f"{name}/train"), f"{name}/train"),
        test=make(test_size, stream(seed, f"{name}/test"), f"{name}/test"),
        num_classes=10,
        channels=3,
        image_size=image_size,
    )

