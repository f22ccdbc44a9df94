"""The convergence table beside the results: which norms' numbers measure the layer, not the schedule.

``robustbench-norm check-convergence --csv RESULTS_DIR`` merges its rows into
``RESULTS_DIR/<profile>/convergence.csv`` (one row per scenario, setting and norm: the mean validation accuracy
over seeds at the profile's schedule and at ``factor`` times its steps, the change, whether it is within one
point, and the command and commit that measured it). ``robustbench-norm publish`` reads it and puts on each
scenario page the norms whose in-distribution model is converged, those that are not, and those never checked:
a number that moves when the model trains twice as long is not a finding about the layer.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from robustbench_norm.atomic import atomic_write
from robustbench_norm.results.document import Block, Paragraph, Table, text_cell
from robustbench_norm.results.store import locked, merge_by_key

CSV_NAME = "convergence.csv"
CSV_COLUMNS = ("scenario", "setting", "norm", "short", "long", "factor", "seeds", "change", "converged", "command",
               "commit")
_KEY = ["scenario", "setting", "norm"]
_NUMBERS = ("short", "long", "change")


def read_checks(path: Path) -> pd.DataFrame:
    """``convergence.csv`` (text columns; accuracies and change as floats); an empty table if there is none.

    A file without the table's columns raises ``ValueError`` naming the missing ones.
    """
    if not path.is_file():
        return pd.DataFrame(columns=list(CSV_COLUMNS))
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [name for name in CSV_COLUMNS if name not in frame.columns]
    if missing:
        raise ValueError(f"{path} is not a convergence table: columns {missing} are missing")
    for name in _NUMBERS:
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    return frame[list(CSV_COLUMNS)]


def merge_checks(path: Path, frame: pd.DataFrame) -> None:
    """Merge ``frame`` into ``path`` by (scenario, setting, norm), under the file's lock, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        merged = merge_by_key(read_checks(path), frame.astype({"setting": str}), _KEY)
        atomic_write(path, lambda handle: merged.to_csv(handle, index=False))


def convergence_blocks(checks: pd.DataFrame, scenario: str, norms: list[str]) -> list[Block]:
    """What a scenario page says about convergence: a summary paragraph and the scenario's rows.

    ``checks`` is :func:`read_checks`' table, ``norms`` the norms the page shows.
    """
    rows = checks.loc[checks["scenario"] == scenario].sort_values(["norm", "setting"], kind="mergesort")
    unchecked = sorted(set(norms) - set(rows["norm"]))
    moving = rows.loc[rows["converged"] == "no"]
    parts = []
    if len(moving):
        listed = ", ".join(f"{row.norm}{f' (setting {row.setting})' if row.setting else ''} {row.change:+.2f}"
                           for row in moving.itertuples())
        parts.append(f"Not converged: {listed} points of validation accuracy at twice the steps; these rows "
                     "measure the training schedule, not the layer.")
    converged = sorted(set(rows.loc[rows["converged"] == "yes", "norm"]) - set(moving["norm"]))
    if converged:
        parts.append(f"Converged (within 1 point at twice the steps): {', '.join(converged)}.")
    if unchecked:
        parts.append(f"Not checked for convergence: {', '.join(unchecked)}.")
    summary = Paragraph("Convergence of the trained models (robustbench-norm check-convergence): "
                        + " ".join(parts))
    if not len(rows):
        return [summary]
    header = ("norm", "setting", "1x steps", "2x steps", "change", "converged", "seeds", "command", "commit")
    cells = tuple(tuple(text_cell(str(value)) for value in (
        row.norm, row.setting, f"{row.short:.2f}", f"{row.long:.2f}", f"{row.change:+.2f}", row.converged,
        row.seeds, row.command, row.commit)) for row in rows.itertuples())
    return [summary, Table(f"{scenario}: convergence of the schedule", header, cells,
                           ("Mean validation accuracy (%) over seeds on 20 % of the training set, never the test "
                            "set, at the profile's schedule and at twice its steps.",))]
