"""The suite's regression gate, end to end: baselines written, then held, then broken by a damaged layer.

The suite runs in a subprocess (``pytester.runpytest_subprocess``); the damage is a pytest plugin loaded
with ``-p`` that replaces BatchNorm's eval-mode output with noisy gains, i.e. a deliberately broken layer
under the real name, evaluated with the healthy cached weights.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

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
        f"--results-dir={results}", f"--baselines-dir={results}", f"--cache-dir={cache}", "-p", "no:cacheprovider",
        *extra,
    )


def test_damaged_layer_fails_the_baseline_gate(pytester, tmp_path, monkeypatch):
    results, cache = tmp_path / "results", tmp_path / "cache"
    refused = run_noise(pytester, results, cache, "--update-baselines")  # a smoke run (--epochs 2, 1 seed)
    assert refused.ret == pytest.ExitCode.USAGE_ERROR and "--force-baselines" in refused.stderr.str()
    assert not (results / "quick" / "baselines").exists()
    run_noise(pytester, results, cache, "--update-baselines", "--force-baselines").assert_outcomes(passed=1)
    baselines = pd.read_csv(results / "quick" / "baselines" / "noise.csv")
    assert (baselines["expected"] > 0.5).any()  # a trained BN net is far above chance on clean MNIST

    run_noise(pytester, results, cache).assert_outcomes(passed=1)  # same cached weights: the baseline holds

    pytester.makepyfile(damage_plugin=DAMAGE_PLUGIN)
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    broken = run_noise(pytester, results, cache, "-p", "damage_plugin")
    broken.assert_outcomes(failed=1)
    output = broken.stdout.str()
    assert "below committed baseline" in output and "accuracy" in output


def test_a_smoke_run_never_replaces_the_rows_of_another_schedule(pytester, tmp_path):
    results, cache = tmp_path / "results", tmp_path / "cache"
    run_noise(pytester, results, cache).assert_outcomes(passed=1)
    run_noise(pytester, results, cache, "--epochs=1").assert_outcomes(passed=1)
    rows = pd.read_csv(results / "quick" / "noise.csv")
    assert rows["recipe"].nunique() == 2  # both runs' rows are kept, told apart by their recipe
    assert len(rows) == 2 * len(rows[rows["recipe"] == rows["recipe"].iloc[0]])


@pytest.mark.parametrize("option, named", [
    ("--epochs=0", "--epochs must be >= 1"),
    ("--seeds=0", "--seeds must be >= 1"),
    ('--norm-kwargs={"num_groups": "4"}', "must be an int"),
    ("--norm=nosuchnorm", "unknown norm 'nosuchnorm'"),
    pytest.param("--device=cuda", "CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
])
def test_bad_options_are_one_usage_error_before_any_work(pytester, tmp_path, option, named):
    run = pytester.runpytest_subprocess(str(SUITES / "test_noise.py"), "--norm=groupnorm", option,
                                        f"--results-dir={tmp_path / 'r'}", f"--cache-dir={tmp_path / 'c'}")
    assert run.ret == pytest.ExitCode.USAGE_ERROR
    assert named in run.stderr.str() and run.stderr.str().count(named) == 1
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()
