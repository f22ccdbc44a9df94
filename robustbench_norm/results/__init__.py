"""Results: long-format rows, the merged leaderboard store, summaries, confusion matrices, baselines, publishing.

Flow: a scenario builds :class:`ResultRow` objects (provenance from :func:`collect_provenance`), writes
them with :meth:`ResultStore.write` (merged by key, atomic, process-safe), saves confusion matrices with
:func:`save_confusion`, gates them with :func:`check_against_baselines`; :func:`summarize_results_dir`
and :func:`robustbench_norm.results.publish.publish` turn the CSVs into tables and plots (not
re-exported here, so that ``results.publish`` stays the module).
"""

from robustbench_norm.results.baselines import (
    TOL_FLOOR,
    TOL_K,
    NoBaselineWarning,
    Regression,
    baseline_path,
    check_against_baselines,
    is_gated,
    missing_baselines,
    read_baselines,
    update_baselines,
)
from robustbench_norm.results.confusion import (
    confusion_matrix,
    confusion_path,
    prediction_entropy,
    save_confusion,
)
from robustbench_norm.results.provenance import Provenance, collect_provenance
from robustbench_norm.results.rows import (
    COLUMNS,
    KEY_FIELDS,
    KEY_WITHOUT_SEED,
    ResultRow,
    canonical_kwargs,
    frame_to_rows,
    read_frame_csv,
    rows_to_frame,
)
from robustbench_norm.results.store import ResultStore, default_results_dir
from robustbench_norm.results.summary import (
    robustness_table,
    summarize,
    summarize_results_dir,
    write_summary,
)

__all__ = [
    "COLUMNS",
    "KEY_FIELDS",
    "KEY_WITHOUT_SEED",
    "NoBaselineWarning",
    "Provenance",
    "Regression",
    "ResultRow",
    "ResultStore",
    "TOL_FLOOR",
    "TOL_K",
    "baseline_path",
    "canonical_kwargs",
    "check_against_baselines",
    "collect_provenance",
    "confusion_matrix",
    "confusion_path",
    "default_results_dir",
    "frame_to_rows",
    "is_gated",
    "missing_baselines",
    "prediction_entropy",
    "read_baselines",
    "read_frame_csv",
    "robustness_table",
    "rows_to_frame",
    "save_confusion",
    "summarize",
    "summarize_results_dir",
    "update_baselines",
    "write_summary",
]
