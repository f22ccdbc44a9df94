"""Input checks shared by every corruption function.

A corruption takes ``(images, severity, *, generator)``. These helpers enforce the common contract and
raise ``ValueError`` naming the offending value and what would have been valid:

* ``images``    - a floating-point ``torch.Tensor`` of shape (N, C, H, W); values are expected in [0, 1]
  pixel space but are not inspected (that would cost a full pass over the batch);
* ``severity``  - a finite real number in the closed range [0, max_severity] (``bool`` is rejected);
* ``generator`` - a ``torch.Generator`` on the images' device (type, and index when both carry one).

``sampling_dtype`` fixes the precision noise is drawn and applied in: at least float32, so float16 and
bfloat16 batches get noise with the full-precision distribution and are rounded once, at the end.
"""

from __future__ import annotations

from numbers import Real

import torch
from torch import Tensor


def check_images(images: object, corruption: str) -> Tensor:
    """Return ``images`` if it is a floating-point (N, C, H, W) tensor, else raise ``ValueError``."""
    if not isinstance(images, Tensor):
        raise ValueError(
            f"{corruption}: images must be a torch.Tensor of shape (N, C, H, W), got {type(images).__name__}"
        )
    if images.dim() != 4:
        raise ValueError(
            f"{corruption}: images must be 4-D (N, C, H, W), got shape {tuple(images.shape)} "
            f"({images.dim()}-D); add a batch dimension with images.unsqueeze(0)"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"{corruption}: images must have a floating dtype (float16, bfloat16, float32, float64) "
            f"in [0, 1] pixel space, got {images.dtype}; convert uint8 images with images.float() / 255"
        )
    return images


def check_severity(severity: object, corruption: str, symbol: str, max_severity: float) -> float:
    """Return ``severity`` as a float if it is a finite real in [0, max_severity], else raise ``ValueError``."""
    valid = f"a finite real number in [0, {max_severity:g}]"
    if isinstance(severity, bool) or not isinstance(severity, Real):
        raise ValueError(f"{corruption}: severity ({symbol}) must be {valid}, got {severity!r}")
    value = float(severity)
    if not 0.0 <= value <= max_severity:  # also rejects nan and +-inf (max_severity is finite)
        raise ValueError(f"{corruption}: severity ({symbol}) must be {valid}, got {severity!r}")
    return value


def check_generator(generator: object, images: Tensor, corruption: str) -> torch.Generator:
    """Return ``generator`` if it is a ``torch.Generator`` on ``images.device``, else raise ``ValueError``."""
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"{corruption}: generator must be a torch.Generator on {images.device}, "
            f"got {type(generator).__name__}; e.g. torch.Generator(device=images.device).manual_seed(0)"
        )
    gen_device, img_device = generator.device, images.device
    same_index = gen_device.index is None or img_device.index is None or gen_device.index == img_device.index
    if gen_device.type != img_device.type or not same_index:
        raise ValueError(
            f"{corruption}: generator is on {gen_device} but images are on {img_device}; "
            f"the generator must live on the images' device: torch.Generator(device=images.device)"
        )
    return generator


def sampling_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype noise is drawn and applied in: ``dtype`` promoted to at least float32."""
    return torch.promote_types(dtype, torch.float32)


def check_call(images: object, severity: object, generator: object, corruption: str, symbol: str,
               max_severity: float) -> float:
    """Validate one corruption call (images, severity, generator) and return the severity as a float."""
    check_images(images, corruption)
    value = check_severity(severity, corruption, symbol, max_severity)
    check_generator(generator, images, corruption)
    return value
