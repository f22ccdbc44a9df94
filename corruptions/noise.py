"""The three pixel-noise corruptions of LocalNorm (Yin et al., "LocalNorm: Robust Image Classification
through Dynamically Regularized Normalization", section 4 "Image Noise").

* ``additive_gaussian_noise`` (agn): ``x_hat = x (1 + xi)``, ``xi ~ N(0, sigma^2)`` per channel and
  pixel; severity sigma in [0, 5].
* ``additive_poisson_noise`` (apn): ``x_hat = x (1 + k)``, ``k ~ Poisson(lambda)`` per channel and pixel;
  severity lambda in [0, 1].
* ``multiplicative_bernoulli_noise`` (mbn): ``x_hat = x b``, ``b ~ Bernoulli(1 - p)`` per pixel, shared
  by all channels; severity p in [0, 1].

Common rules (each function's docstring repeats what is specific to it):

* Input: float (N, C, H, W) images in [0, 1] pixel space; the corruption acts there, before any
  model-side standardisation. Any C (gray or RGB). Other ranks, integer dtypes -> ``ValueError``.
* Output: a new tensor of the same shape, dtype and device, **not clipped** to [0, 1] - the authors'
  code does not clip, and clipping would change the noise distribution the severities refer to.
* Randomness: drawn only from the explicit ``generator`` (which must live on the images' device),
  never from the global RNG; the same generator state gives the same output. Noise is drawn and applied
  in ``promote_types(images.dtype, float32)`` and rounded once to the images' dtype, so float16 and
  bfloat16 batches get full-precision noise and share their draws with float32 for a given seed.
* Severity 0 returns ``images.clone()`` without drawing (the generator is not advanced); a severity
  outside [0, max] (negative, too large, nan, inf) or a non-number -> ``ValueError``.
* Maximum severities: the largest value of the authors' evaluation grid for AGN (5) and APN (1, also
  the paper's stated range sigma_n in [0, 1]); for MBN p = 1 is kept as the closed end of a probability
  (every pixel dropped, an all-zero batch). The caps also catch integer Hendrycks-style levels (1..5)
  passed to APN or MBN by mistake.
* Cost: O(N C H W) time, one noise tensor of the input's size (MBN: of size N H W) as extra memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

from corruptions.registry import Corruption, register_corruption
from corruptions.validation import (
    check_call,
    sampling_dtype,
)

AGN_SEVERITIES: tuple[float, ...] = (0.0, 0.1, 0.2, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
"""Standard deviations sigma of the authors' AGN evaluation (Stanford Cars scripts)."""

