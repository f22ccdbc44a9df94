"""Scenarios as a library: plan the training jobs, run them into result rows, evaluate your own model.

Each scenario is one module with plain functions, no pytest: ``plan(session, norm, value)`` lists the
:class:`TrainJob` objects (cache specs; nothing is trained) and ``run(session, norm, value)`` trains or loads
each through the checkpoint cache and scores it into an :class:`Outcome` (rows, confusion matrices,
images). ``value`` is the scenario's parameter (the corruption, the training batch size, the variant; the
pytest suite makes one test of each). Entry points:

>>> import robustbench_norm
>>> rows = robustbench_norm.run("noise", "localnorm", profile="quick", seeds=3)      # doctest: +SKIP
>>> rows = robustbench_norm.evaluate(my_model, scenario="noise", dataset="mnist5k")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch import nn

import corruptions
from robustbench_norm.data import load_dataset
from robustbench_norm.results import ResultStore, rows_to_frame
from robustbench_norm.scenarios import batch_size, cifar_mixture, domain_shift, mixture, noise
from robustbench_norm.scenarios.scoring import EvalMode, TestSet, score
from robustbench_norm.scenarios.session import Outcome, Session, TrainJob, record, single_context


@dataclass(frozen=True)
class Scenario:
    """A scenario's name, its parameter (None: one run per norm) and its plan / run functions."""

    name: str
    parameter: str | None
    values: Callable[[Session], list[Any]]
    plan: Callable[[Session, str, Any], list[TrainJob]]
    run: Callable[[Session, str, Any], Outcome]
    value_id: Callable[[Any], str] = str  # a parameter value in a test id
    # the values whose models the convergence check trains twice as long (default: every value)
    in_distribution: Callable[[list[Any]], list[Any]] = list


def _mixture(name: str) -> Scenario:
    return Scenario(name, None, lambda session: [None],
                    lambda session, norm, _: mixture.plan(session, norm, name),
                    lambda session, norm, _: mixture.run(session, norm, name))


SCENARIOS: dict[str, Scenario] = {
    noise.NAME: Scenario(noise.NAME, noise.PARAMETER, noise.parameter_values,
                         lambda session, norm, _: noise.plan(session, norm), noise.run,
                         lambda name: corruptions.get_corruption(name).short_name,
                         lambda values: values[:1]),  # one model serves every corruption
    batch_size.NAME: Scenario(batch_size.NAME, batch_size.PARAMETER, batch_size.parameter_values,
                              batch_size.plan, batch_size.run, lambda size: f"bs{size}",
                              lambda sizes: sorted({max(sizes), min(sizes)}, reverse=True)),
    domain_shift.NAME: Scenario(domain_shift.NAME, domain_shift.PARAMETER, domain_shift.parameter_values,
                                domain_shift.plan, domain_shift.run,
                                in_distribution=lambda variants: ["source_only"]),
    **{name: _mixture(name) for name in mixture.NAMES},
    noise.CIFAR10: Scenario(noise.CIFAR10, noise.PARAMETER,
                            lambda session: noise.parameter_values(session, noise.CIFAR10),
                            lambda session, norm, _: noise.plan(session, norm, noise.CIFAR10),
                            lambda session, norm, corruption: noise.run(session, norm, corruption, noise.CIFAR10),
                            lambda name: corruptions.get_corruption(name).short_name,
                            lambda values: values[:1]),  # one model serves every corruption
    cifar_mixture.NAME: Scenario(cifar_mixture.NAME, cifar_mixture.PARAMETER, cifar_mixture.parameter_values,
                                 cifar_mixture.plan, cifar_mixture.run),
}


