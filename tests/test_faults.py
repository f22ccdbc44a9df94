"""Fault injection for issue 10: what a run does by mistake never damages results or passes silently.

Every test damages real files (checkpoints, result and baseline CSVs, cache folders) or kills a real
process mid-write, then runs the real code path that meets the damage. Items 1, 3, 7 and 10 of the issue
are covered next to their code (suites, norms, options); this module covers:

* item 2  - damaged checkpoints (a flipped byte, a NaN weight or buffer) are retrained, never loaded;
* item 4  - damaged result / baseline CSVs raise a ``ValueError`` naming the file, the line and the
  problem, nothing is written over them, and the command line exits 2 (1 only for a regression);
* item 5  - an unwritable cache fails before training, naming the folder and how to choose another;
* item 6  - columns a user added to a result or baseline CSV survive a rewrite;
* item 8  - bad norm names and unknown eval modes fail at registration / first lookup, before training;
* item 9  - temporary files of a writer killed with SIGKILL are removed by later writes;
* item 11 - the data fingerprint tells other pixels apart, so a checkpoint keyed on it is not reused.
"""

from __future__ import annotations

import csv
import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from robustbench_norm import cli
from robustbench_norm.atomic import STALE_TEMP_SECONDS
from robustbench_norm.data import load_dataset
from robustbench_norm.data.imageset import DatasetBundle, ImageSet, dataset_fingerprint
from robustbench_norm.norms import ENTRY_POINT_GROUP, get_norm, list_norms, register_norm, reload_plugins
from robustbench_norm.results.baselines import read_baselines, update_baselines
from robustbench_norm.results.rows import COLUMNS, rows_to_frame
from robustbench_norm.results.store import ResultStore
from robustbench_norm.results.summary import summarize_results_dir
from robustbench_norm.training.cache import (
    CacheNotWritableError,
    CheckpointCache,
    CorruptCheckpointWarning,
    content_checksum,
)
from tests.test_results_store import make_row

SPEC = {"arch": "conv_bn", "data": "toy", "seed": 0, "device": "cpu"}
WAIT_SECONDS = 60  # for a child process to reach the point where it is killed


def conv_bn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))


class Trainer:
    """Counts its calls and sets every weight to ``value`` (and gives BatchNorm finite running stats)."""

    def __init__(self, value: float = 0.25) -> None:
        self.calls, self.value = 0, value

    def __call__(self, model: nn.Module) -> list:
        self.calls += 1
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(self.value)
        model.train()(torch.randn(4, 1, 5, 5))
        return [{"epoch": 1}]


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


# -- item 2: damaged checkpoints -------------------------------------------------------------------------


def test_flipped_byte_inside_a_weight_is_caught_by_the_checksum(tmp_path):
    cache = CheckpointCache(tmp_path)
    path = cache.train_or_load(SPEC, conv_bn(), Trainer(0.25)).path
    data = bytearray(path.read_bytes())
    offset = data.find(torch.tensor([0.25]).numpy().tobytes())  # first stored weight
    assert offset > 0
    data[offset + 3] ^= 0x01  # 0.25 -> 1.0 after the flip: torch.load itself accepts the file
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["state_dict"]["0.weight"].flatten()[0].item() != 0.25
    train = Trainer(0.5)
    with pytest.warns(CorruptCheckpointWarning, match=rf"{path.name} rejected \(content checksum mismatch"):
        result = cache.train_or_load(SPEC, conv_bn(), train)
    assert not result.loaded and train.calls == 1
    assert cache.train_or_load(SPEC, conv_bn(), Trainer()).loaded  # the retrained file is trusted


@pytest.mark.parametrize("name, value", [("0.weight", float("nan")), ("1.running_var", float("inf"))])
def test_non_finite_weight_or_buffer_is_retrained(tmp_path, name, value):
    cache = CheckpointCache(tmp_path)
    path = cache.train_or_load(SPEC, conv_bn(), Trainer()).path
    payload = torch.load(path, weights_only=True)
    payload["state_dict"][name].view(-1)[0] = value
    payload["checksum"] = content_checksum(payload)  # a consistent file that holds a non-finite tensor
    torch.save(payload, path)
    train = Trainer(0.5)
    with pytest.warns(CorruptCheckpointWarning, match=rf"{path.name} rejected \(tensor '{name}' holds non-finite"):
        result = cache.train_or_load(SPEC, conv_bn(), train)
    assert not result.loaded and train.calls == 1
    assert all(torch.isfinite(t).all() for t in result.model.state_dict().values() if t.is_floating_point())


