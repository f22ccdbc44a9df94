"""The result row: one measurement in long format, and its CSV schema.

Every number the benchmark produces is one :class:`ResultRow`: *what* was measured (the key: scenario,
profile, data, model, norm and its kwargs, training variant, test-time mode, corruption and severity,
training batch size, seed, recipe, metric, device) and *how* (value, chance level, number of test
examples, status, package versions, git commit, checkpoint hash, wall-clock seconds). Long format keeps
every scenario in one schema; tables are pivots of it (:mod:`robustbench_norm.results.summary`).

Two key fields keep runs that may legitimately differ apart, so that merging one never replaces the other:

* ``recipe`` names the training recipe (a short hash of everything that determines the weights except the
  seed and the device: data, net, norm kwargs, schedule, recipe version). A smoke run with ``--epochs 1`` has
  another recipe than the profile's and so can never overwrite the profile's rows; ``"unspecified"`` marks
  rows whose weights did not come from this suite (a user's own model);
* ``device`` (``cpu`` / ``cuda``): GPU and CPU runs train different weights and are never merged
  (``hardware`` describes the machine: CPU architecture and cores, or the GPU's name).

``chance`` is the accuracy of guessing the most frequent test class (for ``accuracy`` rows; NaN for
metrics without a chance level): summaries flag values within 5 points of it.

CSV conventions (one header line = the field order of :class:`ResultRow`):

* ``norm_kwargs`` and ``eval_kwargs`` (the test-time mode's hyper-parameters, e.g. ``bn_adapt``'s prior
  strength or Tent's optimiser; ``{}`` for the plain modes) are canonical JSON (``sort_keys``, ``", "``/``": "`` separators), so equal kwargs are
  equal strings and can be part of the key;
* ``corruption`` is ``"none"`` for clean data (severity 0);
* ``value`` may be NaN (written ``nan``) for a row that could not be measured; ``status`` then says why
  (``"not trainable: batch 2 < num_groups 4"``); a measured row has ``status == "ok"`` and a finite value;
* floats are written with Python's shortest round-trip repr, so keys (severity) survive a round trip
  exactly; no string column is ever read as missing (``"none"``, ``"NA"`` stay strings).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TextIO

import pandas as pd

OK = "ok"
CLEAN = "none"
UNSPECIFIED = "unspecified"


def canonical_kwargs(kwargs: Mapping[str, Any] | str) -> str:
    """Canonical JSON of a kwargs mapping (or of a JSON object string): sorted keys, fixed separators."""
    parsed = json.loads(kwargs) if isinstance(kwargs, str) else dict(kwargs)
    if not isinstance(parsed, dict):
        raise ValueError(f"norm_kwargs must be a JSON object, got {kwargs!r}")
    return json.dumps(parsed, sort_keys=True, separators=(", ", ": "))


@dataclass(frozen=True, kw_only=True)
class ResultRow:
    """One measurement (see the module docstring for the meaning and the CSV form of each field).

    Keyword-only. ``norm_kwargs`` may be given as a mapping or a JSON string; it is stored
    canonicalised. Numeric fields are coerced (``severity=1`` becomes ``1.0``). ``status`` defaults to
    ``"ok"``. Invalid rows raise ``ValueError``.
    """

    scenario: str
    profile: str
    dataset: str
    model: str
    norm: str
    norm_kwargs: str
    variant: str
    eval_mode: str
    eval_kwargs: str = "{}"
    corruption: str
    severity: float
    train_batch_size: int
    seed: int
    recipe: str = UNSPECIFIED
    metric: str
    value: float
    chance: float = math.nan
    n_examples: int
    status: str = OK
    device: str
    hardware: str = UNSPECIFIED
    versions: str
    git_commit: str
    checkpoint_hash: str
    wall_seconds: float

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "norm_kwargs", canonical_kwargs(self.norm_kwargs))
        set_(self, "eval_kwargs", canonical_kwargs(self.eval_kwargs))
        for name in FLOAT_FIELDS:
            set_(self, name, float(getattr(self, name)))
        for name in INT_FIELDS:
            set_(self, name, _as_int(name, getattr(self, name)))
        for name in STRING_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str) or "\n" in value:
                raise ValueError(f"{name} must be a one-line string, got {value!r}")
        for name in ("scenario", "profile", "dataset", "model", "norm", "variant", "eval_mode",
                     "corruption", "recipe", "metric", "status"):
            if not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string")
        if not math.isfinite(self.severity) or self.severity < 0:
            raise ValueError(f"severity must be a finite number >= 0, got {self.severity}")
        if self.corruption == CLEAN and self.severity != 0:
            raise ValueError(f"corruption {CLEAN!r} (clean data) needs severity 0, got {self.severity}")
        if self.status == OK and not math.isfinite(self.value):
            raise ValueError(f"status 'ok' needs a finite value, got {self.value}; give the reason as status")
        if self.n_examples < 0 or self.train_batch_size < 0:
            raise ValueError(
                f"n_examples and train_batch_size must be >= 0, got {self.n_examples}, {self.train_batch_size}"
            )

    @property
    def key(self) -> tuple:
        """The values of :data:`KEY_FIELDS`: what identifies this measurement."""
        return tuple(getattr(self, name) for name in KEY_FIELDS)


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ResultRow))
KEY_FIELDS: tuple[str, ...] = (
    "scenario", "profile", "dataset", "model", "norm", "norm_kwargs", "variant", "eval_mode", "eval_kwargs",
    "corruption", "severity", "train_batch_size", "seed", "recipe", "metric", "device",
)
KEY_WITHOUT_SEED: tuple[str, ...] = tuple(name for name in KEY_FIELDS if name != "seed")
FLOAT_FIELDS: tuple[str, ...] = ("severity", "value", "chance", "wall_seconds")
INT_FIELDS: tuple[str, ...] = ("train_batch_size", "seed", "n_examples")
STRING_FIELDS: tuple[str, ...] = tuple(n for n in COLUMNS if n not in FLOAT_FIELDS + INT_FIELDS)


def coerce_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with exactly :data:`COLUMNS`, in order, and the row schema's dtypes."""
    missing = [name for name in COLUMNS if name not in frame.columns]
    if missing:
        raise ValueError(f"result table lacks column(s) {missing}; expected columns: {list(COLUMNS)}")
    dtypes = {**{n: "float64" for n in FLOAT_FIELDS}, **{n: "int64" for n in INT_FIELDS},
              **{n: str for n in STRING_FIELDS}}
    return frame.loc[:, list(COLUMNS)].astype(dtypes).reset_index(drop=True)


