"""Confusion matrices and prediction entropy: where the errors go, and whether predictions collapse.

The LocalNorm paper (section 5) reports that BatchNorm nets under strong pixel noise predict almost every
image as one class. Accuracy alone hides this (10 % on 10 balanced classes looks like chance); the
confusion matrix shows it as one bright column, and the normalised entropy of the predicted-class
histogram puts it in one number:

    H_norm = -sum_k p_k ln p_k / ln K,   p_k = (# predictions of class k) / N,

in [0, 1]: 1 = predictions spread uniformly over the K classes, 0 = every prediction is one class
(0 ln 0 = 0). Computed in nats; the normalisation by ln K makes the value unit-free (bits give the same).

Files: ``<results_dir>/<profile>/confusion/<scenario>/<norm>__<variant>__<eval_mode>__<corruption>__<severity>``
``.csv|.png`` (:func:`confusion_path`); CSV rows = true class, columns = predicted class; the PNG is a
heatmap with a colour bar, colours normalised per row (the fraction of each true class sent to each
prediction), class names on both axes, counts printed in the cells when K <= 20, H_norm in the title.
The figure grows with K (about 0.28 in per class at 80 dpi, at least 3.6 in, at most 9 in).
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from robustbench_norm.atomic import atomic_write  # noqa: E402
from robustbench_norm.results.png import figure_png  # noqa: E402
from robustbench_norm.results.rows import canonical_kwargs  # noqa: E402
from robustbench_norm.results.store import check_name  # noqa: E402

ANNOTATE_MAX_CLASSES = 20
MAX_TICKED_CLASSES = 40
FIGURE_INCHES = 3.6  # heatmap side for few classes; grows by CELL_INCHES per class up to MAX_INCHES
CELL_INCHES = 0.28
MAX_INCHES = 9.0
FIGURE_DPI = 80


def _as_labels(name: str, values: object, num_classes: int) -> np.ndarray:
    """``values`` (array-like or CPU tensor) as a 1-D int64 array of class indices in [0, num_classes)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D class indices, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(f"{name} holds class {int(array.min() if array.min() < 0 else array.max())}; "
                         f"valid classes are 0..{num_classes - 1}")
    return array


def _check_num_classes(num_classes: int) -> None:
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")


