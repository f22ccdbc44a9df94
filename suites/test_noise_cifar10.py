"""Scenario ``noise_cifar10`` (:mod:`robustbench_norm.scenarios.noise`, LocalNorm Fig. 8a-c; paper profile):
one test per (norm, corruption)."""

import pytest

from robustbench_norm.scenarios import available, noise

SCENARIO = noise.CIFAR10


def test_noise_cifar10(session, gate, norm: str, corruption: str) -> None:
    if not available(session, SCENARIO):
        pytest.skip(f"scenario {SCENARIO!r} is not part of profile {session.profile.name!r}")
    gate(SCENARIO, noise.run(session, norm, corruption, SCENARIO))