def get_scenario(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; valid scenarios: {list(SCENARIOS)}")
    return SCENARIOS[name]


def available(session: Session, name: str) -> bool:
    """Whether the session's profile has settings for scenario ``name`` (``superclass``, ``noise_cifar10``,
    ``cifar_mixture``: paper only); every scenario's settings are the profile attribute of its name."""
    get_scenario(name)
    return getattr(session.profile, name) is not None


def plan_jobs(session: Session, scenario: str, norm: str) -> list[TrainJob]:
    """Every training job of ``scenario`` for ``norm`` (all parameter values, all seeds), without training."""
    spec = get_scenario(scenario)
    if not available(session, scenario):
        return []
    jobs = {}
    for value in spec.values(session):
        for job in spec.plan(session, norm, value):
            jobs.setdefault(session.cache.key(job.spec), job)
    return list(jobs.values())


def run_scenario(session: Session, scenario: str, norm: str) -> Outcome:
    """Every parameter value of ``scenario`` for ``norm`` in one :class:`Outcome`."""
    spec = get_scenario(scenario)
    outcome = Outcome()
    for value in spec.values(session):
        outcome.extend(spec.run(session, norm, value))
    return outcome


def run(scenario: str, norm: str, *, profile: str = "quick", seeds: int = 3, device: str = "auto",
        cache_dir: str | Path | None = None, results_dir: str | Path | None = None,
        norm_kwargs: dict[str, Any] | None = None, epochs: int | None = None,
        data_dir: str | Path | None = None) -> pd.DataFrame:
    """Train (or load from the checkpoint cache) and evaluate ``norm`` on ``scenario``; the rows as a table.

    With ``results_dir`` the rows, confusion matrices and images are also written there (merged by key).
    """
    session = Session.create(profile, device=device, seeds=seeds, cache_dir=cache_dir, norm_kwargs=norm_kwargs,
                             epochs=epochs, data_dir=data_dir)
    outcome = run_scenario(session, scenario, norm)
    if results_dir is not None:
        record(outcome, ResultStore(Path(results_dir)), session.profile.name, scenario)
    return rows_to_frame(outcome.rows)


def evaluate(model: nn.Module, *, scenario: str = "noise", dataset: str = "mnist5k", name: str = "user_model",
             profile: str = "quick", device: str = "auto", batch_size: int = 128,
             data_dir: str | Path | None = None) -> pd.DataFrame:
    """Score your own trained ``model`` on ``scenario``'s test conditions, without any training.

    ``scenario="noise"``: the test split of ``dataset`` (a registered data set, at the model's input size
    and channels as ``load_dataset`` gives them) under every corruption and severity of ``profile``, the
    same corrupted pixels as the benchmark's seed-0 models see. Rows carry ``norm=name``,
    ``variant="user_model"`` and ``recipe="unspecified"``: they never mix with the suite's own rows.
    """
    if scenario != noise.NAME:
        raise ValueError(f"evaluate supports scenario 'noise' (the test conditions need no training data); "
                         f"got {scenario!r}")
    session = Session.create(profile, device=device, seeds=1, data_dir=data_dir)
    bundle = load_dataset(dataset, data_dir=data_dir)
    clean = bundle.test.as_float()
    job = TrainJob(noise.NAME, name, 0, spec={}, build=lambda: model, train=lambda _: None)
    outcome = Outcome()
    for corruption, severities in session.profile.noise.severities.items():
        tests = [TestSet(bundle.name, corruptions.corrupt(corruption, clean, s,
                                                          seed=noise.derived_seed(0, corruption, s)),
                         bundle.test.labels, bundle.num_classes, single_context(bundle.test),
                         corruption=corruption, severity=s) for s in severities]
        outcome.extend(score(session, job, model.to(session.device).eval(), "", tests,
                             [EvalMode("standard", "standard")], variant="user_model", batch_size=batch_size,
                             train_batch_size=0, arch=type(model).__name__, norm_kwargs={}))
    return rows_to_frame(outcome.rows)


__all__ = ["SCENARIOS", "Outcome", "Scenario", "Session", "TrainJob", "available", "evaluate", "get_scenario", "plan_jobs",
           "record", "run", "run_scenario"]
