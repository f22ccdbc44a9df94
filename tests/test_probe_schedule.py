"""``scripts/probe_schedule.py``: the probe that chose the quick mixture recipes changes only what it is told."""

import importlib.util
from pathlib import Path

import pytest

from robustbench_norm.training.recipes import recipe

_SPEC = importlib.util.spec_from_file_location(
    "probe_schedule", Path(__file__).resolve().parents[1] / "scripts" / "probe_schedule.py")
probe = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(probe)


def test_changes_are_parsed_as_json_and_unknown_fields_are_named():
    assert probe.parse_changes(["epochs=80", "optimizer=adam", "lr=0.1"]) == {"epochs": 80, "optimizer": "adam",
                                                                             "lr": 0.1}
    with pytest.raises(SystemExit, match="'epoch=1'.*epochs"):
        probe.parse_changes(["epoch=1"])


def test_probe_resizes_only_generated_parts_and_trains_on_validation(tmp_path):
    session = probe.probe_session("blend", {"epochs": 3}, 500, seeds=1, cache_dir=tmp_path)
    assert [p.train_size for p in session.profile.blend.parts] == [None, 500]
    assert session.validation
    assert session.transform(recipe("quick", "blend", "batchnorm")).train.epochs == 3
