"""Scenario ``domain_shift`` (:mod:`robustbench_norm.scenarios.domain_shift`): one test per (norm, variant)."""

from robustbench_norm.scenarios import domain_shift

SCENARIO = domain_shift.NAME


def test_domain_shift(session, gate, norm: str, variant: str) -> None:
    gate(SCENARIO, domain_shift.run(session, norm, variant))
