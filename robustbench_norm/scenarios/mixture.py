"""Scenarios ``blend``, ``day_night`` and ``superclass``: data sets (or contexts) trained together as one.

* ``blend`` (CN paper, section IV-D): two structurally different data sets, context = the data set a
  sample comes from. Quick: scikit-learn's digits (RGB 28x28) with the embedded ``shapes``; paper:
  CIFAR-100 with MNIST. The paper reports BN baselines collapsing there while CN trains; a collapse is a
  row with its numbers (accuracy, prediction entropy) and a confusion matrix, never an error.
* ``day_night`` (CN paper, section IV-E): day images and a night rendering of other scenes as two contexts
  sharing one label space. Quick: the embedded ``shapes`` and ``shapes_night``; paper: two image folders.
  For a context layer on the image itself, the paper's day->night translation (normalise with the day
  context, de-normalise with the night context) is saved as ``day_night_translation_<norm>.png``: top row
  day test images, middle row their translation, bottom row night test images (other scenes).
* ``superclass`` (CN paper, section IV-C): CIFAR-100 with its 20 superclasses as contexts (paper profile
  only; the quick profile has no embedded set with a superclass structure).

In the paper profile ``blend`` and ``superclass`` run on the paper's ViT for every norm, and each norm's run
also scores the paper's baselines (``MixtureSettings.input_baselines``): the same ViT with no norm under
test ("ViT", rows with norm ``none``) and with BatchNorm on the input image ("ViT+BN", norm ``batchnorm``),
both with variant ``input_baseline``, trained once per seed with the scenario's shared recipe (the
checkpoint cache serves every later norm's run).

Test order. The joint test set is the parts' test sets in one fixed random order (seed ``TEST_ORDER_SEED``),
so a test batch mixes the parts as the shuffled training batches do. Modes that normalise with test-batch
statistics (BN with test-batch statistics, LocalNorm's BATCH and VOTING) otherwise saw batches of one part only,
whose statistics no training batch had: in the quick ``blend`` that cost LocalNorm 6.6 points of validation
accuracy (88.9 in part order vs 95.5 shuffled, 20 epochs, seed 0). Each part's own test set keeps its images
in that order too.

Rows: ``accuracy`` and ``prediction_entropy`` (and ``ece``, ``nll``; ``top5_accuracy`` where the settings ask,
Tables VII/VIII) on every part and on the joint test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from robustbench_norm._torchvision import import_torchvision
from robustbench_norm.data import ImageSet
from robustbench_norm.models import NO_NORM
from robustbench_norm.norms import get_norm
from robustbench_norm.norms.routing import context_layers
from robustbench_norm.profiles import MixtureSettings
from robustbench_norm.scenarios.scoring import TestSet, plain_modes, score
from robustbench_norm.scenarios.session import Outcome, Session, TrainJob

NAMES = ("blend", "day_night", "superclass")
GRID_IMAGES = 8
DAY, NIGHT = 0, 1
BASELINE_VARIANT = "input_baseline"
TEST_ORDER_SEED = 0


class ScenarioUnavailable(ValueError):
    """The scenario has no settings in this profile (e.g. ``superclass`` needs real CIFAR-100)."""


@dataclass(frozen=True)
class JointData:
    """Parts of a mixture scenario joined into one labelled set with context ids."""

    train: ImageSet
    test: ImageSet
    num_classes: int
    channels: int
    image_size: int
    context_names: tuple[str, ...]


def settings_of(session: Session, scenario: str) -> MixtureSettings:
    if scenario not in NAMES:
        raise ValueError(f"unknown mixture scenario {scenario!r}; valid: {NAMES}")
    settings = getattr(session.profile, scenario)
    if settings is None:
        raise ScenarioUnavailable(f"scenario {scenario!r} is not part of profile {session.profile.name!r}: "
                                  f"{session.profile.notes.get(scenario, 'no settings')}")
    return settings


def join_parts(session: Session, settings: MixtureSettings) -> JointData:
    """Concatenate the parts; context = part index or the data set's own ids; labels offset unless shared."""
    bundles = [session.dataset(part) for part in settings.parts]
    if settings.shared_labels:
        offsets, num_classes = [0] * len(bundles), max(b.num_classes for b in bundles)
    else:
        offsets = [int(o) for o in np.cumsum([0] + [b.num_classes for b in bundles[:-1]])]
        num_classes = sum(b.num_classes for b in bundles)

    def joined(split: str) -> ImageSet:
        sets = [getattr(b, split) for b in bundles]
        if settings.context_from == "part":
            contexts = [torch.full((len(s),), i, dtype=torch.long) for i, s in enumerate(sets)]
        else:
            contexts = [s.contexts for s in sets]
        return ImageSet(images=torch.cat([s.images for s in sets]),
                        labels=torch.cat([s.labels + o for s, o in zip(sets, offsets)]),
                        name="+".join(b.name for b in bundles), contexts=torch.cat(contexts))

    train, test = joined("train"), shuffled(joined("test"))
    if settings.context_from == "part":
        names = tuple(b.name for b in bundles)
    else:
        names = tuple(f"{bundles[0].name}:context{c}" for c in range(int(train.contexts.max()) + 1))
    first = bundles[0]
    return JointData(train, test, num_classes, first.channels, first.image_size, names)


