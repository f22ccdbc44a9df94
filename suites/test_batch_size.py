"""Scenario ``batch_size`` (:mod:`robustbench_norm.scenarios.batch_size`): one test per (norm, batch size)."""

from robustbench_norm.scenarios import batch_size

SCENARIO = batch_size.NAME


def test_batch_size(session, gate, norm: str, train_batch_size: int) -> None:
    gate(SCENARIO, batch_size.run(session, norm, train_batch_size))
