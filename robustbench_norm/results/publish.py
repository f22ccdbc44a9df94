"""Publishing: result folders become an offline site of ranked tables, plots and figures, with provenance.

``publish(results_dirs, out_dir)`` reads every ``<results_dir>/<profile>/<scenario>.csv`` of one or more
results folders (e.g. a CPU and a GPU run) and writes, under the site root (``out_dir``, or the single
results folder itself):

* ``index.html`` / ``index.md``: the first-ranked row of every scenario, then every scenario page, plot,
  confusion-matrix gallery and matrix, translation grid and reliability diagram;
* per profile, in ``<root>/<profile>/`` (``<results_dir>/<profile>/tables/`` without ``out_dir``):
  ``<scenario>.html`` / ``.md`` / ``.tex`` (the headline table of :mod:`robustbench_norm.results.headline`
  for each run, its plots next to it, the other metrics, every measurement folded away, provenance),
  ``<scenario>_<corruption>.png`` (accuracy vs severity) or ``<scenario>_batch_size.png`` (accuracy vs
  training batch size), ``<scenario>_confusion.html`` / ``.md`` (a gallery: one link per confusion matrix
  with its prediction entropy), ``confusion/<scenario>/<test set>__<condition>.png``, the labelled
  ``<scenario>_translation_<norm>.png`` (:mod:`robustbench_norm.results.figures`) and the run's reliability
  diagrams, copied to ``reliability/<scenario>/``.

Runs are never averaged together. A *run* is one results folder and one device type (``cpu``, ``cuda``):
with several runs every page has a section per run and a side-by-side table of the runs' values. Rows that
measure the same thing under two training recipes are left out of the tables (and listed), never averaged.

Convergence on every page, where ``<results_dir>/<profile>/convergence.csv`` exists
(:mod:`robustbench_norm.results.convergence`): which norms' in-distribution models are converged, which are
not (their numbers measure the schedule), which were never checked.

Provenance on every page: profile, device and hardware, the code commit of the rows (flagged when it is not
the current HEAD of this checkout), package versions, the date the results file was last committed (or
modified, when it has uncommitted changes), and the number of test images per test set.

Idempotent: the same inputs give byte-identical files; PNGs whose inputs did not change are not redrawn.
"""

from __future__ import annotations

import datetime
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

import robustbench_norm
from robustbench_norm.atomic import atomic_write
from robustbench_norm.results.convergence import CSV_NAME, convergence_blocks, read_checks
from robustbench_norm.results.document import (
    Block,
    Details,
    Document,
    Figure,
    Heading,
    Links,
    Paragraph,
    Table,
    text_cell,
)
from robustbench_norm.results.figures import (
    ConfusionFigure,
    copy_files,
    file_part,
    png_size,
    publish_confusions,
    publish_translation_grid,
    render_png,
)
from robustbench_norm.results.headline import (
    Measurements,
    estimates,
    headline_table,
    leader,
    rank_order,
    recipe_conflicts,
    scenario_measurements,
    side_by_side,
)
from robustbench_norm.results.html import document_html
from robustbench_norm.results.latex import document_latex
from robustbench_norm.results.markdown import document_markdown
from robustbench_norm.results.plots import batch_size_plot, severity_plot
from robustbench_norm.results.provenance import git_commit
from robustbench_norm.results.rows import CLEAN, OK
from robustbench_norm.results.store import ResultStore
from robustbench_norm.results.summary import ACCURACY, display_summary, summarize

QUESTIONS = {
    "corruption": "Which norm keeps its accuracy under noise? Rows are ranked by the mean accuracy over every "
                  "corruption and severity > 0; the plots show accuracy against each corruption's severity.",
    "batch_size": "Which norm survives training with small batches? Rows are ranked by the accuracy after "
                  "training at the smallest batch; the drop is the accuracy at the largest batch minus that at "
                  "the smallest.",
    "domain": "Does domain adaptation help, and does the norm matter? Rows are ranked by target accuracy after "
              "adaptation; the gain is adapted minus source-only target accuracy (paired over seeds); source "
              "accuracy shows what each training keeps on the source domain.",
    "parts": "How well does one model trained on the union of the test sets' domains do on each of them? Rows "
             "are ranked by accuracy on the union.",
    "plain": "Rows are ranked by accuracy.",
}


