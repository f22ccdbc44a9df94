"""Scenario ``cifar_mixture``: the Context Normalization paper's CIFAR comparison (section IV-B, Tables V/VI).

Setting (paper): the CIFAR ConvNet of Table IV, mini-batch 256, 100 epochs, RMSprop with momentum 0.9, two
learning rates one five times the other (0.001, 0.005) and two weight decays (1e-4, 2e-5); the images are
clustered into K = 3 Gaussian-mixture components (:mod:`robustbench_norm.scenarios.gmm_contexts`), each a
context; CN-Channels sits on the input image (``contextnorm``, placement "input") and is evaluated with its
context (CN, Table V) and with CN+ (Table VI, no context id). Paper profile only; the parameter is the data
set (CIFAR-10, CIFAR-100).

Every norm trains at every (lr, weight decay) point of the profile's grid, one variant ``lr<lr>_wd<wd>``
each (the paper's rows BN-1..4, MN-1..4, CN-1..4), on the training set without its last 10 % (the authors'
``validation_split=0.1``); the weights of the epoch with the best validation accuracy are kept (their
``ModelCheckpoint(monitor="val_accuracy", save_best_only=True)``). Rows: ``accuracy`` (and entropy, ECE, NLL)
on the test set in each of the norm's test-time modes, ``validation_accuracy`` on the held-out part, and the
variant ``selected_on_validation``: per seed and test-time mode, the test rows of the grid point with the
highest validation accuracy (ties: the first point of the grid), so the headline number never reads the
test set to choose the learning rate.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from robustbench_norm.data import DatasetBundle
from robustbench_norm.norms import get_norm
from robustbench_norm.profiles import CIFARMixtureSettings, DataSpec
from robustbench_norm.results import ResultRow
from robustbench_norm.results.rows import OK
from robustbench_norm.scenarios.gmm_contexts import METHOD, gmm_contexts
from robustbench_norm.scenarios.scoring import TestSet, plain_modes, score
from robustbench_norm.scenarios.session import Outcome, Session, TrainJob, single_context
from robustbench_norm.training.trainer import holdout_start

NAME = "cifar_mixture"
PARAMETER = "dataset"
SELECTED = "selected_on_validation"
CONTEXT_SEED = 0

_CONTEXTS: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _settings(session: Session) -> CIFARMixtureSettings | None:
    return session.profile.cifar_mixture


def parameter_values(session: Session) -> list[str]:
    """The data sets of the profile's settings (none where the profile lacks the scenario)."""
    settings = _settings(session)
    return [] if settings is None else [spec.name for spec in settings.datasets]


def grid_variant(lr: float, weight_decay: float) -> str:
    """The variant name of a grid point, e.g. ``lr0.001_wd0.0001``."""
    return f"lr{lr!r}_wd{weight_decay!r}"


def _data_spec(session: Session, dataset: str) -> DataSpec:
    settings = _settings(session)
    names = parameter_values(session)
    if dataset not in names:
        raise ValueError(f"unknown data set {dataset!r} for scenario {NAME!r} in profile "
                         f"{session.profile.name!r}; valid: {names}")
    return settings.datasets[names.index(dataset)]


def contexts(session: Session, spec: DataSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """GMM context ids of the training and test images of ``spec`` (computed once per data set content)."""
    bundle = session.dataset(spec)
    key = (session.data_identity(spec)["fingerprint"], _settings(session).num_contexts)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = gmm_contexts(bundle.train.as_float(), bundle.test.as_float(), key[1], CONTEXT_SEED)
    return _CONTEXTS[key]


def _ids(session: Session, norm: str, spec: DataSpec, bundle: DatasetBundle) -> tuple[torch.Tensor, torch.Tensor]:
    if get_norm(norm).needs_context:
        return contexts(session, spec)
    return single_context(bundle.train), single_context(bundle.test)


def plan_by_variant(session: Session, norm: str, dataset: str) -> dict[str, list[TrainJob]]:
    """The jobs of every grid point (variant name -> one job per seed)."""
    settings, spec = _settings(session), _data_spec(session, dataset)
    bundle = session.dataset(spec)
    base = session.recipe(NAME, norm)
    kwargs = session.norm_kwargs(base, norm, num_contexts=settings.num_contexts)
    train_ids, _ = _ids(session, norm, spec, bundle)
    context_spec = ({"context_method": {**METHOD, "k": settings.num_contexts, "seed": CONTEXT_SEED}}
                    if get_norm(norm).needs_context else {})
    jobs = {}
    for lr, weight_decay in settings.grid:
        chosen = replace(base, train=replace(base.train, lr=lr, weight_decay=weight_decay))
        jobs[grid_variant(lr, weight_decay)] = session.supervised_jobs(
            NAME, norm, chosen, kwargs, bundle.train, train_ids, num_classes=bundle.num_classes,
            channels=bundle.channels, image_size=bundle.image_size, data=session.data_identity(spec), **context_spec)
    return jobs


def plan(session: Session, norm: str, dataset: str) -> list[TrainJob]:
    return [job for jobs in plan_by_variant(session, norm, dataset).values() for job in jobs]


def run(session: Session, norm: str, dataset: str) -> Outcome:
    """Rows of every grid point's models and of the point selected on validation (module docstring)."""
    settings, spec = _settings(session), _data_spec(session, dataset)
    bundle = session.dataset(spec)
    base = session.recipe(NAME, norm)
    kwargs = session.norm_kwargs(base, norm, num_contexts=settings.num_contexts)
    train_ids, test_ids = _ids(session, norm, spec, bundle)
    start = holdout_start(len(bundle.train), base.train.validation_fraction)
    test = TestSet(bundle.name, bundle.test.as_float(), bundle.test.labels, bundle.num_classes, test_ids)
    validation = TestSet(f"{bundle.name}/validation", bundle.train.as_float()[start:], bundle.train.labels[start:],
                         bundle.num_classes, train_ids[start:], metric="validation_accuracy")
    modes = plain_modes(get_norm(norm).eval_modes)
    outcome = Outcome()
    for variant, jobs in plan_by_variant(session, norm, dataset).items():
        for job in jobs:
            model, checkpoint = session.model(job)
            common = dict(variant=variant, batch_size=base.train.batch_size,
                          train_batch_size=base.train.batch_size, arch=base.arch, norm_kwargs=kwargs)
            outcome.extend(score(session, job, model, checkpoint, [test], modes, **common))
            outcome.extend(score(session, job, model, checkpoint, [validation], modes, confusions=False, **common))
    outcome.rows += selected_on_validation(outcome.rows, [grid_variant(*point) for point in settings.grid])
    return outcome


def selected_on_validation(rows: list[ResultRow], variants: list[str]) -> list[ResultRow]:
    """Copies (variant :data:`SELECTED`) of the test rows of the grid point with the best validation
    accuracy, per seed and test-time mode; ties go to the earliest of ``variants``."""
    validation = {(r.seed, r.eval_mode, r.variant): r.value for r in rows
                  if r.metric == "validation_accuracy" and r.status == OK}
    selected = []
    for seed, mode in sorted({(seed, mode) for seed, mode, _ in validation}):
        scored = [(validation[(seed, mode, v)], -i, v) for i, v in enumerate(variants) if (seed, mode, v) in validation]
        best = max(scored)[2]
        selected += [replace(r, variant=SELECTED) for r in rows
                     if (r.seed, r.eval_mode, r.variant) == (seed, mode, best) and r.metric != "validation_accuracy"]
    return selected
