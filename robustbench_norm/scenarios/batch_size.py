"""Scenario ``batch_size``: clean accuracy after training at small batch sizes (GN, LCN and ILM papers).

Protocol of the GroupNorm paper's sweep (Wu & He 2018, section 4.1; Goyal et al.'s rule): every batch size B
trains for the recipe's number of epochs with the learning rate scaled linearly from the recipe's reference
batch, ``lr_B = lr_ref * B / B_ref``, so every batch size follows the same schedule in units of data seen.
On a small training set equal epochs leave the largest batches with few steps (digits at batch 64: 220),
too few for the batch-independent norms to converge, so a recipe may set a step floor ``min_steps``: a
batch size whose epochs give fewer steps trains ``ceil(min_steps / steps_per_epoch)`` epochs instead (the
learning-rate rule unchanged). Each batch size is then trained to convergence rather than to equal data;
the convergence check trains the reference and the smallest batch with twice the steps (floor included).
A profile with ``lr_scaling="none"`` keeps the recipe's learning rate at every batch size instead (the ILM
paper's sweep, section 4.2: "without changing other hyper-parameters"; the paper profile).
Batch-dependent test modes evaluate batches of the training size. A layer that cannot train at a size
(LocalNorm with more groups than samples) or whose training diverges gets rows with value NaN and a
status saying why.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from robustbench_norm.norms import get_norm, use_context
from robustbench_norm.scenarios.scoring import TestSet, plain_modes, score
from robustbench_norm.scenarios.session import Outcome, Session, TrainJob, single_context
from robustbench_norm.training import TrainingDiverged
from robustbench_norm.training.recipes import Recipe

NAME = "batch_size"
PARAMETER = "train_batch_size"


def parameter_values(session: Session) -> list[int]:
    return list(session.profile.batch_size.batch_sizes)


LR_SCALINGS: tuple[str, ...] = ("linear", "none")


def scaled_recipe(chosen: Recipe, batch_size: int, num_examples: int, lr_scaling: str = "linear") -> Recipe:
    """The recipe at ``batch_size`` on ``num_examples`` training images: the recipe's epochs, or more where
    they give fewer than ``chosen.min_steps`` steps; the learning rate scaled linearly from the reference batch
    (``lr_scaling="linear"``) or kept (``"none"``)."""
    if lr_scaling not in LR_SCALINGS:
        raise ValueError(f"unknown lr_scaling {lr_scaling!r}; valid: {LR_SCALINGS}")
    reference = chosen.train
    lr = reference.lr * batch_size / reference.batch_size if lr_scaling == "linear" else reference.lr
    epochs = reference.epochs
    if chosen.min_steps:
        steps_per_epoch = num_examples // batch_size
        if steps_per_epoch < 1:
            raise ValueError(f"batch size {batch_size} exceeds the {num_examples} training images")
        epochs = max(epochs, math.ceil(chosen.min_steps / steps_per_epoch))
    train = replace(reference, batch_size=batch_size, lr=lr, eval_batch_size=batch_size, epochs=epochs)
    return replace(chosen, train=train)


def plan(session: Session, norm: str, train_batch_size: int) -> list[TrainJob]:
    settings = session.profile.batch_size
    bundle = session.dataset(settings.data)
    chosen = scaled_recipe(session.recipe(NAME, norm), train_batch_size, len(bundle.train), settings.lr_scaling)
    kwargs = session.norm_kwargs(chosen, norm, num_contexts=1)
    return session.supervised_jobs(NAME, norm, chosen, kwargs, bundle.train, single_context(bundle.train),
                                   num_classes=bundle.num_classes, channels=bundle.channels,
                                   image_size=bundle.image_size, data=session.data_identity(settings.data))


def untrainable_reason(job: TrainJob, batch_size: int, image_shape: tuple[int, ...]) -> str | None:
    """Why a training-mode forward at ``batch_size`` fails (e.g. LocalNorm: K > batch), or None."""
    probe = job.build()
    try:
        with torch.no_grad(), use_context(probe, torch.zeros(batch_size, dtype=torch.long)):
            probe.train()(torch.zeros(batch_size, *image_shape))
    except ValueError as error:
        return f"not trainable: {error}"
    return None


def run(session: Session, norm: str, train_batch_size: int) -> Outcome:
    settings = session.profile.batch_size
    if train_batch_size not in settings.batch_sizes:
        raise ValueError(f"batch size {train_batch_size!r} is not in this profile's sweep; valid: "
                         f"{list(settings.batch_sizes)}")
    bundle = session.dataset(settings.data)
    chosen = scaled_recipe(session.recipe(NAME, norm), train_batch_size, len(bundle.train), settings.lr_scaling)
    kwargs = session.norm_kwargs(chosen, norm, num_contexts=1)
    test = TestSet(bundle.name, bundle.test.as_float(), bundle.test.labels, bundle.num_classes,
                   single_context(bundle.test))
    modes = plain_modes(get_norm(norm).eval_modes)
    outcome = Outcome()
    for job in plan(session, norm, train_batch_size):
        status = untrainable_reason(job, train_batch_size, tuple(bundle.test.images.shape[1:]))
        if status is None:
            try:
                model, checkpoint = session.model(job)
            except TrainingDiverged as error:
                status = f"diverged: {error}"
        if status is not None:
            outcome.rows += [session.row(
                scenario=NAME, dataset=bundle.name, model=chosen.arch, norm=norm, norm_kwargs=kwargs,
                variant="standard", eval_mode=mode.label, corruption="none", severity=0.0,
                train_batch_size=train_batch_size, seed=job.seed, recipe=job.recipe_id, metric="accuracy",
                value=math.nan, chance=test.chance, n_examples=len(test.labels), status=status,
                checkpoint_hash="", wall_seconds=0.0) for mode in modes]
            continue
        outcome.extend(score(session, job, model, checkpoint, [test], modes, variant="standard",
                             batch_size=train_batch_size, train_batch_size=train_batch_size, arch=chosen.arch,
                             norm_kwargs=kwargs))
    return outcome
