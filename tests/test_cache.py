"""Checkpoint cache: keys, train-or-load, rejection of corrupt or mismatched files, atomic writes, root."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from robustbench_norm.training import cache as cache_module
from robustbench_norm.training.cache import (
    CHECKPOINT_FORMAT,
    RECIPE_VERSION,
    CheckpointCache,
    CheckpointNotSavedWarning,
    CorruptCheckpointWarning,
    MismatchedCheckpointWarning,
    content_checksum,
)
from robustbench_norm.training.trainer import TrainingDiverged

SPEC = {"arch": "linear", "norm": "batchnorm", "norm_kwargs": {}, "data": "toy", "lr": 0.1, "seed": 0,
        "device": "cpu"}


class Trainer:
    """A train_fn that counts its calls and sets known weights."""

    def __init__(self, value: float = 0.25) -> None:
        self.calls = 0
        self.value = value

    def __call__(self, model: nn.Module) -> list[dict]:
        self.calls += 1
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(self.value)
        return [{"epoch": 1, "loss": 0.5}]


def files(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_key_is_sha256_of_canonical_spec_and_recipe():
    expected = hashlib.sha256(
        json.dumps({"recipe": RECIPE_VERSION, "spec": SPEC}, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert CheckpointCache(Path("unused")).key(SPEC) == expected


def test_key_ignores_order_and_sees_every_value(monkeypatch):
    cache = CheckpointCache(Path("unused"))
    key = cache.key(SPEC)
    assert cache.key(dict(reversed(list(SPEC.items())))) == key
    for field, value in [("seed", 1), ("lr", 0.2), ("norm_kwargs", {"num_groups": 4}), ("device", "cuda")]:
        assert cache.key({**SPEC, field: value}) != key
    monkeypatch.setattr(cache_module, "RECIPE_VERSION", RECIPE_VERSION + "-next")
    assert cache.key(SPEC) != key


@pytest.mark.parametrize("device", [None, "cuda:0", "gpu"])
def test_key_needs_the_device_type(device):
    spec = {k: v for k, v in SPEC.items() if k != "device"}
    if device is not None:
        spec["device"] = device
    with pytest.raises(ValueError, match=r"'device'.*\('cpu', 'cuda'\)"):
        CheckpointCache(Path("unused")).key(spec)


def test_key_rejects_values_json_cannot_hold():
    with pytest.raises(ValueError, match="not JSON-able"):
        CheckpointCache(Path("unused")).key({**SPEC, "lr": float("nan")})
    with pytest.raises(ValueError, match="not JSON-able"):
        CheckpointCache(Path("unused")).key({**SPEC, "data": object()})


def test_second_call_loads_without_training(tmp_path):
    cache, train = CheckpointCache(tmp_path), Trainer()
    first = cache.train_or_load(SPEC, nn.Linear(4, 3), train)
    assert not first.loaded and train.calls == 1
    assert files(tmp_path) == [f"{first.key}.pt"]
    second = cache.train_or_load(SPEC, nn.Linear(4, 3), train)
    assert second.loaded and train.calls == 1 and second.key == first.key
    assert torch.equal(second.model.weight, torch.full((3, 4), 0.25))
    assert second.history == [{"epoch": 1, "loss": 0.5}]


def test_different_spec_trains_again(tmp_path):
    cache, train = CheckpointCache(tmp_path), Trainer()
    a = cache.train_or_load(SPEC, nn.Linear(4, 3), train)
    b = cache.train_or_load({**SPEC, "seed": 1}, nn.Linear(4, 3), train)
    assert a.key != b.key and train.calls == 2 and len(files(tmp_path)) == 2


def test_dict_history_round_trips(tmp_path):
    cache = CheckpointCache(tmp_path)
    cache.train_or_load(SPEC, nn.Linear(4, 3), lambda model: {"final_loss": 0.1, "epochs": [1, 2]})
    loaded = cache.train_or_load(SPEC, nn.Linear(4, 3), Trainer())
    assert loaded.loaded and loaded.history == {"final_loss": 0.1, "epochs": [1, 2]}


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file_is_reported_and_retrained(tmp_path, damage):
    cache = CheckpointCache(tmp_path)
    path = cache.train_or_load(SPEC, nn.Linear(4, 3), Trainer()).path
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00not a checkpoint" * 9,
                      "empty": b""}[damage])
    train = Trainer(value=0.75)
    with pytest.warns(CorruptCheckpointWarning, match=rf"{path.name}.*unreadable.*retraining"):
        result = cache.train_or_load(SPEC, nn.Linear(4, 3), train)
    assert not result.loaded and train.calls == 1
    again = cache.train_or_load(SPEC, nn.Linear(4, 3), Trainer())
    assert again.loaded and torch.equal(again.model.weight, torch.full((3, 4), 0.75))


def test_state_dict_of_another_model_is_a_mismatch(tmp_path):
    cache = CheckpointCache(tmp_path)
    cache.train_or_load(SPEC, nn.Linear(4, 3), Trainer())
    train = Trainer()
    model = nn.Linear(4, 5)
    with pytest.warns(MismatchedCheckpointWarning, match=r"'weight': stored \(\(3, 4\)"):
        result = cache.train_or_load(SPEC, model, train)
    assert not result.loaded and train.calls == 1 and result.model is model
    with pytest.warns(MismatchedCheckpointWarning, match="missing"):
        cache.train_or_load(SPEC, nn.Sequential(nn.Linear(4, 5)), Trainer())


def test_stored_spec_must_equal_the_spec(tmp_path):
    cache = CheckpointCache(tmp_path)
    path = cache.train_or_load(SPEC, nn.Linear(4, 3), Trainer()).path
    payload = torch.load(path, weights_only=True)
    payload["spec_json"] = json.dumps({**SPEC, "seed": 99})
    torch.save(payload, path)
    train = Trainer()
    with pytest.warns(MismatchedCheckpointWarning, match="different spec"):
        cache.train_or_load(SPEC, nn.Linear(4, 3), train)
    assert train.calls == 1


UNPICKLED: list[str] = []


class Payload:
    """Executes code when unpickled: a weights_only load must refuse it."""

    def __reduce__(self):
        return (UNPICKLED.append, ("code ran",))


def test_load_is_weights_only(tmp_path):
    cache = CheckpointCache(tmp_path)
    path = cache.path(cache.key(SPEC))
    torch.save({"format": 1, "state_dict": {}, "trap": Payload()}, path)
    with pytest.warns(CorruptCheckpointWarning, match="unreadable"):
        cache.train_or_load(SPEC, nn.Linear(4, 3), Trainer())
    assert UNPICKLED == []


def test_write_is_atomic_when_saving_fails(tmp_path, monkeypatch):
    cache = CheckpointCache(tmp_path)
    first = cache.train_or_load(SPEC, nn.Linear(4, 3), Trainer())
    before = first.path.read_bytes()

    def failing_save(obj, file):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        cache._write(first.path, {"anything": 1})
    assert files(tmp_path) == [first.path.name]  # no temporary file left behind
    assert first.path.read_bytes() == before


def test_concurrent_writers_leave_one_valid_file(tmp_path):
    cache = CheckpointCache(tmp_path)
    errors: list[BaseException] = []

    def train(value: float) -> None:
        try:
            for _ in range(5):
                cache._write(cache.path(cache.key(SPEC)), _payload(cache, value))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=train, args=(v,)) for v in (0.25, 0.75)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and files(tmp_path) == [f"{cache.key(SPEC)}.pt"]
    result = cache.train_or_load(SPEC, nn.Linear(4, 3), Trainer())
    assert result.loaded and result.model.weight.flatten()[0].item() in (0.25, 0.75)


def _payload(cache: CheckpointCache, value: float) -> dict:
    model = nn.Linear(4, 3)
    Trainer(value)(model)
    payload = {"format": CHECKPOINT_FORMAT, "key": cache.key(SPEC), "spec_json": cache_module.canonical_json(SPEC),
               "state_dict": model.state_dict(), "history_json": "[]"}
    return {**payload, "checksum": content_checksum(payload)}


def test_history_must_be_json_able(tmp_path):
    with pytest.raises(ValueError, match="not JSON-able"):
        CheckpointCache(tmp_path).train_or_load(SPEC, nn.Linear(4, 3), lambda model: {"x": object()})


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTBENCH_NORM_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert CheckpointCache().root == tmp_path / "mine"
    monkeypatch.delenv("ROBUSTBENCH_NORM_CACHE")
    assert CheckpointCache().root == tmp_path / "xdg" / "robustbench-norm" / "checkpoints"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert CheckpointCache().root == tmp_path / "home" / ".cache" / "robustbench-norm" / "checkpoints"
    assert not (tmp_path / "home").exists()  # nothing is created until a checkpoint is written


def test_checksum_depends_on_values_not_on_the_file_layout(tmp_path):
    cache = CheckpointCache(tmp_path)
    payload = _payload(cache, 0.25)
    assert payload["checksum"] == content_checksum({**payload, "state_dict": {
        name: tensor.clone() for name, tensor in reversed(list(payload["state_dict"].items()))}})
    for changed in ({"history_json": "[1]"}, {"spec_json": "{}"},
                    {"state_dict": {**payload["state_dict"], "bias": torch.full((3,), 0.5)}},
                    {"state_dict": {**payload["state_dict"], "bias": torch.full((3,), 0.25, dtype=torch.float64)}}):
        assert content_checksum({**payload, **changed}) != payload["checksum"]


def test_old_format_is_a_mismatch_and_retrained(tmp_path):
    cache = CheckpointCache(tmp_path)
    path = cache.train_or_load(SPEC, nn.Linear(4, 3), Trainer()).path
    payload = torch.load(path, weights_only=True)
    del payload["checksum"]
    torch.save({**payload, "format": 1}, path)
    train = Trainer()
    with pytest.warns(MismatchedCheckpointWarning, match="format 1, expected 2"):
        cache.train_or_load(SPEC, nn.Linear(4, 3), train)
    assert train.calls == 1


def test_non_finite_training_output_is_not_cached(tmp_path):
    def diverge(model: nn.Module) -> list:
        with torch.no_grad():
            model.bias[1] = float("inf")
        return []

    cache = CheckpointCache(tmp_path)
    with pytest.raises(TrainingDiverged, match="non-finite.*'bias'"):
        cache.train_or_load(SPEC, nn.Linear(4, 3), diverge)
    assert files(tmp_path) == []


def test_failed_write_after_training_keeps_the_trained_model(tmp_path, monkeypatch):
    cache = CheckpointCache(tmp_path)

    def disk_full(path, payload):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "_write", disk_full)
    train = Trainer(value=0.75)
    with pytest.warns(CheckpointNotSavedWarning, match=r"\.pt not saved.*No space left.*retrained next time"):
        result = cache.train_or_load(SPEC, nn.Linear(4, 3), train)
    assert not result.loaded and train.calls == 1
    assert torch.equal(result.model.weight, torch.full((3, 4), 0.75))
