"""Scenario ``noise``: train on clean images, test under pixel noise (LocalNorm paper, section 5).

For each seed a model is trained on the clean training set; the test set is then corrupted with one
corruption at every severity of the profile (severity 0 is the clean test set) and evaluated in every
test-time mode the norm supports (LocalNorm: BATCH, SINGLE, SINGLE-VOTING, VOTING; BatchNorm: running and
test-batch statistics). The corrupted images depend only on (seed, corruption, severity), so every norm
sees the same pixels. Rows: ``accuracy`` and ``prediction_entropy`` (1 = predictions spread over all classes,
0 = collapse onto one class); a confusion matrix per condition, summed over seeds.
"""

from __future__ import annotations

import numpy as np

import corruptions
from robustbench_norm.evaluation import predict
from robustbench_norm.norms import get_norm
from robustbench_norm.results import confusion_matrix, prediction_entropy
from suites.bench import Bench, derived_seed, spec_dict, timed

SCENARIO = "noise"


def scenario_kwargs(norm: str, bench: Bench) -> dict:
    """LocalNorm's group count comes from the profile (the paper: 10 groups of 10 on MNIST)."""
    defaults = {"num_groups": bench.profile.noise.localnorm_groups} if norm == "localnorm" else {}
    return bench.norm_kwargs(defaults)


def test_noise(bench: Bench, norm: str, corruption: str) -> None:
    settings = bench.profile.noise
    bundle = bench.dataset(settings.data)
    kwargs = scenario_kwargs(norm, bench)
    spec = get_norm(norm)
    config = bench.schedule(settings.train, norm)
    test_images = bundle.test.as_float()
    labels = bundle.test.labels
    train_contexts, test_contexts = bench.single_context(bundle)
    rows, confusions = [], {}
    for seed in bench.seeds:
        cache_spec = spec_dict(scenario=SCENARIO, arch=settings.arch, norm=norm, norm_kwargs=kwargs,
                               data=settings.data, train=config, seed=seed)
        model, checkpoint = bench.trained(
            cache_spec,
            build=lambda: bench.build(settings.arch, bundle, norm, kwargs, bundle.num_classes),
            train=lambda m: bench.train_supervised(m, bundle.train, config, seed, train_contexts),
        )
        for severity in settings.severities[corruption]:
            noisy = corruptions.corrupt(corruption, test_images, severity,
                                        seed=derived_seed(seed, corruption, severity))
            for mode in spec.eval_modes:
                predictions, seconds = timed(lambda: predict(
                    model, noisy, mode=mode, batch_size=settings.eval_batch_size, device=bench.device,
                    contexts=test_contexts))
                common = dict(scenario=SCENARIO, dataset=bundle.name, model=settings.arch, norm=norm,
                              norm_kwargs=kwargs, variant="standard", eval_mode=mode, corruption=corruption,
                              severity=severity, train_batch_size=settings.train.batch_size, seed=seed,
                              n_examples=len(labels), checkpoint_hash=checkpoint, wall_seconds=seconds)
                accuracy = float((predictions == labels).float().mean())
                entropy = prediction_entropy(predictions.numpy(), bundle.num_classes)
                rows += [bench.row(metric="accuracy", value=accuracy, **common),
                         bench.row(metric="prediction_entropy", value=entropy, **common)]
                key = (norm, "standard", mode, corruption, severity)
                matrix = confusion_matrix(predictions.numpy(), labels.numpy(), bundle.num_classes)
                confusions[key] = confusions.get(key, np.zeros_like(matrix)) + matrix
    bench.record(SCENARIO, rows, confusions)

