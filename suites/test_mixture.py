"""Scenarios ``blend``, ``day_night`` and ``superclass`` (:mod:`robustbench_norm.scenarios.mixture`): one test
per (norm, scenario); ids read ``test_mixture[contextnorm-blend]``."""

import pytest

from robustbench_norm.scenarios import available, mixture


@pytest.mark.parametrize("scenario", mixture.NAMES)
def test_mixture(session, gate, norm: str, scenario: str) -> None:
    if not available(session, scenario):
        pytest.skip(f"scenario {scenario!r} is not part of profile {session.profile.name!r}: "
                    f"{session.profile.notes.get(scenario, 'no settings')}")
    gate(scenario, mixture.run(session, norm, scenario))
