"""The leaderboard store: one CSV of result rows per (profile, scenario), merged by key, written atomically.

Layout: ``<results_dir>/<profile>/<scenario>.csv`` (schema: :mod:`robustbench_norm.results.rows`).

Merge rule. :meth:`ResultStore.write` replaces the stored rows whose :data:`KEY_FIELDS` equal a new row's
key and keeps every other row, so ``pytest suites/ --norm=lcn`` rewrites the ``lcn`` rows and never loses
another norm's. Rows are kept sorted by the key fields (a stable sort), so a re-run shows as a small diff.

Concurrency and atomicity. Read-merge-write runs under an exclusive ``fcntl.flock`` on a sibling lock
file (``.<scenario>.csv.lock``), so two processes (``pytest -n 2``) that write the same table serialise
instead of losing each other's rows. The new table is written to a temporary file in the same folder and
moved over the old one with ``os.replace``: a reader sees either the old or the new table, and a failure
mid-write leaves the old file untouched and no temporary file behind. The lock file is removed on release;
a process that waited on a removed lock file notices (inode check) and locks the new one, so removal is
safe. POSIX only (``fcntl``). Every writer of a table holds its lock, so a temporary file of the table
found while holding it was left by a killed writer: it is removed before the write.

Superseded rows. The recipe is part of the key, so a schedule change leaves the old recipe's rows next to the
new ones; :func:`superseded` finds them and :meth:`ResultStore.drop` removes them (``robustbench-norm prune``,
an explicit act, never done by a run).

Damage and extra columns. Reading a table that is not a valid result CSV (unparsable line, missing
column, a value of the wrong type, an invalid row, a repeated key) raises ``ValueError`` naming the file,
the line and the problem (:func:`~robustbench_norm.results.rows.read_frame_csv`); nothing is written over
it. Columns a user added that are not in the schema (notes, annotations) are preserved by
:meth:`ResultStore.write`: kept rows keep their values, new and replaced rows get an empty field. A file
whose header starts with the schema's columns is a result CSV, whatever follows.
"""

from __future__ import annotations

import fcntl
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator, Sequence

import pandas as pd

