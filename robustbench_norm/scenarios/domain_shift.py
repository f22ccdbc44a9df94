"""Scenario ``domain_shift``: unsupervised domain adaptation with AdaMatch, with and without CN.

Quick profile: scikit-learn's handwritten digits -> real MNIST (``mnist5k``), both 16x16 grey; paper profile:
MNIST -> SVHN with WRN-28-2 (CN paper, section IV-F; AdaMatch, Berthelot et al. 2022).

Variants: ``adamatch`` trains with labelled source and unlabelled target batches (rows are the EMA
model's); ``adamatch_reference`` (paper profile) does the same with the recipe's second AdaMatch schedule
(the reference implementation's SGD next to the Adam schedule the CN paper states);
``source_only`` trains on the source alone, the floor adaptation must beat. Two floors are
reported for it: the plain one, and BatchNorm with the target's batch statistics (``test_batch_stats``,
AdaBN), the normalization layer's own contribution to adaptation; and the test-time adaptation modes
(``bn_adapt``, ``tent``) on the target. A context layer gets the domain as context during training (source
0, target 1); the target is evaluated with the source id (``cn_source_id``, the paper's Table IX), with the
target id (``cn_target_id``, Table X) and with CN+ (no id); the source test set with its own id (``cn``) and
with the target id (``cn_target_id``: Table X's MNIST column).

Rows: ``source_accuracy`` (source test set, source id) and ``target_accuracy``; AdaMatch's per-epoch
diagnostics (mask rate, accuracy of the used pseudo-labels, unlabelled loss) go to
``<profile>/diagnostics/domain_shift__<norm>__<variant>.csv``.
"""

from __future__ import annotations

import torch

from robustbench_norm.norms import get_norm
from robustbench_norm.scenarios.scoring import EvalMode, TestSet, plain_modes, score, with_tta
from robustbench_norm.scenarios.session import Outcome, Session, TrainJob
from robustbench_norm.training.adamatch import train_adamatch

NAME = "domain_shift"
PARAMETER = "variant"
VARIANTS = ("source_only", "adamatch", "adamatch_reference")
SOURCE, TARGET = 0, 1


def parameter_values(session: Session) -> list[str]:
    """The training variants of the session's profile."""
    return list(session.profile.domain_shift.variants)


def target_modes(norm: str) -> list[EvalMode]:
    """How the target test set is evaluated: each mode of the norm; a context layer with each domain id."""
    spec = get_norm(norm)
    if not spec.needs_context:
        return plain_modes(spec.eval_modes)
    return [EvalMode("cn_source_id", "cn", SOURCE), EvalMode("cn_target_id", "cn", TARGET),
            EvalMode("cn+", "cn+", None)]


def _ids(count: int, context: int) -> torch.Tensor:
    return torch.full((count,), context, dtype=torch.long)


def plan(session: Session, norm: str, variant: str) -> list[TrainJob]:
    settings = session.profile.domain_shift
    if variant not in settings.variants:
        raise ValueError(f"unknown variant {variant!r}; valid: {settings.variants}")
    source, target = session.dataset(settings.source), session.dataset(settings.target)
    chosen = session.recipe(NAME, norm)
    kwargs = session.norm_kwargs(chosen, norm, num_contexts=2)
    schedule = {"source_only": chosen.train, "adamatch": chosen.adamatch,
                "adamatch_reference": chosen.adamatch_reference}[variant]
    if schedule is None:
        raise ValueError(f"the {session.profile.name} recipe of {NAME} has no schedule for variant {variant!r}")

    def train(model: torch.nn.Module, seed: int):
        if variant == "source_only":
            return session.train_supervised(model, source.train, chosen.train, seed,
                                            _ids(len(source.train), SOURCE))
        result = train_adamatch(model, source.train, target.train, schedule, device=session.device,
                                seed=seed, source_context=SOURCE, target_context=TARGET, progress=session.progress)
        model.load_state_dict(result.ema_model.state_dict())
        return result.history

    return [
        TrainJob(
            NAME, norm, seed,
            spec=session.spec(NAME, norm, seed, variant=variant, source=session.data_identity(settings.source),
                              target=session.data_identity(settings.target), norm_kwargs=kwargs, arch=chosen.arch,
                              schedule=schedule.as_dict()),
            build=lambda: session.build(chosen, norm, kwargs, num_classes=target.num_classes,
                                        channels=target.channels, image_size=target.image_size),
            train=lambda model, seed=seed: train(model, seed),
        )
        for seed in session.seeds
    ]


def run(session: Session, norm: str, variant: str) -> Outcome:
    settings = session.profile.domain_shift
    source, target = session.dataset(settings.source), session.dataset(settings.target)
    chosen = session.recipe(NAME, norm)
    kwargs = session.norm_kwargs(chosen, norm, num_contexts=2)
    batch = chosen.train.batch_size
    source_test = TestSet(source.name, source.test.as_float(), source.test.labels, source.num_classes,
                          _ids(len(source.test), SOURCE), metric="source_accuracy")
    target_test = TestSet(target.name, target.test.as_float(), target.test.labels, target.num_classes,
                          metric="target_accuracy")
    source_mode = ([target_modes(norm)[0]] if not get_norm(norm).needs_context
                   else [EvalMode("cn", "cn"), EvalMode("cn_target_id", "cn", TARGET)])
    modes = target_modes(norm)
    if variant == "source_only":
        modes = with_tta(modes)
    outcome = Outcome()
    for job in plan(session, norm, variant):
        model, checkpoint = session.model(job)
        common = dict(variant=variant, batch_size=batch, train_batch_size=batch, arch=chosen.arch,
                      norm_kwargs=kwargs)
        outcome.extend(score(session, job, model, checkpoint, [source_test], source_mode, confusions=False,
                             **common))
        outcome.extend(score(session, job, model, checkpoint, [target_test], modes, **common))
        if variant != "source_only":
            outcome.diagnostics += [{"norm": norm, "variant": variant, "seed": job.seed, "recipe": job.recipe_id,
                                     **epoch}
                                    for epoch in session.history(job)]
    return outcome
