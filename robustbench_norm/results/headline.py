"""Headline tables: one row per (norm, test-time mode), ranked, compared with BatchNorm over seeds.

The columns follow from the rows present, not from a list of today's scenarios (:func:`scenario_kind`):

* ``corruption`` (corrupted cells present): clean accuracy, mean corrupted accuracy (over every corruption
  x severity > 0), mCE vs the reference (:mod:`robustbench_norm.results.summary`); ranked by mean
  corrupted accuracy;
* ``domain`` (``target_*`` metrics): target accuracy per training variant, the gain of each adapted
  variant over ``source_only`` (paired over seeds), source accuracy per variant; ranked by the target
  accuracy of the first adapted variant;
* ``batch_size`` (several training batch sizes): accuracy per batch size and the drop from the largest to
  the smallest; ranked by the accuracy at the smallest batch;
* ``parts`` (several test sets, e.g. the parts of a blend and their union ``a+b``): accuracy per test
  set, the union first; ranked by it;
* ``plain``: one column per metric.

Every other metric of the rows (prediction entropy, ECE, NLL, ...) gets the same columns in a second
table, in the order of the first. Each cell is the mean ± standard error over seeds of a per-seed value
(:func:`robustbench_norm.results.summary.mean_se`); a difference (gain, drop, Δ vs the reference) is
paired by seed (:mod:`robustbench_norm.results.significance`). The reference row is ``batchnorm`` with
running statistics on the same data, architecture, variant and batch size. Values of an accuracy within
:data:`NEAR_CHANCE` of the chance level are greyed and marked; the best value of a column is bold unless
it is that close to chance.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from robustbench_norm.results.document import NEAR_CHANCE_MARK, REFERENCE_MARK, Cell, Table, text_cell
from robustbench_norm.results.rows import CLEAN, OK
from robustbench_norm.results.significance import TEST_NAME, PairedDifference, paired_difference, verdict
from robustbench_norm.results.summary import (
    ACCURACY,
    ENTRY_FIELDS,
    REFERENCE_EVAL_MODE,
    REFERENCE_NORM,
    failure_status,
    has_corrupted_cells,
    is_accuracy,
    mean_se,
    robustness_per_seed,
)

NEAR_CHANCE = 0.05
FLOOR_VARIANT = "source_only"
SOURCE_PREFIX, TARGET_PREFIX = "source_", "target_"
ROW_FIELDS: tuple[str, ...] = tuple(name for name in ENTRY_FIELDS if name != "recipe")
LOWER_IS_BETTER = frozenset({"ece", "nll", "error", "mce"})
NO_DIRECTION = frozenset({"prediction_entropy"})
FIELD_HEADERS = {"norm": "norm", "eval_mode": "eval mode", "model": "architecture", "dataset": "test set",
                 "variant": "training variant", "train_batch_size": "training batch", "device": "device"}
LABEL_FIELDS = ("norm", "eval_mode", "model")
MERGED_FIELDS = ("norm_kwargs", "eval_kwargs")  # shown inside the norm and eval mode cells

PerSeed = dict[tuple, pd.Series]


@dataclass(frozen=True)
class Measure:
    """A column: per-seed values, or (``difference_of``) the paired difference of two other measures."""

    key: str
    header: str
    percent: bool
    higher_is_better: bool | None
    chance: float = math.nan
    difference_of: tuple[str, str] | None = None
    accuracy: bool = False


@dataclass(frozen=True)
class Measurements:
    """Per-seed values of every measure for every row entry, and why some are missing."""

    kind: str
    fields: tuple[str, ...]
    entries: tuple[tuple, ...]
    measures: tuple[Measure, ...]
    values: dict[str, PerSeed]
    headline: str | None
    reasons: dict[tuple[tuple, str], str]
    notes: tuple[str, ...] = ()


def scenario_kind(df: pd.DataFrame) -> str:
    """``corruption``, ``domain``, ``batch_size``, ``parts`` or ``plain`` (see the module docstring)."""
    if has_corrupted_cells(df):
        return "corruption"
    if df["metric"].str.startswith(TARGET_PREFIX).any():
        return "domain"
    if df["train_batch_size"].nunique() > 1:
        return "batch_size"
    if df["dataset"].nunique() > 1:
        return "parts"
    return "plain"


def higher_is_better(metric: str) -> bool | None:
    """Direction of a metric: accuracies up, calibration errors and losses down, entropy none."""
    base = metric.removeprefix(SOURCE_PREFIX).removeprefix(TARGET_PREFIX)
    if is_accuracy(base):
        return True
    if base in LOWER_IS_BETTER:
        return False
    return None


def is_percent(metric: str) -> bool:
    """Whether a metric is shown in percent (accuracies and the expected calibration error)."""
    base = metric.removeprefix(SOURCE_PREFIX).removeprefix(TARGET_PREFIX)
    return is_accuracy(base) or base == "ece"


def base_metrics(df: pd.DataFrame, kind: str) -> list[str]:
    """The metrics a scenario's tables cover, the headline one first (domain: without source/target)."""
    metrics = sorted(set(df["metric"]))
    if kind == "domain":
        metrics = sorted({m.removeprefix(SOURCE_PREFIX).removeprefix(TARGET_PREFIX) for m in metrics})
    accuracies = [m for m in metrics if is_accuracy(m)]
    first = ACCURACY if ACCURACY in metrics else (accuracies or metrics)[0]
    return [first, *(m for m in metrics if m != first)]


