"""The one scoring loop every scenario shares: a trained model, test sets x test-time modes -> rows.

For each :class:`TestSet` (a clean or corrupted test split, a source or target set, one part of a blend)
and each :class:`EvalMode`, the model's predictions give the rows

* ``<test.metric>`` (``accuracy``, ``source_accuracy``, ``target_accuracy``) with the test set's chance
  level (the share of its most frequent class),
* ``prediction_entropy`` (normalised entropy of the predicted-class histogram: 1 = spread over every
  class, 0 = collapse onto one),
* ``ece`` (15 equal-width bins) and ``nll`` where the mode has logits (not the voting modes);
* ``top5_accuracy`` (the label among the 5 highest logits; chance = share of the 5 most frequent classes)
  for a test set with ``top5=True``, where the mode has logits;

and a confusion matrix per condition (summed over seeds by :class:`~robustbench_norm.scenarios.session.
Outcome`). A test-time adaptation mode that does not apply to the norm, or whose Tent run diverges, gives
NaN rows whose ``status`` says why; the sweep goes on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustbench_norm.evaluation import (
    TTA_MODES,
    VOTING_MODES,
    TentDiverged,
    TTANotApplicable,
    expected_calibration_error,
    mode_logits,
    negative_log_likelihood,
    predict,
    tta_hparams,
    tta_support,
)
from robustbench_norm.results import confusion_matrix, prediction_entropy
from robustbench_norm.scenarios.session import Outcome, Session, TrainJob
from robustbench_norm.training.hparams import TTAConfig

OWN_CONTEXTS = "own"


@dataclass(frozen=True)
class TestSet:
    """One test condition: float images (N, C, H, W) in [0, 1], labels, and what its rows are called."""

    dataset: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    contexts: torch.Tensor | None = None
    corruption: str = "none"
    severity: float = 0.0
    metric: str = "accuracy"
    top5: bool = False

    @property
    def chance(self) -> float:
        """Accuracy of always predicting the most frequent class of this test set."""
        return self.top_k_chance(1)

    def top_k_chance(self, k: int) -> float:
        """Top-k accuracy of always predicting the k most frequent classes of this test set."""
        counts = torch.bincount(self.labels, minlength=self.num_classes)
        return float(counts.topk(min(k, len(counts))).values.sum()) / len(self.labels)


@dataclass(frozen=True)
class EvalMode:
    """A test-time mode as a row names it (``label``), the procedure that runs it (``mode``, see
    :mod:`robustbench_norm.evaluation.modes`) and the context ids it passes: the test set's own
    (``"own"``), a fixed id for every sample, or none (``None``: CN+)."""

    label: str
    mode: str
    context: int | str | None = OWN_CONTEXTS


def plain_modes(modes: tuple[str, ...]) -> list[EvalMode]:
    return [EvalMode(mode, mode) for mode in modes]


def with_tta(modes: list[EvalMode]) -> list[EvalMode]:
    """``modes`` and the test-time adaptation modes (``bn_adapt``, ``tent``), which act on any norm."""
    return modes + [EvalMode(mode, mode) for mode in TTA_MODES]


def score(session: Session, job: TrainJob, model: nn.Module, checkpoint: str, tests: list[TestSet],
          modes: list[EvalMode], *, variant: str, batch_size: int, train_batch_size: int, arch: str,
          norm_kwargs: dict[str, Any], confusions: bool = True) -> Outcome:
    """Rows of ``model`` on every test set in every mode (module docstring), and their confusion matrices
    unless ``confusions`` is False (a source set or a blend's part, whose matrices would share a file name
    with the main test set's)."""
    outcome = Outcome()
    support = tta_support(model, job.norm) if any(m.mode in TTA_MODES for m in modes) else {}
    tta = TTAConfig()
    for test in tests:
        for mode in modes:
            common = dict(scenario=job.scenario, dataset=test.dataset, model=arch, norm=job.norm,
                          norm_kwargs=norm_kwargs, variant=variant, eval_mode=mode.label,
                          eval_kwargs=tta_hparams(mode.mode, tta) if mode.mode in TTA_MODES else {},
                          corruption=test.corruption, severity=test.severity, train_batch_size=train_batch_size,
                          seed=job.seed, recipe=job.recipe_id, n_examples=len(test.labels),
                          checkpoint_hash=checkpoint)
            reason = support.get(mode.mode)
            if reason is not None:
                outcome.rows += _unmeasured(session, test, common, f"not applicable: {reason}")
                continue
            try:
                (predictions, logits), seconds = _timed(
                    lambda: _predict(model, test, mode, session.device, batch_size, job.norm, tta))
            except (TentDiverged, TTANotApplicable) as error:
                outcome.rows += _unmeasured(session, test, common, f"diverged: {error}")
                continue
            outcome.rows += _measured(session, test, predictions, logits, common, seconds)
            if not confusions:
                continue
            matrix = confusion_matrix(predictions.numpy(), test.labels.numpy(), test.num_classes)
            outcome.add_confusion((job.norm, variant, mode.label, test.corruption, test.severity), matrix)
    return outcome


def _contexts(test: TestSet, mode: EvalMode) -> torch.Tensor | None:
    if mode.context == OWN_CONTEXTS:
        return test.contexts
    if mode.context is None:
        return None
    return torch.full((len(test.labels),), int(mode.context), dtype=torch.long)


def _predict(model: nn.Module, test: TestSet, mode: EvalMode, device: torch.device, batch_size: int, norm: str,
             tta: TTAConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(predicted classes, logits or None for the voting modes)."""
    contexts = _contexts(test, mode)
    if mode.mode in VOTING_MODES:
        return predict(model, test.images, mode=mode.mode, batch_size=batch_size, device=device,
                       contexts=contexts), None
    logits = mode_logits(model, test.images, mode=mode.mode, batch_size=batch_size, device=device,
                         contexts=contexts, norm=norm, tta=tta)
    return logits.argmax(dim=1), logits


def _measured(session: Session, test: TestSet, predictions: torch.Tensor, logits: torch.Tensor | None,
              common: dict[str, Any], seconds: float) -> list:
    accuracy = float((predictions == test.labels).float().mean())
    values = [(test.metric, accuracy, test.chance),
              ("prediction_entropy", prediction_entropy(predictions.numpy(), test.num_classes), math.nan)]
    if logits is not None:
        values += [("ece", expected_calibration_error(logits, test.labels), math.nan),
                   ("nll", negative_log_likelihood(logits, test.labels), math.nan)]
    if logits is not None and test.top5:
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        values.append(("top5_accuracy", float((top5 == test.labels[:, None]).any(dim=1).float().mean()),
                       test.top_k_chance(5)))
    return [session.row(metric=metric, value=value, chance=chance, wall_seconds=seconds, **common)
            for metric, value, chance in values]


def _unmeasured(session: Session, test: TestSet, common: dict[str, Any], status: str) -> list:
    return [session.row(metric=test.metric, value=math.nan, chance=test.chance, status=status, wall_seconds=0.0,
                        **common)]


def _timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start
