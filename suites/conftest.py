"""The benchmark's pytest interface: options (checked once, before any work), parametrisation, the gate.

``pytest suites/ --norm=localnorm`` runs every scenario (one ``test_<scenario>.py`` each, a thin wrapper over
:mod:`robustbench_norm.scenarios`) for one norm, writes long-format rows to
``<results-dir>/<profile>/<scenario>.csv`` (default ``results/``, not the committed ``leaderboards/``),
confusion matrices and summaries beside them, and fails a test whose numbers fall below the committed
baselines in ``<baselines-dir>/<profile>/baselines/`` (default ``leaderboards/``). Test ids read
``test_noise[localnorm-agn]`` so ``-k`` selects norms and conditions.

Committed results change only by an explicit act: ``--results-dir leaderboards`` to write rows there, and
``--update-baselines`` to rewrite baselines, which is refused for a run that differs from the profile
(``--epochs``, fewer seeds than the profile's 3, ``--norm-kwargs``) unless ``--force-baselines`` is given.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from robustbench_norm.norms import build_norm, check_kwargs, get_norm, list_norms
from robustbench_norm.profiles import PROFILES
from robustbench_norm.results import ResultStore, check_against_baselines, summarize_results_dir, update_baselines
from robustbench_norm.results.baselines import baseline_path
from robustbench_norm.scenarios import Outcome, Session, get_scenario, record
from robustbench_norm.training import resolve_device

PROFILE_SEEDS = 3
_PROBE_CHANNELS = 64  # --norm-kwargs are tried on a layer of this width (every quick and paper net has one)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("robustbench-norm", "normalization-layer benchmark")
    group.addoption("--norm", action="append", default=[],
                    help="norm(s) to benchmark, repeatable or comma-separated (default: every registered norm)")
    group.addoption("--norm-kwargs", default="{}", help="JSON object of kwargs passed to every selected norm")
    group.addoption("--profile", default="quick", choices=PROFILES, help="quick (embedded data, CPU) or paper")
    group.addoption("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to train and evaluate")
    group.addoption("--data-dir", default=None, help="folder holding the real data sets (paper profile)")
    group.addoption("--download", action="store_true", help="download missing real data sets into --data-dir")
    group.addoption("--seeds", type=int, default=PROFILE_SEEDS, help="number of training seeds (0..N-1), default 3")
    group.addoption("--results-dir", default=None, help="where result CSVs go (default: <rootdir>/results)")
    group.addoption("--baselines-dir", default=None,
                    help="where the regression baselines are read and written (default: <rootdir>/leaderboards)")
    group.addoption("--cache-dir", default=None, help="checkpoint cache (default: the user cache)")
    group.addoption("--update-baselines", action="store_true",
                    help="rewrite the regression baselines from this run instead of checking against them")
    group.addoption("--force-baselines", action="store_true",
                    help="allow --update-baselines for a run that differs from the profile")
    group.addoption("--epochs", type=int, default=None, help="override every schedule's epochs (smoke runs)")


# -- options, checked once in pytest_configure -------------------------------------------------------------

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


def _check_norm_kwargs(config: pytest.Config) -> None:
    """Every selected norm accepts --norm-kwargs: names, types and values (a layer is built to check)."""
    kwargs = user_norm_kwargs(config)
    for norm in selected_norms(config):
        try:
            check_kwargs(norm, kwargs)
            if kwargs:
                build_norm(norm, _PROBE_CHANNELS, **kwargs)
        except (ValueError, TypeError) as error:
            raise pytest.UsageError(f"--norm-kwargs {json.dumps(kwargs)} for norm '{norm}': {error}") from None


def _check_options(config: pytest.Config) -> None:
    for name, low in (("seeds", 1), ("epochs", 1)):
        value = config.getoption(name)
        if value is not None and value < low:
            raise pytest.UsageError(f"--{name} must be >= {low}, got {value}")
    try:
        resolve_device(config.getoption("device"))
    except ValueError as error:
        raise pytest.UsageError(f"--device: {error}") from None
    if config.getoption("update_baselines") and not config.getoption("force_baselines"):
        differences = profile_differences(config)
        if differences:
            raise pytest.UsageError(
                "--update-baselines refused: this run differs from the profile (" + "; ".join(differences)
                + "), so its numbers must not become the committed baselines; add --force-baselines to do it anyway")


def profile_differences(config: pytest.Config) -> list[str]:
    """How this run's options make it differ from the profile's own run (empty: it is the profile's run)."""
    differences = []
    if config.getoption("epochs") is not None:
        differences.append(f"--epochs {config.getoption('epochs')}")
    if config.getoption("seeds") < PROFILE_SEEDS:
        differences.append(f"--seeds {config.getoption('seeds')} < {PROFILE_SEEDS}")
    if user_norm_kwargs(config):
        differences.append(f"--norm-kwargs {config.getoption('norm_kwargs')}")
    return differences


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config.option, "norm"):
        return
    # One torch thread per process, always: float reductions (and so trained weights) depend on the thread
    # count, and the committed baselines must hold for `pytest suites/` and `pytest suites/ -n 2` alike.
    torch.set_num_threads(1)
    selected_norms(config)
    _check_norm_kwargs(config)
    _check_options(config)