# -- per-seed values ---------------------------------------------------------------------------------------


def per_seed(rows: pd.DataFrame, fields: tuple[str, ...]) -> PerSeed:
    """Mean value of the measured (status ok) rows of each entry and seed: {entry: Series by seed}."""
    ok = rows.loc[rows["status"] == OK]
    return {entry: group.groupby("seed", sort=True)["value"].mean()
            for entry, group in ok.groupby(list(fields), sort=True)}


def failures(rows: pd.DataFrame, fields: tuple[str, ...], key: str) -> dict[tuple[tuple, str], str]:
    """``{(entry, key): "reason (seeds ...)"}`` for entries with rows that could not be measured."""
    failed = rows.loc[rows["status"] != OK]
    return {(entry, key): failure_status(group) for entry, group in failed.groupby(list(fields), sort=True)}


def chance_level(rows: pd.DataFrame, fallback: float) -> float:
    """The rows' ``chance`` column (largest finite value of their accuracy rows), else ``fallback``."""
    if "chance" in rows.columns:
        values = rows.loc[rows["metric"].map(is_accuracy), "chance"].to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size:
            return float(values.max())
    return fallback


def measure_for(metric: str, key: str, header: str, rows: pd.DataFrame, fallback_chance: float) -> Measure:
    """A value measure of ``metric``'s rows with its unit, direction and (accuracies) chance level."""
    accuracy = is_accuracy(metric)
    chance = chance_level(rows, fallback_chance) if accuracy else math.nan
    return Measure(key, header, is_percent(metric), higher_is_better(metric), chance, accuracy=accuracy)


def _label(metric: str) -> str:
    base = metric.removeprefix(SOURCE_PREFIX).removeprefix(TARGET_PREFIX)
    return {ACCURACY: "acc.", "prediction_entropy": "pred. entropy", "ece": "ECE", "nll": "NLL"}.get(base, base)


def _unit(metric: str) -> str:
    return " (%)" if is_percent(metric) else ""


def corruption_measurements(df: pd.DataFrame, metric: str, fallback_chance: float) -> Measurements:
    """Clean and mean corrupted value per entry and seed (accuracy: and mCE vs the reference)."""
    fields = ROW_FIELDS
    rows = df.loc[df["metric"] == metric]
    clean = (rows["corruption"] == CLEAN) | (rows["severity"] == 0)
    label, unit = _label(metric), _unit(metric)
    measures = [measure_for(metric, f"{metric}:clean", f"clean {label}{unit}", rows.loc[clean], fallback_chance),
                measure_for(metric, f"{metric}:corrupted", f"mean corrupted {label}{unit}", rows.loc[~clean],
                            fallback_chance)]
    values = {measures[0].key: per_seed(rows.loc[clean], fields),
              measures[1].key: per_seed(rows.loc[~clean], fields)}
    notes: tuple[str, ...] = ()
    if metric == ACCURACY:
        robustness = robustness_per_seed(df)
        notes = tuple(sorted({note for note in robustness["note"] if note}))
        robustness = robustness.dropna(subset=["seed"]).astype({"seed": "int64"})
        mce = Measure("mce", f"mCE vs {REFERENCE_NORM} {REFERENCE_EVAL_MODE} (%)", True, False)
        measures.append(mce)
        values[mce.key] = {entry: group.set_index("seed")["mce"]
                           for entry, group in robustness.groupby(list(fields), sort=True)}
    reasons = {}
    for measure in measures:
        reasons.update(failures(rows, fields, measure.key))
    return Measurements("corruption", fields, _entries(rows, fields), tuple(measures), values,
                        measures[1].key if metric == ACCURACY else None, reasons, notes)


