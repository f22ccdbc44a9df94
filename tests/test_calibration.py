"""Tests of the calibration metrics and the reliability diagram (evaluation/calibration.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustbench_norm.evaluation import (
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
    save_reliability_diagram,
)

# Softmax outputs and labels of the hand-computed example (3 classes, 4 samples).
PROBABILITIES = torch.tensor([
    [0.90, 0.05, 0.05],  # confidence 0.90, predicts 0, label 0: correct
    [0.05, 0.90, 0.05],  # confidence 0.90, predicts 1, label 0: wrong
    [0.50, 0.30, 0.20],  # confidence 0.50, predicts 0, label 0: correct
    [0.45, 0.35, 0.20],  # confidence 0.45, predicts 0, label 1: wrong
], dtype=torch.float64)
LABELS = torch.tensor([0, 0, 0, 1])
LOGITS = PROBABILITIES.log()


def test_ece_matches_the_hand_computed_example() -> None:
    """15 bins of width 1/15: 0.90 falls in (13/15, 14/15], 0.50 in (7/15, 8/15], 0.45 in (6/15, 7/15].

    ECE = 2/4 * |1/2 - 0.9| + 1/4 * |1 - 0.5| + 1/4 * |0 - 0.45| = 0.2 + 0.125 + 0.1125 = 0.4375.
    """
    assert expected_calibration_error(LOGITS, LABELS) == pytest.approx(0.4375, abs=1e-12)
    assert expected_calibration_error(LOGITS.float(), LABELS) == pytest.approx(0.4375, abs=1e-6)


def test_ece_with_ten_bins_merges_the_two_middle_samples() -> None:
    """With 10 bins 0.45 and 0.50 share (0.4, 0.5]: 2/4 * |1/2 - 0.475| + 2/4 * |1/2 - 0.9| = 0.2125."""
    assert expected_calibration_error(LOGITS, LABELS, num_bins=10) == pytest.approx(0.2125, abs=1e-12)


def test_reliability_bins_hold_count_confidence_and_accuracy() -> None:
    bins = reliability_bins(LOGITS, LABELS)
    assert bins.edges.shape == (16,) and bins.count.tolist() == [0] * 6 + [1, 1] + [0] * 5 + [2, 0]
    torch.testing.assert_close(bins.confidence[[6, 7, 13]], torch.tensor([0.45, 0.5, 0.9], dtype=torch.float64))
    torch.testing.assert_close(bins.accuracy[[6, 7, 13]], torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64))
    assert bins.accuracy[0].isnan() and bins.confidence[14].isnan()


def test_bins_are_right_closed() -> None:
    """Confidence exactly 1/2 (two equal logits) belongs to (0, 1/2]; confidence 1 to the last bin."""
    logits = torch.tensor([[0.0, 0.0], [200.0, 0.0]], dtype=torch.float64)
    assert reliability_bins(logits, torch.tensor([0, 0]), num_bins=2).count.tolist() == [1, 1]


def test_confident_and_correct_predictions_have_zero_ece() -> None:
    logits = torch.tensor([[50.0, 0.0, 0.0], [0.0, 0.0, 50.0]])
    assert expected_calibration_error(logits, torch.tensor([0, 2])) == pytest.approx(0.0, abs=1e-12)


def test_nll_matches_the_hand_computed_example() -> None:
    expected = -(math.log(0.9) + math.log(0.05) + math.log(0.5) + math.log(0.35)) / 4
    assert negative_log_likelihood(LOGITS, LABELS) == pytest.approx(expected, rel=1e-12)
    logits = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(20) % 5
    assert negative_log_likelihood(logits, labels) == pytest.approx(float(F.cross_entropy(logits, labels)),
                                                                    rel=1e-6)


@pytest.mark.parametrize("logits, labels, message", [
    (torch.tensor([[0.0, math.nan]]), torch.tensor([0]), "finite"),
    (torch.zeros(2, 3), torch.tensor([0]), "shape \\(2,\\)"),
    (torch.zeros(2, 3), torch.tensor([0.0, 1.0]), "integer class indices"),
    (torch.zeros(2, 3), torch.tensor([0, 3]), "lie in \\[0, 2\\]"),
    (torch.zeros(3), torch.tensor([0, 1, 2]), "K >= 2"),
    (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "at least one sample"),
])
def test_bad_inputs_raise(logits: torch.Tensor, labels: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(logits, labels)
    with pytest.raises(ValueError, match=message):
        negative_log_likelihood(logits, labels)


@pytest.mark.parametrize("num_bins", [0, 2.5, True])
def test_bad_bin_count_raises(num_bins: object) -> None:
    with pytest.raises(ValueError, match="num_bins must be an int >= 1"):
        expected_calibration_error(LOGITS, LABELS, num_bins=num_bins)


def test_reliability_diagram_is_written_as_png(tmp_path: Path) -> None:
    path = save_reliability_diagram(LOGITS, LABELS, tmp_path / "nested" / "clean.png", title="bn tent clean")
    assert path == tmp_path / "nested" / "clean.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["clean.png"]  # no temp file left behind
