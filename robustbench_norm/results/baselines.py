"""Regression baselines: committed expected values with tolerances derived from the seed spread.

File: ``<results_dir>/<profile>/baselines/<scenario>.csv``, one line per measurement key without its seed
(:data:`KEY_WITHOUT_SEED`) plus ``expected`` (mean over the seeds of the run that set it), ``tolerance``
and ``n_seeds``. A damaged file is a ``ValueError`` naming it, the line and the problem
(:func:`read_baselines`); columns a user added are kept when :func:`update_baselines` rewrites it.

Gate. Only metrics where higher is better are gated: :func:`is_gated` (metric names ending in
``"accuracy"``). A run's key fails when the mean over its ``ok`` seeds is below ``expected - tolerance``,
or when none of its seeds could be measured although the baseline has a value. A key without a baseline
is reported (:class:`NoBaselineWarning`, :func:`missing_baselines`), never failed.

Tolerance. ``tolerance = max(TOL_K * s, TOL_FLOOR)``, ``s`` = the standard deviation over the baseline's
seeds (``ddof=1``; 0 with one seed):

* ``TOL_K = 3``: the gate compares the mean of the run's seeds with the baseline's mean. With three seeds
  on both sides (the default) their difference has standard deviation sqrt(2/3) s ~ 0.82 s, so 3 s is
  3.7 of those: about 1e-4 false alarms per key under normal seed noise, a few percent for a run with a
  few hundred gated keys. A one-seed run (difference SD ~ 1.15 s) still sits 2.6 SD away (0.5 % per key).
* ``TOL_FLOOR = 0.02`` (2 accuracy points): ``s`` from three seeds is itself noisy (below half the
  true spread in 22 % of cases: a chi distribution with 2 degrees of freedom); on the quick profile's
  test sets of a few hundred images, 2 points are 4-10 images, which equally good models from different
  seeds or CPU vs GPU kernels easily flip. A tighter gate would flag noise, not regressions.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from robustbench_norm.atomic import remove_temp_files
from robustbench_norm.results.rows import KEY_WITHOUT_SEED, OK, read_typed_csv
from robustbench_norm.results.store import (
    atomic_write,
    check_name,
    locked,
    merge_by_key,
)
from robustbench_norm.results.summary import mean_se

TOL_K = 3.0
TOL_FLOOR = 0.02
GATED_SUFFIX = "accuracy"
MAX_LISTED = 5  # keys named in one NoBaselineWarning
BASELINE_COLUMNS: tuple[str, ...] = (*KEY_WITHOUT_SEED, "expected", "tolerance", "n_seeds")
_FLOATS: tuple[str, ...] = ("severity", "expected", "tolerance")
_INTS: tuple[str, ...] = ("train_batch_size", "n_seeds")
_DTYPES = {**{name: str for name in KEY_WITHOUT_SEED}, **{name: "float64" for name in _FLOATS},
           **{name: "int64" for name in _INTS}}


class NoBaselineWarning(UserWarning):
    """Measurements that have no committed baseline (reported, not failed)."""


def is_gated(metric: str) -> bool:
    """Whether ``metric`` is gated (higher is better): its name ends in ``"accuracy"``."""
    return metric.endswith(GATED_SUFFIX)


def baseline_path(results_dir: Path | str, profile: str, scenario: str) -> Path:
    """``<results_dir>/<profile>/baselines/<scenario>.csv``."""
    return Path(results_dir) / check_name("profile", profile) / "baselines" / f"{check_name('scenario', scenario)}.csv"


def tolerance_from_spread(values: pd.Series) -> float:
    """``max(TOL_K * std(values, ddof=1), TOL_FLOOR)``; the floor alone for fewer than two values."""
    spread = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return max(TOL_K * spread, TOL_FLOOR)


def _coerce(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.loc[:, list(BASELINE_COLUMNS)].astype(_DTYPES).reset_index(drop=True)


def derive_baselines(df_rows: pd.DataFrame) -> pd.DataFrame:
    """Baseline lines (:data:`BASELINE_COLUMNS`) from result rows: gated metrics, ``ok`` seeds only."""
    rows = df_rows.loc[df_rows["metric"].map(is_gated) & (df_rows["status"] == OK)]
    records = [(*key, group["value"].mean(), tolerance_from_spread(group["value"]), len(group))
               for key, group in rows.groupby(list(KEY_WITHOUT_SEED), sort=True)]
    return _coerce(pd.DataFrame(records, columns=list(BASELINE_COLUMNS)))


def _check_line(record: dict) -> None:
    if not (math.isfinite(record["tolerance"]) and record["tolerance"] >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {record['tolerance']}")
    if record["n_seeds"] < 1:
        raise ValueError(f"n_seeds must be >= 1, got {record['n_seeds']}")


def read_baselines(path: Path | str, *, keep_extra_columns: bool = False) -> pd.DataFrame:
    """The baselines in ``path``; an empty table with :data:`BASELINE_COLUMNS` if the file does not exist.

    A damaged file raises ``ValueError`` naming it, the line and the problem (see
    :func:`~robustbench_norm.results.rows.read_typed_csv`; also a negative or non-finite tolerance, or
    ``n_seeds`` < 1). Columns outside :data:`BASELINE_COLUMNS` are dropped, or kept (as strings, after the
    others) with ``keep_extra_columns``.
    """
    path = Path(path)
    if not path.is_file():
        return _coerce(pd.DataFrame(columns=list(BASELINE_COLUMNS)))
    frame = read_typed_csv(path, what="baseline table", columns=BASELINE_COLUMNS, floats=_FLOATS, ints=_INTS,
                           key=KEY_WITHOUT_SEED, check_row=_check_line)
    table = _coerce(frame)
    for name in (c for c in frame.columns if c not in BASELINE_COLUMNS) if keep_extra_columns else ():
        table[name] = frame[name]
    return table


def update_baselines(df_rows: pd.DataFrame, path: Path | str) -> pd.DataFrame:
    """Merge this run's baselines into ``path`` by key (other keys are kept), atomically; the new table.

    Columns a user added to the file are kept (new and replaced lines get an empty field); temporary files
    a killed writer left for ``path`` are removed (every writer holds the lock).
    """
    path = Path(path)
    with locked(path):
        remove_temp_files(path.parent, target=path.name, older_than=0)
        existing = read_baselines(path, keep_extra_columns=True)
        merged = merge_by_key(existing, derive_baselines(df_rows), KEY_WITHOUT_SEED)
        for name in [c for c in existing.columns if c not in BASELINE_COLUMNS]:
            merged[name] = merged[name].fillna("")
        atomic_write(path, lambda handle: merged.to_csv(handle, index=False, na_rep="nan", lineterminator="\n"))
    return merged


def drop_baselines(path: Path | str, rows: Callable[[pd.DataFrame], pd.Series]) -> int:
    """Remove the baselines of ``path`` for which ``rows(table)`` is True (locked, atomic); the number removed."""
    path = Path(path)
    with locked(path):
        existing = read_baselines(path, keep_extra_columns=True)
        mask = rows(existing)
        if mask.any():
            kept = existing.loc[~mask]
            atomic_write(path, lambda handle: kept.to_csv(handle, index=False, na_rep="nan", lineterminator="\n"))
    return int(mask.sum())


def key_label(key: dict) -> str:
    """``"noise/localnorm/standard/batch/agn/1.0/bs64 [quick, digits, quick_cnn]"`` (kwargs after the norm)."""
    norm = key["norm"] if key["norm_kwargs"] == "{}" else f"{key['norm']}{key['norm_kwargs']}"
    path = "/".join([key["scenario"], norm, key["variant"], key["eval_mode"], key["corruption"],
                     repr(float(key["severity"])), f"bs{key['train_batch_size']}"])
    return f"{path} [{key['profile']}, {key['dataset']}, {key['model']}]"


@dataclass(frozen=True)
class Regression:
    """A gated key whose run fell below ``expected - tolerance`` (or could not be measured)."""

    key: tuple  # values of KEY_WITHOUT_SEED
    observed: float  # mean over the run's ok seeds (NaN if none)
    expected: float
    tolerance: float
    n_seeds: int  # ok seeds behind ``observed``
    status: str  # "ok" or why seeds failed

    @property
    def key_fields(self) -> dict:
        """The key as ``{field: value}``."""
        return dict(zip(KEY_WITHOUT_SEED, self.key))

    @property
    def message(self) -> str:
        """``"<key> accuracy: 0.412 < 0.655 - 0.031 (mean of 3 seeds)"`` with every number of the check."""
        fields = self.key_fields
        head = f"{key_label(fields)} {fields['metric']}"
        if self.n_seeds == 0:
            return (f"{head}: no value ({self.status}) but baseline expects "
                    f"{self.expected:.3f} - {self.tolerance:.3f}")
        return (f"{head}: {self.observed:.3f} < {self.expected:.3f} - {self.tolerance:.3f} "
                f"(mean of {self.n_seeds} seeds; status {self.status})")

    def __str__(self) -> str:
        return self.message


def _observed(df_rows: pd.DataFrame) -> pd.DataFrame:
    """Per gated key: mean over ok seeds, their count, and the failure reasons."""
    rows = df_rows.loc[df_rows["metric"].map(is_gated)]
    records = []
    for key, group in rows.groupby(list(KEY_WITHOUT_SEED), sort=True):
        ok = group["status"] == OK
        mean, _, n = mean_se(group.loc[ok, "value"])
        reasons = "; ".join(sorted(set(group.loc[~ok, "status"]))) or OK
        records.append((*key, mean, n, reasons))
    columns = [*KEY_WITHOUT_SEED, "observed", "n_observed", "reasons"]
    return pd.DataFrame(records, columns=columns).astype(
        {name: _DTYPES[name] for name in KEY_WITHOUT_SEED} | {"n_observed": "int64"})


def _joined(df_rows: pd.DataFrame, baselines: pd.DataFrame | Path | str) -> pd.DataFrame:
    table = baselines if isinstance(baselines, pd.DataFrame) else read_baselines(baselines)
    return _observed(df_rows).merge(_coerce(table), on=list(KEY_WITHOUT_SEED), how="left", indicator=True)


def missing_baselines(df_rows: pd.DataFrame, baselines: pd.DataFrame | Path | str) -> list[str]:
    """Labels of this run's gated keys that have no baseline."""
    joined = _joined(df_rows, baselines)
    return [key_label(record) for record in
            joined.loc[joined["_merge"] == "left_only", list(KEY_WITHOUT_SEED)].to_dict(orient="records")]


