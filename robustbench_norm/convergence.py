"""Is a profile's schedule long enough? Train each scenario's in-distribution model twice as long and compare.

A number that moves when the model trains twice as long measures the schedule, not the layer. For every
(scenario, norm) this trains the scenario's in-distribution model with the profile's recipe and with
``factor`` times its steps, on the training split minus a stratified 20 % validation split, and scores both
on that validation split (never a test set), in the norm's first test-time mode:

=============  ========================================================================================
noise          the clean validation images
batch_size     the reference (largest) and the smallest batch size of the sweep, each its own row
domain_shift   the source-only model on the source's validation images
blend          the joint model on the joint validation images (``day_night`` likewise)
=============  ========================================================================================

On request (``settings``, the command's ``--setting``) it also checks an adapted model: ``domain_shift``'s
``adamatch``, scored on the *target's* validation split (held out of the unlabelled target images AdaMatch
trains on), so the table says whether the adaptation numbers are converged too.

**Converged** = the mean over the seeds moves by at most ``TOLERANCE`` (1 accuracy point).
``robustbench-norm check-convergence`` runs it and writes the markdown table (``docs/convergence-<profile>.md``);
with ``--csv`` it also merges its rows into ``<results>/<profile>/convergence.csv`` (key: scenario, setting,
norm), from which ``robustbench-norm publish`` says on each scenario page which norms' numbers are converged.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Collection, Iterable

import pandas as pd

from robustbench_norm.results.convergence import CSV_COLUMNS
from robustbench_norm.scenarios import available, get_scenario
from robustbench_norm.scenarios.session import Session
from robustbench_norm.training.recipes import family_candidates, scaled_steps

TOLERANCE = 0.01
IN_DISTRIBUTION_METRICS = ("accuracy", "source_accuracy")


@dataclass(frozen=True)
class Check:
    """One (scenario, parameter value, norm): mean validation accuracy at 1x and ``factor`` x the steps."""

    scenario: str
    value: Any
    norm: str
    short: list[float]
    long: list[float]

    @property
    def change(self) -> float:
        return statistics.fmean(self.long) - statistics.fmean(self.short)

    @property
    def converged(self) -> bool:
        return abs(self.change) <= TOLERANCE


# settings checked only on request, with the metric that is compared
ADAPTED_SETTINGS: dict[str, dict[str, str]] = {"domain_shift": {"adamatch": "target_accuracy"}}


def validation_accuracies(session: Session, scenario: str, norm: str, value: Any,
                metrics: Collection[str] = IN_DISTRIBUTION_METRICS) -> list[float]:
    """Per-seed validation accuracy (the first row of ``metrics``) in the norm's first mode.

    A scenario's ``run`` scores each seed's in-distribution test set first (the domain shift: source, then
    target), in the norm's first test-time mode, so the first row of each seed is the one to compare.
    """
    outcome = get_scenario(scenario).run(session, norm, value)
    by_seed: dict[int, float] = {}
    for row in outcome.rows:
        if row.metric in metrics:
            by_seed.setdefault(row.seed, row.value)
    session.release()
    return [by_seed[seed] for seed in sorted(by_seed)]


def in_distribution_settings(session: Session, scenario: str) -> list[Any]:
    """The parameter values whose in-distribution model the check trains for ``scenario``."""
    return list(get_scenario(scenario).in_distribution(get_scenario(scenario).values(session)))


def checkable_settings(session: Session, scenario: str) -> list[Any]:
    """The in-distribution settings and those checked on request (:data:`ADAPTED_SETTINGS`)."""
    return [*in_distribution_settings(session, scenario), *ADAPTED_SETTINGS.get(scenario, {})]


def check_convergence(session: Session, scenarios: Iterable[str], norms: Iterable[str], factor: int = 2,
                      settings: Collection[str] | None = None) -> list[Check]:
    """:class:`Check` rows for every (scenario, in-distribution value, norm) (module docstring); with
    ``settings``, only the values whose ``str`` is one of them (e.g. ``{"64"}``: the reference batch), which
    may name an adapted setting (``{"adamatch"}``)."""
    short = replace(session, validation=True, transform=None, _data={}, _models={})
    long = replace(short, transform=partial(scaled_steps, factor=factor), _data={}, _models={})
    checks = []
    for scenario in scenarios:
        if not available(session, scenario):
            continue
        adapted = ADAPTED_SETTINGS.get(scenario, {})
        for value in checkable_settings(session, scenario):
            requested = str(value) in settings if settings is not None else value not in adapted
            if not requested:
                continue
            metrics = (adapted[value],) if value in adapted else IN_DISTRIBUTION_METRICS
            for norm in norms:
                checks.append(Check(scenario, value, norm,
                                    validation_accuracies(short, scenario, norm, value, metrics),
                                    validation_accuracies(long, scenario, norm, value, metrics)))
    return checks


def markdown_table(checks: list[Check], factor: int, seeds: int, command: str) -> str:
    """The convergence table (mean validation accuracy over seeds, in %)."""
    lines = [
        f"Produced by `{command}` (validation split = 20 % of each training set; mean over {seeds} seeds; "
        f"converged = |change| <= {TOLERANCE * 100:g} point).",
        "",
        f"| scenario | setting | norm | 1x steps | {factor}x steps | change | converged |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in checks_frame(checks, factor, seeds, command, commit="").itertuples():
        flag = "**no**" if row.converged == "no" else row.converged
        lines.append(f"| {row.scenario} | {row.setting} | {row.norm} | {row.short:.2f} | {row.long:.2f} | "
                     f"{row.change:+.2f} | {flag} |")
    return "\n".join(lines) + "\n"


def checks_frame(checks: list[Check], factor: int, seeds: int, command: str, commit: str) -> pd.DataFrame:
    """The checks as rows of ``convergence.csv`` (accuracies in %, ``converged`` "yes", "no" or "n/a")."""
    rows = [{"scenario": check.scenario, "setting": "" if check.value is None else str(check.value),
             "norm": check.norm, "short": round(statistics.fmean(check.short) * 100, 2),
             "long": round(statistics.fmean(check.long) * 100, 2), "factor": factor, "seeds": seeds,
             "change": round(check.change * 100, 2),
             "converged": "n/a" if math.isnan(check.change) else "yes" if check.converged else "no",
             "command": command, "commit": commit} for check in checks]
    return pd.DataFrame(rows, columns=list(CSV_COLUMNS))


def select_recipe(session: Session, scenario: str, norm: str) -> dict[str, list[float]]:
    """Validation accuracy per seed of each candidate recipe of ``norm`` (:func:`family_candidates`)."""
    candidates = family_candidates(session.profile.name, scenario, norm)
    values = get_scenario(scenario).in_distribution(get_scenario(scenario).values(session))
    scores = {}
    for name, candidate in candidates.items():
        trial = replace(session, validation=True, transform=lambda _, candidate=candidate: candidate, _data={},
                        _models={})
        scores[name] = [accuracy for value in values
                        for accuracy in validation_accuracies(trial, scenario, norm, value)]
    return scores
