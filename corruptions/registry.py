"""Name registry of image corruptions.

A corruption is a function ``fn(images, severity, *, generator) -> Tensor`` registered as a
:class:`Corruption` under a lowercase snake_case name and a short name (``"additive_gaussian_noise"`` /
``"agn"``). Lookups are case-insensitive and read dashes as underscores. :func:`corrupt` is the
one-line entry point for suites: it seeds a fresh ``torch.Generator`` on the images' device, so the
same ``(name, severity, seed)`` gives the same corrupted batch on every run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral
from typing import Callable

import torch
from torch import Tensor

CorruptionFn = Callable[..., Tensor]
"""``fn(images: Tensor, severity: float, *, generator: torch.Generator) -> Tensor``."""

_SEED_LIMIT = 2**64


def canonical_name(name: str) -> str:
    """Lowercase, with dashes read as underscores: ``"Additive-Gaussian-Noise"`` -> ``"additive_gaussian_noise"``."""
    return name.strip().lower().replace("-", "_")


@dataclass(frozen=True)
class Corruption:
    """A registered corruption.

    Attributes:
        name: canonical snake_case name, e.g. ``"additive_gaussian_noise"``.
        short_name: abbreviation used in tables and on the command line, e.g. ``"agn"``.
        fn: ``fn(images, severity, *, generator) -> Tensor`` on float (N, C, H, W) batches.
        severities: the default evaluation grid, ascending, starting at 0 (for the built-ins: the
            grid of the authors' evaluation).
        max_severity: the largest severity ``fn`` accepts (valid range is [0, max_severity]).
        description: one line saying what the corruption does.
    """

    name: str
    short_name: str
    fn: CorruptionFn
    severities: tuple[float, ...]
    max_severity: float
    description: str

    def __post_init__(self) -> None:
        for label, value in (("name", self.name), ("short_name", self.short_name)):
            if not isinstance(value, str) or not value or value != canonical_name(value):
                raise ValueError(
                    f"corruption {label} must be a non-empty lowercase snake_case string "
                    f"(e.g. 'additive_gaussian_noise'), got {value!r}"
                )
        if not callable(self.fn):
            raise ValueError(f"corruption '{self.name}': fn must be callable, got {self.fn!r}")
        if not math.isfinite(self.max_severity) or self.max_severity <= 0:
            raise ValueError(
                f"corruption '{self.name}': max_severity must be a finite number > 0, got {self.max_severity!r}"
            )
        grid = self.severities
        if (
            not isinstance(grid, tuple)
            or not grid
            or grid[0] != 0
            or any(b <= a for a, b in zip(grid, grid[1:]))
            or grid[-1] > self.max_severity
        ):
            raise ValueError(
                f"corruption '{self.name}': severities must be a strictly ascending tuple starting at 0 "
                f"and ending at most at max_severity={self.max_severity:g}, got {grid!r}"
            )


_CORRUPTIONS: dict[str, Corruption] = {}
_SHORT_NAMES: dict[str, str] = {}


def register_corruption(corruption: Corruption) -> Corruption:
    """Add ``corruption`` to the registry; a name or short name already in use raises ``ValueError``."""
    taken = set(_CORRUPTIONS) | set(_SHORT_NAMES)
    for key in (corruption.name, corruption.short_name):
        if key in taken:
            raise ValueError(
                f"corruption name {key!r} is already registered; names in use: {', '.join(sorted(taken))}"
            )
    _CORRUPTIONS[corruption.name] = corruption
    _SHORT_NAMES[corruption.short_name] = corruption.name
    return corruption


def list_corruptions() -> list[str]:
    """Canonical names of every registered corruption, sorted."""
    return sorted(_CORRUPTIONS)


def get_corruption(name_or_short: str) -> Corruption:
    """The :class:`Corruption` registered under a name or short name; unknown names raise ``ValueError``."""
    key = canonical_name(name_or_short) if isinstance(name_or_short, str) else None
    key = _SHORT_NAMES.get(key, key)
    if key not in _CORRUPTIONS:
        valid = ", ".join(f"{c.name} ({c.short_name})" for c in map(_CORRUPTIONS.get, list_corruptions()))
        raise ValueError(f"unknown corruption {name_or_short!r}; valid names (short): {valid}")
    return _CORRUPTIONS[key]


def corrupt(name: str, images: Tensor, severity: float, *, seed: int) -> Tensor:
    """Corrupt ``images`` with the corruption ``name`` at ``severity``, drawing noise from ``seed``.

    A fresh ``torch.Generator(device=images.device)`` seeded with ``seed`` (an integer in [0, 2**64))
    drives the draw, so the result depends only on (name, images, severity, seed, device, dtype) and
    never on, nor changes, the global RNG. Shapes: (N, C, H, W) -> (N, C, H, W).
    """
    corruption = get_corruption(name)
    if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed < _SEED_LIMIT:
        raise ValueError(f"corrupt: seed must be an integer in [0, 2**64), got {seed!r}")
    if not isinstance(images, Tensor):
        raise ValueError(
            f"corrupt: images must be a torch.Tensor of shape (N, C, H, W), got {type(images).__name__}"
        )
    generator = torch.Generator(device=images.device).manual_seed(int(seed))
    return corruption.fn(images, severity, generator=generator)
