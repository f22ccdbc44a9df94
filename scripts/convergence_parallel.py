"""``robustbench-norm check-convergence`` for every (scenario, norm) pair at once, one process per pair.

Usage: ``python scripts/convergence_parallel.py OUT.md JOBS [check-convergence options, e.g. --device cuda
--csv leaderboards]``. Each pair runs as its own process (one torch thread each); their table rows are merged,
in scenario then norm order, into OUT.md (with ``--csv``, each process also merges its rows into the results
folder's ``convergence.csv``, under a lock). A pair that fails or has not finished is listed as such, never
dropped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

# Override with the environment variables SCENARIOS and NORMS (space-separated names).
SCENARIOS = tuple(os.environ.get("SCENARIOS", "noise batch_size domain_shift blend day_night").split())
NORMS = tuple(os.environ.get("NORMS", "batchnorm groupnorm instancenorm layernorm lcn localnorm contextnorm "
                                      "ilm_gn switchnorm").split())
HEADER = "| scenario | setting | norm | 1x steps | 2x steps | change | converged |\n|---|---|---|---|---|---|---|\n"


def run_pair(scenario: str, norm: str, options: list[str]) -> tuple[str, str, str]:
    command = [sys.executable, "-m", "robustbench_norm.cli", "check-convergence", "--scenario", scenario,
               "--norm", norm, *options]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return scenario, norm, f"| {scenario} | | {norm} | failed: {done.stderr.strip().splitlines()[-1:]} | | | |\n"
    rows = [line for line in done.stdout.splitlines() if line.startswith(f"| {scenario} ")]
    return scenario, norm, "\n".join(rows) + "\n"


def write(out: str, command: str, rows: dict[tuple[str, str], str]) -> None:
    """The merged table; pairs still running are listed as not finished (the file is rewritten as they end)."""
    body = "".join(rows.get((s, n), f"| {s} | | {n} | not finished | | | |\n") for s in SCENARIOS for n in NORMS)
    Path(out).write_text(
        "# Convergence of the quick profile\n\n"
        f"Produced by `{command}`: `robustbench-norm check-convergence` for each (scenario, norm), one process each; "
        "validation split = 20 % of each training set (never the test set); mean over 3 seeds; "
        "converged = the mean moves by at most 1 point when the schedule is twice as long.\n\n" + HEADER + body)


def main(out: str, jobs: str, *options: str) -> None:
    command = " ".join(["python scripts/convergence_parallel.py", out, jobs, *options])
    rows: dict[tuple[str, str], str] = {}
    write(out, command, rows)
    with ThreadPoolExecutor(int(jobs)) as pool:
        futures = [pool.submit(run_pair, s, n, list(options)) for s in SCENARIOS for n in NORMS]
        for future in as_completed(futures):
            scenario, norm, row = future.result()
            rows[scenario, norm] = row
            write(out, command, rows)


if __name__ == "__main__":
    main(*sys.argv[1:])
