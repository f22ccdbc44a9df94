"""Size and channel conversion of uint8 image batches, so any data set can feed any network input.

Channels: grey -> RGB repeats the grey plane three times; RGB -> grey is the ITU-R BT.601 luminance
Y = 0.299 R + 0.587 G + 0.114 B. Size: bilinear resampling to a square ``image_size`` x ``image_size`` with
``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=True)`` (the antialias filter
matters when shrinking); non-square images are stretched to the square. Results are rounded and clamped to 0..255.
Work is done in chunks of ``_CHUNK`` images, so memory stays bounded for full-size data sets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)
_CHUNK = 4096


def to_channels(images: Tensor, channels: int) -> Tensor:
    """Convert uint8 (N, C, H, W) images with C in {1, 3} to ``channels`` in {1, 3} channels."""
    if channels not in (1, 3):
        raise ValueError(f"channels={channels} is not supported: valid values are 1 (grey) and 3 (RGB)")
    have = images.shape[1]
    if have not in (1, 3):
        raise ValueError(f"images with {have} channels cannot be converted: valid inputs have 1 or 3 channels")
    if have == channels:
        return images
    if channels == 3:
        return images.repeat(1, 3, 1, 1)
    weights = torch.tensor(LUMINANCE_WEIGHTS, dtype=torch.float32).view(1, 3, 1, 1)
    chunks = [
        (part.to(torch.float32) * weights).sum(dim=1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
        for part in images.split(_CHUNK)
    ]
    return torch.cat(chunks) if chunks else images[:, :1]


def to_size(images: Tensor, image_size: int) -> Tensor:
    """Resample uint8 (N, C, H, W) images to (N, C, image_size, image_size) (bilinear, antialiased)."""
    if image_size < 1:
        raise ValueError(f"image_size={image_size} is invalid: valid values are integers >= 1")
    if tuple(images.shape[2:]) == (image_size, image_size):
        return images
    chunks = [
        F.interpolate(part.to(torch.float32), size=(image_size, image_size), mode="bilinear",
                      align_corners=False, antialias=True).round_().clamp_(0, 255).to(torch.uint8)
        for part in images.split(_CHUNK)
    ]
    if not chunks:
        return images.new_empty((0, images.shape[1], image_size, image_size))
    return torch.cat(chunks)


def convert_images(images: Tensor, *, image_size: int, channels: int) -> Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, channels, image_size, image_size); resamples on the fewer channels."""
    if channels > images.shape[1]:
        return to_channels(to_size(images, image_size), channels)
    return to_size(to_channels(images, channels), image_size)
