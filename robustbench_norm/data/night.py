"""Night rendering of any image set: darker, bluer, noisier, with the labels (and contexts) unchanged.

A simple camera model of a scene photographed at night under bluish light. With x in [0, 1] the day pixel value of
channel c, per image n:

    y = e_n * t_c * x ** GAMMA                               (darkening and tint)
    z = clamp(y + sqrt(SHOT * y + READ ** 2) * eps, 0, 1)    (sensor noise, eps ~ N(0, 1) per pixel)

with exposure e_n ~ U(0.35, 0.65), GAMMA = 2.0 (mid-tones are darkened more than highlights), tint t = (0.55, 0.75,
1.0) for (R, G, B) (grey images: t = 1, no tint), and a Poisson-Gaussian sensor noise model: shot-noise gain
SHOT = 0.004 (variance proportional to the signal) and read-noise std READ = 0.02. The result is quantised to uint8.
All randomness comes from a ``torch.Generator`` seeded with ``seed``, so a rendering is reproducible.
"""

from __future__ import annotations

import torch

from .compose import to_uint8, uniform
from .imageset import ImageSet

GAMMA = 2.0
EXPOSURE_RANGE = (0.35, 0.65)
TINT_RGB = (0.55, 0.75, 1.0)
SHOT = 0.004
READ = 0.02


def night_rendering(image_set: ImageSet, seed: int) -> ImageSet:
    """The night version of ``image_set`` (same shape, labels and contexts; name suffixed ``+night``)."""
    channels = image_set.images.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"night rendering needs 1 or 3 channels, got {channels}")
    generator = torch.Generator().manual_seed(seed)
    count = len(image_set)
    tint = torch.tensor(TINT_RGB if channels == 3 else (1.0,)).view(1, channels, 1, 1)
    exposure = uniform((count, 1, 1, 1), *EXPOSURE_RANGE, generator)
    signal = exposure * tint * image_set.as_float().pow_(GAMMA)
    noise = torch.randn(signal.shape, generator=generator) * torch.sqrt(SHOT * signal + READ**2)
    return ImageSet(to_uint8(signal + noise), image_set.labels, f"{image_set.name}+night", image_set.contexts)
