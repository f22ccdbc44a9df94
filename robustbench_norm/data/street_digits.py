"""Embedded "street_digits": synthetic house-number crops in the spirit of SVHN and SynDigits.

Each 32x32 RGB image shows one printed digit (its label) centred roughly in the frame, with the neighbouring digits
of the same number partly visible at the left and right edges, over a natural-photograph background. Generation
is deterministic from the seed, batched with torch ops, and needs no download.

Glyphs: the 12 DejaVu faces bundled with matplotlib (Sans, Serif, Sans Mono; regular, bold, oblique/italic, bold
oblique/italic), each digit rendered once by PIL into a 64x64 mask with its ink box centred (cached).

Per image (all draws from a seeded ``torch.Generator``):

=====================  ===============================================================================
label                  balanced: ``arange(count) % 10`` in a random order
face                   uniform over the 12 faces; the neighbours use the same face
neighbours             left and right digit ~ U{0..9}, each present with probability 0.7, centred one
                       advance width x spacing ~ U(0.95, 1.25) from the label digit
pose                   ink height h ~ U(0.5, 0.8) of the image, horizontal stretch ~ U(0.8, 1.15),
                       shear ~ U(-0.15, 0.15), rotation ~ U(-12, 12) degrees, offset ~ U(-0.12, 0.12)
                       of the half-width on each axis
background             photograph crop (``backgrounds.natural_crops``, side U(32, 192) px) mixed with a
                       flat random colour c: alpha * crop + (1 - alpha) * c, alpha ~ U(0.3, 1)
ink colour             luminance contrast to the mean background luminance ~ U(0.25, 0.7)
                       (``compose.contrasting_colours``)
light                  linear illumination ramp, strength U(0, 0.3)
blur, noise            Gaussian blur sigma ~ U(0.2, 1.1) px, then Gaussian noise std ~ U(0, 0.03)
=====================  ===============================================================================

Composition: image = (background (1 - m) + ink m) * light + noise, m = max of the three glyph masks resampled by
``grid_sample`` under the pose's affine map; then quantised to uint8. Sizes are set by argument (``load_dataset``
defaults: train 2,000, test 500); train and test come from independent streams of the seed.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .backgrounds import natural_crops
from .compose import (
    blur_and_noise,
    contrasting_colours,
    generated_bundle,
    illumination,
    luminance,
    uniform,
)
from .imageset import DatasetBundle, ImageSet

NAME = "street_digits"
IMAGE_SIZE = 32
DEFAULT_TRAIN_SIZE = 2000
DEFAULT_TEST_SIZE = 500
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
)
_CANVAS = 64
_FONT_SIZE = 44
_NEIGHBOUR_PROBABILITY = 0.7


def font_directory() -> Path:
    """matplotlib's bundled TrueType folder (``mpl-data/fonts/ttf``)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=1)
def glyph_bank() -> tuple[Tensor, Tensor, Tensor]:
    """Digit masks (F, 10, 64, 64) in [0, 1], ink-box centred; advance widths (F,) and ink heights (F,).

    Widths and heights are in the canvas's normalised units (the 64-pixel canvas spans 2 units), the height being
    the mean ink height of the ten digits.
    """
    from PIL import Image, ImageDraw, ImageFont

    masks, advances, heights = [], [], []
    for filename in FONT_FILES:
        font = ImageFont.truetype(str(font_directory() / filename), _FONT_SIZE)
        face_masks, face_heights = [], []
        for digit in "0123456789":
            left, top, right, bottom = font.getbbox(digit)
            canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
            origin = ((_CANVAS - (right - left)) / 2 - left, (_CANVAS - (bottom - top)) / 2 - top)
            ImageDraw.Draw(canvas).text(origin, digit, fill=255, font=font)
            face_masks.append(torch.frombuffer(bytearray(canvas.tobytes()), dtype=torch.uint8).view(_CANVAS, _CANVAS))
            face_heights.append(bottom - top)
        masks.append(torch.stack(face_masks))
        advances.append(font.getlength("0") * 2 / _CANVAS)
        heights.append(sum(face_heights) / len(face_heights) * 2 / _CANVAS)
    return torch.stack(masks).float() / 255, torch.tensor(advances), torch.tensor(heights)