def batch_size_measurements(df: pd.DataFrame, metric: str, fallback_chance: float) -> Measurements:
    """The value at each training batch size (largest first) and, for accuracy, the drop largest -> smallest."""
    fields = tuple(name for name in ROW_FIELDS if name != "train_batch_size")
    rows = df.loc[df["metric"] == metric]
    sizes = sorted(set(rows["train_batch_size"]), reverse=True)
    measures, values, reasons = [], {}, {}
    for size in sizes:
        at_size = rows.loc[rows["train_batch_size"] == size]
        measure = measure_for(metric, f"{metric}@{size}", f"{_label(metric)} at batch {size}{_unit(metric)}",
                              at_size, fallback_chance)
        measures.append(measure)
        values[measure.key] = per_seed(at_size, fields)
        reasons.update(failures(at_size, fields, measure.key))
    headline = None
    if metric == ACCURACY and len(sizes) > 1:
        largest, smallest = measures[0].key, measures[-1].key
        measures.append(Measure(f"drop:{metric}", f"drop {sizes[0]} -> {sizes[-1]} (pp)", True, False,
                                difference_of=(largest, smallest)))
        headline = smallest
    return Measurements("batch_size", fields, _entries(rows, fields), tuple(measures), values, headline, reasons)


def domain_measurements(df: pd.DataFrame, metric: str, fallback_chance: float) -> Measurements:
    """Target value per training variant, gain of each variant over ``source_only``, source value per variant.

    Source rows are measured in the norm's own test mode; a row whose mode has no source row (e.g. CN
    evaluated on the target with the target's context id) shows the norm's single source value, noted.
    """
    fields = tuple(name for name in ROW_FIELDS if name not in ("dataset", "variant"))
    target_rows = df.loc[df["metric"] == TARGET_PREFIX + metric]
    source_rows = df.loc[df["metric"] == SOURCE_PREFIX + metric]
    variants = sorted(set(df["variant"]), key=lambda v: (v != FLOOR_VARIANT, v))
    adapted = [v for v in variants if v != FLOOR_VARIANT]
    entries = _entries(target_rows, fields) or _entries(source_rows, fields)
    measures, values, reasons, notes = [], {}, {}, set()
    label, unit = _label(metric), _unit(metric)
    for variant in variants:
        rows = target_rows.loc[target_rows["variant"] == variant]
        measure = measure_for(metric, f"{metric}:target@{variant}", f"target {label} {variant}{unit}", rows,
                              fallback_chance)
        measures.append(measure)
        values[measure.key] = per_seed(rows, fields)
        reasons.update(failures(rows, fields, measure.key))
    if FLOOR_VARIANT in variants and higher_is_better(metric) is not None:
        for variant in adapted:
            measures.append(Measure(f"{metric}:gain@{variant}",
                                    f"{label} gain {variant} - {FLOOR_VARIANT}{' (pp)' if is_percent(metric) else ''}",
                                    is_percent(metric), higher_is_better(metric),
                                    difference_of=(f"{metric}:target@{variant}", f"{metric}:target@{FLOOR_VARIANT}")))
    for variant in variants:
        rows = source_rows.loc[source_rows["variant"] == variant]
        if rows.empty:
            continue
        measure = measure_for(metric, f"{metric}:source@{variant}", f"source {label} {variant}{unit}", rows,
                              fallback_chance)
        measures.append(measure)
        values[measure.key], borrowed = _source_values(per_seed(rows, fields), entries, fields)
        for (norm, source), modes in _group_borrowed(borrowed).items():
            notes.add(f"source {label} of {norm} in mode(s) {', '.join(modes)} is that of mode {source} "
                      "(the source test set is evaluated in the norm's own mode only)")
        reasons.update(failures(rows, fields, measure.key))
    headline = f"{metric}:target@{(adapted or variants)[0]}" if metric == ACCURACY and variants else None
    return Measurements("domain", fields, entries, tuple(measures), values, headline, reasons,
                        tuple(sorted(notes)))


