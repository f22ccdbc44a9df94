"""Scenario ``batch_size``: clean accuracy after training at small batch sizes (GN, LCN and ILM papers).

Each batch size trains for the same number of epochs with the learning rate scaled linearly from the
profile's reference batch size (Goyal et al.'s rule, as in the GroupNorm paper's sweep). Equal epochs mean
fewer optimiser steps at large batches: on the quick profile's short schedule batch 64 takes 50 steps and
can end below batch 16, a property of the schedule that every norm shares. Batch-dependent
test modes evaluate batches of the training size. A layer that cannot train at a size (LocalNorm with more
groups than samples) or whose training diverges gets rows with value NaN and a status saying why.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from robustbench_norm.evaluation import predict
from robustbench_norm.norms import get_norm, use_context
from robustbench_norm.training import TrainingDiverged
from suites.bench import Bench, spec_dict, timed

SCENARIO = "batch_size"


def untrainable_reason(build, batch_size: int, image_shape: tuple[int, ...]) -> str | None:
    """Why a training-mode forward at ``batch_size`` fails (e.g. LocalNorm: K > batch), or None."""
    probe = build()
    try:
        with torch.no_grad(), use_context(probe, torch.zeros(batch_size, dtype=torch.long)):
            probe.train()(torch.zeros(batch_size, *image_shape))
    except ValueError as error:
        return f"not trainable: {error}"
    return None


def test_batch_size(bench: Bench, norm: str, train_batch_size: int) -> None:
    settings = bench.profile.batch_size
    bundle = bench.dataset(settings.data)
    kwargs = bench.norm_kwargs()
    reference = bench.schedule(settings.train, norm)
    config = replace(reference, batch_size=train_batch_size, lr=reference.lr * train_batch_size / reference.batch_size,
                     eval_batch_size=train_batch_size)

    def build():
        return bench.build(settings.arch, bundle, norm, kwargs, bundle.num_classes)

    rows = []
    labels = bundle.test.labels
    train_contexts, test_contexts = bench.single_context(bundle)
    for seed in bench.seeds:
        common = dict(scenario=SCENARIO, dataset=bundle.name, model=settings.arch, norm=norm,
                      norm_kwargs=kwargs, variant="standard", corruption="none", severity=0.0,
                      train_batch_size=train_batch_size, seed=seed, n_examples=len(labels))
        status = untrainable_reason(build, train_batch_size, tuple(bundle.test.images.shape[1:]))
        model = checkpoint = None
        if status is None:
            cache_spec = spec_dict(scenario=SCENARIO, arch=settings.arch, norm=norm, norm_kwargs=kwargs,
                                   data=settings.data, train=config, seed=seed)
            try:
                model, checkpoint = bench.trained(
                    cache_spec, build=build,
                    train=lambda m: bench.train_supervised(m, bundle.train, config, seed, train_contexts))
            except TrainingDiverged as error:
                status = f"diverged: {error}"
        for mode in get_norm(norm).eval_modes:
            if model is None:
                rows.append(bench.row(metric="accuracy", value=math.nan, eval_mode=mode, status=status,
                                      checkpoint_hash="", wall_seconds=0.0, **common))
                continue
            predictions, seconds = timed(lambda: predict(
                model, bundle.test.as_float(), mode=mode, batch_size=train_batch_size, device=bench.device,
                contexts=test_contexts))
            accuracy = float((predictions == labels).float().mean())
            rows.append(bench.row(metric="accuracy", value=accuracy, eval_mode=mode, status="ok",
                                  checkpoint_hash=checkpoint, wall_seconds=seconds, **common))
    bench.record(SCENARIO, rows)
