"""Calibration of a classifier's confidence: expected calibration error, NLL and reliability diagrams.

Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017, section 2. From logits
z_i (N, K) and labels y_i, with p_i = softmax(z_i), prediction yhat_i = argmax_k p_ik and confidence
c_i = max_k p_ik, the N samples fall into M equal-width confidence bins B_m = {i : c_i in ((m-1)/M, m/M]}
(m = 1..M, right-closed; c_i >= 1/K > 0, so every sample has a bin). Per bin,

    acc(B_m)  = |B_m|^-1 sum_{i in B_m} 1[yhat_i = y_i],   conf(B_m) = |B_m|^-1 sum_{i in B_m} c_i,
    ECE       = sum_m |B_m| / N * |acc(B_m) - conf(B_m)|                    (M = 15 by default),
    NLL       = -N^-1 sum_i log p_{i, y_i}                                  (nats).

The reliability diagram plots acc(B_m) against the bin (bars), the gap conf(B_m) - acc(B_m) on top of it,
and the diagonal of perfect calibration, with the ECE in the title. All sums run in float64; ``argmax``
breaks ties towards the lowest class index.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend chosen first)
import torch  # noqa: E402

from robustbench_norm.atomic import atomic_write  # noqa: E402

NUM_BINS = 15
FIGURE_INCHES = 4.0
FIGURE_DPI = 80


class ReliabilityBins(NamedTuple):
    """Per confidence bin m = 0..M-1 (edges ``edges[m]``, ``edges[m + 1]``): sample count, mean confidence
    and accuracy (NaN for an empty bin). Shapes: ``edges`` (M + 1,), the others (M,); float64 / int64."""

    edges: torch.Tensor
    count: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor


def reliability_bins(logits: torch.Tensor, labels: torch.Tensor, num_bins: int = NUM_BINS) -> ReliabilityBins:
    """Confidence histogram of ``logits`` (N, K) against ``labels`` (N,) in ``num_bins`` equal-width bins."""
    _check_num_bins(num_bins)
    probabilities = _probabilities(logits, labels)
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels.to(predicted.device)).double()
    edges = torch.linspace(0.0, 1.0, num_bins + 1, dtype=torch.float64)
    index = torch.bucketize(confidence, edges[1:-1], right=False)  # edges[m] < c <= edges[m + 1]
    count = torch.bincount(index, minlength=num_bins)
    sums = torch.zeros(2, num_bins, dtype=torch.float64)
    sums[0].index_add_(0, index, confidence)
    sums[1].index_add_(0, index, correct)
    means = sums / count.double()  # 0/0 = NaN for empty bins
    return ReliabilityBins(edges, count, means[0], means[1])


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, num_bins: int = NUM_BINS) -> float:
    """ECE (Guo et al. 2017) of ``logits`` (N, K) against ``labels`` (N,), ``num_bins`` equal-width bins."""
    return _ece(reliability_bins(logits, labels, num_bins))


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean ``-log softmax(z_i)[y_i]`` in nats of ``logits`` (N, K) against ``labels`` (N,)."""
    log_p = _probabilities(logits, labels, log=True)
    return float(-log_p.gather(1, labels.view(-1, 1).to(log_p.device)).mean())


def save_reliability_diagram(logits: torch.Tensor, labels: torch.Tensor, path: Path | str, *, title: str,
                             num_bins: int = NUM_BINS) -> Path:
    """Write the reliability diagram of ``logits`` (N, K) and ``labels`` (N,) as a PNG at ``path``.

    Bars: accuracy per confidence bin; red hatched bars: the gap up (or down) to the bin's mean
    confidence; dashed diagonal: perfect calibration; empty bins are left blank; ECE in the title.
    ``path`` is written atomically (its folder is created) and returned.
    """
    bins = reliability_bins(logits, labels, num_bins)
    png = _diagram_png(bins, title)
    path = Path(path)
    atomic_write(path, lambda handle: handle.write(png), binary=True)
    return path


def _ece(bins: ReliabilityBins) -> float:
    filled = bins.count > 0
    weights = bins.count[filled].double() / bins.count.sum()
    return float((weights * (bins.accuracy[filled] - bins.confidence[filled]).abs()).sum())


def _diagram_png(bins: ReliabilityBins, title: str) -> bytes:
    filled = bins.count > 0
    left = bins.edges[:-1][filled].numpy()
    width = float(bins.edges[1] - bins.edges[0])
    accuracy, confidence = bins.accuracy[filled].numpy(), bins.confidence[filled].numpy()
    figure, axes = plt.subplots(figsize=(FIGURE_INCHES, FIGURE_INCHES), dpi=FIGURE_DPI)
    try:
        axes.bar(left, accuracy, width=width, align="edge", color="tab:blue", edgecolor="black",
                 linewidth=0.5, label="accuracy")
        axes.bar(left, confidence - accuracy, bottom=accuracy, width=width, align="edge", color="tab:red",
                 alpha=0.35, edgecolor="tab:red", hatch="//", linewidth=0.5, label="gap to confidence")
        axes.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("confidence", fontsize=8)
        axes.set_ylabel("accuracy", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.legend(loc="upper left", fontsize=7)
        axes.set_title(f"{title}\nECE {_ece(bins):.4f} ({len(bins.count)} bins, n = {int(bins.count.sum())})",
                       fontsize=8)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
    finally:
        plt.close(figure)
    return buffer.getvalue()


def _check_num_bins(num_bins: int) -> None:
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be an int >= 1, got {num_bins!r}")


def _probabilities(logits: torch.Tensor, labels: torch.Tensor, *, log: bool = False) -> torch.Tensor:
    """Softmax (or log-softmax) of checked ``logits`` in float64, after checking ``labels`` against them."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a tensor (N, K) with K >= 2 classes, got {shape}")
    if not logits.is_floating_point() or not torch.isfinite(logits).all():
        raise ValueError("logits must be finite floats (a diverged condition has no calibration)")
    if not isinstance(labels, torch.Tensor) or labels.shape != (logits.shape[0],) or labels.is_floating_point():
        found = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be integer class indices of shape ({logits.shape[0]},), got {found}")
    if len(labels) == 0:
        raise ValueError("calibration needs at least one sample, got N = 0")
    if int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}], got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    logits = logits.detach().double()
    return logits.log_softmax(dim=1) if log else logits.softmax(dim=1)
