"""Summaries (mean ± SE, robustness vs BatchNorm, mCE) and regression baselines, against hand computations."""

from __future__ import annotations

import math
import warnings

import pandas as pd
import pytest

from robustbench_norm.results.baselines import (
    TOL_FLOOR,
    TOL_K,
    NoBaselineWarning,
    check_against_baselines,
    derive_baselines,
    drop_baselines,
    missing_baselines,
    read_baselines,
    tolerance_from_spread,
    update_baselines,
)
from robustbench_norm.results.rows import ResultRow, rows_to_frame
from robustbench_norm.results.store import ResultStore, superseded
from robustbench_norm.results.summary import (
    robustness_table,
    summarize,
    summary_markdown,
    write_summary,
)


def make_row(**overrides) -> ResultRow:
    fields = dict(scenario="noise", profile="quick", dataset="digits", model="quick_cnn", norm="batchnorm",
                  norm_kwargs={}, variant="standard", eval_mode="running_stats", corruption="agn",
                  severity=1.0, train_batch_size=64, seed=0, metric="accuracy", value=0.5, n_examples=100,
                  device="cpu", versions="v", git_commit="c", checkpoint_hash="h", wall_seconds=0.0)
    fields.update(overrides)
    return ResultRow(**fields)


def sample_se(values: list[float]) -> float:
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return math.sqrt(variance) / math.sqrt(len(values))


# -- summarize ------------------------------------------------------------------------------------------


def test_summarize_mean_se_and_failed_seeds():
    values = [0.5, 0.6, 0.8]
    rows = [make_row(seed=s, value=v) for s, v in enumerate(values)]
    rows += [make_row(norm="lcn", eval_mode="standard", seed=0, value=0.4),
             make_row(norm="lcn", eval_mode="standard", seed=1, value=math.nan, status="diverged at epoch 2")]
    summary = summarize(rows_to_frame(rows)).set_index("norm")
    assert summary.loc["batchnorm", "value_mean"] == pytest.approx(sum(values) / 3, abs=1e-12)
    assert summary.loc["batchnorm", "value_se"] == pytest.approx(sample_se(values), abs=1e-12)
    assert summary.loc["batchnorm", "n_seeds"] == 3 and summary.loc["batchnorm", "status"] == "ok"
    assert summary.loc["lcn", "value_mean"] == 0.4 and summary.loc["lcn", "n_seeds"] == 1
    assert math.isnan(summary.loc["lcn", "value_se"])  # one seed: no SE
    assert summary.loc["lcn", "status"] == "diverged at epoch 2 (seeds 1)"
    assert "seed" not in summary.columns
    markdown = summary_markdown(rows_to_frame(rows), "quick", "noise")
    assert "| lcn | standard | 40.0 (1) * |" in markdown and "* some seeds could not be measured" in markdown
    failed = rows_to_frame([make_row(value=math.nan, status="not trainable: batch 2 < num_groups 4")])
    assert "n/a (not trainable: batch 2 < num_groups 4 (seeds 0))" in summary_markdown(failed, "quick", "noise")


# -- robustness table and mCE ---------------------------------------------------------------------------

# accuracy[norm][seed][(corruption, severity)]; BN's clean cells are "none" rows, the others' are severity 0
BN = {0: {("none", 0.0): 0.9, ("agn", 1.0): 0.6, ("agn", 2.0): 0.4, ("mbn", 0.5): 0.7},
      1: {("none", 0.0): 0.8, ("agn", 1.0): 0.5, ("agn", 2.0): 0.3, ("mbn", 0.5): 0.5}}
GN = {0: {("agn", 0.0): 0.9, ("mbn", 0.0): 0.9, ("agn", 1.0): 0.8, ("agn", 2.0): 0.7, ("mbn", 0.5): 0.9},
      1: {("agn", 0.0): 0.86, ("mbn", 0.0): 0.84, ("agn", 1.0): 0.75, ("agn", 2.0): 0.6, ("mbn", 0.5): 0.8}}


