"""The suite's regression gate, end to end: baselines written, then held, then broken by a damaged layer.

The suite runs in a subprocess (``pytester.runpytest_subprocess``); the damage is a pytest plugin loaded
with ``-p`` that replaces BatchNorm's eval-mode output with noisy gains, i.e. a deliberately broken layer
under the real name, evaluated with the healthy cached weights.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

SUITES = Path(__file__).resolve().parents[1] / "suites"

DAMAGE_PLUGIN = '''
import torch
from robustbench_norm.norms.standard import BatchNorm

healthy = BatchNorm.forward

def damaged(self, x):
    y = healthy(self, x)
    return y if self.training else y * torch.rand_like(y)

BatchNorm.forward = damaged
'''


def run_noise(pytester: pytest.Pytester, results: Path, cache: Path, *extra: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        str(SUITES / "test_noise.py"), "--norm=batchnorm", "-k", "agn", "--seeds=1", "--epochs=2",
        f"--results-dir={results}", f"--cache-dir={cache}", "-p", "no:cacheprovider", *extra,
    )


def test_damaged_layer_fails_the_baseline_gate(pytester, tmp_path, monkeypatch):
    results, cache = tmp_path / "results", tmp_path / "cache"
    run_noise(pytester, results, cache, "--update-baselines").assert_outcomes(passed=1)
    baselines = pd.read_csv(results / "quick" / "baselines" / "noise.csv")
    assert (baselines["expected"] > 0.5).any()  # a trained BN net is far above chance on clean digits

    run_noise(pytester, results, cache).assert_outcomes(passed=1)  # same cached weights: the baseline holds

    pytester.makepyfile(damage_plugin=DAMAGE_PLUGIN)
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    broken = run_noise(pytester, results, cache, "-p", "damage_plugin")
    broken.assert_outcomes(failed=1)
    output = broken.stdout.str()
    assert "below committed baseline" in output and "accuracy" in output