@dataclass(frozen=True)
class Run:
    """One results folder and one device type; ``label``/``slug`` are empty when there is only one run."""

    label: str
    slug: str
    results_dir: Path
    device: str


@dataclass(frozen=True)
class ScenarioRun:
    """The rows of one scenario in one run, and the CSV they came from."""

    run: Run
    csv: Path
    rows: pd.DataFrame


@dataclass(frozen=True)
class PageEntry:
    """What the index says about one scenario page; links are (text, href relative to the site root)."""

    profile: str
    scenario: str
    page: str
    leaders: tuple[tuple[str, str], ...]
    plots: tuple[tuple[str, str], ...]
    figures: tuple[tuple[str, str], ...]
    confusions: tuple[tuple[str, str], ...]


def publish(results_dirs: Path | str | Sequence[Path | str], out_dir: Path | str | None = None) -> list[Path]:
    """Write the site (see the module docstring) and return the paths of its files, sorted.

    Several results folders need ``out_dir``. Nothing is written when no folder has a result CSV.
    """
    dirs = [Path(results_dirs)] if isinstance(results_dirs, (str, Path)) else [Path(d) for d in results_dirs]
    if not dirs:
        raise ValueError("publish needs at least one results folder")
    if len(dirs) > 1 and out_dir is None:
        raise ValueError(f"publishing {len(dirs)} results folders side by side needs an out_dir")
    for folder in dirs:
        if not folder.is_dir():
            raise ValueError(f"results folder {folder} does not exist")
    pages = load_runs(dirs)
    if not pages:
        return []
    root = Path(out_dir) if out_dir is not None else dirs[0]
    head = git_commit(Path(robustbench_norm.__file__).resolve())
    written, entries = [], []
    for (profile, scenario), runs in sorted(pages.items()):
        folder = root / profile if out_dir is not None else root / profile / "tables"
        files, entry = publish_page(profile, scenario, runs, folder, root, head)
        written += files
        entries.append(entry)
    written += write_index(root, entries, head)
    return sorted(written)


def load_runs(dirs: list[Path]) -> dict[tuple[str, str], list[ScenarioRun]]:
    """Every (profile, scenario) with its rows split into runs (results folder x device type)."""
    names = [folder.resolve().name or str(folder) for folder in dirs]
    labels = [name if names.count(name) == 1 else f"{index + 1}-{name}" for index, name in enumerate(names)]
    found: dict[tuple[str, str], list[tuple[str, Path, str, Path, pd.DataFrame]]] = {}
    for label, folder in zip(labels, dirs):
        store = ResultStore(folder)
        for profile, scenario in store.tables():
            frame = store.read(profile, scenario)
            for device, rows in frame.groupby("device", sort=True):
                found.setdefault((profile, scenario), []).append(
                    (label, folder, device, store.path(profile, scenario), rows.reset_index(drop=True)))
    single = len({(label, device) for runs in found.values() for label, _, device, _, _ in runs}) == 1
    return {key: [ScenarioRun(Run("" if single else f"{label} ({device})",
                                  "" if single else file_part(f"{label}-{device}"), folder, device), csv, rows)
                  for label, folder, device, csv, rows in runs]
            for key, runs in found.items()}


# -- one scenario page -------------------------------------------------------------------------------------