import robustbench_norm
from robustbench_norm.atomic import atomic_write, remove_temp_files
from robustbench_norm.results.rows import (
    COLUMNS,
    KEY_FIELDS,
    ResultRow,
    coerce_frame,
    read_frame_csv,
    rows_to_frame,
    write_frame_csv,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


def default_results_dir() -> Path:
    """``<checkout>/leaderboards`` when the package runs from a source checkout, else ``./leaderboards``."""
    checkout = Path(robustbench_norm.__file__).resolve().parents[1]
    base = checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()
    return base / "leaderboards"


def check_name(kind: str, value: str) -> str:
    """``value`` if it is safe as one path component (letters, digits, ``_ . + = -``), else ``ValueError``."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"{kind} {value!r} cannot be used in a file name; use letters, digits and '_ . + = -' "
            "(not starting with a punctuation mark)"
        )
    return value


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``'s sibling lock file ``.<name>.lock`` (blocks until free)."""
    lock_path = path.parent / f".{path.name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            current = os.stat(lock_path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(descriptor).st_ino:
            break  # we hold the lock file that is still in place
        os.close(descriptor)  # its holder removed it while we waited: lock the new one
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(descriptor)



def merge_by_key(existing: pd.DataFrame, new: pd.DataFrame, key: Sequence[str]) -> pd.DataFrame:
    """``existing`` without the rows whose ``key`` occurs in ``new``, plus ``new``, stably sorted by ``key``.

    Two rows of ``new`` with the same key are a caller error (``ValueError`` naming the key).
    """
    key = list(key)
    duplicated = new.duplicated(subset=key, keep=False)
    if duplicated.any():
        first = new.loc[duplicated, key].iloc[0].to_dict()
        raise ValueError(f"{int(duplicated.sum())} new rows share a key, e.g. {first}; each key may occur once")
    replaced = pd.MultiIndex.from_frame(existing[key]).isin(pd.MultiIndex.from_frame(new[key]))
    kept = existing.loc[~replaced]
    merged = pd.concat([kept, new], ignore_index=True) if len(kept) else new.copy()
    return merged.sort_values(key, kind="mergesort").reset_index(drop=True)


def superseded(frame: pd.DataFrame, current: Collection[str]) -> pd.Series:
    """Rows (result rows or baselines) whose recipe is not in ``current`` although the same measurement (the
    key without ``recipe``) also has a row under a recipe in ``current``: what a schedule change replaced.
    A measurement with no current row (e.g. one run with other norm kwargs) is never superseded."""
    key = [name for name in KEY_FIELDS if name in frame.columns and name != "recipe"]
    is_current = frame["recipe"].isin(list(current))
    has_current = is_current.groupby([frame[name] for name in key], dropna=False).transform("any")
    return has_current & ~is_current


def is_result_csv(path: Path) -> bool:
    """Whether ``path`` is a CSV of result rows: its header starts with the schema's columns (more may follow)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        header = handle.readline().rstrip("\r\n")
    schema = ",".join(COLUMNS)
    return header == schema or header.startswith(schema + ",")


class ResultStore:
    """Result CSVs under ``root`` (``<root>/<profile>/<scenario>.csv``); see the module docstring."""

    def __init__(self, results_dir: Path | str) -> None:
        self.root = Path(results_dir)

    def __repr__(self) -> str:
        return f"ResultStore({str(self.root)!r})"

    def path(self, profile: str, scenario: str) -> Path:
        """The CSV file of ``(profile, scenario)``."""
        return self.root / check_name("profile", profile) / f"{check_name('scenario', scenario)}.csv"

    @staticmethod
    def frame(rows: Iterable[ResultRow]) -> pd.DataFrame:
        """The rows as a result table (schema columns and dtypes)."""
        return rows_to_frame(rows)

    def write(self, rows: Iterable[ResultRow]) -> list[Path]:
        """Merge ``rows`` into their tables (grouped by profile and scenario); returns the files written."""
        frame = rows_to_frame(rows)
        written = []
        for (profile, scenario), group in frame.groupby(["profile", "scenario"], sort=False):
            path = self.path(profile, scenario)
            with locked(path):
                remove_temp_files(path.parent, target=path.name, older_than=0)
                existing = self._read_path(path, keep_extra_columns=True)
                extra = [name for name in existing.columns if name not in COLUMNS]
                merged = merge_by_key(existing, group, KEY_FIELDS)
                atomic_write(path, lambda handle: write_frame_csv(merged, handle, extra_columns=extra))
            written.append(path)
        return written

    def drop(self, profile: str, scenario: str, rows: Callable[[pd.DataFrame], pd.Series]) -> int:
        """Remove the rows of ``(profile, scenario)`` for which ``rows(table)`` is True, under the table's lock,
        atomically; the number removed (0 leaves the file untouched)."""
        path = self.path(profile, scenario)
        with locked(path):
            existing = self._read_path(path, keep_extra_columns=True)
            mask = rows(existing)
            if mask.any():
                kept = existing.loc[~mask].reset_index(drop=True)
                extra = [name for name in existing.columns if name not in COLUMNS]
                atomic_write(path, lambda handle: write_frame_csv(kept, handle, extra_columns=extra))
        return int(mask.sum())

    def read(self, profile: str, scenario: str) -> pd.DataFrame:
        """The table of ``(profile, scenario)`` (schema columns); an empty table if there is none.

        A damaged file raises ``ValueError`` naming it and the problem.
        """
        return self._read_path(self.path(profile, scenario))

    def tables(self) -> list[tuple[str, str]]:
        """Every ``(profile, scenario)`` with a result CSV under ``root`` (other CSVs, e.g. summaries, skipped)."""
        return sorted((p.parent.name, p.stem) for p in self.root.glob("*/*.csv")
                      if _NAME.match(p.parent.name) and _NAME.match(p.stem) and is_result_csv(p))

    @staticmethod
    def _read_path(path: Path, *, keep_extra_columns: bool = False) -> pd.DataFrame:
        if not path.is_file():
            return coerce_frame(pd.DataFrame(columns=list(COLUMNS)))
        return read_frame_csv(path, keep_extra_columns=keep_extra_columns)
