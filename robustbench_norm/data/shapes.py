"""Embedded "shapes": ten classes of solid geometric shapes over procedural textures, the second set for blends.

Classes (label: shape): 0 circle, 1 square, 2 triangle, 3 star (five points), 4 cross (plus sign), 5 ring,
6 hexagon, 7 crescent, 8 frame (hollow square), 9 arrow. 32x32 RGB, balanced labels, deterministic from the seed.

Why it is structurally different from the digit sets (and so a real second domain in a blend): the class is carried
by global geometry (corners, straight vs curved outline, holes, convexity, point symmetry) of one large filled
region, not by the topology of thin pen strokes; there are no neighbouring objects at the edges; the backgrounds are
procedural textures (sinusoidal gratings, rotated checkerboards, smooth value noise) whose spectra are narrow-band or
flat rather than the 1/f spectra of photographs; edges are crisp (little blur). Colour statistics are comparable
(random colours with the same luminance-contrast rule), so a network cannot tell the domains apart by colour alone.

Per image (seeded ``torch.Generator``): shape size r ~ U(0.55, 0.85) of the half-width, horizontal stretch
~ U(0.85, 1.15), rotation ~ U(-30, 30) degrees, centre offset ~ U(-0.15, 0.15) on each axis; background texture
type uniform over the three, texture colours c1 + (c2 - c1) a t with t in [0, 1] the texture, c1, c2 ~ U[0, 1]^3,
a ~ U(0.3, 0.8); fill colour with luminance contrast U(0.25, 0.7) to the background mean; light ramp strength
U(0, 0.2); blur sigma U(0.05, 0.6) px; noise std U(0, 0.02).

Rendering: each class is a signed distance function d(p) in shape units (negative inside), evaluated at the pixel
centres mapped into shape space; coverage = clamp(0.5 - d r / pixel, 0, 1) with pixel = 2 / 32, a one-pixel
antialiased edge. Distances are exact for circle, square, ring, frame and cross and a close bound elsewhere
(edge-line distances), which only affects the width of the antialiased edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .compose import (
    blur_and_noise,
    contrasting_colours,
    generated_bundle,
    illumination,
    luminance,
    uniform,
)
from .imageset import DatasetBundle, ImageSet

NAME = "shapes"
IMAGE_SIZE = 32
DEFAULT_TRAIN_SIZE = 2000
DEFAULT_TEST_SIZE = 500
CLASS_NAMES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "crescent", "frame", "arrow")


def _box(x: Tensor, y: Tensor, half_x: float, half_y: float) -> Tensor:
    qx, qy = x.abs() - half_x, y.abs() - half_y
    outside = torch.sqrt(qx.clamp_min(0) ** 2 + qy.clamp_min(0) ** 2)
    return outside + torch.maximum(qx, qy).clamp_max(0)


def _regular_polygon(x: Tensor, y: Tensor, sides: int, apothem: float, phase: float) -> Tensor:
    """Distance to the nearest edge line of a regular polygon: |p| cos(a) - apothem, a folded into one sector."""
    sector = 2 * math.pi / sides
    angle = torch.remainder(torch.atan2(y, x) - phase, sector) - sector / 2
    return torch.sqrt(x * x + y * y) * torch.cos(angle) - apothem


def _star(x: Tensor, y: Tensor) -> Tensor:
    """Five-pointed star (outer radius 1, inner 0.45, a tip pointing up): distance to the folded edge line."""
    outer, inner, half = 1.0, 0.45, math.pi / 5
    angle = (torch.remainder(torch.atan2(y, x) + math.pi / 2 + half, 2 * half) - half).abs()
    radius = torch.sqrt(x * x + y * y)
    qx, qy = radius * torch.cos(angle), radius * torch.sin(angle)
    ex, ey = inner * math.cos(half) - outer, inner * math.sin(half)
    norm = math.hypot(ex, ey)
    return ((qx - outer) * ey - qy * ex) / norm


def _arrow(x: Tensor, y: Tensor) -> Tensor:
    """Arrow pointing right: shaft box united with a triangular head (tip (0.95, 0), base x = 0.2, half-height 0.55)."""
    shaft = _box(x + 0.3, y, 0.55, 0.17)
    tip, base, half_height = 0.95, 0.2, 0.55
    ex, ey = base - tip, half_height
    norm = math.hypot(ex, ey)
    head = torch.maximum(base - x, ((x - tip) * ey - y.abs() * ex) / norm)
    return torch.minimum(shaft, head)


_SHAPES: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (
    lambda x, y: torch.sqrt(x * x + y * y) - 0.85,
    lambda x, y: _box(x, y, 0.72, 0.72),
    lambda x, y: _regular_polygon(x, 0.25 - y, 3, 0.5, math.pi / 2),
    _star,
    lambda x, y: torch.minimum(_box(x, y, 0.9, 0.26), _box(x, y, 0.26, 0.9)),
    lambda x, y: (torch.sqrt(x * x + y * y) - 0.68).abs() - 0.2,
    lambda x, y: _regular_polygon(x, y, 6, 0.8, 0.0),
    lambda x, y: torch.maximum(torch.sqrt(x * x + y * y) - 0.9, 0.72 - torch.sqrt((x - 0.42) ** 2 + (y + 0.12) ** 2)),
    lambda x, y: _box(x, y, 0.72, 0.72).abs() - 0.16,
    _arrow,
)


def _pixel_axis() -> Tensor:
    return (torch.arange(IMAGE_SIZE, dtype=torch.float32) + 0.5) / IMAGE_SIZE * 2 - 1


def _coverage(labels: Tensor, generator: torch.Generator) -> Tensor:
    """Antialiased shape coverage (N, 1, 32, 32) of each label's shape under a random pose."""
    count = labels.shape[0]
    size = uniform((count, 1, 1), 0.55, 0.85, generator)
    stretch = uniform((count, 1, 1), 0.85, 1.15, generator)
    angle = uniform((count, 1, 1), -30, 30, generator) * math.pi / 180
    centre = uniform((count, 2, 1, 1), -0.15, 0.15, generator)
    axis = _pixel_axis()
    u, v = axis.view(1, 1, -1) - centre[:, 0], axis.view(1, -1, 1) - centre[:, 1]
    x = (u * torch.cos(angle) + v * torch.sin(angle)) / (size * stretch)
    y = (-u * torch.sin(angle) + v * torch.cos(angle)) / size
    distance = torch.empty(count, IMAGE_SIZE, IMAGE_SIZE)
    for label, shape in enumerate(_SHAPES):
        members = labels == label
        distance[members] = shape(x[members], y[members])
    pixel = 2 / IMAGE_SIZE
    return (0.5 - distance * size / pixel).clamp(0, 1).unsqueeze(1)


