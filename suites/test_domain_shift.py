"""Scenario ``domain_shift``: unsupervised domain adaptation with AdaMatch, with and without CN.

Quick profile: scikit-learn's digits (as 32x32 RGB) -> the embedded street digits; paper profile:
MNIST -> SVHN with WRN-28-2 (CN paper, section IV-F; AdaMatch, Berthelot et al. 2022, reference algorithm).

Variants: ``adamatch`` trains with labelled source and unlabelled target batches; ``source_only`` trains
on the source alone with the same optimiser settings, the floor that adaptation must beat. A context layer
gets the domain as context during training (source 0, target 1). At test time the target set is
evaluated both with the source id (``cn_source_id``, the authors' code and the paper's Table IX) and with
the target id (``cn_target_id``, Table X), and with CN+ (no id). Rows: ``source_accuracy`` (source test set,
source id) and ``target_accuracy``; AdaMatch rows are the EMA model's.
"""

from __future__ import annotations

import torch

from robustbench_norm.evaluation import predict
from robustbench_norm.norms import get_norm
from robustbench_norm.results import confusion_matrix
from robustbench_norm.training.adamatch import train_adamatch
from suites.bench import Bench, spec_dict, timed

SCENARIO = "domain_shift"
SOURCE, TARGET = 0, 1


def target_modes(norm: str) -> list[tuple[str, str, int | None]]:
    """(row label, evaluation mode, context id of the target test set) for each target evaluation."""
    spec = get_norm(norm)
    if not spec.needs_context:
        return [(mode, mode, None) for mode in spec.eval_modes]
    return [("cn_source_id", "cn", SOURCE), ("cn_target_id", "cn", TARGET), ("cn+", "cn+", None)]


def test_domain_shift(bench: Bench, norm: str, variant: str) -> None:
    settings = bench.profile.domain_shift
    source, target = bench.dataset(settings.source), bench.dataset(settings.target)
    spec = get_norm(norm)
    kwargs = bench.norm_kwargs({"num_contexts": 2} if spec.needs_context else {})
    batch = settings.adamatch.source_batch_size
    source_only = bench.schedule(settings.source_only, norm)

    def train(model: torch.nn.Module):
        if variant == "source_only":
            ids = torch.full((len(source.train),), SOURCE, dtype=torch.long)
            return bench.train_supervised(model, source.train, source_only, seed, ids)
        result = train_adamatch(model, source.train, target.train, settings.adamatch, device=bench.device,
                                seed=seed, source_context=SOURCE, target_context=TARGET, progress=bench.progress)
        model.load_state_dict(result.ema_model.state_dict())
        return result.history

    rows, confusions = [], {}
    for seed in bench.seeds:
        schedule = source_only if variant == "source_only" else settings.adamatch
        cache_spec = spec_dict(scenario=SCENARIO, variant=variant, arch=settings.arch, norm=norm,
                               norm_kwargs=kwargs, source=settings.source, target=settings.target,
                               schedule=schedule, seed=seed)
        model, checkpoint = bench.trained(
            cache_spec, build=lambda: bench.build(settings.arch, target, norm, kwargs, target.num_classes),
            train=train)
        source_mode = "cn" if spec.needs_context else spec.eval_modes[0]
        evaluations = [("source_accuracy", source.test, source_mode, source_mode, SOURCE)]
        evaluations += [("target_accuracy", target.test, label, mode, ctx) for label, mode, ctx in target_modes(norm)]
        for metric, test_set, label, mode, ctx in evaluations:
            ids = None if ctx is None else torch.full((len(test_set),), ctx, dtype=torch.long)
            predictions, seconds = timed(lambda: predict(model, test_set.as_float(), mode=mode, batch_size=batch,
                                                         device=bench.device, contexts=ids))
            accuracy = float((predictions == test_set.labels).float().mean())
            rows.append(bench.row(
                scenario=SCENARIO, dataset=test_set.name, model=settings.arch, norm=norm, norm_kwargs=kwargs,
                variant=variant, eval_mode=label, corruption="none", severity=0.0, train_batch_size=batch,
                seed=seed, metric=metric, value=accuracy, n_examples=len(test_set), checkpoint_hash=checkpoint,
                wall_seconds=seconds))
            if metric == "target_accuracy":
                key = (norm, variant, label, "none", 0.0)
                matrix = confusion_matrix(predictions.numpy(), test_set.labels.numpy(), target.num_classes)
                confusions[key] = confusions.get(key, 0) + matrix
    bench.record(SCENARIO, rows, confusions)