def noise_rows(with_bn: bool = True) -> pd.DataFrame:
    rows = []
    tables = ([("batchnorm", "running_stats", BN)] if with_bn else []) + [("groupnorm", "standard", GN)]
    for norm, mode, table in tables:
        for seed, cells in table.items():
            for (corruption, severity), value in cells.items():
                rows.append(make_row(norm=norm, eval_mode=mode, seed=seed, corruption=corruption,
                                     severity=severity, value=value))
                rows.append(make_row(norm=norm, eval_mode=mode, seed=seed, corruption=corruption,
                                     severity=severity, value=0.1, metric="prediction_entropy"))
    return rows_to_frame(rows)


def hand_measures(table: dict, reference: dict) -> dict[str, list[float]]:
    """Per-seed clean/corrupted/relative/mCE by explicit loops (independent of the library)."""
    reference_error = {}
    for cell in reference[0]:
        reference_error[cell] = sum(1 - reference[s][cell] for s in reference) / len(reference)
    out = {"clean": [], "corrupted": [], "relative": [], "mce": []}
    for seed, cells in table.items():
        clean = [v for (c, s), v in cells.items() if c == "none" or s == 0]
        corrupted = {(c, s): v for (c, s), v in cells.items() if c != "none" and s > 0}
        ces = []
        for corruption in sorted({c for c, _ in corrupted}):
            numerator = sum(1 - v for (c, _), v in corrupted.items() if c == corruption)
            denominator = sum(reference_error[cell] for cell in corrupted if cell[0] == corruption)
            ces.append(numerator / denominator)
        out["clean"].append(sum(clean) / len(clean))
        out["corrupted"].append(sum(corrupted.values()) / len(corrupted))
        out["relative"].append(out["corrupted"][-1] / out["clean"][-1])
        out["mce"].append(sum(ces) / len(ces))
    return out


def test_robustness_table_matches_hand_computation():
    table = robustness_table(noise_rows()).set_index("norm")
    assert list(table.index) == ["batchnorm", "groupnorm"]  # reference first
    for norm, data in (("batchnorm", BN), ("groupnorm", GN)):
        hand = hand_measures(data, BN)
        for measure, column in (("clean", "clean_accuracy"), ("corrupted", "corrupted_accuracy"),
                                ("relative", "relative_robustness"), ("mce", "mce")):
            assert table.loc[norm, f"{column}_mean"] == pytest.approx(sum(hand[measure]) / 2, abs=1e-12)
            assert table.loc[norm, f"{column}_se"] == pytest.approx(sample_se(hand[measure]), abs=1e-12)
        assert table.loc[norm, "n_seeds"] == 2 and table.loc[norm, "note"] == ""
    assert table.loc["batchnorm", "mce_mean"] == pytest.approx(1.0, abs=1e-12)
    # spelled out for GN seed 0: agn (0.2 + 0.3) / (0.45 + 0.65), mbn 0.1 / 0.4
    assert hand_measures(GN, BN)["mce"][0] == pytest.approx((0.5 / 1.1 + 0.25) / 2)


def test_missing_reference_gives_nan_mce_and_a_note():
    table = robustness_table(noise_rows(with_bn=False))
    assert len(table) == 1
    assert math.isnan(table.loc[0, "mce_mean"])
    assert "no batchnorm/running_stats reference" in table.loc[0, "note"]
    assert table.attrs["notes"] == [table.loc[0, "note"]]
    hand = hand_measures(GN, BN)
    assert table.loc[0, "clean_accuracy_mean"] == pytest.approx(sum(hand["clean"]) / 2)
    assert table.loc[0, "corrupted_accuracy_mean"] == pytest.approx(sum(hand["corrupted"]) / 2)


def test_reference_missing_a_cell_gives_nan_mce():
    df = noise_rows()
    df = df.loc[~((df["norm"] == "batchnorm") & (df["corruption"] == "mbn"))]
    table = robustness_table(df).set_index("norm")
    assert math.isnan(table.loc["groupnorm", "mce_mean"])
    assert "lacks" in table.loc["groupnorm", "note"] and "mbn" in table.loc["groupnorm", "note"]


def test_entry_without_any_measured_seed_is_listed_with_reason():
    df = pd.concat([noise_rows(), rows_to_frame([make_row(norm="lcn", eval_mode="standard", value=math.nan,
                                                          status="not trainable: batch 2 < num_groups 4")])])
    table = robustness_table(df).set_index("norm")
    assert table.loc["lcn", "n_seeds"] == 0 and math.isnan(table.loc["lcn", "clean_accuracy_mean"])
    assert "not trainable: batch 2 < num_groups 4" in table.loc["lcn", "note"]