def _source_values(source: PerSeed, entries: tuple[tuple, ...],
                   fields: tuple[str, ...]) -> tuple[PerSeed, list[tuple[str, str, str]]]:
    """Source values for every target entry; an entry without its own takes its norm's single source mode."""
    mode_at = fields.index("eval_mode")
    without_mode = {}
    for entry in source:
        without_mode.setdefault(entry[:mode_at] + entry[mode_at + 1:], []).append(entry)
    values, borrowed = dict(source), []
    for entry in entries:
        candidates = without_mode.get(entry[:mode_at] + entry[mode_at + 1:], [])
        if entry not in source and len(candidates) == 1:
            values[entry] = source[candidates[0]]
            borrowed.append((entry[fields.index("norm")], entry[mode_at], candidates[0][mode_at]))
    return values, borrowed


def _group_borrowed(borrowed: list[tuple[str, str, str]]) -> dict[tuple[str, str], list[str]]:
    grouped: dict[tuple[str, str], list[str]] = {}
    for norm, mode, source in borrowed:
        grouped.setdefault((norm, source), []).append(mode)
    return grouped


def parts_measurements(df: pd.DataFrame, metric: str, fallback_chance: float) -> Measurements:
    """The value on each test set; unions (``a+b``) first: they are what the model was trained for."""
    fields = tuple(name for name in ROW_FIELDS if name != "dataset")
    rows = df.loc[df["metric"] == metric]
    datasets = sorted(set(rows["dataset"]), key=lambda name: ("+" not in name, name))
    measures, values, reasons = [], {}, {}
    for dataset in datasets:
        on_set = rows.loc[rows["dataset"] == dataset]
        header = f"{_label(metric)} {'overall ' if '+' in dataset else ''}{dataset}{_unit(metric)}"
        measure = measure_for(metric, f"{metric}@{dataset}", header, on_set, fallback_chance)
        measures.append(measure)
        values[measure.key] = per_seed(on_set, fields)
        reasons.update(failures(on_set, fields, measure.key))
    headline = measures[0].key if metric == ACCURACY and measures else None
    return Measurements("parts", fields, _entries(rows, fields), tuple(measures), values, headline, reasons)


def plain_measurements(df: pd.DataFrame, metric: str, fallback_chance: float) -> Measurements:
    """One column: the metric's value per entry."""
    rows = df.loc[df["metric"] == metric]
    measure = measure_for(metric, metric, f"{_label(metric)}{_unit(metric)}", rows, fallback_chance)
    return Measurements("plain", ROW_FIELDS, _entries(rows, ROW_FIELDS), (measure,),
                        {metric: per_seed(rows, ROW_FIELDS)}, metric if metric == ACCURACY else None,
                        failures(rows, ROW_FIELDS, metric))


BUILDERS: dict[str, Callable[[pd.DataFrame, str, float], Measurements]] = {
    "corruption": corruption_measurements, "domain": domain_measurements,
    "batch_size": batch_size_measurements, "parts": parts_measurements, "plain": plain_measurements,
}


def scenario_measurements(df: pd.DataFrame, fallback_chance: float) -> tuple[Measurements, Measurements | None]:
    """The headline measurements of one run of a scenario, and those of every other metric (or None)."""
    kind = scenario_kind(df)
    build = BUILDERS[kind]
    first, *rest = base_metrics(df, kind)
    others = [build(df, metric, fallback_chance) for metric in rest]
    return build(df, first, fallback_chance), (merge_measurements(others) if others else None)


def merge_measurements(parts: list[Measurements]) -> Measurements:
    """Several metrics' measurements of one kind side by side (no headline)."""
    entries = tuple(sorted({entry for part in parts for entry in part.entries}))
    return Measurements(parts[0].kind, parts[0].fields, entries,
                        tuple(m for part in parts for m in part.measures),
                        {k: v for part in parts for k, v in part.values.items()}, None,
                        {k: v for part in parts for k, v in part.reasons.items()},
                        tuple(note for part in parts for note in part.notes))


def _entries(rows: pd.DataFrame, fields: tuple[str, ...]) -> tuple[tuple, ...]:
    return tuple(entry for entry, _ in rows.groupby(list(fields), sort=True))


def recipe_conflicts(df: pd.DataFrame) -> pd.Series:
    """Mask of the rows of every entry (:data:`ROW_FIELDS`) with a measurement under several recipes.

    A measurement (key without seed and recipe) taken under two training recipes, e.g. a profile run and a
    shorter one, must not be averaged; leaving out only those cells would bias the entry's means over the
    others, so all of the entry's rows are masked.
    """
    key = [*ROW_FIELDS, "corruption", "severity", "metric"]
    conflicting = df.groupby(key, sort=False)["recipe"].transform("nunique") > 1
    entries = pd.MultiIndex.from_frame(df.loc[conflicting, list(ROW_FIELDS)])
    return pd.Series(pd.MultiIndex.from_frame(df[list(ROW_FIELDS)]).isin(entries), index=df.index)