def _balanced_labels(count: int, generator: torch.Generator) -> Tensor:
    return (torch.arange(count) % 10)[torch.randperm(count, generator=generator)]


def _glyph_masks(labels: Tensor, generator: torch.Generator) -> Tensor:
    """Ink coverage (N, 1, 32, 32) of the label digit and its neighbours under a random pose."""
    masks, advances, heights = glyph_bank()
    count = labels.shape[0]
    face = torch.randint(len(FONT_FILES), (count,), generator=generator)
    scale = 2 * uniform((count,), 0.5, 0.8, generator) / heights[face]
    stretch = uniform((count,), 0.8, 1.15, generator)
    shear = uniform((count,), -0.15, 0.15, generator)
    angle = uniform((count,), -12, 12, generator) * math.pi / 180
    offset = uniform((count, 2), -0.12, 0.12, generator)
    spacing = advances[face] * uniform((count,), 0.95, 1.25, generator)
    # Output p -> glyph q: q = diag(1 / (scale stretch), 1 / scale) [[1, -shear], [0, 1]] R(-angle) (p - offset).
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotate = torch.stack((torch.stack((cos, sin), -1), torch.stack((-sin, cos), -1)), -2)
    unshear = torch.eye(2).repeat(count, 1, 1)
    unshear[:, 0, 1] = -shear
    unscale = torch.diag_embed(torch.stack((1 / (scale * stretch), 1 / scale), -1))
    linear = unscale @ unshear @ rotate
    shift = -(linear @ offset.unsqueeze(-1)).squeeze(-1)
    coverage = torch.zeros(count, 1, IMAGE_SIZE, IMAGE_SIZE)
    for side in (0, -1, 1):
        digits = labels if side == 0 else torch.randint(10, (count,), generator=generator)
        present = ((torch.rand(count, generator=generator) < _NEIGHBOUR_PROBABILITY) | (side == 0)).float()
        theta = torch.cat((linear, (shift - torch.stack((side * spacing, torch.zeros(count)), -1)).unsqueeze(-1)), -1)
        grid = F.affine_grid(theta, [count, 1, IMAGE_SIZE, IMAGE_SIZE], align_corners=False)
        glyphs = masks[face, digits].unsqueeze(1)
        sampled = F.grid_sample(glyphs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        coverage = torch.maximum(coverage, sampled * present.view(-1, 1, 1, 1))
    return coverage


def make_street_digits(count: int, generator: torch.Generator, name: str = NAME) -> ImageSet:
    """``count`` street-digit images, uint8 (count, 3, 32, 32), balanced labels 0..9 (see the module docstring)."""
    if count < 1:
        raise ValueError(f"street_digits size {count} is invalid: valid sizes are integers >= 1")
    labels = _balanced_labels(count, generator)
    coverage = _glyph_masks(labels, generator)
    crops = natural_crops(count, IMAGE_SIZE, 32, 192, generator)
    flat = torch.rand((count, 3, 1, 1), generator=generator)
    alpha = uniform((count, 1, 1, 1), 0.3, 1.0, generator)
    background = alpha * crops + (1 - alpha) * flat
    ink = contrasting_colours(luminance(background).mean(dim=(1, 2)), 0.25, 0.7, generator).view(count, 3, 1, 1)
    images = (background * (1 - coverage) + ink * coverage) * illumination(count, IMAGE_SIZE, 0.3, generator)
    return ImageSet(blur_and_noise(images, (0.2, 1.1), 0.03, generator), labels, name)


def load_street_digits_bundle(seed: int, train_size: int, test_size: int) -> DatasetBundle:
    """Train and test sets of the given sizes from the seed's "street_digits/train" and ".../test" streams."""
    return generated_bundle(NAME, make_street_digits, seed, train_size, test_size, IMAGE_SIZE)