def confusion_matrix(predictions: object, labels: object, num_classes: int) -> np.ndarray:
    """Counts ``M[t, p]`` of examples with true class t predicted as p; int64, shape (K, K).

    ``predictions`` and ``labels`` are 1-D integer sequences of equal length (numpy arrays or CPU tensors).
    Cost O(N + K^2).
    """
    _check_num_classes(num_classes)
    predicted = _as_labels("predictions", predictions, num_classes)
    true = _as_labels("labels", labels, num_classes)
    if predicted.shape != true.shape:
        raise ValueError(f"predictions ({predicted.size}) and labels ({true.size}) must have the same length")
    counts = np.bincount(true * num_classes + predicted, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def histogram_entropy(counts: np.ndarray) -> float:
    """Normalised entropy (see module doc) of a histogram of K >= 2 non-negative counts with a positive sum."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size < 2 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"need >= 2 non-negative counts with a positive sum, got {counts.tolist()}")
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum() / math.log(counts.size))


def prediction_entropy(predictions: object, num_classes: int) -> float:
    """Normalised entropy in [0, 1] of the predicted-class histogram (1 = uniform, 0 = one class only)."""
    _check_num_classes(num_classes)
    predicted = _as_labels("predictions", predictions, num_classes)
    if predicted.size == 0:
        raise ValueError("predictions is empty; the entropy of no predictions is undefined")
    return histogram_entropy(np.bincount(predicted, minlength=num_classes))


def confusion_path(results_dir: Path | str, profile: str, scenario: str, norm: str, variant: str,
                   eval_mode: str, corruption: str, severity: float, norm_kwargs: object = "{}") -> Path:
    """File stem (no suffix) of one condition's confusion matrix (see module doc).

    Severity is written as a Python float (``0.5``, ``1.0``). Non-default ``norm_kwargs`` add
    ``__kw<8 hex digits of CRC32 of the canonical JSON>`` so runs with different kwargs do not overwrite
    each other.
    """
    parts = [check_name(kind, value) for kind, value in
             (("norm", norm), ("variant", variant), ("eval_mode", eval_mode), ("corruption", corruption))]
    parts.append(repr(float(severity)))
    kwargs = canonical_kwargs(norm_kwargs)
    if kwargs != "{}":
        parts.append(f"kw{_crc32(kwargs)}")
    folder = Path(results_dir) / check_name("profile", profile) / "confusion" / check_name("scenario", scenario)
    return folder / "__".join(parts)


def _crc32(text: str) -> str:
    return f"{zlib.crc32(text.encode()):08x}"


def save_confusion(matrix: np.ndarray, path_stem: Path | str, title: str,
                   class_names: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Write ``<path_stem>.csv`` (counts) and ``<path_stem>.png`` (row-normalised heatmap); returns both paths."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise ValueError(f"matrix must be square (K, K) with K >= 2, got shape {matrix.shape}")
    if (matrix < 0).any() or not np.issubdtype(matrix.dtype, np.integer):
        raise ValueError("matrix must hold non-negative integer counts")
    k = matrix.shape[0]
    names = [str(i) for i in range(k)] if class_names is None else [str(n) for n in class_names]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} names for {k} classes")
    stem = Path(path_stem)
    csv_path, png_path = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".png")
    table = pd.DataFrame(matrix, index=pd.Index(names, name="true\\predicted"), columns=names)
    atomic_write(csv_path, lambda handle: table.to_csv(handle, lineterminator="\n"))
    png = heatmap_png(matrix, names, title)
    atomic_write(png_path, lambda handle: handle.write(png), binary=True)
    return csv_path, png_path


def heatmap_png(matrix: np.ndarray, names: list[str], title: str) -> bytes:
    """PNG bytes of the row-normalised heatmap with a colour bar, class names, counts for K <= 20 classes."""
    k = matrix.shape[0]
    row_sums = matrix.sum(axis=1, keepdims=True)
    fractions = np.divide(matrix, row_sums, out=np.zeros(matrix.shape), where=row_sums > 0)
    predicted = matrix.sum(axis=0)
    entropy = histogram_entropy(predicted) if predicted.sum() > 0 else math.nan
    side = min(MAX_INCHES, max(FIGURE_INCHES, CELL_INCHES * k + 1.5))
    figure, axes = plt.subplots(figsize=(side + 1.0, side), dpi=FIGURE_DPI)
    try:
        image = axes.imshow(fractions, cmap="viridis", vmin=0.0, vmax=1.0)
        colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.03)
        colorbar.set_label("fraction of the true class", fontsize=8)
        colorbar.ax.tick_params(labelsize=7)
        axes.set_title(f"{title}\nprediction entropy {entropy:.2f} (1 = uniform, 0 = one class)", fontsize=8)
        axes.set_xlabel("predicted class", fontsize=8)
        axes.set_ylabel("true class", fontsize=8)
        ticks = range(k) if k <= MAX_TICKED_CLASSES else range(0, k, max(1, k // 20))
        long_names = max(len(names[i]) for i in ticks) > 3
        axes.set_xticks(list(ticks), [names[i] for i in ticks], fontsize=7, rotation=90 if long_names else 0)
        axes.set_yticks(list(ticks), [names[i] for i in ticks], fontsize=7)
        if k <= ANNOTATE_MAX_CLASSES:
            for t, p in zip(*np.nonzero(matrix)):  # zero cells stay blank: fewer text artists to draw
                axes.text(p, t, str(matrix[t, p]), ha="center", va="center", fontsize=7 if k <= 12 else 6,
                          color="black" if fractions[t, p] > 0.5 else "white")
        return figure_png(figure)
    finally:
        plt.close(figure)