# -- item 4: damaged result and baseline CSVs ------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    if how == "truncated":  # a write cut short, without atomic_write
        path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2] + "\n")
    elif how == "not_a_number":
        fields = next(csv.reader([lines[1]]))
        fields[COLUMNS.index("value")] = "0.9x"
        with open(path, "w", newline="") as handle:
            handle.write(lines[0])
            csv.writer(handle, lineterminator="\n").writerow(fields)
    elif how == "conflict":  # a git merge conflict resolved by keeping both sides
        path.write_text("".join(lines) + lines[1])
    elif how == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    elif how == "empty":
        path.write_text("")


@pytest.mark.parametrize("how, problem", [
    ("truncated", r"line 3 has \d+ fields, the header has \d+"),
    ("not_a_number", r"line 2, column 'value': '0.9x' is not a number"),
    ("conflict", r"line 4 repeats the key"),
    ("binary", r"unreadable as CSV text \(UnicodeDecodeError"),
    ("empty", r"empty file"),
])
def test_damaged_result_csv_is_named_and_never_overwritten(tmp_path, capsys, how, problem):
    store = ResultStore(tmp_path)
    store.write([make_row(seed=0), make_row(seed=1)])
    path = store.path("quick", "noise")
    _damage(path, how)
    damaged = path.read_bytes()
    message = rf"result table {path}: {problem}"
    with pytest.raises(ValueError, match=message):
        store.read("quick", "noise")
    with pytest.raises(ValueError, match=message):
        store.write([make_row(seed=2)])
    assert path.read_bytes() == damaged and temp_files(path.parent) == []
    if how not in ("binary", "empty"):  # those headers do not look like a result table: not listed at all
        with pytest.raises(ValueError, match=message):
            summarize_results_dir(tmp_path, "quick")  # the end-of-session summary
        assert cli.main(["publish", "--results-dir", str(tmp_path)]) == 2
        assert str(path) in capsys.readouterr().err
    good = tmp_path / "good.csv"
    ResultStore(tmp_path / "other").write([make_row(seed=0)])
    good.write_bytes((tmp_path / "other" / "quick" / "noise.csv").read_bytes())
    assert cli.main(["compare", str(good), str(path)]) == 2
    assert cli.main(["compare", str(path), str(good)]) == 2
    assert f"error: result table {path}" in capsys.readouterr().err


def test_damaged_baseline_csv_is_named_and_never_overwritten(tmp_path):
    path = tmp_path / "quick" / "baselines" / "noise.csv"
    rows = rows_to_frame([make_row(seed=s, value=0.8) for s in (0, 1)])
    update_baselines(rows, path)
    text = path.read_text()
    path.write_text(text.replace(",2\n", ",0\n"))  # n_seeds 0
    with pytest.raises(ValueError, match=rf"baseline table {path}: line 2: n_seeds must be >= 1, got 0"):
        read_baselines(path)
    path.write_text(text.replace(",accuracy,", ",accuracy,abc,", 1))
    with pytest.raises(ValueError, match=rf"baseline table {path}: line 2 has \d+ fields, the header has \d+"):
        update_baselines(rows, path)
    assert path.read_text() == text.replace(",accuracy,", ",accuracy,abc,", 1)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robustbench_norm.cli", *args], capture_output=True, text=True,
                          timeout=WAIT_SECONDS)