def check_against_baselines(df_rows: pd.DataFrame, baselines: pd.DataFrame | Path | str) -> list[Regression]:
    """The gated keys of ``df_rows`` (result rows of one run) that fall below their baseline.

    ``baselines`` is a baseline table or the path of a baseline CSV (missing file = no baselines).
    Keys without a baseline are not failures: one :class:`NoBaselineWarning` counts them and names the
    first :data:`MAX_LISTED` (:func:`missing_baselines` lists all).
    """
    joined = _joined(df_rows, baselines)
    missing = joined["_merge"] == "left_only"
    if missing.any():
        labels = [key_label(r) for r in joined.loc[missing, list(KEY_WITHOUT_SEED)].to_dict(orient="records")]
        shown = "; ".join(labels[:MAX_LISTED]) + (f"; ... and {len(labels) - MAX_LISTED} more"
                                                  if len(labels) > MAX_LISTED else "")
        warnings.warn(NoBaselineWarning(f"no baseline for {len(labels)} measurement(s): {shown}"), stacklevel=2)
    regressions = []
    for record in joined.loc[~missing].to_dict(orient="records"):
        unmeasured = record["n_observed"] == 0 and math.isfinite(record["expected"])
        below = record["n_observed"] > 0 and record["observed"] < record["expected"] - record["tolerance"]
        if unmeasured or below:
            regressions.append(Regression(
                key=tuple(record[name] for name in KEY_WITHOUT_SEED), observed=record["observed"],
                expected=record["expected"], tolerance=record["tolerance"], n_seeds=record["n_observed"],
                status=record["reasons"]))
    return regressions