# -- tables ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """Mean ± SE over n seeds of one cell (a paired difference also has its CI and p-value)."""

    mean: float
    se: float
    n: int
    difference: PairedDifference | None = None


def estimates(measurements: Measurements) -> dict[tuple[tuple, str], Estimate]:
    """Every (entry, measure) cell's estimate."""
    out = {}
    for measure in measurements.measures:
        for entry in measurements.entries:
            if measure.difference_of is None:
                mean, se, n = mean_se(measurements.values[measure.key].get(entry, pd.Series(dtype=float)))
                out[entry, measure.key] = Estimate(mean, se, n)
            else:
                a, b = (measurements.values[key].get(entry, pd.Series(dtype=float)) for key in measure.difference_of)
                diff = paired_difference(a, b)
                out[entry, measure.key] = Estimate(diff.mean, diff.se, diff.n, diff)
    return out


def reference_entries(measurements: Measurements) -> dict[tuple, tuple | None]:
    """The reference entry of each entry: batchnorm/running_stats equal in every other row field, if unique."""
    fields = measurements.fields
    match = [i for i, name in enumerate(fields) if name not in (*MERGED_FIELDS, "norm", "eval_mode")]
    norm, mode = fields.index("norm"), fields.index("eval_mode")
    candidates: dict[tuple, list[tuple]] = {}
    for entry in measurements.entries:
        if entry[norm] == REFERENCE_NORM and entry[mode] == REFERENCE_EVAL_MODE:
            candidates.setdefault(tuple(entry[i] for i in match), []).append(entry)
    found = {}
    for entry in measurements.entries:
        options = candidates.get(tuple(entry[i] for i in match), [])
        found[entry] = options[0] if len(options) == 1 else None
    return found


def norm_label(norm: str, norm_kwargs: str) -> str:
    """``"localnorm (num_groups=4)"``: a norm (or test-time mode) with its non-default kwargs."""
    kwargs = json.loads(norm_kwargs)
    if not kwargs:
        return norm
    return f"{norm} ({', '.join(f'{k}={json.dumps(v)}' for k, v in kwargs.items())})"


def format_value(mean: float, percent: bool, *, signed: bool = False) -> str:
    """One number: percent with one decimal, else three decimals; ``signed`` adds a ``+`` to positives."""
    if not math.isfinite(mean):
        return "n/a"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    value = round(scale * mean, digits) + 0.0  # + 0.0: a value that rounds to zero prints without a minus
    return f"{value:{'+' if signed else ''}.{digits}f}"


def format_difference(difference: PairedDifference, percent: bool) -> str:
    """``"+2.4 ± 1.0 [-1.9, 6.7]"``: paired mean difference ± SE [95 % CI]."""
    if difference.n == 0:
        return "n/a"
    text = format_value(difference.mean, percent, signed=True)
    if difference.n >= 2:
        text += (f" ± {format_value(difference.se, percent)} [{format_value(difference.ci_low, percent)}, "
                 f"{format_value(difference.ci_high, percent)}]")
    return text


def format_p(p_value: float) -> str:
    """A p-value with two significant digits (``<0.001`` below that)."""
    if not math.isfinite(p_value):
        return "n/a"
    return "<0.001" if p_value < 0.001 else f"{p_value:.2g}"