def test_compare_process_exits_2_for_a_damaged_file_and_1_only_for_a_regression(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    for path, value in ((a, 0.8), (b, 0.5)):
        store = ResultStore(tmp_path / path.stem)
        store.write([make_row(value=value)])
        path.write_bytes(store.path("quick", "noise").read_bytes())
    regression = _run_cli("compare", str(a), str(b))
    assert regression.returncode == 1 and "1 regression(s)" in regression.stdout
    b.write_text(b.read_text().replace("accuracy,0.5", "accuracy,"))
    damaged = _run_cli("compare", str(a), str(b))
    assert damaged.returncode == 2, damaged.stderr
    assert f"error: result table {b}: line 2, column 'value': '' is not a number" in damaged.stderr
    assert "Traceback" not in damaged.stderr


# -- item 5: unwritable cache ----------------------------------------------------------------------------


def _never_train(model: nn.Module) -> list:
    raise AssertionError("training must not start when the cache cannot be written")


def test_cache_under_a_file_fails_before_training(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    cache = CheckpointCache(blocker / "checkpoints")
    with pytest.raises(CacheNotWritableError, match=rf"{blocker / 'checkpoints'} is not writable.*--cache-dir.*"
                                                    r"ROBUSTBENCH_NORM_CACHE"):
        cache.train_or_load(SPEC, conv_bn(), _never_train)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_cache_fails_before_training(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(CacheNotWritableError, match=rf"{root} is not writable \(PermissionError"):
            CheckpointCache(root).train_or_load(SPEC, conv_bn(), _never_train)
    finally:
        root.chmod(0o700)


def test_cache_env_variable_names_the_folder(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ROBUSTBENCH_NORM_CACHE", str(blocker))
    with pytest.raises(CacheNotWritableError, match=rf"{blocker} is not writable"):
        CheckpointCache().check_writable()


# -- item 6: extra CSV columns ---------------------------------------------------------------------------


def _add_column(path: Path, name: str, values: list[str]) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame[name] = values
    frame.to_csv(path, index=False, lineterminator="\n")


def test_user_columns_of_a_result_csv_survive_a_rewrite(tmp_path):
    store = ResultStore(tmp_path)
    store.write([make_row(seed=0, value=0.5), make_row(seed=1, value=0.6)])
    path = store.path("quick", "noise")
    _add_column(path, "note", ["rerun on GPU, 'ok'", "checked, by hand"])
    store.write([make_row(seed=1, value=0.7), make_row(seed=2, value=0.8)])
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(raw.columns) == [*COLUMNS, "note"]
    assert raw.set_index("seed")["note"].to_dict() == {"0": "rerun on GPU, 'ok'", "1": "", "2": ""}
    assert raw.set_index("seed")["value"].to_dict() == {"0": "0.5", "1": "0.7", "2": "0.8"}
    assert store.tables() == [("quick", "noise")]  # still a result table
    assert list(store.read("quick", "noise").columns) == list(COLUMNS)


def test_user_columns_of_a_baseline_csv_survive_an_update(tmp_path):
    path = tmp_path / "baselines" / "noise.csv"
    update_baselines(rows_to_frame([make_row(norm="batchnorm"), make_row(norm="groupnorm")]), path)
    _add_column(path, "owner", ["ann", "bob"])
    update_baselines(rows_to_frame([make_row(norm="groupnorm", value=0.9)]), path)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False).set_index("norm")
    assert raw["owner"].to_dict() == {"batchnorm": "ann", "groupnorm": ""}
    assert raw.loc["groupnorm", "expected"] == "0.9"


# -- item 8: norm names and eval modes -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["<script>alert(1)</script>", "batch norm", "norm/../x", "_private", "",
                                  "normé"])
def test_register_norm_rejects_unsafe_names(name):
    with pytest.raises(ValueError, match=r"norm name .* is invalid: use ASCII letters, digits and underscores"):
        register_norm(name)(nn.Identity)
    with pytest.raises(ValueError, match="is invalid"):
        register_norm("fault_safe_name", aliases=(name,))(nn.Identity)
    assert "fault_safe_name" not in list_norms()


def test_unknown_eval_mode_fails_at_the_first_lookup_and_unregisters():
    register_norm("fault_bad_modes", eval_modes=("standard", "fancy"))(nn.Identity)
    with pytest.raises(ValueError, match=r"'fault_bad_modes' \(builtin\) declares unknown eval mode\(s\) "
                                         r"\['fancy'\]; valid modes: \('standard'"):
        get_norm("batchnorm")
    assert "fault_bad_modes" not in list_norms()
    with pytest.raises(ValueError, match="non-empty list of mode names, got 'standard'"):
        register_norm("fault_string_modes", eval_modes="standard")(nn.Identity)


PLUGIN = '''
from torch import nn


class BadModes(nn.Identity):
    NORM_SPEC = {"eval_modes": ["standard", "magic"]}
'''


@pytest.mark.parametrize("entry_name, problem", [
    ("faultnorm", r"declares unknown eval mode\(s\) \['magic'\]"),
    ("fault<b>norm", r"norm name 'fault<b>norm' is invalid"),
])
def test_bad_plugin_fails_at_discovery(tmp_path, entry_name, problem):
    (tmp_path / "faultpkg.py").write_text(textwrap.dedent(PLUGIN))
    dist_info = tmp_path / "faultpkg-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: faultpkg\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_name} = faultpkg:BadModes\n")
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    try:
        with pytest.raises(ValueError, match=problem) as error:
            reload_plugins()
            list_norms()
        assert "plugin:faultpkg" in str(error.value)
        assert "faultnorm" not in list_norms() and "fault_b_norm" not in list_norms()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("faultpkg", None)
        importlib.invalidate_caches()
        reload_plugins()


