"""Result rows, provenance and the leaderboard store (merge by key, atomic writes, two writing processes)."""

from __future__ import annotations

import math
import multiprocessing
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from robustbench_norm.atomic import atomic_write
from robustbench_norm.results import store as store_module
from robustbench_norm.results.provenance import collect_provenance, git_commit
from robustbench_norm.results.rows import (
    COLUMNS,
    KEY_FIELDS,
    ResultRow,
    frame_to_rows,
    read_frame_csv,
    rows_to_frame,
)
from robustbench_norm.results.store import ResultStore, superseded


def make_row(**overrides) -> ResultRow:
    fields = dict(scenario="noise", profile="quick", dataset="digits", model="quick_cnn", norm="batchnorm",
                  norm_kwargs={}, variant="standard", eval_mode="running_stats", corruption="agn",
                  severity=0.5, train_batch_size=64, seed=0, recipe="r1", metric="accuracy", value=0.75,
                  chance=0.1, n_examples=100, device="cpu", versions="python=3.11", git_commit="abc1234", checkpoint_hash="deadbeef",
                  wall_seconds=0.25)
    fields.update(overrides)
    return ResultRow(**fields)


# -- rows -----------------------------------------------------------------------------------------------


def test_row_field_order_and_key():
    assert COLUMNS[:15] == ("scenario", "profile", "dataset", "model", "norm", "norm_kwargs", "variant",
                            "eval_mode", "eval_kwargs", "corruption", "severity", "train_batch_size", "seed",
                            "recipe", "metric")
    assert COLUMNS[15:] == ("value", "chance", "n_examples", "status", "device", "hardware", "versions",
                            "git_commit", "checkpoint_hash", "wall_seconds")
    assert KEY_FIELDS == (*COLUMNS[:15], "device")


def test_row_canonicalises_kwargs_and_numbers():
    row = make_row(norm_kwargs={"window_size": [31, 31], "eps": 1e-5}, severity=1, seed=2.0)
    assert row.norm_kwargs == '{"eps": 1e-05, "window_size": [31, 31]}'
    assert row == make_row(norm_kwargs='{"window_size":[31,31],"eps":1e-05}', severity=1.0, seed=2)
    assert isinstance(row.severity, float) and isinstance(row.seed, int)
    assert row.status == "ok"


@pytest.mark.parametrize("overrides, message", [
    (dict(value=math.nan), "finite value"),
    (dict(corruption="none", severity=1.0), "severity 0"),
    (dict(seed=1.5), "integer"),
    (dict(severity=-1.0), "severity"),
    (dict(norm_kwargs="[1, 2]"), "JSON object"),
    (dict(norm=""), "non-empty"),
    (dict(status="bad\nline"), "one-line"),
])
def test_row_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_row(**overrides)


def test_row_could_not_run_keeps_nan_and_reason():
    row = make_row(value=math.nan, status="not trainable: batch 2 < num_groups 4")
    assert math.isnan(row.value)


def test_csv_round_trip_keeps_types_and_tricky_strings(tmp_path):
    rows = [
        make_row(norm_kwargs={"window_size": [3, 5], "name": "a,b"}, dataset="NA", corruption="none",
                 severity=0.0, status="ok"),
        make_row(value=math.nan, status="not trainable: batch 2 < num_groups 4, \"quoted\"", seed=1,
                 severity=0.1 + 0.2, checkpoint_hash=""),
    ]
    store = ResultStore(tmp_path)
    store.write(rows)
    back = store.read("quick", "noise")
    pd.testing.assert_frame_equal(back, rows_to_frame(rows).sort_values(list(KEY_FIELDS)).reset_index(drop=True))
    assert back["severity"].dtype == "float64" and back["seed"].dtype == "int64"
    assert back["value"].dtype == "float64" and back["n_examples"].dtype == "int64"
    by_seed = {row.seed: row for row in frame_to_rows(back)}
    assert by_seed[0] == rows[0]  # "NA" and "none" stay strings, kwargs JSON survives quoting
    assert by_seed[1].severity == 0.1 + 0.2  # float keys survive exactly
    assert math.isnan(by_seed[1].value) and by_seed[1].status == rows[1].status
    assert list(pd.read_csv(store.path("quick", "noise"), nrows=0).columns) == list(COLUMNS)


# -- provenance -----------------------------------------------------------------------------------------