def test_write_summary_writes_csv_and_markdown(tmp_path):
    store = ResultStore(tmp_path)
    store.write(list(noise_rows().pipe(lambda df: [ResultRow(**r) for r in df.to_dict("records")])))
    written = write_summary(store, "quick", "noise")
    names = sorted(p.name for p in written)
    assert names == ["noise_robustness.csv", "noise_summary.csv", "noise_summary.md"]
    markdown = (tmp_path / "quick" / "noise_summary.md").read_text()
    hand = hand_measures(GN, BN)
    clean = f"{100 * sum(hand['clean']) / 2:.1f} ± {100 * sample_se(hand['clean']):.1f} (2)"
    assert "mean ± SE (n seeds)" in markdown and clean in markdown
    assert "| groupnorm |" in markdown and "mCE" in markdown
    summary = pd.read_csv(tmp_path / "quick" / "noise_summary.csv")
    assert {"value_mean", "value_se", "n_seeds"} <= set(summary.columns)
    assert store.tables() == [("quick", "noise")]  # summaries are not taken for result tables


def test_write_summary_without_reference_notes_it(tmp_path):
    store = ResultStore(tmp_path)
    store.write([ResultRow(**r) for r in noise_rows(with_bn=False).to_dict("records")])
    write_summary(store, "quick", "noise")
    markdown = (tmp_path / "quick" / "noise_summary.md").read_text()
    assert "Note: mCE not computed: no batchnorm/running_stats reference row" in markdown


# -- baselines ------------------------------------------------------------------------------------------


def test_tolerance_from_spread_with_floor():
    assert TOL_K == 3.0 and TOL_FLOOR == 0.02
    assert tolerance_from_spread(pd.Series([0.7, 0.8, 0.9])) == pytest.approx(3 * 0.1)
    assert tolerance_from_spread(pd.Series([0.700, 0.701, 0.702])) == TOL_FLOOR
    assert tolerance_from_spread(pd.Series([0.7])) == TOL_FLOOR


def baseline_rows(norm: str, values: list[float], **overrides) -> pd.DataFrame:
    return rows_to_frame([make_row(norm=norm, eval_mode="batch", seed=s, value=v, **overrides)
                          for s, v in enumerate(values)])


def test_derive_baselines_gates_only_accuracy_metrics():
    df = pd.concat([baseline_rows("localnorm", [0.6, 0.7, 0.8]),
                    baseline_rows("localnorm", [0.1, 0.2, 0.3], metric="prediction_entropy")])
    baselines = derive_baselines(df)
    assert list(baselines["metric"]) == ["accuracy"]
    assert baselines.loc[0, "expected"] == pytest.approx(0.7)
    assert baselines.loc[0, "tolerance"] == pytest.approx(0.3) and baselines.loc[0, "n_seeds"] == 3
    assert "seed" not in baselines.columns


def test_regression_message_carries_the_numbers():
    baselines = derive_baselines(baseline_rows("localnorm", [0.655]))
    baselines.loc[0, "tolerance"] = 0.031
    run = baseline_rows("localnorm", [0.40, 0.424])
    regressions = check_against_baselines(run, baselines)
    assert len(regressions) == 1
    message = regressions[0].message
    assert "0.412 < 0.655 - 0.031" in message
    assert "noise/localnorm/standard/batch/agn/1.0/bs64" in message and "accuracy" in message
    assert regressions[0].observed == pytest.approx(0.412) and regressions[0].n_seeds == 2
    assert str(regressions[0]) == message


