"""Seeded, batched image corruptions on torch tensors, on any device.

Built-ins are the three pixel noises of the LocalNorm paper (:mod:`corruptions.noise`):
``additive_gaussian_noise`` (``agn``), ``additive_poisson_noise`` (``apn``) and
``multiplicative_bernoulli_noise`` (``mbn``). Their names say what the maths is and deliberately avoid
Hendrycks' ImageNet-C names, which denote different noises: ``gaussian_noise`` adds N(0, sigma^2)
independently of the pixel and clips, ``shot_noise`` is the photon noise Poisson(x c) / c, and there is
no pixel-drop corruption in ImageNet-C at all.

Conventions shared by every corruption:

* a corruption is ``fn(images, severity, *, generator) -> Tensor`` on float (N, C, H, W) images in
  [0, 1] pixel space; it acts there, before any model-side standardisation, and returns a new tensor of
  the same shape, dtype and device. The noises are not clipped back to [0, 1] (the authors do not clip);
* randomness comes only from the explicit ``torch.Generator`` (on the images' device), never from the
  global RNG: the same seed gives the same images, whatever ran before;
* ``severity`` is a real number on the corruption's own scale (sigma, lambda, p - not Hendrycks' levels
  1..5), valid in [0, ``max_severity``]; 0 returns an unchanged copy; anything else raises ``ValueError``.

``corrupt("agn", images, 1.0, seed=0)`` is the one-line form; :func:`get_corruption` returns the
:class:`Corruption` record (function, authors' severity grid, maximum). More corruptions - e.g. the
ImageNet-C types re-implemented on tensors - join through :func:`register_corruption`::

    register_corruption(Corruption(name="pixel_shuffle_noise", short_name="psn", fn=my_fn,
                                   severities=(0.0, 0.1, 0.2), max_severity=1.0,
                                   description="..."))

after which every suite and ``corrupt`` accept the new name.
"""

from corruptions.noise import (
    AGN_MAX_SEVERITY,
    AGN_SEVERITIES,
    APN_MAX_SEVERITY,
    APN_SEVERITIES,
    MBN_MAX_SEVERITY,
    MBN_SEVERITIES,
    additive_gaussian_noise,
    additive_poisson_noise,
    multiplicative_bernoulli_noise,
)
from corruptions.registry import (
    Corruption,
    corrupt,
    get_corruption,
    list_corruptions,
    register_corruption,
)

__all__ = [
    "AGN_MAX_SEVERITY",
    "AGN_SEVERITIES",
    "APN_MAX_SEVERITY",
    "APN_SEVERITIES",
    "Corruption",
    "MBN_MAX_SEVERITY",
    "MBN_SEVERITIES",
    "additive_gaussian_noise",
    "additive_poisson_noise",
    "corrupt",
    "get_corruption",
    "list_corruptions",
    "multiplicative_bernoulli_noise",
    "register_corruption",
]
