"""Scenario ``cifar_mixture`` (:mod:`robustbench_norm.scenarios.cifar_mixture`, CN Tables V/VI; paper profile):
one test per (norm, data set)."""

import pytest

from robustbench_norm.scenarios import available, cifar_mixture

SCENARIO = cifar_mixture.NAME


def test_cifar_mixture(session, gate, norm: str, dataset: str) -> None:
    if not available(session, SCENARIO):
        pytest.skip(f"scenario {SCENARIO!r} is not part of profile {session.profile.name!r}")
    gate(SCENARIO, cifar_mixture.run(session, norm, dataset))
