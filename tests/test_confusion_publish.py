"""Confusion matrices, prediction entropy (collapse), their files, and publishing of result tables."""

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
from robustbench_norm.results.publish import publish
from robustbench_norm.results.rows import ResultRow
from robustbench_norm.results.store import ResultStore

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
    assert data.startswith(PNG_MAGIC) and len(data) < 60_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (240, 240)
    with pytest.raises(ValueError, match="square"):
        save_confusion(np.zeros((2, 3), dtype=int), stem, "bad")
    with pytest.raises(ValueError, match="class_names"):
        save_confusion(matrix, stem, "bad", class_names=["a"])


# -- publish --------------------------------------------------------------------------------------------


def row(**fields) -> ResultRow:
    base = dict(scenario="noise", profile="quick", dataset="digits", model="quick_cnn", norm="batchnorm",
                norm_kwargs={}, variant="standard", eval_mode="running_stats", corruption="agn",
                severity=0.0, train_batch_size=64, seed=0, metric="accuracy", value=0.9, n_examples=50,
                device="cpu", versions="v", git_commit="c", checkpoint_hash="h", wall_seconds=0.1)
    return ResultRow(**{**base, **fields})


def tiny_results(root) -> None:
    rows = [row(norm=norm, eval_mode=mode, corruption=corruption, severity=severity, seed=seed,
                value=0.9 - severity * drop - 0.01 * seed)
            for norm, mode, drop in (("batchnorm", "running_stats", 0.4), ("localnorm", "batch", 0.1))
            for corruption in ("agn", "mbn") for severity in (0.0, 0.5, 1.0) for seed in (0, 1)]
    rows += [row(scenario="batch_size", norm=norm, eval_mode="standard", corruption="none",
                 train_batch_size=batch, value=0.8 - 0.01 * batch / 8, seed=0)
             for norm in ("groupnorm", "lcn") for batch in (2, 8, 32)]
    ResultStore(root).write(rows)


def test_publish_writes_markdown_html_and_plots_idempotently(tmp_path):
    tiny_results(tmp_path)
    written = publish(tmp_path)
    tables = tmp_path / "quick" / "tables"
    assert sorted(p.name for p in written) == sorted(p.name for p in tables.iterdir()) == [
        "batch_size.html", "batch_size.md", "batch_size_batch_size.png",
        "noise.html", "noise.md", "noise_agn.png", "noise_mbn.png"]
    markdown = (tables / "noise.md").read_text()
    assert "| batchnorm | running_stats | 89.5 ± 0.5 (2) |" in markdown  # clean accuracy, 2 seeds
    assert "![noise_agn.png](noise_agn.png)" in markdown
    page = (tables / "noise.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table" in page and "±" in page
    assert "<script" not in page and "http" not in page
    assert all((tables / name).read_bytes().startswith(PNG_MAGIC) for name in ("noise_agn.png", "noise_mbn.png"))
    before = {p.name: p.read_bytes() for p in tables.iterdir()}
    publish(tmp_path)
    assert {p.name: p.read_bytes() for p in tables.iterdir()} == before


def test_publish_to_out_dir_and_empty_results(tmp_path):
    assert publish(tmp_path / "results") == []
    tiny_results(tmp_path / "results")
    written = publish(tmp_path / "results", tmp_path / "site")
    assert all(p.parent == tmp_path / "site" / "quick" for p in written)
    assert not (tmp_path / "results" / "quick" / "tables").exists()
