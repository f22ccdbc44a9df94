"""What every architecture shares: the norm-factory type and the check of the build arguments.

An architecture never names a normalization layer. It takes ``norm_layer``, a callable that maps a channel
count to a fresh ``nn.Module`` (torchvision's and timm's convention), and calls it once for every place the
architecture has a norm. :func:`robustbench_norm.models.norm_factory` makes such a callable from a
registered norm name.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

NormLayer = Callable[[int], nn.Module]


def check_geometry(
    arch: str, *, num_classes: int, in_channels: int, image_size: int, min_image_size: int
) -> None:
    """Raise ``ValueError`` unless the classes, channels and (square) image size are usable by ``arch``."""
    for name, value, minimum in (
        ("num_classes", num_classes, 1),
        ("in_channels", in_channels, 1),
        ("image_size", image_size, min_image_size),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{arch}: {name} must be an int >= {minimum}, got {value!r}")
