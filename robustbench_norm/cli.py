"""Command line: ``robustbench-norm list | run | publish | compare``.

* ``list``: registered norms with their spec flags, corruptions with severity grids, data sets, models;
* ``run [pytest args...]``: runs ``python -m pytest <checkout>/suites ...`` with the arguments passed
  through (``--norm=lcn -k noise``), printing the command first; exit code = pytest's;
* ``publish [--results-dir DIR ...] [--out-dir DIR]``: an offline site (index, ranked tables with significance
  vs BatchNorm, plots, confusion matrices; HTML, markdown, LaTeX) of one or several results folders side by side;
* ``compare A.csv B.csv [--metric accuracy] [--tolerance 0.02]``: the seed means of two result CSVs
  joined on the key without seed; exit code 1 if any B < A - tolerance (higher is better), else 0.

* ``sweep [--profile P] [--norm ...] [--scenario ...] --executor {local,slurm} [--dry-run | --evaluate]``: train
  the models a profile needs as submitit jobs into the checkpoint cache (:mod:`robustbench_norm.sweep`); exit
  code 1 when a job failed or diverged;
* ``merge DIR... --into DIR``: merge result folders by row key (other devices and recipes kept side by side).

Exit codes of ``list``, ``publish`` and ``compare``: 0 success, 1 only for "regression found" (``compare``),
2 for every error (bad arguments, a missing file, a damaged CSV: the message names the file and the problem).

Heavy modules (torch, the norm registry) are imported inside the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import math
import shlex
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Sequence

SUITES_DIRNAME = "suites"
REGRESSION_EXIT = 1
ERROR_EXIT = 2


def _cmd_list(args: argparse.Namespace) -> int:
    import corruptions
    from robustbench_norm.data import list_datasets
    from robustbench_norm.models import list_models
    from robustbench_norm.norms import get_norm, list_norms

    print("norms:")
    for name in list_norms():
        spec = get_norm(name)
        flags = [flag for flag in ("batch_stats_at_test", "batch_independent", "needs_context")
                 if getattr(spec, flag)]
        print(f"  {name:<22} placement={spec.placement:<6} eval_modes={','.join(spec.eval_modes):<36} "
              f"{' '.join(flags) or '-'}  [{spec.source}]")
    print("corruptions:")
    for name in corruptions.list_corruptions():
        corruption = corruptions.get_corruption(name)
        grid = ", ".join(f"{s:g}" for s in corruption.severities)
        print(f"  {corruption.name:<32} ({corruption.short_name})  severities: {grid}")
    print("datasets:")
    print("  " + ", ".join(list_datasets()))
    print("models:")
    print("  " + ", ".join(list_models()))
    return 0


def suites_dir() -> Path:
    """The ``suites/`` folder of the checkout this package runs from (else ``./suites``)."""
    import robustbench_norm

    beside_package = Path(robustbench_norm.__file__).resolve().parents[1] / SUITES_DIRNAME
    return beside_package if beside_package.is_dir() else Path(SUITES_DIRNAME)


def _cmd_run(pytest_args: list[str]) -> int:
    command = [sys.executable, "-m", "pytest", str(suites_dir()), *pytest_args]
    print(shlex.join(command), flush=True)
    return subprocess.call(command)


def _cmd_publish(args: argparse.Namespace) -> int:
    from robustbench_norm.results import default_results_dir
    from robustbench_norm.results.publish import publish

    results_dirs = [Path(d) for d in args.results_dir] if args.results_dir else [default_results_dir()]
    for results_dir in results_dirs:
        if not results_dir.is_dir():
            print(f"error: results directory {results_dir} does not exist", file=sys.stderr)
            return ERROR_EXIT
    written = publish(results_dirs, args.out_dir)
    for path in written:
        print(path)
    print(f"{len(written)} file(s) written", file=sys.stderr)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from robustbench_norm.results import KEY_WITHOUT_SEED, read_frame_csv, summarize

    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        print(f"error: --tolerance must be a finite number >= 0, got {args.tolerance}", file=sys.stderr)
        return ERROR_EXIT
    frames = []
    for path in (args.a, args.b):
        if not Path(path).is_file():
            print(f"error: {path} does not exist", file=sys.stderr)
            return ERROR_EXIT
        frame = read_frame_csv(path)
        frames.append(summarize(frame.loc[frame["metric"] == args.metric]))
    key = list(KEY_WITHOUT_SEED)
    joined = frames[0].merge(frames[1], on=key, how="outer", suffixes=("_a", "_b"), indicator=True)
    both = joined.loc[joined["_merge"] == "both"].copy()
    both["diff"] = both["value_mean_b"] - both["value_mean_a"]
    both["verdict"] = [_verdict(a, b, args.tolerance) for a, b in zip(both["value_mean_a"], both["value_mean_b"])]
    shown = [name for name in key if both[name].nunique() > 1] or ["norm"]
    table = both[shown + ["value_mean_a", "value_mean_b", "diff", "n_seeds_a", "n_seeds_b", "verdict"]]
    print(f"metric {args.metric}: A = {args.a}, B = {args.b}; regression if B < A - {args.tolerance:g}")
    print(table.rename(columns={"value_mean_a": "A", "value_mean_b": "B"}).to_string(
        index=False, float_format=lambda v: f"{v:.4f}") if len(table) else "no common measurements")
    only = joined["_merge"].value_counts()
    print(f"only in A: {only.get('left_only', 0)}, only in B: {only.get('right_only', 0)}")
    regressions = int((both["verdict"] == "REGRESSION").sum())
    print(f"{regressions} regression(s) of {len(both)} common measurement(s)")
    return REGRESSION_EXIT if regressions else 0


def _verdict(a: float, b: float, tolerance: float) -> str:
    """"REGRESSION" when B < A - tolerance or B has no value where A has one; "ok" otherwise."""
    if math.isnan(b):
        return "ok" if math.isnan(a) else "REGRESSION"
    return "REGRESSION" if not math.isnan(a) and b < a - tolerance else "ok"


def _cmd_check_convergence(args: argparse.Namespace) -> int:
    import torch

    from robustbench_norm.convergence import check_convergence, checkable_settings, checks_frame, markdown_table
    from robustbench_norm.results.convergence import CSV_NAME, merge_checks
    from robustbench_norm.results.provenance import git_commit
    from robustbench_norm.norms import get_norm
    from robustbench_norm.scenarios import Session, get_scenario

    scenarios = [get_scenario(name).name for name in args.scenario]
    norms = [get_norm(name).name for name in args.norm]
    torch.set_num_threads(1)  # as the suite trains: the weights depend on the thread count
    session = Session.create(args.profile, device=args.device, seeds=args.seeds, cache_dir=args.cache_dir)
    if args.setting is not None:
        valid = {str(value) for name in scenarios for value in checkable_settings(session, name)}
        unknown = sorted(set(args.setting) - valid)
        if unknown:
            raise SystemExit(f"check-convergence: unknown --setting {unknown} for {scenarios}; valid: {sorted(valid)}")
    checks = check_convergence(session, scenarios, norms, factor=args.factor, settings=args.setting)
    command = "robustbench-norm check-convergence " + shlex.join(args.argv)
    table = markdown_table(checks, args.factor, args.seeds, command)
    print(table)
    if args.out:
        Path(args.out).write_text(f"# Convergence of the {args.profile} profile\n\n{table}")
    if args.csv:
        commit = git_commit(Path(__file__).resolve())
        merge_checks(Path(args.csv) / args.profile / CSV_NAME,
                     checks_frame(checks, args.factor, args.seeds, command, commit))
    return 0


def _cmd_select_recipe(args: argparse.Namespace) -> int:
    import statistics

    import torch

    from robustbench_norm.convergence import select_recipe
    from robustbench_norm.norms import get_norm
    from robustbench_norm.scenarios import Session, get_scenario
    from robustbench_norm.training.recipes import family_candidates

    torch.set_num_threads(1)
    session = Session.create(args.profile, device=args.device, seeds=args.seeds, cache_dir=args.cache_dir)
    lines = [f"Produced by `robustbench-norm select-recipe {shlex.join(args.argv)}` (validation split = 20 % of "
             f"each training set; {args.seeds} seeds).", "",
             "| scenario | norm | candidate | validation accuracy (mean) | per seed |", "|---|---|---|---|---|"]
    scenarios = [get_scenario(name).name for name in args.scenario]  # unknown names fail here, before training
    norms = [get_norm(name).name for name in args.norm]
    shared_only = []
    for scenario in scenarios:
        for norm in norms:
            if len(family_candidates(args.profile, scenario, norm)) == 1:
                shared_only.append(f"{norm} in {scenario}")
                continue
            scores = select_recipe(session, scenario, norm)
            for name, values in scores.items():
                per_seed = ", ".join(f"{v * 100:.1f}" for v in values)
                lines.append(f"| {scenario} | {norm} | {name} | {statistics.fmean(values) * 100:.2f} | {per_seed} |")
    if shared_only:
        lines += ["", f"No family recipe (nothing to compare): {', '.join(shared_only)}."]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        Path(args.out).write_text(f"# Family-specific recipes, chosen on validation data\n\n{table}")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from robustbench_norm.norms import list_norms
    from robustbench_norm.results import ResultStore, summarize_results_dir
    from robustbench_norm.results.baselines import baseline_path, drop_baselines
    from robustbench_norm.results.store import superseded
    from robustbench_norm.scenarios import Session, available, plan_jobs

    results = Path(args.results_dir)
    if not (results / args.profile).is_dir():
        raise ValueError(f"no results of profile {args.profile!r} in {results}")
    store = ResultStore(results)
    session = Session.create(args.profile, device="cpu", seeds=1, data_dir=args.data_dir)
    registered = set(list_norms())
    for profile, scenario in store.tables():
        if profile != args.profile or not available(session, scenario):
            continue
        norms = sorted(set(store.read(profile, scenario)["norm"]) & registered)
        current = {job.recipe_id for norm in norms for job in plan_jobs(session, scenario, norm)}
        rule = partial(superseded, current=current)
        removed = store.drop(profile, scenario, rule)
        gone = drop_baselines(baseline_path(Path(args.baselines_dir or results), profile, scenario), rule)
        print(f"{profile}/{scenario}: removed {removed} superseded rows and {gone} baselines")
    summarize_results_dir(results, args.profile)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from robustbench_norm.sweep import sweep_command

    return sweep_command(args)


def _cmd_merge(args: argparse.Namespace) -> int:
    from robustbench_norm.sweep import merge_command

    return merge_command(args)


def _add_sweep_and_merge_parsers(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser("sweep", help="train a profile's models as submitit jobs (local or SLURM)")
    sweep.add_argument("--profile", default="quick", help="quick or paper (default: quick)")
    sweep.add_argument("--norm", action="append", default=[],
                       help="norm(s), repeatable or comma-separated (default: every registered norm)")
    sweep.add_argument("--scenario", action="append", default=[],
                       help="scenario(s), repeatable or comma-separated (default: every one of the profile)")
    sweep.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 (default: 3)")
    sweep.add_argument("--epochs", type=int, default=None, help="override every schedule's epochs (smoke runs)")
    sweep.add_argument("--norm-kwargs", default="{}", help="JSON object of kwargs for every selected norm")
    sweep.add_argument("--device", default="auto", help="where the jobs train: auto (slurm: cuda unless "
                       "--gpus-per-job 0; local: this machine's), cpu or cuda")
    sweep.add_argument("--data-dir", default=None, help="folder holding the real data sets (paper profile)")
    sweep.add_argument("--cache-dir", default=None, help="checkpoint cache every job shares (default: "
                       "$ROBUSTBENCH_NORM_CACHE or the user cache)")
    sweep.add_argument("--executor", default="local", help="local (subprocesses here) or slurm (default: local)")
    sweep.add_argument("--config", default=None, help="JSON or TOML file of the cluster options below "
                       "(keys: partition, account, qos, gpus_per_job, cpus_per_job, mem_gb, time_min, "
                       "array_parallelism); the command line wins")
    sweep.add_argument("--partition", default=None, help="SLURM partition")
    sweep.add_argument("--account", default=None, help="SLURM account")
    sweep.add_argument("--qos", default=None, help="SLURM quality of service")
    sweep.add_argument("--gpus-per-job", type=int, default=None, help="GPUs per job (default: 1 on cuda, else 0)")
    sweep.add_argument("--cpus-per-job", type=int, default=None, help="CPU cores per job = torch threads (default 1)")
    sweep.add_argument("--mem-gb", type=float, default=None, help="memory per job in GB")
    sweep.add_argument("--time-min", type=int, default=None, help="time limit of each job in minutes (default 240)")
    sweep.add_argument("--array-parallelism", type=int, default=None,
                       help="jobs running at once (default: slurm 256; local: CPU cores / --cpus-per-job)")
    sweep.add_argument("--log-dir", default=None, help="where job files, logs and report.json go (default: "
                       "<cache-dir>/sweeps/<date>-<pid>)")
    sweep.add_argument("--dry-run", action="store_true",
                       help="list the jobs (cache key, cached or not) and the estimated training hours; submit nothing")
    sweep.add_argument("--no-wait", action="store_true", help="submit and return without waiting for the jobs")
    sweep.add_argument("--evaluate", action="store_true",
                       help="evaluate the cached models into --results-dir (trains nothing)")
    sweep.add_argument("--results-dir", default="results", help="where --evaluate writes rows (default: results)")
    merge = commands.add_parser("merge", help="merge result folders by row key (devices and recipes kept apart)")
    merge.add_argument("sources", nargs="+", help="result folders, in order (a later one wins an identical key)")
    merge.add_argument("--into", required=True, help="result folder to merge into (created if missing)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``robustbench-norm``."""
    parser = argparse.ArgumentParser(prog="robustbench-norm",
                                     description="Robustness benchmark for normalization layers.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="registered norms, corruptions, data sets and models")
    commands.add_parser("run", help="run the benchmark suites with pytest (arguments pass through)",
                        add_help=False)
    publish = commands.add_parser("publish", help="render result CSVs as markdown, HTML and plots")
    publish.add_argument("--results-dir", action="append", default=None,
                         help="results folder (default: <checkout>/leaderboards); repeat it to show several runs "
                              "side by side, never averaged (needs --out-dir)")
    publish.add_argument("--out-dir", default=None,
                         help="site root (default: the results folder: index.html there, pages in <profile>/tables)")
    convergence = commands.add_parser(
        "check-convergence", help="train each scenario's in-distribution model 1x and 2x as long; table of changes")
    convergence.add_argument("--profile", default="quick", choices=("quick", "paper"))
    convergence.add_argument("--scenario", nargs="+", default=["noise", "batch_size", "domain_shift", "blend",
                                                                "day_night"])
    convergence.add_argument("--norm", nargs="+", default=["batchnorm", "groupnorm", "instancenorm", "layernorm",
                                                            "lcn", "localnorm", "contextnorm", "ilm_gn",
                                                            "switchnorm"])
    convergence.add_argument("--seeds", type=int, default=3)
    convergence.add_argument("--factor", type=int, default=2, help="the longer run's step multiple (default 2)")
    convergence.add_argument("--setting", nargs="+", default=None,
                             help="only these settings (e.g. 64: the batch sweep's reference batch; adamatch: the domain "
                                  "shift's adapted model on the target)")
    convergence.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    convergence.add_argument("--cache-dir", default=None, help="checkpoint cache (default: the user cache)")
    convergence.add_argument("--out", default=None, help="also write the table to this markdown file")
    convergence.add_argument("--csv", default=None, metavar="RESULTS_DIR",
                             help="also merge the rows into RESULTS_DIR/<profile>/convergence.csv (publish shows them)")
    select = commands.add_parser(
        "select-recipe", help="validation accuracy of a norm family's own recipe against the shared one")
    select.add_argument("--profile", default="quick", choices=("quick", "paper"))
    select.add_argument("--scenario", nargs="+", default=["noise"])
    select.add_argument("--norm", nargs="+", default=["contextnorm_patches"])
    select.add_argument("--seeds", type=int, default=3)
    select.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    select.add_argument("--cache-dir", default=None, help="checkpoint cache (default: the user cache)")
    select.add_argument("--out", default=None, help="also write the table to this markdown file")
    compare = commands.add_parser("compare", help="compare two result CSVs; exit 1 on a regression of B vs A")
    compare.add_argument("a", help="reference result CSV")
    compare.add_argument("b", help="result CSV to check")
    compare.add_argument("--metric", default="accuracy", help="metric to compare (default: accuracy)")
    compare.add_argument("--tolerance", type=float, default=0.02,
                         help="allowed drop of B below A (default: 0.02)")
    prune = commands.add_parser("prune", help="remove result rows and baselines that a row under the current "
                                "recipe has superseded (after a schedule change); rewrites the summaries")
    prune.add_argument("--results-dir", required=True, help="results folder, e.g. leaderboards")
    prune.add_argument("--baselines-dir", default=None, help="baselines folder (default: the results folder)")
    prune.add_argument("--profile", default="quick", choices=("quick", "paper"))
    prune.add_argument("--data-dir", default=None, help="folder of the real data sets (paper profile)")
    _add_sweep_and_merge_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":  # everything after "run" belongs to pytest, even --help
        return _cmd_run(argv[1:])
    args = build_parser().parse_args(argv)
    args.argv = argv[1:]
    handlers = {"list": _cmd_list, "publish": _cmd_publish, "compare": _cmd_compare,
                "check-convergence": _cmd_check_convergence, "select-recipe": _cmd_select_recipe,
                "sweep": _cmd_sweep, "merge": _cmd_merge, "prune": _cmd_prune}
    try:
        return handlers[args.command](args)
    except (ValueError, OSError) as error:  # damaged or unreadable inputs: an error, never "regression found"
        print(f"error: {error}", file=sys.stderr)
        return ERROR_EXIT


if __name__ == "__main__":
    raise SystemExit(main())