def publish_page(profile: str, scenario: str, runs: list[ScenarioRun], folder: Path, root: Path,
                 head: str) -> tuple[list[Path], PageEntry]:
    """Write one scenario's page (HTML, markdown, LaTeX), plots and figures; the files and the index entry."""
    written: list[Path] = []
    provenance = provenance_table(profile, runs, head)
    blocks: list[Block] = [Links(_page_links(scenario, folder, root)), provenance,
                           *page_convergence(profile, scenario, runs)]
    sections, leaders, measured, plots = [], [], [], []
    for scenario_run in runs:
        section, run_files, measurements = run_section(profile, scenario, scenario_run, folder)
        sections += section
        written += run_files
        plots += run_files
        measured.append((scenario_run.run.label, measurements))
        leaders.append((scenario_run.run.label, leader(measurements)))
    kind = measured[0][1].kind
    blocks.insert(0, Paragraph(QUESTIONS[kind]))
    if len(runs) > 1:
        blocks += [Heading("Runs side by side", 2),
                   side_by_side(measured, f"{scenario}: every run's values (never averaged across runs)")]
    blocks += sections
    figures = publish_figures(profile, scenario, runs, folder)
    written += figures.files()
    linked = [*figures.galleries, *figures.grids, *figures.diagrams]
    if linked:
        blocks += [Heading("Confusion matrices, translations, reliability diagrams", 2),
                   *(Figure(str(grid.relative_to(folder)), grid.stem, "Context Normalization's translation of "
                            "test images from the first context to the second (rows labelled).", *png_size(grid))
                     for grid in figures.grids),
                   Links(tuple((path.name, str(path.relative_to(folder)), about) for path, about in
                               [*((g, "(confusion matrix gallery)") for g in figures.galleries),
                                *((g, "(CN translation grid, rows labelled)") for g in figures.grids),
                                *((d, "(reliability diagram: accuracy per confidence bin, ECE in its title)")
                                  for d in figures.diagrams)]))]
    dumps = tuple(all_measurements(scenario_run) for scenario_run in runs)
    blocks.append(Details("Every measurement (mean ± SE over seeds per cell)", dumps))
    document = Document(f"{scenario} (profile {profile})", tuple(blocks))
    appendix = [table for table in document.tables() if all(table is not other for other in (provenance, *dumps))]
    written += write_document(document, folder / scenario, (f"{profile}:{scenario}", appendix))
    page = str((folder / f"{scenario}.html").relative_to(root))
    return written, PageEntry(profile, scenario, page, tuple(leaders), _relative(plots, root),
                              _relative(linked, root), _relative(figures.confusions, root))


def page_convergence(profile: str, scenario: str, runs: list[ScenarioRun]) -> list[Block]:
    """The convergence summary of the first run's folder that has ``<profile>/convergence.csv``, else none."""
    for scenario_run in runs:
        checks = read_checks(scenario_run.run.results_dir / profile / CSV_NAME)
        if len(checks):
            norms = sorted({norm for run in runs for norm in run.rows["norm"]})
            return convergence_blocks(checks, scenario, norms)
    return []


def _relative(paths: list[Path], root: Path) -> tuple[tuple[str, str], ...]:
    return tuple((path.name, str(path.relative_to(root))) for path in paths)


def _page_links(scenario: str, folder: Path, root: Path) -> tuple[tuple[str, str, str], ...]:
    up = Path(*([".."] * len(folder.relative_to(root).parts)))
    return (("index", str(up / "index.html"), "(every page, plot and figure)"),
            (f"{scenario}.md", f"{scenario}.md", "(this page as markdown)"),
            (f"{scenario}.tex", f"{scenario}.tex", "(its tables in LaTeX, booktabs)"))


def run_section(profile: str, scenario: str, scenario_run: ScenarioRun,
                folder: Path) -> tuple[list[Block], list[Path], Measurements]:
    """One run's headline table, its plots, its other metrics; the PNG files written and its measurements."""
    run, rows = scenario_run.run, scenario_run.rows
    conflicts = recipe_conflicts(rows)
    blocks: list[Block] = [Heading(f"Run {run.label}", 2)] if run.label else []
    if conflicts.any():
        listed = rows.loc[conflicts, ["norm", "eval_mode", "metric", "recipe"]].drop_duplicates()
        blocks.append(Paragraph(
            f"Left out: {int(conflicts.sum())} rows of entries measured under several training recipes "
            f"({', '.join(sorted(set(listed['recipe'])))}; norms {', '.join(sorted(set(listed['norm'])))}); they are "
            "never averaged. Publish each recipe's results from its own folder to see them."))
        rows = rows.loc[~conflicts].reset_index(drop=True)
    chance = confusion_chance(run.results_dir / profile / "confusion" / scenario)
    measurements, others = scenario_measurements(rows, chance)
    where = f" — {run.label}" if run.label else ""
    blocks.append(headline_table(measurements, f"{scenario}{where}: headline"))
    plots = write_plots(rows, measurements, scenario, run, folder)
    blocks += [figure for figure, _ in plots]
    if others is not None:
        cells = estimates(measurements)
        order = [entry for entry in rank_order(measurements, cells) if entry in others.entries]
        order += [entry for entry in others.entries if entry not in order]
        blocks += [Heading(f"Other metrics{where}", 3),
                   headline_table(others, f"{scenario}{where}: other metrics, rows in the order above",
                                  compare=False, order=order)]
    return blocks, [path for _, path in plots], measurements