def rows_to_frame(rows: Iterable[ResultRow]) -> pd.DataFrame:
    """A DataFrame with one line per row and the schema's columns and dtypes (empty input: empty table)."""
    return coerce_frame(pd.DataFrame([astuple(row) for row in rows], columns=list(COLUMNS)))


def frame_to_rows(frame: pd.DataFrame) -> list[ResultRow]:
    """The rows of a result table (inverse of :func:`rows_to_frame`)."""
    frame = coerce_frame(frame)
    return [ResultRow(**record) for record in frame.to_dict(orient="records")]


def write_frame_csv(frame: pd.DataFrame, handle: TextIO, *, extra_columns: Sequence[str] = ()) -> None:
    """Write a result table as CSV (header = :data:`COLUMNS`, NaN as ``nan``, floats round-trip exact).

    ``extra_columns`` (columns of ``frame`` outside the schema, e.g. a user's notes) follow the schema's,
    as strings; a missing value is written as an empty field.
    """
    table = coerce_frame(frame)
    for name in extra_columns:
        table[name] = frame[name].fillna("").astype(str).to_numpy()
    table.to_csv(handle, index=False, na_rep="nan", lineterminator="\n")


def read_frame_csv(path: Path | str, *, keep_extra_columns: bool = False) -> pd.DataFrame:
    """Read a CSV written by :func:`write_frame_csv` (:func:`read_typed_csv`; every row must be a valid
    :class:`ResultRow`, each key once). Columns outside the schema are dropped, or kept as strings after the
    schema's with ``keep_extra_columns``. A damaged file raises ``ValueError`` naming it, the line and the problem.
    """
    frame = read_typed_csv(path, what="result table", columns=COLUMNS, floats=FLOAT_FIELDS, ints=INT_FIELDS,
                           key=KEY_FIELDS, check_row=lambda record: ResultRow(**{n: record[n] for n in COLUMNS}))
    table = coerce_frame(frame)
    if keep_extra_columns:
        for name in (c for c in frame.columns if c not in COLUMNS):
            table[name] = frame[name]
    return table


