"""Publishing: every result CSV becomes a markdown page, a self-contained HTML page and plots.

For each ``<results_dir>/<profile>/<scenario>.csv`` :func:`publish` writes, into
``<results_dir>/<profile>/tables/`` (or ``<out_dir>/<profile>/``):

* ``<scenario>.md`` and ``<scenario>.html``: the summary page of
  :func:`robustbench_norm.results.summary.summary_page` (robustness vs BatchNorm, all measurements as
  mean ± SE); the HTML has inline CSS, no scripts and no external resources except the plots beside it;
* ``<scenario>_<corruption>.png`` when the scenario has corrupted cells: accuracy (%) vs severity, one
  line per entry (norm, test-time mode, ...), error bars = SE over seeds, severity 0 = clean;
* ``<scenario>_batch_size.png`` when the training batch size varies (and nothing is corrupted):
  accuracy vs training batch size (log2 axis).

Idempotent: the same CSVs give byte-identical files (sorted inputs, no timestamps in the PNGs).
"""

from __future__ import annotations

import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend chosen first)
import pandas as pd  # noqa: E402

from robustbench_norm.atomic import atomic_write  # noqa: E402
from robustbench_norm.results.rows import CLEAN, OK  # noqa: E402
from robustbench_norm.results.store import ResultStore  # noqa: E402
from robustbench_norm.results.summary import (  # noqa: E402
    ACCURACY,
    ENTRY_FIELDS,
    Page,
    has_corrupted_cells,
    mean_se,
    page_markdown,
    summary_page,
)

PLOT_INCHES = (6.0, 4.0)
PLOT_DPI = 80
_LINESTYLES = ("-", "--", ":", "-.")

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f0f0f0}tr:nth-child(even){background:#fafafa}
td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:0.5em 1em 0.5em 0}"""


def publish(results_dir: Path | str, out_dir: Path | str | None = None) -> list[Path]:
    """Render every scenario of every profile under ``results_dir``; the files written, sorted."""
    store = ResultStore(results_dir)
    written: list[Path] = []
    for profile, scenario in store.tables():
        target = store.root / profile / "tables" if out_dir is None else Path(out_dir) / profile
        written += publish_scenario(store.read(profile, scenario), profile, scenario, target)
    return sorted(written)


def publish_scenario(df: pd.DataFrame, profile: str, scenario: str, target: Path) -> list[Path]:
    """Write one scenario's markdown, HTML and plots into ``target``; the files written."""
    plots = scenario_plots(df, scenario)
    for name, png in plots.items():
        atomic_write(target / name, lambda handle, data=png: handle.write(data), binary=True)
    page = summary_page(df, profile, scenario)
    images = sorted(plots)
    markdown = page_markdown(page) + "".join(f"\n![{name}]({name})\n" for name in images)
    atomic_write(target / f"{scenario}.md", lambda handle: handle.write(markdown))
    atomic_write(target / f"{scenario}.html", lambda handle: handle.write(page_html(page, images)))
    return [target / name for name in (*images, f"{scenario}.md", f"{scenario}.html")]


def page_html(page: Page, images: list[str]) -> str:
    """A self-contained HTML document of the page (inline CSS, no scripts), plots linked by file name."""
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{html.escape(page.title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
             f"<h1>{html.escape(page.title)}</h1>", *(f"<p>{html.escape(text)}</p>" for text in page.intro)]
    for section in page.sections:
        parts += [f"<h2>{html.escape(section.heading)}</h2>",
                  *(f"<p>{html.escape(text)}</p>" for text in section.intro),
                  section.table.to_html(index=False, escape=True, border=0),
                  *(f"<p>{html.escape(text)}</p>" for text in section.notes)]
    parts += [f'<img src="{html.escape(name)}" alt="{html.escape(name)}">' for name in images]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


# -- plots ------------------------------------------------------------------------------------------------


def scenario_plots(df: pd.DataFrame, scenario: str) -> dict[str, bytes]:
    """PNG bytes by file name: accuracy vs severity per corruption, or accuracy vs training batch size."""
    accuracy = df.loc[(df["metric"] == ACCURACY) & (df["status"] == OK)].reset_index(drop=True)
    if accuracy.empty:
        return {}
    labels = _entry_labels(accuracy)
    if has_corrupted_cells(df):
        corrupted = sorted(set(accuracy.loc[accuracy["corruption"] != CLEAN, "corruption"]))
        clean = accuracy.loc[accuracy["corruption"] == CLEAN]
        return {f"{scenario}_{name}.png": _line_plot(
            pd.concat([clean, accuracy.loc[accuracy["corruption"] == name]]), labels, "severity",
            title=f"{scenario}: {name}", log2=False) for name in corrupted}
    if accuracy["train_batch_size"].nunique() > 1:
        return {f"{scenario}_batch_size.png": _line_plot(accuracy, labels, "train_batch_size",
                                                         title=f"{scenario}: accuracy vs batch size", log2=True)}
    return {}


def _entry_labels(rows: pd.DataFrame) -> pd.Series:
    """Legend label per row: the entry fields that vary (norm and eval_mode always), joined by '/'."""
    shown = [name for name in ENTRY_FIELDS
             if name in ("norm", "eval_mode") or rows[name].nunique() > 1]
    parts = rows[shown].astype(str)
    if "norm_kwargs" in shown:
        parts["norm"] = parts["norm"] + parts.pop("norm_kwargs").where(lambda kw: kw != "{}", "")
    return parts.agg("/".join, axis=1)


def _line_plot(rows: pd.DataFrame, labels: pd.Series, x: str, *, title: str, log2: bool) -> bytes:
    """Mean ± SE over seeds of accuracy (%) vs ``x``, one line per label."""
    rows = rows.assign(label=labels.loc[rows.index])
    per_seed = rows.groupby(["label", x, "seed"], sort=True)["value"].mean().reset_index()
    figure, axes = plt.subplots(figsize=PLOT_INCHES, dpi=PLOT_DPI)
    try:
        for index, (label, line) in enumerate(per_seed.groupby("label", sort=True)):
            points = [(value, *mean_se(group["value"])[:2]) for value, group in line.groupby(x, sort=True)]
            xs, means, ses = zip(*points)
            axes.errorbar(xs, [100 * m for m in means], yerr=[100 * s if s == s else 0.0 for s in ses],
                          label=label, marker="o", markersize=3, capsize=2, linewidth=1,
                          linestyle=_LINESTYLES[index // 10 % len(_LINESTYLES)])  # 10 colours, then a new style
        if log2:
            axes.set_xscale("log", base=2)
        axes.set_xlabel(x.replace("_", " "))
        axes.set_ylabel("accuracy (%), mean ± SE")
        axes.set_title(title, fontsize=9)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None}, bbox_inches="tight")
    finally:
        plt.close(figure)
    return buffer.getvalue()