def confusion_chance(folder: Path) -> float:
    """1/K for the K classes of the scenario's confusion matrices (all must agree), else NaN."""
    sizes = set()
    for csv_path in folder.glob("*.csv"):
        with open(csv_path, encoding="utf-8") as handle:
            sizes.add(len(handle.readline().rstrip("\r\n").split(",")) - 1)
    return 1.0 / sizes.pop() if len(sizes) == 1 and min(sizes) >= 2 else float("nan")


def write_plots(rows: pd.DataFrame, measurements: Measurements, scenario: str, run: Run,
                folder: Path) -> list[tuple[Figure, Path]]:
    """Accuracy vs severity (per corruption) or vs training batch size, per test set and training variant."""
    accuracy = rows.loc[(rows["metric"] == ACCURACY) & (rows["status"] == OK)]
    chance = next((m.chance for m in measurements.measures if m.accuracy), float("nan"))
    out = []
    for (dataset, variant), group in accuracy.groupby(["dataset", "variant"], sort=True):
        several = accuracy[["dataset", "variant"]].drop_duplicates().shape[0] > 1
        stem = "_".join(part for part in (scenario, run.slug, file_part(f"{dataset}-{variant}") if several else "")
                        if part)
        about = f"{scenario}{f' ({run.label})' if run.label else ''}, test set {dataset}, training {variant}"
        if measurements.kind == "corruption":
            for corruption in sorted(set(group["corruption"]) - {CLEAN}):
                title = f"{about}: accuracy vs {corruption}"
                out.append(_plot(folder / f"{stem}_{corruption}.png", group, title,
                                 lambda g=group, c=corruption, t=title: severity_plot(g, c, t, chance),
                                 "Mean ± SE over seeds at each severity (0 = clean test set); black: reference "
                                 "(batchnorm, running statistics); dotted: chance."))
        elif measurements.kind == "batch_size":
            title = f"{about}: accuracy vs training batch size"
            out.append(_plot(folder / f"{stem}_batch_size.png", group, title,
                             lambda g=group, t=title: batch_size_plot(g, t, chance),
                             "Mean ± SE over seeds at each training batch size; a missing point could not be "
                             "trained (see the table's notes); black: reference; dotted: chance."))
    return out


def _plot(path: Path, rows: pd.DataFrame, title: str, render: Callable[[], bytes],
          caption: str) -> tuple[Figure, Path]:
    inputs = rows.sort_values(list(rows.columns)).to_csv(index=False).encode() + title.encode()
    render_png(path, inputs, render)
    width, height = png_size(path)
    return Figure(path.name, title, caption, width, height), path


def all_measurements(scenario_run: ScenarioRun) -> Table:
    """Every measurement key as mean ± SE (n seeds), severity or batch size as columns (summary module)."""
    table, constant = display_summary(summarize(scenario_run.rows))
    label = scenario_run.run.label
    caption = ("Same for every row: " + ", ".join(f"{k}={v}" for k, v in constant.items()) + ".",) if constant else ()
    rows = tuple(tuple(text_cell(str(value)) for value in row) for row in table.itertuples(index=False))
    return Table(f"Every measurement{f' — {label}' if label else ''}", tuple(map(str, table.columns)), rows, caption)


# -- confusion galleries and translation grids -------------------------------------------------------------


@dataclass
class Figures:
    """A scenario's published figures: gallery pages (HTML), their markdown twins, translation grids,
    reliability diagrams and confusion matrices."""

    galleries: list[Path] = field(default_factory=list)
    markdown: list[Path] = field(default_factory=list)
    grids: list[Path] = field(default_factory=list)
    diagrams: list[Path] = field(default_factory=list)
    confusions: list[Path] = field(default_factory=list)

    def files(self) -> list[Path]:
        """Every file written."""
        return [*self.galleries, *self.markdown, *self.grids, *self.diagrams, *self.confusions]


