"""Confusion matrices, prediction entropy (collapse) and their files (publishing: tests/test_publish_*.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from robustbench_norm.results.confusion import (
    confusion_matrix,
    confusion_path,
    prediction_entropy,
    save_confusion,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_confusion_matrix_hand_example():
    labels = [0, 0, 1, 2, 2, 2]
    predictions = [0, 1, 1, 2, 0, 2]
    expected = np.array([[1, 1, 0],
                         [0, 1, 0],
                         [1, 0, 2]])
    matrix = confusion_matrix(np.array(predictions), np.array(labels), 3)
    np.testing.assert_array_equal(matrix, expected)
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(confusion_matrix(torch.tensor(predictions), torch.tensor(labels), 3), expected)
    assert confusion_matrix(np.array([], dtype=int), np.array([], dtype=int), 2).sum() == 0


@pytest.mark.parametrize("predictions, labels, num_classes, message", [
    ([0, 3], [0, 1], 3, "valid classes are 0..2"),
    ([0, -1], [0, 1], 3, "valid classes"),
    ([0, 1], [0, 1, 1], 3, "same length"),
    ([[0, 1]], [[0, 1]], 3, "1-D"),
    ([0.0, 1.0], [0, 1], 3, "integer"),
    ([0, 1], [0, 1], 1, "num_classes"),
])
def test_confusion_matrix_rejects_bad_input(predictions, labels, num_classes, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(np.array(predictions), np.array(labels), num_classes)


def test_prediction_entropy_uniform_collapse_and_hand_value():
    assert prediction_entropy(np.arange(10).repeat(7), 10) == pytest.approx(1.0, abs=1e-12)
    assert prediction_entropy(np.full(50, 3), 10) == 0.0
    # histogram (2, 1, 1, 0) over K = 4: p = (1/2, 1/4, 1/4, 0)
    hand = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)) / math.log(4)
    assert prediction_entropy(np.array([0, 0, 1, 2]), 4) == pytest.approx(hand, abs=1e-12)
    assert prediction_entropy(torch.tensor([1, 0]), 2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="empty"):
        prediction_entropy(np.array([], dtype=int), 4)


def test_confusion_path_convention():
    stem = confusion_path("lb", "quick", "noise", "localnorm", "standard", "single_voting", "agn", 0.5)
    assert stem.as_posix() == "lb/quick/confusion/noise/localnorm__standard__single_voting__agn__0.5"
    assert confusion_path("lb", "quick", "noise", "bn", "context=source", "cn+", "none", 0).name == \
        "bn__context=source__cn+__none__0.0"
    with_kwargs = confusion_path("lb", "quick", "noise", "lcn", "standard", "standard", "agn", 1.0,
                                 norm_kwargs={"window_size": [5, 5]})
    assert with_kwargs.name.startswith("lcn__standard__standard__agn__1.0__kw") and len(with_kwargs.name) == 45
    with pytest.raises(ValueError, match="file name"):
        confusion_path("lb", "quick", "noise", "a/b", "standard", "standard", "agn", 1.0)


def test_save_confusion_writes_csv_and_small_png(tmp_path):
    matrix = np.array([[5, 0, 1], [0, 0, 6], [0, 0, 7]])
    stem = tmp_path / "confusion" / "noise" / "bn__standard__running_stats__agn__0.5"
    csv_path, png_path = save_confusion(matrix, stem, "noise bn agn 0.5", class_names=["a", "b", "c"])
    assert csv_path.name == "bn__standard__running_stats__agn__0.5.csv"  # ".5" is not taken for a suffix
    table = pd.read_csv(csv_path, index_col=0)
    assert list(table.index) == ["a", "b", "c"] and list(table.columns) == ["a", "b", "c"]
    np.testing.assert_array_equal(table.to_numpy(), matrix)  # rows = true class, columns = predicted
    data = png_path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) < 30_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 250 <= height < width < 600  # a square heatmap and its colour bar to the right
    big = np.eye(20, dtype=np.int64) * 5
    _, big_png = save_confusion(big, stem.with_name("big"), "twenty classes", class_names=[f"c{i}" for i in range(20)])
    big_data = big_png.read_bytes()
    assert int.from_bytes(big_data[20:24], "big") > height  # the figure grows with the number of classes
    assert save_confusion(matrix, stem, "noise bn agn 0.5", class_names=["a", "b", "c"])[1].read_bytes() == data
    with pytest.raises(ValueError, match="square"):
        save_confusion(np.zeros((2, 3), dtype=int), stem, "bad")
    with pytest.raises(ValueError, match="class_names"):
        save_confusion(matrix, stem, "bad", class_names=["a"])
