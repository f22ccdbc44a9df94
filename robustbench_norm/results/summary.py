"""Leaderboard summaries: mean ± standard error over seeds, and robustness relative to BatchNorm.

Statistics. For one measurement key without its seed, with ``n`` seeds whose status is ``ok``:
``value_mean`` = mean over those seeds, ``value_se`` = standard error of that mean =
``std(ddof=1) / sqrt(n)`` (NaN when ``n = 1``), ``n_seeds = n``. The ± in every table is this SE, not the
standard deviation. Rows that could not be measured (status other than ``ok``) do not enter the mean;
their reasons are kept in the ``status`` column.

Robustness table (noise scenario, accuracy rows). For one entry (:data:`ENTRY_FIELDS`: the key without
scenario, profile, corruption, severity, seed and metric, i.e. data set, model, norm and kwargs, variant,
test-time mode and its kwargs, training batch size, recipe, device) and seed:

* clean accuracy: mean over clean cells (``corruption == "none"`` or severity 0, which is the clean test
  set for every built-in corruption);
* corrupted accuracy: mean over every (corruption, severity > 0) cell;
* relative robustness: corrupted / clean accuracy of the same seed;
* mCE (Hendrycks & Dietterich 2019, with BatchNorm in place of AlexNet):
  ``CE_c = sum_s err(c, s) / sum_s err_ref(c, s)`` over the severities s > 0 of corruption c, averaged
  over corruptions; ``err = 1 - accuracy``, ``err_ref`` = the seed-mean error of the reference entry
  (``batchnorm`` with running statistics, same data set, model, variant, training batch size and device;
  a reference measured under two kwargs or recipes is ambiguous and gives no mCE).

Each of the four is then averaged over seeds (mean ± SE). Because the reference enters mCE as a fixed
seed mean, mCE's SE reflects the spread of the entry's seeds only, and the mean equals the mCE of the
seed-mean errors. mCE is computed only when the reference entry exists and covers every cell the entry
has; otherwise it is NaN and the ``note`` column says why (RobustBench#194: an mCE that reads a baseline
row that may be missing must not crash).

Files, next to ``<scenario>.csv``: ``<scenario>_summary.csv`` (:func:`summarize`),
``<scenario>_robustness.csv`` (:func:`robustness_table`, when the scenario has corrupted cells) and
``<scenario>_summary.md`` (both as markdown, accuracies in percent with one decimal). The published pages
(:mod:`robustbench_norm.results.publish`) build their ranked tables on :func:`robustness_per_seed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from robustbench_norm.atomic import atomic_write
from robustbench_norm.results.markdown import escape_markdown, markdown_table
from robustbench_norm.results.rows import CLEAN, KEY_WITHOUT_SEED, OK
from robustbench_norm.results.store import ResultStore, locked

ACCURACY = "accuracy"
REFERENCE_NORM = "batchnorm"
REFERENCE_EVAL_MODE = "running_stats"
ENTRY_FIELDS: tuple[str, ...] = tuple(name for name in KEY_WITHOUT_SEED
                                      if name not in ("scenario", "profile", "corruption", "severity", "metric"))
REFERENCE_MATCH: tuple[str, ...] = ("dataset", "model", "variant", "train_batch_size", "device")
SUMMARY_COLUMNS: tuple[str, ...] = (*KEY_WITHOUT_SEED, "value_mean", "value_se", "n_seeds", "status", "chance",
                                    "near_chance")
NEAR_CHANCE = 0.05  # a mean accuracy within 5 points of chance is flagged: it is not a finding
ROBUSTNESS_MEASURES: tuple[str, ...] = ("clean_accuracy", "corrupted_accuracy", "relative_robustness", "mce")


def mean_se(values: pd.Series | np.ndarray) -> tuple[float, float, int]:
    """(mean, standard error ``std(ddof=1)/sqrt(n)``, n) of the finite ``values``; NaNs when n is 0 or 1."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    n = finite.size
    mean = float(finite.mean()) if n else math.nan
    se = float(finite.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return mean, se, n


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ± SE over seeds of every measurement key (columns :data:`SUMMARY_COLUMNS`); ``near_chance`` flags a
    mean within :data:`NEAR_CHANCE` of the test set's chance level (NaN chance: a metric without one)."""
    records = []
    for key, group in df.groupby(list(KEY_WITHOUT_SEED), sort=True, dropna=False):
        ok = group["status"] == OK
        mean, se, n = mean_se(group.loc[ok, "value"])
        chance = float(group["chance"].mean())
        records.append((*key, mean, se, n, failure_status(group.loc[~ok]), chance,
                        bool(math.isfinite(chance) and n > 0 and mean <= chance + NEAR_CHANCE)))
    return pd.DataFrame(records, columns=list(SUMMARY_COLUMNS)).astype({"n_seeds": "int64"})


def failure_status(failed: pd.DataFrame) -> str:
    """``"ok"``, or each failure reason with the seeds it hit: ``"diverged (seeds 0, 2)"``."""
    if failed.empty:
        return OK
    parts = [f"{reason} (seeds {', '.join(map(str, sorted(group['seed'])))})"
             for reason, group in failed.groupby("status", sort=True)]
    return "; ".join(parts)


def robustness_table(df: pd.DataFrame, reference_norm: str = REFERENCE_NORM,
                     reference_eval_mode: str = REFERENCE_EVAL_MODE) -> pd.DataFrame:
    """Clean / corrupted accuracy, relative robustness and mCE vs the reference, per entry (see module doc).

    ``df`` holds one scenario's rows. Columns: :data:`ENTRY_FIELDS`, ``n_seeds``, ``<measure>_mean`` and
    ``<measure>_se`` for each of :data:`ROBUSTNESS_MEASURES` (fractions, not percent), and ``note``. The
    reference entry comes first. ``frame.attrs["notes"]`` lists the distinct notes.
    """
    per_seed = robustness_per_seed(df, reference_norm, reference_eval_mode)
    records = []
    for entry, group in per_seed.groupby(list(ENTRY_FIELDS), sort=True):
        measured = group.dropna(subset=["seed"])
        record = {**dict(zip(ENTRY_FIELDS, entry)), "n_seeds": len(measured)}
        for measure in ROBUSTNESS_MEASURES:
            record[f"{measure}_mean"], record[f"{measure}_se"], _ = mean_se(measured[measure])
        record["note"] = group["note"].iloc[0]
        records.append(record)
    columns = [*ENTRY_FIELDS, "n_seeds",
               *(f"{m}_{s}" for m in ROBUSTNESS_MEASURES for s in ("mean", "se")), "note"]
    table = pd.DataFrame(records, columns=columns)
    is_reference = (table["norm"] == reference_norm) & (table["eval_mode"] == reference_eval_mode)
    table = table.iloc[np.argsort(~is_reference.to_numpy(), kind="stable")].reset_index(drop=True)
    table.attrs["notes"] = sorted({note for note in table["note"] if note})
    return table


def robustness_per_seed(df: pd.DataFrame, reference_norm: str = REFERENCE_NORM,
                        reference_eval_mode: str = REFERENCE_EVAL_MODE) -> pd.DataFrame:
    """The four robustness measures of every (entry, seed) with a measured accuracy row (see module doc).

    Columns: :data:`ENTRY_FIELDS`, ``seed``, :data:`ROBUSTNESS_MEASURES` and ``note`` (why mCE is missing,
    or why the entry has no measured seed, else ""). An entry without any measured seed has one line with
    ``seed`` NaN, so that it is listed with its reason.
    """
    accuracy = df.loc[df["metric"] == ACCURACY].assign(
        clean=lambda rows: (rows["corruption"] == CLEAN) | (rows["severity"] == 0))
    measured = accuracy.loc[accuracy["status"] == OK]
    reference_err = _reference_errors(measured.loc[~measured["clean"]], reference_norm, reference_eval_mode)
    frames = []
    for entry, all_rows in accuracy.groupby(list(ENTRY_FIELDS), sort=True):
        group = all_rows.loc[all_rows["status"] == OK]
        entry = dict(zip(ENTRY_FIELDS, entry))
        per_seed, note = _per_seed_measures(group, reference_err, entry, reference_norm, reference_eval_mode)
        if group.empty:
            note = f"{entry['norm']}/{entry['eval_mode']}: no measured seed, {failure_status(all_rows)}"
            per_seed = pd.DataFrame({"seed": [math.nan]}, columns=per_seed.columns)
        frames.append(per_seed.assign(**entry, note=note))
    columns = [*ENTRY_FIELDS, "seed", *ROBUSTNESS_MEASURES, "note"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def _reference_errors(corrupted: pd.DataFrame, norm: str, eval_mode: str) -> dict[tuple, pd.DataFrame]:
    """Per reference match key: the reference entries' seed-mean error per (corruption, severity)."""
    reference = corrupted.loc[(corrupted["norm"] == norm) & (corrupted["eval_mode"] == eval_mode)]
    errors = {}
    for match, group in reference.groupby(list(REFERENCE_MATCH), sort=False):
        cells = group.groupby(["norm_kwargs", "recipe", "corruption", "severity"])["value"].mean()
        errors[match] = (1.0 - cells).rename("reference_error").reset_index()
    return errors


def _per_seed_measures(group: pd.DataFrame, reference_err: dict[tuple, pd.DataFrame], entry: dict,
                       reference_norm: str, reference_eval_mode: str) -> tuple[pd.DataFrame, str]:
    """One line per seed with the four measures, and a note saying why mCE is missing (or "")."""
    match = tuple(entry[name] for name in REFERENCE_MATCH)
    reference, note = reference_err.get(match), ""
    where = ", ".join(f"{name}={value}" for name, value in zip(REFERENCE_MATCH, match))
    if reference is None:
        note = f"mCE not computed: no {reference_norm}/{reference_eval_mode} reference row for {where}"
    elif len(reference[["norm_kwargs", "recipe"]].drop_duplicates()) > 1:
        note = (f"mCE not computed: {len(reference[['norm_kwargs', 'recipe']].drop_duplicates())} different "
                f"{reference_norm} reference entries (norm_kwargs, recipe) for {where}")
        reference = None
    records = []
    for seed, rows in group.groupby("seed", sort=True):
        clean = rows.loc[rows["clean"], "value"].mean()
        corrupted_rows = rows.loc[~rows["clean"]]
        corrupted = corrupted_rows["value"].mean()
        mce = math.nan
        if reference is not None and len(corrupted_rows):
            mce, why = _mce(corrupted_rows, reference, where)
            note = note or why
        records.append({"seed": seed, "clean_accuracy": clean, "corrupted_accuracy": corrupted,
                        "relative_robustness": corrupted / clean if clean > 0 else math.nan, "mce": mce})
    return pd.DataFrame(records, columns=["seed", *ROBUSTNESS_MEASURES]), note


def _mce(corrupted_rows: pd.DataFrame, reference: pd.DataFrame, where: str) -> tuple[float, str]:
    """mCE of one seed's corrupted cells against the reference errors, or (NaN, why)."""
    cells = corrupted_rows[["corruption", "severity", "value"]].merge(
        reference[["corruption", "severity", "reference_error"]], on=["corruption", "severity"], how="left")
    missing = cells.loc[cells["reference_error"].isna(), ["corruption", "severity"]]
    if len(missing):
        first = missing.iloc[0]
        return math.nan, (f"mCE not computed: the reference lacks {len(missing)} cell(s), e.g. "
                          f"{first['corruption']} at severity {first['severity']:g}, for {where}")
    cells["error"] = 1.0 - cells["value"]
    sums = cells.groupby("corruption")[["error", "reference_error"]].sum()
    if (sums["reference_error"] <= 0).any():
        zero = sums.index[sums["reference_error"] <= 0][0]
        return math.nan, f"mCE not computed: the reference makes no error on {zero} for {where}"
    return float((sums["error"] / sums["reference_error"]).mean()), ""


def has_corrupted_cells(df: pd.DataFrame) -> bool:
    """Whether a scenario's rows include corrupted accuracy cells (then its robustness table is written)."""
    return bool(((df["metric"] == ACCURACY) & (df["corruption"] != CLEAN) & (df["severity"] > 0)).any())


# -- rendering --------------------------------------------------------------------------------------------


def format_estimate(mean: float, se: float, n: int, *, percent: bool) -> str:
    """``"65.5 ± 1.2 (3)"``: mean ± SE (n seeds), in percent with one decimal or plain with three."""
    if n == 0 or not math.isfinite(mean):
        return "n/a"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    text = f"{scale * mean:.{digits}f}"
    if math.isfinite(se):
        text += f" ± {scale * se:.{digits}f}"
    return f"{text} ({n})"


def is_accuracy(metric: str) -> bool:
    """Whether a metric is an accuracy (rendered in percent)."""
    return metric.endswith(ACCURACY)


def display_summary(summary: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """The summary as a table of strings, and the identifying fields that are constant over all rows.

    Constant fields move to the caption; severity (or else training batch size), when it varies,
    becomes the columns, so a noise table reads "norm / mode / corruption x severity".
    """
    constant = {name: _display(summary[name].iloc[0]) for name in KEY_WITHOUT_SEED
                if len(summary) and summary[name].nunique() == 1}
    varying = shown_fields(summary, [name for name in KEY_WITHOUT_SEED if name not in constant])
    cells = summary.assign(cell=[
        _summary_cell(m, s, n, metric, status) + (" °" if near else "")
        for m, s, n, metric, status, near in zip(summary["value_mean"], summary["value_se"], summary["n_seeds"],
                                                 summary["metric"], summary["status"], summary["near_chance"])
    ])
    pivot = next((name for name in ("severity", "train_batch_size") if name in varying), None)
    if pivot is None:
        table = cells[varying + ["cell"]].rename(columns={"cell": "mean ± SE (n seeds)"})
    else:
        index = [name for name in varying if name != pivot]
        table = cells.pivot_table(index=index, columns=pivot, values="cell", aggfunc="first",
                                  fill_value="", sort=True)
        table.columns = [f"{pivot}={_display(value)}" for value in table.columns]
        table = table.reset_index()
    return table.map(_display), constant


def _summary_cell(mean: float, se: float, n: int, metric: str, status: str) -> str:
    """Estimate of one key; ``n/a (reason)`` when no seed was measured, a trailing ``*`` when some failed."""
    if n == 0:
        return f"n/a ({status})"
    return format_estimate(mean, se, n, percent=is_accuracy(metric)) + ("" if status == OK else " *")


def display_robustness(table: pd.DataFrame) -> pd.DataFrame:
    """The robustness table as strings: one column per measure, mean ± SE (n seeds) in percent."""
    varying = shown_fields(table, [name for name in ENTRY_FIELDS
                                   if table[name].nunique() > 1 or name in ("norm", "eval_mode")])
    shown = table[varying].map(_display)
    headers = {"clean_accuracy": "clean accuracy", "corrupted_accuracy": "corrupted accuracy",
               "relative_robustness": "relative robustness (corrupted/clean)", "mce": "mCE vs reference"}
    for measure, header in headers.items():
        shown[header] = [format_estimate(m, s, n, percent=True) for m, s, n in
                         zip(table[f"{measure}_mean"], table[f"{measure}_se"], table["n_seeds"])]
    return shown


def shown_fields(table: pd.DataFrame, fields: list[str]) -> list[str]:
    """``fields`` without ``recipe`` when the other fields already tell the lines apart.

    A recipe is a hash that differs from norm to norm (and between batch sizes or training variants); it is
    shown only where one measurement exists under two recipes (e.g. a profile run and a shorter run).
    """
    others = [name for name in fields if name != "recipe"]
    if "recipe" in fields and not table.duplicated(subset=[*others, "metric"] if "metric" in table else others,
                                                   keep=False).any():
        return others
    return fields


def _display(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Section:
    """One titled table of a summary page, with text before (``intro``) and after (``notes``) it."""

    heading: str
    intro: tuple[str, ...]
    table: pd.DataFrame
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Page:
    """A scenario's summary, independent of the output format (markdown here, HTML in ``publish``)."""

    title: str
    intro: tuple[str, ...]
    sections: tuple[Section, ...]


def summary_page(df: pd.DataFrame, profile: str, scenario: str, reference_norm: str = REFERENCE_NORM,
                 reference_eval_mode: str = REFERENCE_EVAL_MODE) -> Page:
    """The summary page of one scenario: robustness table (if it has corrupted cells) and all measurements."""
    intro = ["Values: mean ± SE (n seeds); SE = std(ddof=1)/sqrt(n) over seeds. Accuracies in percent."]
    if df.empty:
        return Page(f"{scenario} (profile {profile})", (*intro, "No results yet."), ())
    summary = summarize(df)
    table, constant = display_summary(summary)
    if constant:
        intro.append("Same for every row: " + ", ".join(f"{k}={v}" for k, v in constant.items()) + ".")
    sections = []
    if has_corrupted_cells(df):
        robustness = robustness_table(df, reference_norm, reference_eval_mode)
        sections.append(Section(
            f"Robustness (reference: {reference_norm}, {reference_eval_mode})",
            ("Corrupted = mean over corruption x severity > 0; relative = corrupted / clean; "
             f"mCE = mean over corruptions of sum_s err / sum_s err({reference_norm}).",),
            display_robustness(robustness), tuple(f"Note: {note}" for note in robustness.attrs["notes"])))
    partial = (summary["status"] != OK) & (summary["n_seeds"] > 0)
    notes = ("* some seeds could not be measured; reasons in the status column of the summary CSV.",) * bool(
        partial.any())
    if summary["near_chance"].any():
        notes += (f"° within {NEAR_CHANCE * 100:g} points of the test set's chance level (column chance of the "
                  "summary CSV): a number at chance is not a finding.",)
    sections.append(Section("All measurements", (), table, notes))
    return Page(f"{scenario} (profile {profile})", tuple(intro), tuple(sections))


def frame_markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table of a DataFrame of strings, every cell escaped."""
    return markdown_table([escape_markdown(name) for name in table.columns],
                          [[escape_markdown(cell) for cell in row] for row in table.itertuples(index=False)])


def page_markdown(page: Page) -> str:
    """The page as GitHub markdown (all text escaped: names and reasons display literally)."""
    blocks = [f"# {escape_markdown(page.title)}", *map(escape_markdown, page.intro)]
    for section in page.sections:
        blocks += [f"## {escape_markdown(section.heading)}", *map(escape_markdown, section.intro),
                   frame_markdown(section.table), *map(escape_markdown, section.notes)]
    return "\n\n".join(blocks) + "\n"


def summary_markdown(df: pd.DataFrame, profile: str, scenario: str) -> str:
    """:func:`summary_page` as markdown."""
    return page_markdown(summary_page(df, profile, scenario))


def write_summary(store: ResultStore, profile: str, scenario: str) -> list[Path]:
    """Write ``<scenario>_summary.csv``/``.md`` (and ``_robustness.csv``) beside the scenario's CSV."""
    path = store.path(profile, scenario)
    outputs = {name: path.with_name(f"{scenario}_{name}") for name in
               ("summary.csv", "summary.md", "robustness.csv")}
    with locked(path):  # read and write one consistent version of the table
        df = store.read(profile, scenario)
        atomic_write(outputs["summary.csv"], lambda handle: summarize(df).to_csv(
            handle, index=False, na_rep="nan", lineterminator="\n"))
        atomic_write(outputs["summary.md"], lambda handle: handle.write(summary_markdown(df, profile, scenario)))
        written = [outputs["summary.csv"], outputs["summary.md"]]
        if has_corrupted_cells(df):
            table = robustness_table(df)
            atomic_write(outputs["robustness.csv"], lambda handle: table.to_csv(
                handle, index=False, na_rep="nan", lineterminator="\n"))
            written.append(outputs["robustness.csv"])
    return written


def summarize_results_dir(results_dir: Path | str, profile: str) -> list[Path]:
    """:func:`write_summary` for every scenario of ``profile`` under ``results_dir``; the files written."""
    store = ResultStore(results_dir)
    return [path for prof, scenario in store.tables() if prof == profile
            for path in write_summary(store, prof, scenario)]