def publish_figures(profile: str, scenario: str, runs: list[ScenarioRun], folder: Path) -> Figures:
    """Per results folder: the confusion gallery and matrices, labelled translation grids, reliability diagrams."""
    figures = Figures()
    by_folder: dict[Path, list[ScenarioRun]] = {}
    for scenario_run in runs:
        by_folder.setdefault(scenario_run.run.results_dir, []).append(scenario_run)
    for results_dir, members in by_folder.items():
        tag = file_part(members[0].run.label.rsplit(" (", 1)[0]) if members[0].run.label else ""
        rows = pd.concat([m.rows for m in members], ignore_index=True)
        source = results_dir / profile / "confusion" / scenario
        confusions = publish_confusions(source, rows, scenario, folder / "confusion" / scenario / tag) \
            if source.is_dir() else []
        if confusions:
            name = f"{scenario}_confusion{'_' + tag if tag else ''}"
            gallery = confusion_gallery(confusions, folder, scenario, f"{scenario}: confusion matrices"
                                        f"{f' ({tag})' if tag else ''}", len(set(rows['device'])) > 1)
            html_page, markdown_page = write_document(gallery, folder / name)
            figures.galleries.append(html_page)
            figures.markdown.append(markdown_page)
            figures.confusions += [figure.path for figure in confusions]
        for grid in sorted((results_dir / profile).glob(f"{scenario}_translation_*.png")):
            figures.grids.append(publish_translation_grid(grid, scenario,
                                                          folder / f"{grid.stem}{'_' + tag if tag else ''}.png"))
        figures.diagrams += copy_files(results_dir / profile / "reliability" / scenario, "*.png",
                                       folder / "reliability" / scenario / tag)
    return figures


def confusion_gallery(figures: list[ConfusionFigure], folder: Path, scenario: str, title: str,
                      several_devices: bool) -> Document:
    """One row per (norm, training, mode), one column per condition; each cell links a matrix."""
    conditions = sorted({(f.corruption, f.severity) for f in figures}, key=lambda c: (c[0] != CLEAN, c))
    header = ("norm", "training", "eval mode", "test set",
              *("clean" if c == CLEAN else f"{c} {s:g}" for c, s in conditions))
    grouped: dict[tuple, dict[tuple[str, float], ConfusionFigure]] = {}
    for figure in figures:
        grouped.setdefault((figure.norm + (f" [{figure.kwargs_tag}]" if figure.kwargs_tag else ""),
                            figure.variant, figure.eval_mode, figure.dataset), {})[(figure.corruption,
                                                                                    figure.severity)] = figure
    rows = []
    for key, cells in sorted(grouped.items()):
        row = [text_cell(str(part)) for part in key]
        for condition in conditions:
            figure = cells.get(condition)
            row.append(text_cell("") if figure is None else
                       text_cell(f"H {figure.entropy:.2f}", href=str(figure.path.relative_to(folder))))
        rows.append(tuple(row))
    caption = ["Each cell links the confusion matrix of that condition, counts summed over all seeds (colour: "
               "fraction of each true class; class names on the axes; the test set is in the file name). "
               "H = normalised entropy of the predicted classes: 1 = predictions spread over every class, "
               "0 = one class predicted for every image (collapse)."]
    if several_devices:
        caption.append("The results folder holds several device types; a confusion matrix file does not record "
                       "its device, so these are from whichever run wrote them last.")
    table = Table(title, header, tuple(rows), tuple(caption))
    return Document(title, (Links(((f"{scenario}.html", f"{scenario}.html", "(the scenario's tables)"),)), table))


# -- provenance --------------------------------------------------------------------------------------------


def provenance_table(profile: str, runs: list[ScenarioRun], head: str) -> Table:
    """Where each run's numbers come from (module docstring), one row per run."""
    header = ("run", "profile", "device", "hardware", "code commit of the rows", "package versions",
              "results file", "test images", "rows")
    rows = []
    for scenario_run in runs:
        frame = scenario_run.rows
        commits = frame["git_commit"].value_counts().sort_index()
        rows.append(tuple(text_cell(value) for value in (
            scenario_run.run.label or str(scenario_run.run.results_dir), profile, scenario_run.run.device,
            "; ".join(sorted(set(frame["hardware"]))) if "hardware" in frame else "not recorded",
            "; ".join(f"{commit} ({count} rows){commit_flag(commit, head)}" for commit, count in commits.items()),
            "; ".join(sorted(set(frame["versions"]))),
            f"{scenario_run.csv.name}, {file_date(scenario_run.csv)}",
            test_images(frame), str(len(frame)))))
    return Table("Provenance", header, tuple(rows),
                 (f"Current HEAD of this checkout: {head}. A commit flagged 'not the current HEAD' means the "
                  "numbers were produced by older code.",))


