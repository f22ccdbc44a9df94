"""Scenario ``superclass``: CIFAR-100 with its 20 superclasses as contexts (CN paper, section IV-C).

Real data only: the paper profile reads CIFAR-100 from ``--data-dir``; the quick profile has no
embedded counterpart with a superclass structure, so the test is skipped there.
"""

from __future__ import annotations

import pytest

from suites.bench import Bench, run_mixture

SCENARIO = "superclass"


def test_superclass(bench: Bench, norm: str) -> None:
    settings = bench.profile.superclass
    if settings is None:
        pytest.skip(f"scenario 'superclass' needs real CIFAR-100 (--profile paper); profile is {bench.profile.name!r}")
    run_mixture(bench, SCENARIO, settings, norm)