def test_provenance_formats_and_cache(monkeypatch):
    first = collect_provenance(torch.device("cpu"))
    assert first.device == "cpu" and first.hardware.startswith("cpu (")
    assert re.fullmatch(r"python=3\.\d+\.\d+ torch=\S+ numpy=\S+ robustbench_norm=\S+", first.versions)
    assert re.fullmatch(r"[0-9a-f]{4,40}(-dirty)?|unknown", first.git_commit)
    assert first.as_fields() == {"device": first.device, "hardware": first.hardware,
                                 "versions": first.versions, "git_commit": first.git_commit}

    def no_subprocess(*args, **kwargs):
        raise AssertionError("provenance must be computed once per process")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert collect_provenance(torch.device("cpu")) == first


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_git_commit_clean_dirty_and_unknown(tmp_path):
    describe = git_commit.__wrapped__  # bypass the per-process cache
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    tracked = repo / "pkg" / "mod.py"
    tracked.write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "init")
    head = _git(repo, "rev-parse", "--short", "HEAD")
    assert describe(tracked) == head
    (repo / "leaderboards").mkdir()
    (repo / "leaderboards" / "noise.csv").write_text("results are not code\n")
    assert describe(tracked) == head
    tracked.write_text("x = 2\n")
    assert describe(tracked) == f"{head}-dirty"
    untracked = repo / "pkg" / "new.py"
    untracked.write_text("")
    assert describe(untracked) == "unknown"  # not a tracked file of the checkout
    outside = tmp_path / "plain" / "mod.py"
    outside.parent.mkdir()
    outside.write_text("")
    assert describe(outside) == "unknown"


# -- store ----------------------------------------------------------------------------------------------


def test_write_merges_by_key_and_keeps_other_norms(tmp_path):
    store = ResultStore(tmp_path)
    store.write([make_row(norm="batchnorm", seed=0, value=0.5), make_row(norm="batchnorm", seed=1, value=0.6),
                 make_row(norm="groupnorm", eval_mode="standard", seed=0, value=0.7)])
    store.write([make_row(norm="batchnorm", seed=0, value=0.9),
                 make_row(norm="batchnorm", seed=0, value=0.2, metric="prediction_entropy")])
    table = store.read("quick", "noise")
    assert len(table) == 4
    values = {(r.norm, r.seed, r.metric): r.value for r in table.itertuples()}
    assert values == {("batchnorm", 0, "accuracy"): 0.9, ("batchnorm", 1, "accuracy"): 0.6,
                      ("groupnorm", 0, "accuracy"): 0.7, ("batchnorm", 0, "prediction_entropy"): 0.2}
    assert table.equals(table.sort_values(list(KEY_FIELDS), kind="mergesort").reset_index(drop=True))
    assert store.tables() == [("quick", "noise")]


def test_drop_removes_only_rows_a_current_recipe_superseded(tmp_path):
    store = ResultStore(tmp_path)
    store.write([make_row(recipe="v3-old", seed=0, value=0.5), make_row(recipe="v3-new", seed=0, value=0.9),
                 make_row(recipe="v3-old", seed=1, value=0.6),  # no current row for seed 1: kept
                 make_row(recipe="v3-kwargs", norm_kwargs={"eps": 0.1}, seed=0, value=0.4)])
    path = store.path("quick", "noise")
    before = path.stat().st_mtime_ns
    assert store.drop("quick", "noise", lambda table: superseded(table, {"v3-other"})) == 0
    assert path.stat().st_mtime_ns == before  # nothing to drop: file untouched
    assert store.drop("quick", "noise", lambda table: superseded(table, {"v3-new"})) == 1
    table = store.read("quick", "noise")
    assert sorted(zip(table["recipe"], table["seed"])) == [("v3-kwargs", 0), ("v3-new", 0), ("v3-old", 1)]


def test_write_routes_rows_by_profile_and_scenario(tmp_path):
    store = ResultStore(tmp_path)
    written = store.write([make_row(), make_row(scenario="batch_size"), make_row(profile="paper")])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "paper/noise.csv", "quick/batch_size.csv", "quick/noise.csv"]
    (tmp_path / "quick" / "noise_summary.csv").write_text("scenario,value_mean\n")
    assert store.tables() == [("paper", "noise"), ("quick", "batch_size"), ("quick", "noise")]