def shuffled(images: ImageSet) -> ImageSet:
    """``images`` in the fixed random order of ``TEST_ORDER_SEED`` (see the module docstring)."""
    return images.subset(torch.randperm(len(images), generator=torch.Generator().manual_seed(TEST_ORDER_SEED)))


def plan(session: Session, norm: str, scenario: str) -> list[TrainJob]:
    """The norm's jobs and those of the settings' input baselines."""
    return _norm_jobs(session, norm, scenario) + [job for jobs in _baseline_jobs(session, scenario).values()
                                                  for job in jobs]


def _joint_jobs(session: Session, norm: str, scenario: str, chosen, kwargs, placement: str | None = None
                ) -> list[TrainJob]:
    settings = settings_of(session, scenario)
    joint = join_parts(session, settings)
    return session.supervised_jobs(scenario, norm, chosen, kwargs, joint.train, joint.train.contexts,
                                   num_classes=joint.num_classes, channels=joint.channels,
                                   image_size=joint.image_size, placement=placement,
                                   parts=[session.data_identity(part) for part in settings.parts],
                                   context_from=settings.context_from, shared_labels=settings.shared_labels)


def _norm_jobs(session: Session, norm: str, scenario: str) -> list[TrainJob]:
    joint = join_parts(session, settings_of(session, scenario))
    chosen = session.recipe(scenario, norm)
    kwargs = session.norm_kwargs(chosen, norm, num_contexts=len(joint.context_names))
    return _joint_jobs(session, norm, scenario, chosen, kwargs)


def _baseline_jobs(session: Session, scenario: str) -> dict[str, list[TrainJob]]:
    """Jobs of each input baseline (norm name or ``"none"``): the shared recipe's net with it on the input."""
    shared = session.recipe(scenario, "batchnorm")  # batchnorm has no family recipe: this is the shared one
    return {name: _joint_jobs(session, name, scenario, shared, {}, placement="input")
            for name in settings_of(session, scenario).input_baselines}


def _modes(norm: str):
    return plain_modes(("standard",) if norm == NO_NORM else get_norm(norm).eval_modes)


def run(session: Session, norm: str, scenario: str) -> Outcome:
    """Rows of every seed's model on the joint test set and on each context's part."""
    settings = settings_of(session, scenario)
    joint = join_parts(session, settings)
    chosen = session.recipe(scenario, norm)
    kwargs = session.norm_kwargs(chosen, norm, num_contexts=len(joint.context_names))
    images, labels, contexts = joint.test.as_float(), joint.test.labels, joint.test.contexts
    whole = TestSet(joint.test.name, images, labels, joint.num_classes, contexts, top5=settings.top5)
    parts = [TestSet(name, images[contexts == c], labels[contexts == c], joint.num_classes, contexts[contexts == c],
                     top5=settings.top5)
             for c, name in enumerate(joint.context_names) if bool((contexts == c).any())]  # no empty part
    outcome = Outcome()
    for job in _norm_jobs(session, norm, scenario):
        model, checkpoint = session.model(job)
        common = dict(variant="joint", batch_size=chosen.train.batch_size,
                      train_batch_size=chosen.train.batch_size, arch=chosen.arch, norm_kwargs=kwargs)
        outcome.extend(score(session, job, model, checkpoint, [whole], _modes(norm), **common))
        outcome.extend(score(session, job, model, checkpoint, parts, _modes(norm), confusions=False, **common))
        if scenario == "day_night" and job.seed == session.seeds[0] and get_norm(norm).placement == "input":
            outcome.images[f"day_night_translation_{norm}.png"] = translation_grid(model, images, contexts)
    for name, jobs in _baseline_jobs(session, scenario).items():
        for job in jobs:
            model, checkpoint = session.model(job)
            common = dict(variant=BASELINE_VARIANT, batch_size=chosen.train.batch_size,
                          train_batch_size=chosen.train.batch_size, arch=chosen.arch, norm_kwargs={})
            outcome.extend(score(session, job, model, checkpoint, [whole], _modes(name), **common))
            outcome.extend(score(session, job, model, checkpoint, parts, _modes(name), confusions=False, **common))
    return outcome


def translation_grid(model: nn.Module, images: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
    """Day test images, their CN day->night translation and night test images, one row each."""
    day, night = images[contexts == DAY][:GRID_IMAGES], images[contexts == NIGHT][:GRID_IMAGES]
    layer = context_layers(model)[0]
    with torch.inference_mode():
        translated = layer.translate(day.to(next(model.parameters()).device), DAY, NIGHT).cpu()
    return import_torchvision().utils.make_grid(torch.cat([day, translated.clamp(0, 1), night]), nrow=len(day),
                                                padding=2)