class _Footnotes:
    """Numbered footnotes, one per distinct text, in order of first use."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"

    def notes(self) -> tuple[str, ...]:
        return tuple(f"[{i}] {text}" for i, text in enumerate(self.texts, start=1))


def rank_order(measurements: Measurements, cells: dict[tuple[tuple, str], Estimate]) -> list[tuple]:
    """Entries best first by the headline measure (NaN last), then by name."""
    headline = next((m for m in measurements.measures if m.key == measurements.headline), None)
    sign = -1.0 if headline is None or headline.higher_is_better is not False else 1.0

    def key(entry: tuple) -> tuple:
        mean = cells[entry, headline.key].mean if headline is not None else math.nan
        return (not math.isfinite(mean), sign * mean if math.isfinite(mean) else 0.0, entry)
    return sorted(measurements.entries, key=key)


def headline_table(measurements: Measurements, title: str, *, compare: bool = True,
                   order: list[tuple] | None = None) -> Table:
    """The formatted table (see the module docstring); ``compare`` adds Δ vs the reference and a verdict."""
    cells = estimates(measurements)
    order = order if order is not None else rank_order(measurements, cells)
    fields = measurements.fields
    varying = [name for name in ("eval_mode", "model", *fields) if name in fields and name not in MERGED_FIELDS
               and name != "norm" and (name in LABEL_FIELDS or len({e[fields.index(name)] for e in order}) > 1)]
    varying = list(dict.fromkeys(varying))
    references = reference_entries(measurements)
    common_n = _common_n(cells)
    footnotes = _Footnotes()
    headline = next((m for m in measurements.measures if m.key == measurements.headline), None)
    compare = compare and headline is not None
    ranked = headline is not None
    header = [*(["#"] if ranked else []), "norm", *(FIELD_HEADERS.get(name, name) for name in varying),
              *(m.header for m in measurements.measures)]
    if compare:
        unit = " (pp)" if headline.percent else ""
        header += [f"Δ {headline.header.removesuffix(' (%)')} vs ref{unit} ± SE [95% CI]", "p", "verdict"]
    best = {m.key: _best(measurements, m, order, cells) for m in measurements.measures}
    rows, reference_rows = [], set()
    for index, entry in enumerate(order):
        is_reference = references.get(entry) == entry
        if is_reference:
            reference_rows.add(index)
        values = dict(zip(fields, entry))
        label = norm_label(values["norm"], values["norm_kwargs"]) + (f" {REFERENCE_MARK}" if is_reference else "")
        row = [text_cell(label)]
        if ranked:
            rank = cells[entry, headline.key].mean
            row.insert(0, Cell(str(index + 1) if math.isfinite(rank) else "-", sort=float(index + 1)))
        row += [text_cell(norm_label(values[name], values.get("eval_kwargs", "{}")) if name == "eval_mode"
                          else _field_text(values[name])) for name in varying]
        for measure in measurements.measures:
            reason = measurements.reasons.get((entry, measure.key), "")
            row.append(_measure_cell(measure, cells[entry, measure.key], common_n, best[measure.key],
                                     footnotes.mark(f"{label}: {reason}") if reason else "",
                                     _chance_bound(measurements, measure, entry, cells)))
        if compare:
            row += _comparison_cells(measurements, headline, entry, references.get(entry), is_reference, cells)
        rows.append(tuple(row))
    caption = _caption(measurements, order, varying, headline, compare, common_n)
    duplicates = _identical_entries(measurements, order)
    return Table(title, tuple(header), tuple(rows), caption,
                 footnotes.notes() + tuple(f"Note: {note}" for note in measurements.notes) + duplicates,
                 frozenset(reference_rows))


def _field_text(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _common_n(cells: dict[tuple[tuple, str], Estimate]) -> int:
    """The most frequent positive seed count of the value cells (cells with another n say theirs)."""
    counts = pd.Series([e.n for e in cells.values() if e.n > 0 and e.difference is None])
    return int(counts.mode().max()) if len(counts) else 0


def _best(measurements: Measurements, measure: Measure, order: list[tuple],
          cells: dict[tuple[tuple, str], Estimate]) -> str | None:
    """The displayed text of the column's best mean, not counting values within 5 points of chance."""
    if measure.higher_is_better is None:
        return None
    shown = {}
    for entry in order:
        estimate = cells[entry, measure.key]
        if math.isfinite(estimate.mean) and not _chance_bound(measurements, measure, entry, cells):
            shown[entry] = estimate.mean
    if not shown:
        return None
    best = (max if measure.higher_is_better else min)(shown.values())
    return format_value(best, measure.percent, signed=measure.difference_of is not None)


def _near_chance(measure: Measure, mean: float) -> bool:
    return math.isfinite(measure.chance) and math.isfinite(mean) and abs(mean - measure.chance) <= NEAR_CHANCE


def _chance_bound(measurements: Measurements, measure: Measure, entry: tuple,
                  cells: dict[tuple[tuple, str], Estimate]) -> bool:
    """A value within 5 points of chance; a difference whose two sides both are."""
    if measure.difference_of is None:
        return _near_chance(measure, cells[entry, measure.key].mean)
    by_key = {m.key: m for m in measurements.measures}
    return all(_near_chance(by_key[key], cells[entry, key].mean) for key in measure.difference_of)