def test_within_tolerance_passes_and_other_metrics_are_not_gated():
    baselines = derive_baselines(baseline_rows("localnorm", [0.655]))
    baselines.loc[0, "tolerance"] = 0.031
    run = pd.concat([baseline_rows("localnorm", [0.63]),
                     baseline_rows("localnorm", [0.0], metric="prediction_entropy")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # prediction_entropy is not gated, so no "no baseline" either
        assert check_against_baselines(run, baselines) == []
    assert check_against_baselines(baseline_rows("localnorm", [0.62]), baselines) != []


def test_unmeasured_key_with_a_baseline_is_a_regression():
    baselines = derive_baselines(baseline_rows("lcn", [0.8, 0.8]))
    run = baseline_rows("lcn", [math.nan], status="diverged at epoch 1")
    (regression,) = check_against_baselines(run, baselines)
    assert "no value (diverged at epoch 1)" in regression.message and "0.800" in regression.message


def test_missing_baseline_is_reported_not_failed(tmp_path):
    run = baseline_rows("switchnorm", [0.1])
    with pytest.warns(NoBaselineWarning, match="no baseline for 1 measurement"):
        assert check_against_baselines(run, tmp_path / "absent.csv") == []
    assert missing_baselines(run, tmp_path / "absent.csv") == [
        "noise/switchnorm/standard/batch/agn/1.0/bs64 [quick, digits, quick_cnn]"]
    many = pd.concat([baseline_rows("switchnorm", [0.1], severity=s) for s in range(7)])
    with pytest.warns(NoBaselineWarning, match=r"no baseline for 7 measurement\(s\).*and 2 more$"):
        check_against_baselines(many, tmp_path / "absent.csv")


def test_update_baselines_merges_by_key_and_reads_back(tmp_path):
    path = tmp_path / "quick" / "baselines" / "noise.csv"
    update_baselines(baseline_rows("localnorm", [0.6, 0.7, 0.8]), path)
    update_baselines(baseline_rows("groupnorm", [0.5, 0.5]), path)
    update_baselines(baseline_rows("localnorm", [0.9, 0.9, 0.9], corruption="mbn"), path)
    update_baselines(baseline_rows("groupnorm", [0.4]), path)  # replaces groupnorm's line
    stored = read_baselines(path).set_index(["norm", "corruption"])
    assert len(stored) == 3
    assert stored.loc[("localnorm", "agn"), "expected"] == pytest.approx(0.7)
    assert stored.loc[("localnorm", "mbn"), "expected"] == pytest.approx(0.9)
    assert stored.loc[("groupnorm", "agn"), "expected"] == pytest.approx(0.4)
    assert stored.loc[("groupnorm", "agn"), "n_seeds"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["noise.csv"]
    assert check_against_baselines(baseline_rows("localnorm", [0.69]), path) == []
    assert len(check_against_baselines(baseline_rows("localnorm", [0.3]), path)) == 1


def test_drop_baselines_removes_a_superseded_recipe(tmp_path):
    path = tmp_path / "noise.csv"
    update_baselines(rows_to_frame([make_row(seed=s, recipe=r) for s in (0, 1) for r in ("v3-old", "v3-new")]), path)
    assert drop_baselines(path, lambda table: superseded(table, {"v3-new"})) == 1
    assert list(read_baselines(path)["recipe"]) == ["v3-new"]


@pytest.mark.parametrize("edit, problem", [
    (lambda text: text.replace(",tolerance,", ",tol,", 1), r"header lacks column\(s\) \['tolerance'\]"),
    (lambda text: text.replace(",0.02,", ",-0.02,", 1), r"line 2: tolerance must be a finite number >= 0"),
    (lambda text: text.replace(",0.02,", ",x,", 1), r"line 2, column 'tolerance': 'x' is not a number"),
])
def test_damaged_baselines_name_file_line_and_problem(tmp_path, edit, problem):
    path = tmp_path / "noise.csv"
    update_baselines(rows_to_frame([make_row(seed=s) for s in (0, 1)]), path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(ValueError, match=rf"baseline table {path}: {problem}"):
        read_baselines(path)
    with pytest.raises(ValueError, match=rf"baseline table {path}"):
        check_against_baselines(rows_to_frame([make_row()]), path)


def test_summary_flags_means_within_five_points_of_chance():
    rows = pd.DataFrame([make_row(seed=s, value=v, chance=0.1).__dict__ for s, v in enumerate((0.12, 0.14))]
                        + [make_row(norm="groupnorm", seed=s, value=0.9, chance=0.1).__dict__ for s in (0, 1)])
    summary = summarize(rows).set_index("norm")
    assert summary.loc["batchnorm", "near_chance"] and not summary.loc["groupnorm", "near_chance"]
    assert "°" in summary_markdown(rows, "quick", "noise")
