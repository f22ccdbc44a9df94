"""The published site: files, links, provenance, several runs side by side, confusion figures, the command."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from robustbench_norm import cli
from robustbench_norm.results.convergence import CSV_NAME, merge_checks, read_checks
from robustbench_norm.results.figures import class_names, identify_dataset, parse_confusion_stem, stored_key
from robustbench_norm.results.publish import commit_flag, publish
from robustbench_norm.results.rows import frame_to_rows
from robustbench_norm.results.store import ResultStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LINK = re.compile(r'(?:href|src)="([^"#]+)"')


def test_publish_writes_every_page_and_is_idempotent(small_results):
    written = publish(small_results)
    tables = small_results / "quick" / "tables"
    names = {str(p.relative_to(small_results)) for p in written}
    for scenario in ("noise", "batch_size", "domain_shift", "blend", "day_night"):
        assert {f"quick/tables/{scenario}.{suffix}" for suffix in ("html", "md", "tex")} <= names
    assert {"index.html", "index.md", "quick/tables/noise_agn.png", "quick/tables/batch_size_batch_size.png",
            "quick/tables/noise_confusion.html", "quick/tables/blend_confusion.md",
            "quick/tables/day_night_translation_contextnorm.png",
            "quick/tables/reliability/noise/batchnorm__running_stats__agn__0.0.png",
            "quick/tables/confusion/noise/digits__batchnorm__standard__running_stats__agn__0.5.png",
            "quick/tables/confusion/blend/digits+shapes__contextnorm__joint__cn__none__0.0.png"} <= names
    assert all(p.is_file() for p in written)
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in written if p.suffix == ".png")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in written}
    assert publish(small_results) == written
    for path, (data, mtime) in before.items():
        assert path.read_bytes() == data
        if path.suffix == ".png":
            assert path.stat().st_mtime_ns == mtime  # inputs unchanged: not redrawn
    assert ResultStore(small_results).tables() == [("quick", name) for name in
                                                   ("batch_size", "blend", "day_night", "domain_shift", "noise")]
    assert stored_key(tables / "noise_agn.png")


def test_every_link_and_image_target_exists(small_results):
    written = publish(small_results)
    pages = [p for p in written if p.suffix == ".html"]
    assert len(pages) == 8  # index, 5 scenario pages, 2 confusion galleries
    for page in pages:
        text = page.read_text()
        assert "http://" not in text and "https://" not in text  # offline: nothing from a CDN
        for target in LINK.findall(text):
            assert (page.parent / target).resolve().is_file(), f"{page.name} links a missing {target}"
    index = (small_results / "index.html").read_text()
    for needle in ("quick/tables/noise.html", "quick/tables/noise_agn.png", "quick/tables/noise_confusion.html",
                   "day_night_translation_contextnorm.png", "digits__batchnorm__standard__running_stats__agn__0.5",
                   "quick/tables/reliability/noise/batchnorm__running_stats__agn__0.0.png"):
        assert needle in index


def test_pages_answer_with_a_ranked_headline_and_state_provenance(small_results):
    publish(small_results)
    tables = small_results / "quick" / "tables"
    noise = (tables / "noise.md").read_text()
    assert noise.startswith("# noise (profile quick)")
    assert noise.index("| 1 | groupnorm | standard |") < noise.index("| 3 | batchnorm (ref) | running_stats |")
    assert "abc1234 (54 rows) — not the current HEAD" in noise and "digits: 50" in noise
    assert "python=3.11 torch=2" in noise and "file dated" in noise and "| cpu |" in noise
    assert noise.index("![noise, test set digits") < noise.index("### Every measurement")  # plots before the dump
    batch = (tables / "batch_size.md").read_text()
    assert "| - | localnorm | batch | quick_cnn | 76.0 ± 0.6 | 76.0 ± 0.6 | n/a \\[1\\] |" in batch
    assert "\\[1\\] localnorm: not trainable: batch 2 < num_groups 4 (seeds 0, 1, 2)" in batch
    domain = (tables / "domain_shift.md").read_text()
    assert "| 1 | contextnorm | cn+ | quick_cnn |" in domain and "acc. gain adamatch - source_only (pp)" in domain
    index = (small_results / "index.md").read_text()
    assert "contextnorm / cn+ on quick_cnn: target acc. adamatch 31.0 ± 0.6%" in index
    tex = (tables / "noise.tex").read_text()
    assert tex.count("\\begin{table}") == 2 and "\\toprule" in tex and "\\label{quick:noise:1}" in tex


def test_pages_say_which_norms_are_converged(small_results):
    checks = pd.DataFrame([
        {"scenario": "noise", "setting": "", "norm": "groupnorm", "short": 97.1, "long": 99.07, "factor": 2,
         "seeds": 3, "change": 1.97, "converged": "no", "command": "robustbench-norm check-convergence", "commit": "c1"},
        {"scenario": "noise", "setting": "", "norm": "batchnorm", "short": 98.0, "long": 98.2, "factor": 2,
         "seeds": 3, "change": 0.2, "converged": "yes", "command": "robustbench-norm check-convergence", "commit": "c1"},
    ])
    merge_checks(small_results / "quick" / CSV_NAME, checks)
    merge_checks(small_results / "quick" / CSV_NAME, checks.iloc[[1]].assign(long=98.5, change=0.5))
    assert list(read_checks(small_results / "quick" / CSV_NAME)["long"]) == [98.5, 99.07]
    publish(small_results)
    noise = (small_results / "quick" / "tables" / "noise.md").read_text()
    assert "Not converged: groupnorm +1.97 points" in noise and "Converged (within 1 point at twice the steps): " \
        "batchnorm." in noise
    assert "| groupnorm |  | 97.10 | 99.07 | +1.97 | no | 3 |" in noise
    batch = (small_results / "quick" / "tables" / "batch_size.md").read_text()
    assert "Not checked for convergence: " in batch and "localnorm" in batch
    (small_results / "quick" / CSV_NAME).write_text("scenario,norm\nnoise,batchnorm\n")
    with pytest.raises(ValueError, match="not a convergence table"):
        publish(small_results)


def test_commit_flags():
    assert commit_flag("abc1234", "abc1234") == ""
    assert commit_flag("abc1234", "abc1234567-dirty") == ""
    assert commit_flag("55c2ad1", "e47b96d") == " — not the current HEAD e47b96d"
    assert commit_flag("55c2ad1-dirty", "55c2ad1") == " — run with uncommitted code changes"
    assert commit_flag("unknown", "e47b96d") == " — cannot be compared with HEAD"


def test_two_folders_and_two_devices_are_shown_side_by_side_never_averaged(tmp_path, write_results):
    write_results(tmp_path / "cpu_run")
    write_results(tmp_path / "gpu_run", device="cuda", shift=0.1)
    with pytest.raises(ValueError, match="needs an out_dir"):
        publish([tmp_path / "cpu_run", tmp_path / "gpu_run"])
    publish([tmp_path / "cpu_run", tmp_path / "gpu_run"], tmp_path / "site")
    noise = (tmp_path / "site" / "quick" / "noise.md").read_text()
    assert "## Runs side by side" in noise and "## Run cpu_run (cpu)" in noise and "## Run gpu_run (cuda)" in noise
    side = noise[noise.index("## Runs side by side"):noise.index("## Run cpu_run")]
    # groupnorm mean corrupted accuracy: 76.0 on the CPU run, 86.0 on the GPU run, never their mean 81.0
    assert "76.0 ± 0.6 (n=3) | 86.0 ± 0.6 (n=3)" in side and "81.0" not in side
    assert (tmp_path / "site" / "quick" / "noise_cpu_run-cpu_agn.png").is_file()
    assert (tmp_path / "site" / "quick" / "noise_gpu_run-cuda_agn.png").is_file()
    # one folder holding both devices: two runs as well
    store = ResultStore(tmp_path / "cpu_run")
    store.write(frame_to_rows(ResultStore(tmp_path / "gpu_run").read("quick", "noise")))
    publish(tmp_path / "cpu_run", tmp_path / "mixed")
    mixed = (tmp_path / "mixed" / "quick" / "noise.md").read_text()
    assert "## Run cpu_run (cpu)" in mixed and "## Run cpu_run (cuda)" in mixed


def test_rows_under_two_recipes_are_left_out_and_said(small_results, publish_row):
    ResultStore(small_results).write([publish_row(norm="groupnorm", eval_mode="standard", corruption="agn",
                                                  severity=0.5, seed=0, recipe="smoke", value=0.1)])
    publish(small_results)
    noise = (small_results / "quick" / "tables" / "noise.md").read_text()
    assert ("Left out: 19 rows of entries measured under several training recipes (smoke, unspecified; "
            "norms groupnorm)") in noise  # all of groupnorm's rows: a mean over the rest would be biased
    assert "| groupnorm |" not in noise.split("## Confusion")[0]


def test_confusion_figures_name_their_test_set_and_classes(small_results):
    assert class_names("digits+shapes", 20)[9:12] == ["9", "circle", "square"]
    assert class_names("street_digits+street_digits_night", 10) == [str(i) for i in range(10)]
    assert class_names("cifar100", 100)[:2] == ["0", "1"]
    assert parse_confusion_stem("lcn__standard__standard__agn__1.0__kw0123abcd") == \
        ("lcn", "standard", "standard", "agn", 1.0, "kw0123abcd")
    assert parse_confusion_stem("not_a_confusion_file") is None
    rows = ResultStore(small_results).read("quick", "blend")
    assert identify_dataset(rows, ("contextnorm", "joint", "cn", "none", 0.0), 300) == "digits+shapes"
    assert identify_dataset(rows, ("contextnorm", "joint", "cn", "none", 0.0), 299) == "unidentified-test-set"
    publish(small_results)
    gallery = (small_results / "quick" / "tables" / "noise_confusion.md").read_text()
    assert "[H 1.00](<confusion/noise/digits__batchnorm__standard__running_stats__agn__0.5.png>)" in gallery
    grid = small_results / "quick" / "tables" / "day_night_translation_contextnorm.png"
    source = small_results / "quick" / "day_night_translation_contextnorm.png"
    assert grid.stat().st_size > source.stat().st_size  # labels drawn beside the rows


def test_publish_command_with_several_folders(tmp_path, capsys, write_results):
    write_results(tmp_path / "a")
    write_results(tmp_path / "b", shift=0.05)
    args = ["publish", "--results-dir", str(tmp_path / "a"), "--results-dir", str(tmp_path / "b")]
    assert cli.main(args) == 2 and "needs an out_dir" in capsys.readouterr().err
    assert cli.main([*args, "--out-dir", str(tmp_path / "site")]) == 0
    assert str(tmp_path / "site" / "index.html") in capsys.readouterr().out
    assert cli.main(["publish", "--results-dir", str(tmp_path / "absent")]) == 2
    capsys.readouterr()


def test_empty_results_write_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    assert publish(tmp_path / "empty") == []
    assert not any((tmp_path / "empty").iterdir())
    pd.DataFrame({"x": np.arange(3)}).to_csv(tmp_path / "empty" / "other.csv")  # not a result table
    assert publish(tmp_path / "empty") == []
