"""Headline tables: ranking, reference, chance, paired differences over seeds, and their exports."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from robustbench_norm.results.document import Cell, Table
from robustbench_norm.results.headline import (
    headline_table,
    leader,
    recipe_conflicts,
    scenario_kind,
    scenario_measurements,
)
from robustbench_norm.results.html import table_html
from robustbench_norm.results.latex import escape_latex, table_latex
from robustbench_norm.results.markdown import escape_markdown, table_markdown
from robustbench_norm.results.rows import rows_to_frame
from robustbench_norm.results.significance import paired_difference, verdict
from robustbench_norm.results.summary import robustness_table

# -- paired differences ------------------------------------------------------------------------------------


def test_paired_difference_matches_hand_computation_and_scipy():
    a = pd.Series([0.70, 0.74, 0.69], index=[0, 1, 2])
    b = pd.Series([0.60, 0.61, 0.62, 0.99], index=[0, 1, 2, 3])  # seed 3 has no partner: left out
    d = np.array([0.10, 0.13, 0.07])
    se = d.std(ddof=1) / math.sqrt(3)
    diff = paired_difference(a, b)
    assert diff.n == 3
    assert diff.mean == pytest.approx(d.mean()) and diff.se == pytest.approx(se)
    assert diff.ci_low == pytest.approx(d.mean() - 4.302652729911275 * se)  # t_{0.975, 2}
    assert diff.p_value == pytest.approx(stats.ttest_rel(a.loc[[0, 1, 2]], b.loc[[0, 1, 2]]).pvalue)
    assert diff.excludes_zero and verdict(diff, higher_is_better=True) == "better"
    assert verdict(diff, higher_is_better=False) == "worse"


def test_verdict_never_claims_a_difference_the_interval_does_not_support():
    noisy = paired_difference(pd.Series([0.7, 0.5, 0.9]), pd.Series([0.6, 0.6, 0.6]))
    assert noisy.mean > 0 and noisy.ci_low < 0 < noisy.ci_high
    assert verdict(noisy, higher_is_better=True) == "no clear difference"
    assert noisy.p_value > 0.05
    one = paired_difference(pd.Series([0.9]), pd.Series([0.1]))
    assert one.n == 1 and math.isnan(one.se) and verdict(one, True) == "n = 1: no test"
    same = paired_difference(pd.Series([0.5, 0.6]), pd.Series([0.5, 0.6]))
    assert same.mean == 0 and same.p_value == 1.0 and verdict(same, True) == "no clear difference"


# -- headline tables ---------------------------------------------------------------------------------------


def noise_frame(publish_row) -> pd.DataFrame:
    """BN (running 0.6 drop, test-batch 0.3), GN 0.2, LocalNorm single at chance; 3 seeds; agn 0 / 0.5 / 1."""
    drops = {("batchnorm", "running_stats"): (0.9, 0.6), ("batchnorm", "test_batch_stats"): (0.9, 0.3),
             ("groupnorm", "standard"): (0.9, 0.2), ("localnorm", "single"): (0.13, 0.0)}
    rows = [publish_row(norm=norm, eval_mode=mode, corruption="agn", severity=severity, seed=seed,
                        value=clean - drop * severity + 0.01 * seed * (1 + severity) + (0.02 if seed == 2 and
                                                                                        norm == "groupnorm" else 0))
            for (norm, mode), (clean, drop) in drops.items() for seed in range(3) for severity in (0.0, 0.5, 1.0)]
    return rows_to_frame(rows)


def cells_by_label(table: Table) -> dict[str, dict[str, Cell]]:
    rows = {}
    for row in table.rows:
        values = dict(zip(table.header, row))
        rows[f"{values['norm'].text}/{values['eval mode'].text}"] = values
    return rows


def test_noise_headline_ranks_marks_reference_bold_best_and_chance(publish_row):
    df = noise_frame(publish_row)
    measurements, others = scenario_measurements(df, math.nan)
    assert scenario_kind(df) == "corruption"
    table = headline_table(measurements, "noise")
    labels = [f"{row[1].text}/{row[2].text}" for row in table.rows]
    assert labels == ["groupnorm/standard", "batchnorm/test_batch_stats", "batchnorm (ref)/running_stats",
                      "localnorm/single"]  # by mean corrupted accuracy
    assert table.reference_rows == frozenset({2})
    cells = cells_by_label(table)
    assert cells["groupnorm/standard"]["mean corrupted acc. (%)"].bold
    assert not cells["batchnorm/test_batch_stats"]["mean corrupted acc. (%)"].bold
    chance_cell = cells["localnorm/single"]["clean acc. (%)"]  # 13-14 %, chance 10 %
    assert chance_cell.near_chance and not chance_cell.bold and chance_cell.shown.endswith("°")
    assert any("Chance level: 10.0%" in line for line in table.caption)
    assert any("scipy.stats.ttest_rel" in line and "n = 3 seeds" in line for line in table.caption)
    # mCE agrees with the summary's robustness table
    mce = robustness_table(df).set_index(["norm", "eval_mode"]).loc[("groupnorm", "standard"), "mce_mean"]
    assert cells["groupnorm/standard"]["mCE vs batchnorm running_stats (%)"].text.startswith(f"{100 * mce:.1f}")
    assert others is None  # accuracy is the only metric here


def test_difference_to_the_reference_is_paired_over_seeds(publish_row):
    df = noise_frame(publish_row)
    table = headline_table(scenario_measurements(df, math.nan)[0], "noise")
    cells = cells_by_label(table)
    corrupted = df.loc[df["severity"] > 0].groupby(["norm", "eval_mode", "seed"])["value"].mean()
    hand = paired_difference(corrupted.loc[("groupnorm", "standard")], corrupted.loc[("batchnorm", "running_stats")])
    delta = cells["groupnorm/standard"]["Δ mean corrupted acc. vs ref (pp) ± SE [95% CI]"]
    assert delta.sort == pytest.approx(hand.mean)
    assert delta.text == (f"+{100 * hand.mean:.1f} ± {100 * hand.se:.1f} [{100 * hand.ci_low:.1f}, "
                          f"{100 * hand.ci_high:.1f}]")
    assert cells["groupnorm/standard"]["p"].sort == pytest.approx(hand.p_value)
    assert cells["batchnorm (ref)/running_stats"]["Δ mean corrupted acc. vs ref (pp) ± SE [95% CI]"].text == \
        "reference"
    for row in table.rows:  # "better" only where the interval excludes zero
        values = dict(zip(table.header, row))
        if values["verdict"].text.startswith("better"):
            low = float(values["Δ mean corrupted acc. vs ref (pp) ± SE [95% CI]"].text.split("[")[1].split(",")[0])
            assert low > 0


def test_batch_size_headline_columns_drop_and_untrainable_cells(publish_row):
    rows = [publish_row(scenario="batch_size", norm=norm, eval_mode=mode, train_batch_size=batch, seed=seed,
                        value=math.nan if norm == "localnorm" and batch == 2 else value + 0.01 * seed,
                        status="not trainable: batch 2 < 4" if norm == "localnorm" and batch == 2 else "ok")
            for norm, mode, value in (("batchnorm", "running_stats", 0.7), ("groupnorm", "standard", 0.75),
                                      ("localnorm", "batch", 0.8))
            for batch in (2, 16, 64) for seed in range(3)]
    df = rows_to_frame(rows)
    measurements = scenario_measurements(df, math.nan)[0]
    assert measurements.kind == "batch_size"
    table = headline_table(measurements, "batch")
    assert table.header[4:8] == ("acc. at batch 64 (%)", "acc. at batch 16 (%)", "acc. at batch 2 (%)",
                                 "drop 64 -> 2 (pp)")
    assert [row[1].text for row in table.rows] == ["groupnorm", "batchnorm (ref)", "localnorm"]  # by batch 2
    untrainable = table.rows[2][6]
    assert untrainable.text == "n/a [1]" and table.rows[2][0].text == "-"
    assert table.notes[0] == "[1] localnorm: not trainable: batch 2 < 4 (seeds 0, 1, 2)"
    assert table.rows[0][7].text.startswith("+0.0 ± 0.0")  # flat: no drop


def test_domain_headline_gain_source_and_borrowed_source_mode(publish_row):
    rows = []
    for norm, mode, adapted in (("batchnorm", "running_stats", 0.40), ("contextnorm", "cn+", 0.55),
                                ("contextnorm", "cn_target_id", 0.50)):
        for variant in ("source_only", "adamatch"):
            for seed in range(3):
                value = (adapted if variant == "adamatch" else 0.35) + 0.01 * seed * (seed - 1)
                rows.append(publish_row(scenario="domain_shift", dataset="street_digits/test", norm=norm,
                                        eval_mode=mode, variant=variant, seed=seed, metric="target_accuracy",
                                        value=value))
                if mode != "cn_target_id":
                    rows.append(publish_row(scenario="domain_shift", dataset="digits/test", norm=norm,
                                            eval_mode="cn" if norm == "contextnorm" else mode, variant=variant,
                                            seed=seed, metric="source_accuracy", value=0.95))
    measurements = scenario_measurements(rows_to_frame(rows), math.nan)[0]
    assert measurements.kind == "domain"
    table = headline_table(measurements, "domain")
    assert table.header[4:9] == ("target acc. source_only (%)", "target acc. adamatch (%)",
                                 "acc. gain adamatch - source_only (pp)", "source acc. source_only (%)",
                                 "source acc. adamatch (%)")
    cells = cells_by_label(table)
    gain = cells["contextnorm/cn+"]["acc. gain adamatch - source_only (pp)"]
    assert gain.sort == pytest.approx(0.20) and "p " in gain.text
    assert cells["contextnorm/cn_target_id"]["source acc. adamatch (%)"].text == "95.0 ± 0.0"
    assert any("contextnorm in mode(s) cn+, cn_target_id is that of mode cn" in note for note in table.notes)
    assert "contextnorm (num_contexts" not in leader(measurements)  # kwargs {} print no parentheses
    assert leader(measurements) == ("contextnorm / cn+ on quick_cnn: target acc. adamatch 55.7 ± 0.7%; vs "
                                    "batchnorm/running_stats: +15.0 ± 0.0 [15.0, 15.0] pp, p <0.001 (better, n = 3 "
                                    "seeds)")  # every seed 15 points up: exact, p = 0


def test_parts_union_first_chance_from_the_column_and_a_new_metric_and_mode_need_no_code(publish_row):
    rows = []
    for norm, mode, value in (("batchnorm", "running_stats", 0.6), ("batchnorm", "tent", 0.7),
                              ("groupnorm", "standard", 0.08)):
        for seed in range(2):
            for dataset in ("digits", "shapes", "digits+shapes"):
                rows.append(publish_row(scenario="blend", dataset=dataset, norm=norm, eval_mode=mode, seed=seed,
                                        value=value + 0.01 * seed, chance=0.05))
                rows.append(publish_row(scenario="blend", dataset=dataset, norm=norm, eval_mode=mode, seed=seed,
                                        metric="ece", value={"tent": 0.02}.get(mode, 0.1), chance=math.nan))
    headline, others = scenario_measurements(rows_to_frame(rows), 0.5)  # the column wins over the fallback
    table = headline_table(headline, "blend")
    assert table.header[4] == "acc. overall digits+shapes (%)"
    assert [f"{row[1].text}/{row[2].text}" for row in table.rows][:2] == ["batchnorm/tent",
                                                                          "batchnorm (ref)/running_stats"]
    assert any(line.startswith("Chance level: 5.0%") for line in table.caption)
    groupnorm = cells_by_label(table)["groupnorm/standard"]["acc. overall digits+shapes (%)"]
    assert groupnorm.near_chance  # 8 % vs 5 %
    ece = headline_table(others, "other", compare=False)
    assert "ECE overall digits+shapes (%)" in ece.header
    best = cells_by_label(ece)["batchnorm/tent"]["ECE overall digits+shapes (%)"]
    assert best.bold and best.text == "2.0 ± 0.0"  # lower is better


def test_unknown_chance_is_said_and_nothing_is_greyed(publish_row):
    df = noise_frame(publish_row)
    df["chance"] = math.nan
    table = headline_table(scenario_measurements(df, math.nan)[0], "noise")
    assert any("Chance level unknown" in line for line in table.caption)
    assert not any(cell.near_chance for row in table.rows for cell in row)
    fallback = headline_table(scenario_measurements(df, 0.1)[0], "noise")
    assert any(cell.near_chance for row in fallback.rows for cell in row)


def test_rows_under_two_recipes_are_found_and_identical_entries_noted(publish_row):
    df = noise_frame(publish_row)
    twin = df.loc[(df["norm"] == "batchnorm") & (df["eval_mode"] == "test_batch_stats")].assign(
        norm="batchnorm_test_stats")
    smoke = df.loc[df["norm"] == "groupnorm"].assign(recipe="smoke", value=0.1)
    both = pd.concat([df, twin, smoke], ignore_index=True)
    conflicts = recipe_conflicts(both)
    assert set(both.loc[conflicts, "norm"]) == {"groupnorm"} and conflicts.sum() == 2 * len(smoke)
    table = headline_table(scenario_measurements(both.loc[~conflicts], math.nan)[0], "noise")
    assert "Note: batchnorm_test_stats/test_batch_stats has exactly the same per-seed values as " \
           "batchnorm/test_batch_stats." in table.notes


# -- exports -----------------------------------------------------------------------------------------------

HOSTILE = "<script>alert(1)</script> a|b *x* _y_ [z](u) 50% & $5 #1 {k} ~ ^ \\"


def hostile_table() -> Table:
    return Table("t", ("norm", "value (%)"), ((Cell(HOSTILE, sort=HOSTILE), Cell("12.0", sort=0.12, bold=True)),
                                              (Cell("gn", sort="gn"), Cell("10.1", sort=0.101, near_chance=True))),
                 caption=("caption <b>",), notes=("note |",), reference_rows=frozenset({1}))


def test_markdown_escapes_html_pipes_and_emphasis():
    assert escape_markdown("<script>x</script>") == "&lt;script>x&lt;/script>"
    assert escape_markdown("batch 2 < 4 & 5") == "batch 2 < 4 & 5"  # not a tag, not an entity
    assert escape_markdown("&amp;") == "&amp;amp;"
    assert escape_markdown("running_stats *x* _y_ a|b [z]") == r"running_stats \*x\* \_y\_ a\|b \[z\]"
    text = table_markdown(hostile_table())
    assert "<script>" not in text and "<b>" not in text
    assert "| **12.0** |" in text and "10.1 °" in text
    body = [line for line in text.splitlines() if line.startswith("| &lt;script")]
    assert len(body) == 1 and body[0].count(" | ") == 1  # the pipe in the name did not add a column


def test_html_table_escapes_sorts_and_marks():
    text = table_html(hostile_table())
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert '<table class="sortable">' in text and 'data-sort="0.12"' in text
    assert 'class="num best"' in text and 'class="num chance"' in text and '<tr class="ref">' in text


def test_latex_table_is_booktabs_and_escaped():
    text = table_latex(hostile_table(), "tab:x")
    for command in ("\\toprule", "\\midrule", "\\bottomrule", "\\label{tab:x}", "\\begin{tabular}{lr}"):
        assert command in text
    assert "\\textbf{12.0}" in text and "\\textcolor{gray}{10.1 $^\\circ$}" in text
    assert escape_latex("50% & $5 #1 {k} _ ~ ^ \\") == \
        r"50\% \& \$5 \#1 \{k\} \_ \textasciitilde{} \textasciicircum{} \textbackslash{}"
    assert "±" not in escape_latex("1 ± 2") and "$\\pm$" in escape_latex("1 ± 2")