def _textures(count: int, generator: torch.Generator) -> Tensor:
    """Procedural textures (N, 1, 32, 32) in [0, 1]: grating, rotated checkerboard or smooth value noise."""
    axis = _pixel_axis()
    angle = uniform((count, 1, 1), 0, math.pi, generator)
    along = axis.view(1, 1, -1) * torch.cos(angle) + axis.view(1, -1, 1) * torch.sin(angle)
    across = -axis.view(1, 1, -1) * torch.sin(angle) + axis.view(1, -1, 1) * torch.cos(angle)
    frequency = uniform((count, 1, 1), 0.75, 3.0, generator)
    phase = uniform((count, 1, 1), 0, 2 * math.pi, generator)
    grating = 0.5 + 0.5 * torch.sin(2 * math.pi * frequency * along + phase)
    checker = (torch.sin(math.pi * 1.5 * frequency * along + phase) * torch.sin(math.pi * 1.5 * frequency * across))
    checker = (0.5 + 2 * checker).clamp(0, 1)
    noise = F.interpolate(torch.rand((count, 1, 5, 5), generator=generator), size=(IMAGE_SIZE, IMAGE_SIZE),
                          mode="bicubic", align_corners=False).clamp(0, 1).squeeze(1)
    kind = torch.randint(3, (count, 1, 1), generator=generator)
    return torch.where(kind == 0, grating, torch.where(kind == 1, checker, noise)).unsqueeze(1)


def make_shapes(count: int, generator: torch.Generator, name: str = NAME) -> ImageSet:
    """``count`` shape images, uint8 (count, 3, 32, 32), balanced labels 0..9 (see the module docstring)."""
    if count < 1:
        raise ValueError(f"shapes size {count} is invalid: valid sizes are integers >= 1")
    labels = (torch.arange(count) % 10)[torch.randperm(count, generator=generator)]
    coverage = _coverage(labels, generator)
    first, second = torch.rand((count, 3, 1, 1), generator=generator), torch.rand((count, 3, 1, 1), generator=generator)
    amplitude = uniform((count, 1, 1, 1), 0.3, 0.8, generator)
    background = first + (second - first) * amplitude * _textures(count, generator)
    fill = contrasting_colours(luminance(background).mean(dim=(1, 2)), 0.25, 0.7, generator).view(count, 3, 1, 1)
    images = (background * (1 - coverage) + fill * coverage) * illumination(count, IMAGE_SIZE, 0.2, generator)
    return ImageSet(blur_and_noise(images, (0.05, 0.6), 0.02, generator), labels, name)


def load_shapes_bundle(seed: int, train_size: int, test_size: int) -> DatasetBundle:
    """Train and test sets of the given sizes from the seed's "shapes/train" and "shapes/test" streams."""
    return generated_bundle(NAME, make_shapes, seed, train_size, test_size, IMAGE_SIZE)
