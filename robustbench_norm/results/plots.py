"""Line plots a reader could put in a paper: accuracy over severity or training batch size.

One line per (norm, test-time mode) with mean ± SE over seeds as error bars, drawn in the Okabe-Ito
colour-blind-safe palette (Okabe & Ito 2008; yellow left out for contrast on white) with a distinct marker
and dash pattern per line, so that lines stay apart in greyscale too. The reference (BatchNorm with
running statistics) is a thick black line in every panel, chance a dotted grey line. When more than
:data:`PANEL_LINES` lines would share one axes, they are split into panels by norm family (read from the
norm registry: context norms, norms that use batch statistics, per-sample norms; unregistered names go to
"other"), each panel with its own legend. Lines with exactly the same per-seed values (one model under two
names, e.g. ``batchnorm/test_batch_stats`` and ``batchnorm_test_stats``) are drawn once with both names.

PNGs come from :func:`robustbench_norm.results.png.figure_png` (no timestamp, 256-colour palette).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from robustbench_norm.results.headline import norm_label  # noqa: E402
from robustbench_norm.results.png import figure_png  # noqa: E402
from robustbench_norm.results.rows import CLEAN, OK  # noqa: E402
from robustbench_norm.results.summary import REFERENCE_EVAL_MODE, REFERENCE_NORM, mean_se  # noqa: E402

OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
DASHES = ("-", "--", "-.", ":")
PANEL_LINES = 9
LEGEND_WIDTH = 44  # characters per legend line (longer labels wrap)
PANEL_INCHES = (4.8, 3.4)
DPI = 100
FAMILIES = ("batch statistics", "per-sample statistics", "context", "other")
SEVERITY_AXES = {
    "additive_gaussian_noise": "severity σ (std of ξ in x(1 + ξ), ξ ~ N(0, σ²))",
    "additive_poisson_noise": "severity λ (rate of k in x(1 + k), k ~ Poisson(λ))",
    "multiplicative_bernoulli_noise": "severity p (probability a pixel is dropped)",
}
LINE_FIELDS = ("norm", "norm_kwargs", "eval_mode", "eval_kwargs")


@dataclass(frozen=True)
class Line:
    """One curve: mean ± SE over seeds of the value at each x."""

    label: str
    family: str
    xs: tuple[float, ...]
    means: tuple[float, ...]
    ses: tuple[float, ...]
    reference: bool
    signature: tuple = ()


def norm_family(norm: str) -> str:
    """The plot panel of a norm, from its registry flags (``"other"`` when it is not registered)."""
    from robustbench_norm.norms import get_norm  # deferred: the registry imports torch

    try:
        spec = get_norm(norm)
    except (KeyError, ValueError):
        return "other"
    if spec.needs_context:
        return "context"
    if spec.batch_independent:
        return "per-sample statistics"
    return "batch statistics"


def lines_over(rows: pd.DataFrame, x: str) -> list[Line]:
    """One :class:`Line` per (norm, kwargs, mode, mode kwargs, net) of ``rows`` (one metric), over column ``x``;
    the net is named in the label when the rows have several."""
    measured = rows.loc[rows["status"] == OK]
    several_nets = measured["model"].nunique() > 1
    fields = [name for name in (*LINE_FIELDS, "model") if name in rows.columns]
    lines = []
    for entry, group in measured.groupby(fields, sort=True):
        values = dict(zip(fields, entry))
        per_seed = group.groupby([x, "seed"], sort=True)["value"].mean()
        points = [(float(at), *mean_se(seeds)[:2]) for at, seeds in per_seed.groupby(level=0, sort=True)]
        xs, means, ses = zip(*points)
        mode = norm_label(values["eval_mode"], values.get("eval_kwargs", "{}"))
        label = f"{norm_label(values['norm'], values['norm_kwargs'])} / {mode}"
        label += f" on {values['model']}" if several_nets else ""
        lines.append(Line(label, norm_family(values["norm"]),
                          xs, means, ses,
                          values["norm"] == REFERENCE_NORM and values["eval_mode"] == REFERENCE_EVAL_MODE,
                          tuple(per_seed.round(12).items())))
    return _merge_identical(lines)


def _merge_identical(lines: list[Line]) -> list[Line]:
    """Lines with the same per-seed values drawn once, labelled with every name."""
    merged: dict[tuple, Line] = {}
    for line in lines:
        twin = merged.get(line.signature)
        if twin is None:
            merged[line.signature] = line
        else:
            merged[line.signature] = Line(f"{twin.label} (= {line.label})", twin.family, twin.xs, twin.means,
                                          twin.ses, twin.reference or line.reference, twin.signature)
    return list(merged.values())


def severity_plot(rows: pd.DataFrame, corruption: str, title: str, chance: float) -> bytes:
    """Accuracy (%) vs severity of one corruption, severity 0 = the clean test set."""
    on_corruption = rows.loc[(rows["corruption"] == corruption) | (rows["corruption"] == CLEAN)]
    x_label = SEVERITY_AXES.get(corruption, f"severity of {corruption} (its own scale; 0 = clean)")
    return line_panels(lines_over(on_corruption, "severity"), title, x_label, chance, log2=False)


def batch_size_plot(rows: pd.DataFrame, title: str, chance: float) -> bytes:
    """Accuracy (%) vs training batch size (log2 axis, ticks at the sizes trained)."""
    return line_panels(lines_over(rows, "train_batch_size"), title,
                       "training batch size (images per step, log2 axis)", chance, log2=True)


def line_panels(lines: list[Line], title: str, x_label: str, chance: float, *, log2: bool) -> bytes:
    """Panels of lines (split by family when there are many), reference and chance in each; PNG bytes."""
    groups = _panels(lines)
    figure, axes_row = plt.subplots(1, len(groups), figsize=(PANEL_INCHES[0] * len(groups), PANEL_INCHES[1]),
                                    dpi=DPI, sharey=True, squeeze=False)
    try:
        for axes, (name, members) in zip(axes_row[0], groups):
            _draw_panel(axes, members, [line for line in lines if line.reference], chance, log2)
            axes.set_title(name, fontsize=10)
            axes.set_xlabel(x_label, fontsize=9)
        axes_row[0][0].set_ylabel("accuracy (%), mean ± SE over seeds", fontsize=9)
        figure.suptitle(title, fontsize=11, y=1.0)
        figure.subplots_adjust(top=0.86, wspace=0.2)
        return figure_png(figure)
    finally:
        plt.close(figure)


def _panels(lines: list[Line]) -> list[tuple[str, list[Line]]]:
    """(panel title, its non-reference lines): one panel if few lines, else one per family (chunked)."""
    others = [line for line in lines if not line.reference]
    if len(others) <= PANEL_LINES:
        return [("all norms", others)]
    panels = []
    for family in FAMILIES:
        members = [line for line in others if line.family == family]
        chunks = [members[i:i + PANEL_LINES] for i in range(0, len(members), PANEL_LINES)]
        for index, chunk in enumerate(chunks):
            panels.append((family + (f" ({index + 1}/{len(chunks)})" if len(chunks) > 1 else ""), chunk))
    return panels


def _draw_panel(axes: plt.Axes, members: list[Line], references: list[Line], chance: float, log2: bool) -> None:
    for index, line in enumerate(members):
        _errorbar(axes, line, color=OKABE_ITO[index % len(OKABE_ITO)], marker=MARKERS[index % len(MARKERS)],
                  linestyle=DASHES[index // len(OKABE_ITO) % len(DASHES)], width=1.4)
    for line in references:
        _errorbar(axes, line, color="black", marker="o", linestyle="-", width=2.4)
    if math.isfinite(chance):
        axes.axhline(100 * chance, color="0.5", linestyle=":", linewidth=1.2, label=f"chance ({100 * chance:.0f}%)")
    if log2:
        axes.set_xscale("log", base=2)
        sizes = sorted({x for line in (*members, *references) for x in line.xs})
        axes.set_xticks(sizes, [f"{x:g}" for x in sizes])
        axes.minorticks_off()
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.tick_params(labelsize=8)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.2), ncol=1, frameon=False)


def _errorbar(axes: plt.Axes, line: Line, *, color: str, marker: str, linestyle: str, width: float) -> None:
    ses = [100 * se if np.isfinite(se) else 0.0 for se in line.ses]
    axes.errorbar(line.xs, [100 * m for m in line.means], yerr=ses, label=textwrap.fill(line.label, LEGEND_WIDTH),
                  color=color, marker=marker,
                  markersize=4.5, linestyle=linestyle, linewidth=width, capsize=2, elinewidth=0.8)
