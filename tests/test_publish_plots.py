"""Plots: one line per (norm, mode) over the x axis, merged twins, panels by family, chance line, palette."""

from __future__ import annotations

import io

import matplotlib.colors
import numpy as np
from PIL import Image

from robustbench_norm.results.plots import (
    OKABE_ITO,
    PANEL_LINES,
    Line,
    _panels,
    batch_size_plot,
    lines_over,
    norm_family,
    severity_plot,
)
from robustbench_norm.results.rows import rows_to_frame


def batch_rows(publish_row):
    rows = [publish_row(scenario="batch_size", norm=norm, eval_mode=mode, train_batch_size=batch, seed=seed,
                        value=base + 0.01 * batch + 0.01 * seed)
            for norm, mode, base in (("batchnorm", "running_stats", 0.3), ("groupnorm", "standard", 0.5),
                                     ("batchnorm", "test_batch_stats", 0.4),
                                     ("batchnorm_test_stats", "test_batch_stats", 0.4))
            for batch in (2, 8, 32) for seed in range(2)]
    return rows_to_frame(rows)


def test_batch_size_is_the_x_axis_not_part_of_the_label(publish_row):
    lines = lines_over(batch_rows(publish_row), "train_batch_size")
    assert [line.xs for line in lines] == [(2.0, 8.0, 32.0)] * len(lines)
    labels = [line.label for line in lines]
    assert "groupnorm / standard" in labels and not any("32" in label for label in labels)
    assert [line.reference for line in lines].count(True) == 1
    # batchnorm/test_batch_stats and batchnorm_test_stats are one model under two names: one line
    assert "batchnorm / test_batch_stats (= batchnorm_test_stats / test_batch_stats)" in labels
    assert len(lines) == 3
    mean_at_2 = lines[labels.index("groupnorm / standard")].means[0]
    assert mean_at_2 == np.mean([0.52, 0.53])  # groupnorm at batch 2, seeds 0 and 1


def test_families_from_the_registry_and_panels_when_lines_are_many():
    assert norm_family("batchnorm") == "batch statistics"
    assert norm_family("groupnorm") == "per-sample statistics"
    assert norm_family("contextnorm") == "context"
    assert norm_family("not_a_registered_norm") == "other"
    few = [Line(f"n{i}", "other", (0.0,), (0.5,), (0.0,), False) for i in range(PANEL_LINES)]
    assert [name for name, _ in _panels(few)] == ["all norms"]
    many = [Line(f"b{i}", "batch statistics", (0.0,), (0.5,), (0.0,), False) for i in range(PANEL_LINES + 1)]
    many += [Line("c", "context", (0.0,), (0.5,), (0.0,), False), Line("ref", "batch statistics", (0.0,), (0.9,),
                                                                        (0.0,), True)]
    panels = _panels(many)
    assert [name for name, _ in panels] == ["batch statistics (1/2)", "batch statistics (2/2)", "context"]
    assert all(len(members) <= PANEL_LINES and not any(m.reference for m in members) for _, members in panels)


def test_plots_are_pngs_drawn_in_the_okabe_ito_palette(publish_row):
    png = batch_size_plot(batch_rows(publish_row), "batch", chance=0.1)
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(int)
    colours = {tuple(pixel) for pixel in image}
    first = tuple(int(255 * c) for c in matplotlib.colors.to_rgb(OKABE_ITO[0]))
    assert any(max(abs(a - b) for a, b in zip(colour, first)) <= 3 for colour in colours)
    noise = rows_to_frame([publish_row(norm=norm, corruption="agn", severity=s, seed=seed, value=0.9 - s / 2)
                           for norm in ("batchnorm", "groupnorm") for s in (0.0, 0.5) for seed in range(2)])
    assert severity_plot(noise, "agn", "noise", chance=float("nan")).startswith(b"\x89PNG")