def test_duplicate_keys_in_one_write_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="share a key"):
        ResultStore(tmp_path).write([make_row(value=0.1), make_row(value=0.2)])


def test_read_missing_table_is_empty_with_columns(tmp_path):
    table = ResultStore(tmp_path).read("quick", "noise")
    assert table.empty and tuple(table.columns) == COLUMNS


@pytest.mark.parametrize("profile, scenario", [("quick", "../escape"), ("", "noise"), ("quick", "a/b")])
def test_path_rejects_unsafe_names(tmp_path, profile, scenario):
    with pytest.raises(ValueError, match="file name"):
        ResultStore(tmp_path).path(profile, scenario)


def test_failed_write_leaves_old_file_and_no_temp_files(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    store.write([make_row(norm="batchnorm")])
    path = store.path("quick", "noise")
    before = path.read_bytes()

    def half_then_fail(frame, handle, **kwargs):
        handle.write("scenario,profile,dat")
        raise RuntimeError("disk full")

    monkeypatch.setattr(store_module, "write_frame_csv", half_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        store.write([make_row(norm="groupnorm", eval_mode="standard")])
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["noise.csv"]  # no temp, no lock file left


def test_atomic_write_keeps_mode_and_writes_binary(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    atomic_write(target, lambda handle: handle.write(b"\x00\x01"), binary=True)
    assert target.read_bytes() == b"\x00\x01"
    assert target.stat().st_mode & 0o777 == 0o644
    target.chmod(0o600)
    atomic_write(target, lambda handle: handle.write(b"\x02"), binary=True)
    assert target.read_bytes() == b"\x02" and target.stat().st_mode & 0o777 == 0o600


WRITES_PER_PROCESS = 20


def _writer(results_dir: str, norm: str) -> None:
    store = ResultStore(results_dir)
    for seed in range(WRITES_PER_PROCESS):
        store.write([make_row(norm=norm, eval_mode="standard", seed=seed, value=seed / 100),
                     make_row(norm=norm, eval_mode="standard", seed=seed, metric="prediction_entropy")])


def test_two_processes_writing_concurrently_lose_no_rows(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_writer, args=(str(tmp_path), norm)) for norm in ("groupnorm", "lcn")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    table = ResultStore(tmp_path).read("quick", "noise")
    assert len(table) == 2 * 2 * WRITES_PER_PROCESS
    for norm in ("groupnorm", "lcn"):
        accuracy = table[(table["norm"] == norm) & (table["metric"] == "accuracy")]
        assert sorted(accuracy["seed"]) == list(range(WRITES_PER_PROCESS))
        assert (accuracy["value"] == accuracy["seed"] / 100).all()
    assert sorted(p.name for p in (tmp_path / "quick").iterdir()) == ["noise.csv"]


def test_reader_skips_blank_lines_and_keeps_extra_columns_on_request(tmp_path):
    store = ResultStore(tmp_path)
    store.write([make_row(seed=0), make_row(seed=1)])
    path = store.path("quick", "noise")
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0] + ",note", lines[1] + ",first", "", lines[2] + ",second"]) + "\n\n")
    assert list(read_frame_csv(path).columns) == list(COLUMNS)
    table = read_frame_csv(path, keep_extra_columns=True)
    assert list(table.columns) == [*COLUMNS, "note"] and list(table["note"]) == ["first", "second"]
    assert table["seed"].dtype == "int64" and table["value"].dtype == "float64"


@pytest.mark.parametrize("edit, problem", [
    (lambda text: text.replace("scenario,", "scenery,", 1), r"lacks column\(s\) \['scenario'\]"),
    (lambda text: text.replace(",seed,", ",seed,seed,", 1), r"repeats column\(s\) \['seed'\]"),
    (lambda text: text.replace(",64,0,", ",64,zero,", 1), r"line 2, column 'seed': 'zero' is not an integer"),
    (lambda text: text.replace(",0.75,", ",nan,", 1), r"line 2: status 'ok' needs a finite value"),
])
def test_reader_names_file_line_and_problem(tmp_path, edit, problem):
    store = ResultStore(tmp_path)
    store.write([make_row()])
    path = store.path("quick", "noise")
    path.write_text(edit(path.read_text()))
    with pytest.raises(ValueError, match=rf"result table {path}: .*{problem}"):
        read_frame_csv(path)
