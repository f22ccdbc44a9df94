"""The benchmark's pytest interface: options, parametrisation and the shared ``bench`` fixture.

``pytest suites/ --norm=localnorm`` runs every scenario (one ``test_<scenario>.py`` each) for one norm,
writes long-format rows to ``<results-dir>/<profile>/<scenario>.csv``, confusion matrices and summaries
beside them, and fails a test whose numbers fall below the committed baselines (``--update-baselines``
rewrites those instead). Test ids read ``test_noise[localnorm-agn]`` so ``-k`` selects norms and conditions.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustbench_norm.norms import check_kwargs, get_norm, list_norms
from robustbench_norm.profiles import PROFILES, get_profile
from robustbench_norm.results import summarize_results_dir
from suites.bench import Bench, corruption_ids

SCENARIO_PARAMETERS = ("corruption", "train_batch_size", "variant")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("robustbench-norm", "normalization-layer benchmark")
    group.addoption("--norm", action="append", default=[],
                    help="norm(s) to benchmark, repeatable or comma-separated (default: every registered norm)")
    group.addoption("--norm-kwargs", default="{}", help="JSON object of kwargs passed to every selected norm")
    group.addoption("--profile", default="quick", choices=PROFILES, help="quick (embedded data, CPU) or paper")
    group.addoption("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to train and evaluate")
    group.addoption("--data-dir", default=None, help="folder holding the real data sets (paper profile)")
    group.addoption("--download", action="store_true", help="download missing real data sets into --data-dir")
    group.addoption("--seeds", type=int, default=3, help="number of training seeds (0..N-1), default 3")
    group.addoption("--results-dir", default=None, help="where result CSVs go (default: <rootdir>/leaderboards)")
    group.addoption("--cache-dir", default=None, help="checkpoint cache (default: the user cache)")
    group.addoption("--update-baselines", action="store_true",
                    help="rewrite the regression baselines from this run instead of checking against them")
    group.addoption("--epochs", type=int, default=None, help="override every schedule's epochs (smoke runs)")


def selected_norms(config: pytest.Config) -> list[str]:
    """The --norm values (canonical names), validated; every registered norm when none is given."""
    requested = [n for value in config.getoption("norm") for n in value.split(",") if n.strip()]
    try:
        names = [get_norm(n).name for n in requested] or list_norms()
    except ValueError as error:
        raise pytest.UsageError(f"--norm: {error}") from None
    return list(dict.fromkeys(names))


def user_norm_kwargs(config: pytest.Config) -> dict:
    raw = config.getoption("norm_kwargs")
    try:
        kwargs = json.loads(raw)
    except json.JSONDecodeError as error:
        raise pytest.UsageError(f"--norm-kwargs is not valid JSON ({error}): {raw!r}") from None
    if not isinstance(kwargs, dict):
        raise pytest.UsageError(f"--norm-kwargs must be a JSON object, got {raw!r}")
    return kwargs


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config.option, "norm"):
        return
    # One torch thread per process, always: float reductions (and so trained weights) depend on the thread
    # count, and the committed baselines must hold for `pytest suites/` and `pytest suites/ -n 2` alike.
    # Parallelise with xdist workers instead (oversubscribed torch threads crawl on a busy CPU anyway).
    torch.set_num_threads(1)
    kwargs = user_norm_kwargs(config)
    for norm in selected_norms(config):
        try:
            check_kwargs(norm, kwargs)
        except ValueError as error:
            raise pytest.UsageError(f"--norm-kwargs: {error}") from None
    if config.getoption("seeds") < 1:
        raise pytest.UsageError(f"--seeds must be >= 1, got {config.getoption('seeds')}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    config = metafunc.config
    if "norm" in metafunc.fixturenames:
        metafunc.parametrize("norm", selected_norms(config), ids=str)
    profile = get_profile(config.getoption("profile"))
    if "corruption" in metafunc.fixturenames:
        names = list(profile.noise.severities)
        metafunc.parametrize("corruption", names, ids=corruption_ids(names))
    if "train_batch_size" in metafunc.fixturenames:
        sizes = profile.batch_size.batch_sizes
        metafunc.parametrize("train_batch_size", sizes, ids=[f"bs{b}" for b in sizes])
    if "variant" in metafunc.fixturenames:
        metafunc.parametrize("variant", ("source_only", "adamatch"))


@pytest.fixture(scope="session")
def bench(pytestconfig: pytest.Config) -> Bench:
    return Bench.from_config(pytestconfig, user_norm_kwargs(pytestconfig))


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if hasattr(config, "workerinput") or not hasattr(config.option, "norm"):
        return  # xdist workers leave the summaries to the controller
    results_dir = Bench.results_dir_of(config)
    if (results_dir / config.getoption("profile")).is_dir():
        summarize_results_dir(Path(results_dir), config.getoption("profile"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group each norm's tests (``pytest -n 2 --dist loadgroup``): a worker trains a norm's models once."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "norm" in callspec.params:
            item.add_marker(pytest.mark.xdist_group(name=callspec.params["norm"]))