APN_SEVERITIES: tuple[float, ...] = (0.0, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
"""Poisson rates lambda of the authors' APN evaluation."""

MBN_SEVERITIES: tuple[float, ...] = (
    0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45,
    0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95,
)  # fmt: skip
"""Pixel drop probabilities p of the authors' MBN evaluation."""

AGN_MAX_SEVERITY = 5.0
APN_MAX_SEVERITY = 1.0
MBN_MAX_SEVERITY = 1.0


def additive_gaussian_noise(images: Tensor, severity: float, *, generator: torch.Generator) -> Tensor:
    """Additive Gaussian noise (AGN): ``x_hat = x (1 + xi)``, ``xi ~ N(0, sigma^2)`` with ``sigma = severity``.

    The paper's formula (LocalNorm, section 4): one independent standard-normal draw per image, channel
    and pixel, scaled by ``sigma``. The noise term ``x xi`` is added to the image, so its scale follows
    the pixel value: black pixels stay black. (This is Hendrycks' ``speckle_noise`` maths without its
    clip, not his ``gaussian_noise``, which adds ``N(0, sigma^2)`` independently of ``x``.)

    Deviation from the authors' code: their scripts draw *uniform* noise, ``x (1 + sigma u)`` with
    ``u ~ U[0, 1)`` ("gaussian_pos", which also brightens on average) or ``u ~ U[-0.5, 0.5)``
    ("gaussian_neg", standard deviation ``sigma / sqrt(12)``). We follow the paper's Gaussian, so a
    given sigma is stronger here than in their curves.

    Args:
        images: float (N, C, H, W) in [0, 1] pixel space.
        severity: ``sigma`` in [0, 5]; the authors' grid is :data:`AGN_SEVERITIES`.
        generator: ``torch.Generator`` on ``images.device``.

    Returns:
        (N, C, H, W), same dtype and device, not clipped (values below 0 and above 1 occur). Severity 0
        returns ``images.clone()`` without advancing the generator.
    """
    name = "additive_gaussian_noise"
    sigma = check_call(images, severity, generator, name, "sigma", AGN_MAX_SEVERITY)
    if sigma == 0.0:
        return images.clone()
    xi = torch.randn(images.shape, generator=generator, dtype=sampling_dtype(images.dtype), device=images.device)
    return xi.mul_(sigma).add_(1.0).mul_(images).to(images.dtype)


def additive_poisson_noise(images: Tensor, severity: float, *, generator: torch.Generator) -> Tensor:
    """Additive Poisson noise (APN): ``x_hat = x (1 + k)``, ``k ~ Poisson(lambda)`` with ``lambda = severity``.

    The authors' code (the paper's own definition, "Poisson(0, sigma_n)" with ``x + 255 xi`` or
    ``x (1 + xi)``, is ill-posed): one independent integer count per image, channel and pixel, so each
    pixel is multiplied by 1, 2, 3, ... with Poisson probabilities; ``E[k] = Var[k] = lambda``. The noise
    is not zero-mean (the image brightens by a factor ``1 + lambda`` on average). Not Hendrycks'
    ``shot_noise``, which is the signal-dependent photon noise ``Poisson(x c) / c``.

    Args:
        images: float (N, C, H, W) in [0, 1] pixel space.
        severity: ``lambda`` in [0, 1]; the authors' grid is :data:`APN_SEVERITIES`.
        generator: ``torch.Generator`` on ``images.device``.

    Returns:
        (N, C, H, W), same dtype and device, not clipped (values above 1 occur). Severity 0 returns
        ``images.clone()`` without advancing the generator.
    """
    name = "additive_poisson_noise"
    rate = check_call(images, severity, generator, name, "lambda", APN_MAX_SEVERITY)
    if rate == 0.0:
        return images.clone()
    rates = torch.full(images.shape, rate, dtype=sampling_dtype(images.dtype), device=images.device)
    counts = torch.poisson(rates, generator=generator)
    return counts.add_(1.0).mul_(images).to(images.dtype)


def multiplicative_bernoulli_noise(images: Tensor, severity: float, *, generator: torch.Generator) -> Tensor:
    """Multiplicative Bernoulli noise (MBN): each pixel is dropped (set to 0 in all channels) with probability p.

    ``x_hat[n, c, h, w] = x[n, c, h, w] b[n, h, w]``, ``b ~ Bernoulli(1 - p)`` independently per image
    and pixel, ``p = severity``; ``b`` is drawn as ``u >= p`` with ``u ~ U[0, 1)``. One mask is shared by
    all channels, as in the authors' code. The paper writes ``xi ~ Bernoulli(sigma_n)`` but says pixels
    are *removed* with probability ``sigma_n``; we follow the text and the code (drop probability p).
    Kept pixels are returned unchanged. Cost: one uniform draw per pixel (N H W), not per channel.

    Args:
        images: float (N, C, H, W) in [0, 1] pixel space.
        severity: drop probability ``p`` in [0, 1] (p = 1 gives an all-zero batch); the authors' grid is
            :data:`MBN_SEVERITIES`.
        generator: ``torch.Generator`` on ``images.device``.

    Returns:
        (N, C, H, W), same dtype and device. Severity 0 returns ``images.clone()`` without advancing
        the generator.
    """
    name = "multiplicative_bernoulli_noise"
    p = check_call(images, severity, generator, name, "p", MBN_MAX_SEVERITY)
    if p == 0.0:
        return images.clone()
    n, _, h, w = images.shape
    u = torch.rand((n, 1, h, w), generator=generator, dtype=sampling_dtype(images.dtype), device=images.device)
    return images * (u >= p)


register_corruption(
    Corruption(
        name="additive_gaussian_noise",
        short_name="agn",
        fn=additive_gaussian_noise,
        severities=AGN_SEVERITIES,
        max_severity=AGN_MAX_SEVERITY,
        description="x (1 + xi), xi ~ N(0, sigma^2) per channel and pixel (LocalNorm paper)",
    )
)
register_corruption(
    Corruption(
        name="additive_poisson_noise",
        short_name="apn",
        fn=additive_poisson_noise,
        severities=APN_SEVERITIES,
        max_severity=APN_MAX_SEVERITY,
        description="x (1 + k), k ~ Poisson(lambda) per channel and pixel (LocalNorm authors' code)",
    )
)
register_corruption(
    Corruption(
        name="multiplicative_bernoulli_noise",
        short_name="mbn",
        fn=multiplicative_bernoulli_noise,
        severities=MBN_SEVERITIES,
        max_severity=MBN_MAX_SEVERITY,
        description="each pixel set to 0 in all channels with probability p (LocalNorm)",
    )
)
