"""The ``robustbench-norm`` command line: list, run (pass-through), publish, compare (exit codes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from robustbench_norm import cli
from robustbench_norm.results.rows import ResultRow, rows_to_frame, write_frame_csv
from robustbench_norm.results.store import ResultStore


def make_row(**overrides) -> ResultRow:
    fields = dict(scenario="noise", profile="quick", dataset="digits", model="quick_cnn", norm="batchnorm",
                  norm_kwargs={}, variant="standard", eval_mode="running_stats", corruption="agn",
                  severity=1.0, train_batch_size=64, seed=0, metric="accuracy", value=0.8, n_examples=100,
                  device="cpu", versions="v", git_commit="c", checkpoint_hash="h", wall_seconds=0.0)
    fields.update(overrides)
    return ResultRow(**fields)


def write_csv(path, rows) -> str:
    with open(path, "w", newline="") as handle:
        write_frame_csv(rows_to_frame(rows), handle)
    return str(path)


def test_list_shows_norms_corruptions_datasets_models(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for section in ("norms:", "corruptions:", "datasets:", "models:"):
        assert section in out
    assert "batchnorm" in out and "eval_modes=running_stats,test_batch_stats" in out
    assert "localnorm" in out and "(agn)" in out and "digits" in out and "quick_cnn" in out


def test_run_passes_arguments_through_to_pytest(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda command: calls.append(command) or 5)
    assert cli.main(["run", "--norm=lcn", "-k", "noise", "--help"]) == 5
    (command,) = calls
    assert command[:3] == [sys.executable, "-m", "pytest"]
    assert command[3].endswith("suites") and command[4:] == ["--norm=lcn", "-k", "noise", "--help"]
    assert "pytest" in capsys.readouterr().out


@pytest.mark.parametrize("b_values, extra, code", [
    ((0.80, 0.80), [], 0),                      # equal
    ((0.79, 0.79), [], 0),                      # within the default tolerance 0.02
    ((0.70, 0.72), [], 1),                      # 0.71 < 0.80 - 0.02
    ((0.70, 0.72), ["--tolerance", "0.2"], 0),  # within a wider tolerance
])
def test_compare_exit_codes(tmp_path, capsys, b_values, extra, code):
    a = write_csv(tmp_path / "a.csv", [make_row(seed=s, value=0.8) for s in (0, 1)]
                  + [make_row(norm="lcn", eval_mode="standard", value=0.5)])
    b = write_csv(tmp_path / "b.csv", [make_row(seed=s, value=v) for s, v in enumerate(b_values)]
                  + [make_row(norm="lcn", eval_mode="standard", value=0.5),
                     make_row(metric="prediction_entropy", value=0.0)])
    assert cli.main(["compare", a, b, *extra]) == code
    out = capsys.readouterr().out
    assert ("REGRESSION" in out) == (code == 1)
    assert "2 common measurement(s)" in out


def test_compare_other_metric_and_missing_value(tmp_path, capsys):
    a = write_csv(tmp_path / "a.csv", [make_row(metric="prediction_entropy", value=0.9)])
    b = write_csv(tmp_path / "b.csv", [make_row(metric="prediction_entropy", value=0.1)])
    assert cli.main(["compare", a, b, "--metric", "prediction_entropy"]) == 1
    c = write_csv(tmp_path / "c.csv", [make_row(value=float("nan"), status="diverged")])
    assert cli.main(["compare", write_csv(tmp_path / "d.csv", [make_row()]), c]) == 1  # B lost its value
    assert cli.main(["compare", a, str(tmp_path / "absent.csv")]) == 2
    capsys.readouterr()


def test_publish_command_writes_markdown_and_html(tmp_path, capsys):
    ResultStore(tmp_path).write([make_row(seed=s, severity=sev, value=0.9 - 0.1 * sev)
                                 for s in (0, 1) for sev in (0.0, 1.0)])
    assert cli.main(["publish", "--results-dir", str(tmp_path)]) == 0
    tables = tmp_path / "quick" / "tables"
    assert (tables / "noise.md").read_text().startswith("# noise (profile quick)")
    assert "<table" in (tables / "noise.html").read_text()
    assert str(tables / "noise.md") in capsys.readouterr().out
    assert cli.main(["publish", "--results-dir", str(tmp_path / "absent")]) == 2


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as error:
        cli.main(["frobnicate"])
    assert error.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_check_convergence_rejects_an_unknown_setting_before_training(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown --setting \['8'\].*valid: \['2', '64'\]"):
        cli.main(["check-convergence", "--scenario", "batch_size", "--norm", "batchnorm", "--setting", "8",
                  "--cache-dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_select_recipe_names_pairs_without_a_family_recipe_and_checks_names_before_training(tmp_path, capsys):
    assert cli.main(["select-recipe", "--scenario", "blend", "--norm", "groupnorm", "--cache-dir", str(tmp_path)]) == 0
    assert "No family recipe (nothing to compare): groupnorm in blend." in capsys.readouterr().out
    assert cli.main(["select-recipe", "--scenario", "blend", "--norm", "localnorm", "nosuch",
                     "--cache-dir", str(tmp_path)]) == cli.ERROR_EXIT
    assert "nosuch" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("tolerance", ["-0.1", "nan", "inf"])
def test_compare_rejects_bad_tolerance_with_exit_2(tmp_path, capsys, tolerance):
    a = write_csv(tmp_path / "a.csv", [make_row()])
    assert cli.main(["compare", a, a, "--tolerance", tolerance]) == 2
    assert "--tolerance must be a finite number >= 0" in capsys.readouterr().err


def test_compare_damaged_csv_is_an_error_not_a_regression(tmp_path, capsys):
    a = write_csv(tmp_path / "a.csv", [make_row()])
    b = tmp_path / "b.csv"
    b.write_text((tmp_path / "a.csv").read_text().splitlines()[0] + "\nnot,a,row\n")
    assert cli.main(["compare", a, str(b)]) == 2
    assert f"error: result table {b}: line 2 has 3 fields" in capsys.readouterr().err