def _folder(config: pytest.Config, option: str, default: str) -> Path:
    value = config.getoption(option)
    return Path(value) if value else config.rootpath / default


def results_dir_of(config: pytest.Config) -> Path:
    return _folder(config, "results_dir", "results")


# -- parametrisation and grouping ----------------------------------------------------------------------------

def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    config = metafunc.config
    if "norm" in metafunc.fixturenames:
        metafunc.parametrize("norm", selected_norms(config), ids=str)
    scenario = getattr(metafunc.module, "SCENARIO", None)
    spec = get_scenario(scenario) if scenario else None
    if spec is not None and spec.parameter in metafunc.fixturenames:
        values = spec.values(_session(config))
        metafunc.parametrize(spec.parameter, values, ids=[spec.value_id(v) for v in values])


# The costliest scenario modules first, so that with ``-n 2`` the longest test does not start last (a cold
# ``pytest suites/ --norm=localnorm -n 2``: domain shift 37 % of the test time, the mixtures 43 %, noise 10 %,
# batch size 9 %).
_COSTLIEST_FIRST = ("test_domain_shift", "test_mixture", "test_noise", "test_batch_size")


def _cost_rank(item: pytest.Item) -> int:
    name = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
    return _COSTLIEST_FIRST.index(name) if name in _COSTLIEST_FIRST else len(_COSTLIEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the costliest scenarios first (stable within a scenario), and group a (norm, scenario)'s tests
    (``pytest -n 2 --dist loadgroup``): one worker trains its models once."""
    items.sort(key=_cost_rank)
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "norm" in callspec.params:
            scenario = getattr(item.module, "SCENARIO", item.module.__name__)
            item.add_marker(pytest.mark.xdist_group(name=f"{callspec.params['norm']}-{scenario}"))


# -- the session and the gate --------------------------------------------------------------------------------

_SESSIONS: dict[int, Session] = {}


def _session(config: pytest.Config) -> Session:
    if id(config) not in _SESSIONS:
        cache_dir = config.getoption("cache_dir")
        _SESSIONS[id(config)] = Session.create(
            config.getoption("profile"), device=config.getoption("device"), seeds=config.getoption("seeds"),
            cache_dir=cache_dir, norm_kwargs=user_norm_kwargs(config), epochs=config.getoption("epochs"),
            data_dir=config.getoption("data_dir"), download=config.getoption("download"),
            progress=config.getoption("capture") == "no")
    return _SESSIONS[id(config)]


@pytest.fixture(scope="session")
def session(pytestconfig: pytest.Config) -> Session:
    return _session(pytestconfig)


@pytest.fixture(scope="session")
def gate(pytestconfig: pytest.Config, session: Session):
    """``gate(scenario, outcome)``: write the outcome to the results folder, then check or update baselines."""
    store = ResultStore(results_dir_of(pytestconfig))
    baselines_root = _folder(pytestconfig, "baselines_dir", "leaderboards")
    update = pytestconfig.getoption("update_baselines")

    def check(scenario: str, outcome: Outcome) -> None:
        record(outcome, store, session.profile.name, scenario)
        frame = ResultStore.frame(outcome.rows)
        path = baseline_path(baselines_root, session.profile.name, scenario)
        if update:
            update_baselines(frame, path)
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a key without a baseline is reported by missing_baselines
            regressions = check_against_baselines(frame, path) if path.exists() else []
        if regressions:
            pytest.fail("below committed baseline:\n" + "\n".join(r.message for r in regressions), pytrace=False)

    return check


@pytest.fixture(autouse=True, scope="module")
def _release_models(session: Session):
    """Models of a scenario module are dropped from memory when it is done (they stay in the cache)."""
    yield
    session.release()


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if hasattr(config, "workerinput") or not hasattr(config.option, "norm"):
        return  # xdist workers leave the summaries to the controller
    folder = results_dir_of(config) / config.getoption("profile")
    if folder.is_dir():
        try:
            summarize_results_dir(results_dir_of(config), config.getoption("profile"))
        except ValueError as error:  # a damaged CSV: say which, keep the test report
            config.get_terminal_reporter().write_line(f"robustbench-norm: summaries not written: {error}", red=True)
