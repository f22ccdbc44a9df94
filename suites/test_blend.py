"""Scenario ``blend``: two structurally different data sets trained as one (CN paper, section IV-D).

Quick profile: scikit-learn's digits (as 32x32 RGB) with the embedded ``shapes`` set; paper profile:
CIFAR-100 with MNIST. The context id is the data set a sample comes from. The paper reports BN-based
baselines collapsing on CIFAR-100 + MNIST while CN trains; here a collapse is a row with its numbers
(accuracy, prediction entropy) and a confusion matrix, not an error.
"""

from __future__ import annotations

from suites.bench import Bench, run_mixture

SCENARIO = "blend"


def test_blend(bench: Bench, norm: str) -> None:
    run_mixture(bench, SCENARIO, bench.profile.blend, norm)
