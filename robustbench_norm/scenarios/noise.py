"""Scenarios ``noise`` and ``noise_cifar10``: train on clean images, test under pixel noise (LocalNorm paper,
section 5: ``noise`` is its MNIST experiment, Fig. 7, in the paper profile; ``noise_cifar10`` its CIFAR-10
VGG19 experiment, Fig. 8a-c, paper profile only). Both read their settings from the profile attribute of
their name and their recipe under their name.

For each seed a model is trained on the clean training set; the test set is then corrupted with one
corruption at every severity of the profile (severity 0 is the clean test set) and evaluated in every
test-time mode the norm supports (LocalNorm: BATCH, SINGLE, SINGLE-VOTING, VOTING; BatchNorm: running and
test-batch statistics) and in the test-time adaptation modes (``bn_adapt``, ``tent``; episodic: every
condition starts from the trained weights). The corrupted images depend only on (seed, corruption,
severity), so every norm sees the same pixels. A reliability diagram is saved for seed 0 at severity 0
and at the middle severity of each corruption.
"""

from __future__ import annotations

import zlib

import corruptions
from robustbench_norm.evaluation import VOTING_MODES, mode_logits
from robustbench_norm.norms import get_norm
from robustbench_norm.profiles import NoiseSettings
from robustbench_norm.scenarios.scoring import TestSet, plain_modes, score, with_tta
from robustbench_norm.scenarios.session import Outcome, Session, TrainJob, single_context

NAME = "noise"
CIFAR10 = "noise_cifar10"
PARAMETER = "corruption"


def _settings(session: Session, scenario: str) -> NoiseSettings | None:
    if scenario not in (NAME, CIFAR10):
        raise ValueError(f"unknown noise scenario {scenario!r}; valid: {(NAME, CIFAR10)}")
    return getattr(session.profile, scenario)


def parameter_values(session: Session, scenario: str = NAME) -> list[str]:
    """The corruptions of ``scenario`` (none where the profile lacks it)."""
    settings = _settings(session, scenario)
    return [] if settings is None else list(settings.severities)


def derived_seed(*parts: object) -> int:
    """A stable seed from a description (the same corrupted images for every norm)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def plan(session: Session, norm: str, scenario: str = NAME) -> list[TrainJob]:
    """One model per seed, trained on the clean training set (shared by every corruption)."""
    settings = _settings(session, scenario)
    bundle = session.dataset(settings.data)
    chosen = session.recipe(scenario, norm)
    kwargs = session.norm_kwargs(chosen, norm, num_contexts=1)
    return session.supervised_jobs(scenario, norm, chosen, kwargs, bundle.train, single_context(bundle.train),
                                   num_classes=bundle.num_classes, channels=bundle.channels,
                                   image_size=bundle.image_size, data=session.data_identity(settings.data))


def run(session: Session, norm: str, corruption: str, scenario: str = NAME) -> Outcome:
    """Rows of every seed's model on ``corruption`` at every severity, in every test-time mode."""
    settings = _settings(session, scenario)
    if corruption not in settings.severities:
        raise ValueError(f"unknown corruption {corruption!r}; valid: {list(settings.severities)}")
    bundle = session.dataset(settings.data)
    chosen = session.recipe(scenario, norm)
    kwargs = session.norm_kwargs(chosen, norm, num_contexts=1)
    clean = bundle.test.as_float()
    severities = settings.severities[corruption]
    modes = with_tta(plain_modes(get_norm(norm).eval_modes))
    outcome = Outcome()
    for job in plan(session, norm, scenario):
        model, checkpoint = session.model(job)
        tests = [TestSet(bundle.name, corruptions.corrupt(corruption, clean, severity,
                                                          seed=derived_seed(job.seed, corruption, severity)),
                         bundle.test.labels, bundle.num_classes, single_context(bundle.test),
                         corruption=corruption, severity=severity)
                 for severity in severities]
        outcome.extend(score(session, job, model, checkpoint, tests, modes, variant="standard",
                             batch_size=settings.eval_batch_size, train_batch_size=chosen.train.batch_size,
                             arch=chosen.arch, norm_kwargs=kwargs))
        if job.seed == session.seeds[0]:
            middle = tests[len(tests) // 2]
            for test in (tests[0], middle):
                _add_reliability_diagram(outcome, session, norm, model, test, settings.eval_batch_size, scenario)
    return outcome


def _add_reliability_diagram(outcome: Outcome, session: Session, norm: str, model, test: TestSet,
                             batch_size: int, scenario: str) -> None:
    """The reliability diagram of the norm's first test-time mode with logits, on ``test``."""
    mode = next(m for m in get_norm(norm).eval_modes if m not in VOTING_MODES)
    logits = mode_logits(model, test.images, mode=mode, batch_size=batch_size, device=session.device,
                         contexts=test.contexts)
    name = f"reliability/{scenario}/{norm}__{mode}__{test.corruption}__{test.severity!r}__seed{session.seeds[0]}.png"
    outcome.diagrams[name] = (logits, test.labels, f"{norm} ({mode}), {test.corruption} severity {test.severity}")