def _measure_cell(measure: Measure, estimate: Estimate, common_n: int, best: str | None, mark: str,
                  near: bool) -> Cell:
    """mean ± SE (n if unusual), a difference with its CI and p, or n/a; footnote mark for failed seeds."""
    if estimate.difference is not None:
        text = format_difference(estimate.difference, measure.percent)
        if estimate.difference.n >= 2:
            text += f", p {format_p(estimate.difference.p_value)}"
        value = format_value(estimate.mean, measure.percent, signed=True)
    else:
        value = format_value(estimate.mean, measure.percent)
        text = value
        if math.isfinite(estimate.se):
            text += f" ± {format_value(estimate.se, measure.percent)}"
        if estimate.n and estimate.n != common_n:
            text += f" (n={estimate.n})"
    text = f"{text} {mark}".strip()
    title = f"within {100 * NEAR_CHANCE:.0f} points of chance" if near else ""
    return Cell(text, sort=estimate.mean, bold=best is not None and value == best and not near,
                near_chance=near, title=title)


def _comparison_cells(measurements: Measurements, headline: Measure, entry: tuple, reference: tuple | None,
                      is_reference: bool, cells: dict[tuple[tuple, str], Estimate]) -> list[Cell]:
    """Δ vs the reference (paired over seeds) ± SE [CI], the paired t-test's p and the verdict.

    When both rows are within 5 points of chance the Δ is greyed and the verdict says so.
    """
    if is_reference:
        return [text_cell("reference"), text_cell(""), text_cell("")]
    if reference is None:
        return [text_cell("no reference"), text_cell(""), text_cell("")]
    values = measurements.values[headline.key]
    diff = paired_difference(values.get(entry, pd.Series(dtype=float)), values.get(reference, pd.Series(dtype=float)))
    both_near = all(_near_chance(headline, cells[key, headline.key].mean) for key in (entry, reference))
    word = verdict(diff, headline.higher_is_better is not False)
    return [Cell(format_difference(diff, headline.percent), sort=diff.mean, near_chance=both_near),
            Cell(format_p(diff.p_value), sort=diff.p_value),
            text_cell(f"{word} (both near chance)" if both_near else word)]


def _caption(measurements: Measurements, order: list[tuple], varying: list[str], headline: Measure | None,
             compare: bool, common_n: int) -> tuple[str, ...]:
    """What the cells are, how rows are ranked and compared, the chance level and the constant fields."""
    fields = measurements.fields
    constant = [f"{FIELD_HEADERS.get(name, name)} {_field_text(order[0][fields.index(name)])}"
                for name in fields if name not in varying and name not in (*MERGED_FIELDS, "norm") and order]
    lines = [f"Cells: mean ± standard error (SE = std(ddof=1)/sqrt(n)) over n = {common_n} seeds unless a cell "
             "says otherwise; accuracies and differences of accuracies in percent (points)."]
    if constant:
        lines.append("Same for every row: " + ", ".join(constant) + ".")
    if headline is not None:
        direction = "higher" if headline.higher_is_better is not False else "lower"
        lines.append(f"Ranked by {headline.header} ({direction} is better); bold: the best value of each column "
                     f"that is not within {100 * NEAR_CHANCE:.0f} points of chance.")
    if compare:
        same = ", ".join(FIELD_HEADERS.get(n, n) for n in fields if n not in (*MERGED_FIELDS, "norm", "eval_mode"))
        lines.append(f"Reference {REFERENCE_MARK}: {REFERENCE_NORM} with {REFERENCE_EVAL_MODE} on the same {same}. "
                     f"Δ vs ref: paired difference over the seeds both rows have, ± SE, [95% CI: Student t, n-1 "
                     f"degrees of freedom]; p: {TEST_NAME}, n = {common_n} seeds; no correction for comparing "
                     "many rows. 'better' or 'worse' only where the 95% CI excludes 0, else 'no clear difference'.")
    differences = [m.header for m in measurements.measures if m.difference_of]
    if differences:
        lines.append(f"{', '.join(differences)}: paired difference over seeds (first minus second) ± SE "
                     "[95% CI], p of the paired t-test; greyed when both sides are within 5 points of chance.")
    chances = sorted({m.chance for m in measurements.measures if math.isfinite(m.chance)})
    if chances:
        levels = ", ".join(f"{100 * c:.1f}%" for c in chances)
        lines.append(f"Chance level: {levels}. {NEAR_CHANCE_MARK} (greyed): within {100 * NEAR_CHANCE:.0f} points "
                     "of chance, i.e. no better than guessing.")
    if any(m.accuracy and not math.isfinite(m.chance) for m in measurements.measures):
        lines.append("Chance level unknown for some columns (no chance column, no confusion matrix): "
                     "they are not greyed.")
    return tuple(lines)


