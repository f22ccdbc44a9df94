"""Scenario ``noise`` (:mod:`robustbench_norm.scenarios.noise`): one test per (norm, corruption)."""

from robustbench_norm.scenarios import noise

SCENARIO = noise.NAME


def test_noise(session, gate, norm: str, corruption: str) -> None:
    gate(SCENARIO, noise.run(session, norm, corruption))