# -- item 9: temporary files of killed writers ------------------------------------------------------------

STUCK_STORE = '''
import sys, time
from robustbench_norm.results import store as store_module
from robustbench_norm.results.rows import frame_to_rows

def stuck(frame, handle, **kwargs):
    handle.write("scenario,profile,dat")
    handle.flush()
    print("writing", flush=True)
    time.sleep(600)

store_module.write_frame_csv = stuck
store = store_module.ResultStore(sys.argv[1])
store.write(frame_to_rows(store.read("quick", "noise")))
'''

STUCK_CACHE = '''
import sys, time, torch
from pathlib import Path
from torch import nn
from robustbench_norm.training.cache import CheckpointCache

def stuck(payload, handle):
    handle.write(b"PK partial checkpoint")
    handle.flush()
    print("writing", flush=True)
    time.sleep(600)

torch.save = stuck
CheckpointCache(Path(sys.argv[1])).train_or_load({"device": "cpu", "n": 1}, nn.Linear(2, 2), lambda model: [])
'''


def _kill_mid_write(script: str, folder: Path) -> None:
    """Run ``script`` in a child process; SIGKILL it once it reports that it is writing."""
    child = subprocess.Popen([sys.executable, "-c", script, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "writing\n", "the child died before it reached the write"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=WAIT_SECONDS)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL


def test_temp_file_of_a_killed_store_writer_is_removed_by_the_next_write(tmp_path):
    store = ResultStore(tmp_path)
    store.write([make_row(seed=0)])
    path = store.path("quick", "noise")
    before = path.read_bytes()
    _kill_mid_write(STUCK_STORE, tmp_path)
    assert path.read_bytes() == before  # the reader still sees the old table
    assert [name.startswith(".noise.csv.") for name in temp_files(path.parent)] == [True]
    store.write([make_row(seed=1)])  # the next writer of the table holds the lock: any temp file is stale
    assert temp_files(path.parent) == []
    assert sorted(store.read("quick", "noise")["seed"]) == [0, 1]


def test_stale_temp_file_of_a_killed_checkpoint_writer_is_swept(tmp_path):
    _kill_mid_write(STUCK_CACHE, tmp_path)
    (left,) = temp_files(tmp_path)
    assert ".pt." in left and not list(tmp_path.glob("*.pt"))  # no checkpoint, only the killed writer's temp
    CheckpointCache(tmp_path).train_or_load({**SPEC, "seed": 1}, conv_bn(), Trainer())
    assert temp_files(tmp_path) == [left]  # young: it might belong to a live writer
    hour_ago = time.time() - STALE_TEMP_SECONDS - 1
    os.utime(tmp_path / left, (hour_ago, hour_ago))
    live = tmp_path / ".other.pt.abcd1234.tmp"  # another process writing right now
    live.write_bytes(b"in progress")
    CheckpointCache(tmp_path).train_or_load({**SPEC, "seed": 2}, conv_bn(), Trainer())
    assert temp_files(tmp_path) == [live.name]


# -- item 11: data fingerprint ---------------------------------------------------------------------------


def test_other_pixels_give_another_fingerprint_and_another_checkpoint(tmp_path):
    bundle = load_dataset("digits", train_size=100, test_size=50)
    assert dataset_fingerprint(bundle) == dataset_fingerprint(load_dataset("digits", train_size=100, test_size=50))
    images = bundle.train.images.clone()
    images[0, 0, 0, 0] ^= 1  # what another font or resampling version could change
    other = DatasetBundle(bundle.name, ImageSet(images, bundle.train.labels, bundle.train.name), bundle.test,
                          bundle.num_classes, bundle.channels, bundle.image_size)
    assert dataset_fingerprint(other) != dataset_fingerprint(bundle)
    cache, train = CheckpointCache(tmp_path), Trainer()
    for data in (bundle, other, bundle):
        cache.train_or_load({**SPEC, "data": {"name": data.name, "fingerprint": dataset_fingerprint(data)}},
                            conv_bn(), train)
    assert train.calls == 2  # the second bundle's pixels differ: its own checkpoint, not the first one's