def read_typed_csv(path: Path | str, *, what: str, columns: Sequence[str], floats: Sequence[str],
                   ints: Sequence[str], key: Sequence[str],
                   check_row: Callable[[dict[str, Any]], Any] | None = None) -> pd.DataFrame:
    """A CSV whose header holds ``columns`` (any order, more allowed), typed, or ``ValueError`` saying what is wrong.

    Fields are read with the ``csv`` module: every line must have as many fields as the header (blank lines
    are skipped); ``floats`` are parsed by Python's ``float`` (exact round trip of the shortest repr, ``nan``),
    ``ints`` by ``int``; every other column stays a string (none is read as missing). No two lines may share
    the values of ``key``; ``check_row(record)`` may raise ``ValueError`` for a line's typed values. The frame
    has ``columns`` first, then any other columns of the file. Error messages start with ``"<what> <path>: "``
    and give the line number.
    """
    prefix = f"{what} {path}: "
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            lines = [(reader.line_num, record) for record in reader if record]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{prefix}unreadable as CSV text ({type(error).__name__}: {error})") from error
    if not lines:
        raise ValueError(f"{prefix}empty file (no header line); expected columns: {list(columns)}")
    (_, header), body = lines[0], lines[1:]
    repeated = sorted({name for name in header if header.count(name) > 1})
    missing = [name for name in columns if name not in header]
    if repeated or missing:
        problems = [f"{verb} column(s) {names}" for verb, names in (("repeats", repeated), ("lacks", missing)) if names]
        raise ValueError(f"{prefix}header {' and '.join(problems)}; expected columns: {list(columns)}")
    for number, record in body:
        if len(record) != len(header):
            raise ValueError(f"{prefix}line {number} has {len(record)} fields, the header has {len(header)} "
                             "(truncated or hand-edited line?)")
    values = {name: [record[i] for _, record in body] for i, name in enumerate(header)}
    for names, parse, kind in ((floats, float, "a number"), (ints, int, "an integer")):
        for name in names:
            values[name] = [_parsed(prefix, number, name, text, parse, kind)
                            for (number, _), text in zip(body, values[name])]
    order = [*columns, *(name for name in header if name not in columns)]
    frame = pd.DataFrame({name: values[name] for name in order}, columns=order)
    frame = frame.astype({**{n: "float64" for n in floats}, **{n: "int64" for n in ints}})
    for (number, _), record in zip(body, frame.to_dict(orient="records") if check_row else ()):
        try:
            check_row(record)
        except ValueError as error:
            raise ValueError(f"{prefix}line {number}: {error}") from error
    repeated_keys = frame.duplicated(subset=list(key), keep="first")
    if repeated_keys.any():
        first = int(repeated_keys.to_numpy().argmax())
        raise ValueError(f"{prefix}line {body[first][0]} repeats the key {frame.loc[first, list(key)].to_dict()} "
                         "of an earlier line (merge-conflict leftover?); each key may occur once")
    return frame


def _parsed(prefix: str, line: int, column: str, text: str, parse: Callable[[str], Any], kind: str) -> Any:
    try:
        return parse(text)
    except ValueError:
        raise ValueError(f"{prefix}line {line}, column {column!r}: {text!r} is not {kind}") from None