def commit_flag(commit: str, head: str) -> str:
    """`` — not the current HEAD ...`` / `` — uncommitted changes`` or ``""`` for a row's commit."""
    flags = []
    base, head_base = commit.removesuffix("-dirty"), head.removesuffix("-dirty")
    if "unknown" in (base, head_base):
        flags.append("cannot be compared with HEAD")
    elif not (base.startswith(head_base) or head_base.startswith(base)):
        flags.append(f"not the current HEAD {head_base}")
    if commit.endswith("-dirty"):
        flags.append("run with uncommitted code changes")
    return f" — {'; '.join(flags)}" if flags else ""


def file_date(path: Path) -> str:
    """``"committed 2026-11-21"``, ``"modified 2026-11-27, not committed"`` (git), else the file's date."""
    folder = str(path.parent.resolve())
    status = _git(folder, "status", "--porcelain", "--", path.name)
    committed = _git(folder, "log", "-1", "--format=%cs", "--", path.name)
    modified = datetime.date.fromtimestamp(path.stat().st_mtime).isoformat()
    if committed and status == "":
        return f"committed {committed}"
    if committed:
        return f"modified {modified}, not committed (last commit {committed})"
    return f"file dated {modified} (not in git)"


def _git(folder: str, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def test_images(frame: pd.DataFrame) -> str:
    """``"digits: 360; shapes: 360"``: test images per test set (several counts listed)."""
    counts = frame.groupby("dataset", sort=True)["n_examples"].unique()
    return "; ".join(f"{dataset}: {', '.join(str(n) for n in sorted(values))}" for dataset, values in counts.items())


# -- files -------------------------------------------------------------------------------------------------


def write_document(document: Document, stem: Path, latex: tuple[str, list[Table]] | None = None) -> list[Path]:
    """``<stem>.html``, ``<stem>.md`` and, given ``(label prefix, tables)``, ``<stem>.tex``; the paths."""
    outputs = {stem.with_name(stem.name + ".html"): document_html(document),
               stem.with_name(stem.name + ".md"): document_markdown(document)}
    if latex is not None:
        label, tables = latex
        outputs[stem.with_name(stem.name + ".tex")] = document_latex(Document(document.title, tuple(tables)), label)
    for path, text in outputs.items():
        atomic_write(path, lambda handle, text=text: handle.write(text))
    return list(outputs)


def write_index(root: Path, entries: list[PageEntry], head: str) -> list[Path]:
    """``index.html`` / ``index.md``: the first-ranked row of each scenario, then every page and figure."""
    answers = []
    for entry in entries:
        answers += [(f"{entry.profile}/{entry.scenario}{f' ({label})' if label else ''}", entry.page, f"— {text}")
                    for label, text in entry.leaders]
    blocks: list[Block] = [
        Paragraph(f"Current HEAD of this checkout: {head}. Each page states its provenance (device, commit, "
                  "versions, date, test images)."),
        Heading("First-ranked row of each scenario", 2), Links(tuple(answers))]
    for profile in sorted({entry.profile for entry in entries}):
        blocks.append(Heading(f"Profile {profile}", 2))
        for entry in (e for e in entries if e.profile == profile):
            blocks += [Heading(entry.scenario, 3),
                       Links(((f"{entry.scenario} page", entry.page, "(tables, plots, provenance)"),
                              *((name, href, "(plot)") for name, href in entry.plots),
                              *((name, href, "") for name, href in entry.figures)))]
            if entry.confusions:
                blocks.append(Details(f"{entry.scenario}: {len(entry.confusions)} confusion matrices",
                                      (Links(tuple((name, href, "") for name, href in entry.confusions)),)))
    document = Document("robustbench-norm results", tuple(blocks))
    return write_document(document, root / "index")