def _identical_entries(measurements: Measurements, order: list[tuple]) -> tuple[str, ...]:
    """Notes for entries whose per-seed values equal another entry's in every measure (one model, two names)."""
    fields, seen, notes = measurements.fields, {}, []
    for entry in order:
        signature = tuple(tuple(measurements.values[m.key].get(entry, pd.Series(dtype=float)).round(12).items())
                          for m in measurements.measures if m.difference_of is None)
        if not any(signature):
            continue
        name = f"{entry[fields.index('norm')]}/{entry[fields.index('eval_mode')]}"
        if signature in seen:
            notes.append(f"Note: {name} has exactly the same per-seed values as {seen[signature]}.")
        else:
            seen[signature] = name
    return tuple(notes)


def entry_label(measurements: Measurements, entry: tuple) -> str:
    """``"localnorm (num_groups=4) / voting on quick_cnn"``: what a row is, in words."""
    values = dict(zip(measurements.fields, entry))
    mode = norm_label(values["eval_mode"], values.get("eval_kwargs", "{}"))
    return f"{norm_label(values['norm'], values['norm_kwargs'])} / {mode} on {values['model']}"


def leader(measurements: Measurements) -> str:
    """The first-ranked row in words: its headline value and how it compares with the reference."""
    headline = next((m for m in measurements.measures if m.key == measurements.headline), None)
    cells = estimates(measurements)
    order = rank_order(measurements, cells)
    if headline is None or not order or not math.isfinite(cells[order[0], headline.key].mean):
        return "no ranked row"
    top = order[0]
    estimate = cells[top, headline.key]
    text = f"{entry_label(measurements, top)}: {headline.header.removesuffix(' (%)')} " + \
        format_value(estimate.mean, headline.percent)
    if math.isfinite(estimate.se):
        text += f" ± {format_value(estimate.se, headline.percent)}"
    text += "%" if headline.percent else ""
    reference = reference_entries(measurements).get(top)
    if reference is None:
        return text + "; no reference row to compare with"
    if reference == top:
        return text + " (the reference itself)"
    values = measurements.values[headline.key]
    diff = paired_difference(values.get(top, pd.Series(dtype=float)), values.get(reference, pd.Series(dtype=float)))
    word = verdict(diff, headline.higher_is_better is not False)
    return (f"{text}; vs {REFERENCE_NORM}/{REFERENCE_EVAL_MODE}: {format_difference(diff, headline.percent)}"
            f"{' pp' if headline.percent else ''}, p {format_p(diff.p_value)} ({word}, n = {diff.n} seeds)")


def side_by_side(runs: list[tuple[str, Measurements]], title: str) -> Table:
    """Each value column of every run next to the others' (never averaged); rows ranked as in the first run."""
    first = runs[0][1]
    keep = [i for i, name in enumerate(first.fields) if name != "device"]
    measures = [m for m in first.measures if m.difference_of is None]
    by_run = []
    for label, measurements in runs:
        cells = estimates(measurements)
        by_run.append((label, measurements, cells, {tuple(e[i] for i in keep): e for e in measurements.entries}))
    order = [tuple(e[i] for i in keep) for e in rank_order(first, by_run[0][2])]
    order += sorted({key for *_, entries in by_run[1:] for key in entries} - set(order))
    fields = [first.fields[i] for i in keep]
    header = ["norm", "eval mode", "architecture",
              *(f"{m.header} [{label}]" for m in measures for label, *_ in by_run)]
    rows = []
    for key in order:
        values = dict(zip(fields, key))
        row = [text_cell(norm_label(values["norm"], values["norm_kwargs"])),
               text_cell(norm_label(values["eval_mode"], values.get("eval_kwargs", "{}"))),
               text_cell(str(values["model"]))]
        for measure in measures:
            for _, measurements, cells, entries in by_run:
                entry = entries.get(key)
                estimate = cells.get((entry, measure.key)) if entry is not None else None
                row.append(text_cell("not run") if estimate is None else
                           _measure_cell(measure, estimate, 0, None, "", _near_chance(measure, estimate.mean)))
        rows.append(tuple(row))
    caption = ("Cells: mean ± SE over each run's own seeds (n given); runs are never pooled. Rows in the first "
               "run's ranking; rows only other runs have come last.",)
    return Table(title, tuple(header), tuple(rows), caption)
