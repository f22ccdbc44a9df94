"""Train-or-load checkpoint cache keyed by a hash of everything that determines the trained weights.

The key is the SHA-256 of the canonical JSON (sorted keys, no whitespace) of ``{"recipe": RECIPE_VERSION,
"spec": spec}``. The caller's ``spec`` names everything else that fixes the weights: architecture, norm and
its kwargs, data set and sizes, hyper-parameters, seed, and the device type (``"cpu"`` or ``"cuda"``, a
required entry: CUDA kernels are not bit-identical to CPU ones, so weights trained on one are not the
weights the other would train). Lower-level differences are deliberately not in the key: the CPU's
thread count and instruction set change the float reduction order and so the weights (``localnorm_mnist``
on ``digits``, seed 0: 98.6% test accuracy on 1 thread, 99.2% on 2), yet a CPU checkpoint is reused
across them. ``RECIPE_VERSION`` stands for the training code itself; bump it whenever a change to the
trainer, AdaMatch, the models or the norm layers alters the weights a spec produces, and every cached
checkpoint is retrained on next use.

A checkpoint ``<root>/<key>.pt`` holds plain data only (loaded with ``torch.load(weights_only=True)``):
``{"format": 1, "key", "spec_json", "state_dict", "history_json"}``. A file that does not load, lacks a field,
was written for another spec, or whose tensors do not fit the model is never trusted: a
:class:`CorruptCheckpointWarning` or :class:`MismatchedCheckpointWarning` names the file and the reason,
and the model is retrained and the file overwritten. Writes go to a temporary file in the same directory,
then ``os.replace``: a reader sees the old file or the new one, never half of one, and two processes that
train the same key at once both leave a valid file (the last replace wins).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from robustbench_norm.atomic import atomic_write

RECIPE_VERSION = "2"  # 2: suite models are built right after seeding (init independent of test order)
CHECKPOINT_FORMAT = 1
DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda")

TrainFn = Callable[[nn.Module], "list[dict[str, Any]] | dict[str, Any] | None"]


class RejectedCheckpointWarning(UserWarning):
    """A cached checkpoint was not used (it is retrained and overwritten)."""


class CorruptCheckpointWarning(RejectedCheckpointWarning):
    """The checkpoint file cannot be read or lacks a field (truncated, damaged, not ours)."""


class MismatchedCheckpointWarning(RejectedCheckpointWarning):
    """The checkpoint is readable but belongs to another spec or does not fit the model."""


@dataclass
class CacheResult:
    """The model with trained weights, its cache key, whether they came from disk, and the training history."""

    model: nn.Module
    key: str
    loaded: bool
    history: Any
    path: Path


class _Rejected(Exception):
    def __init__(self, warning: type[RejectedCheckpointWarning], reason: str) -> None:
        super().__init__(reason)
        self.warning = warning


def default_root() -> Path:
    """``$ROBUSTBENCH_NORM_CACHE``, else ``$XDG_CACHE_HOME/robustbench-norm/checkpoints``, else ``~/.cache/...``."""
    if os.environ.get("ROBUSTBENCH_NORM_CACHE"):
        return Path(os.environ["ROBUSTBENCH_NORM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "robustbench-norm" / "checkpoints"


def canonical_json(value: Any) -> str:
    """Sorted-key, whitespace-free JSON; ``ValueError`` for anything JSON cannot hold exactly (NaN included)."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"value is not JSON-able (plain dicts, lists, str, int, finite float, bool, None): {error}")


class CheckpointCache:
    """Trained weights on disk under ``root`` (default: :func:`default_root`), one file per key."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def key(self, spec: dict[str, Any]) -> str:
        """SHA-256 hex digest of the canonical JSON of ``spec`` and :data:`RECIPE_VERSION`."""
        device = spec.get("device")
        if device not in DEVICE_TYPES:
            raise ValueError(
                f"checkpoint spec needs 'device' set to the training device type, one of {DEVICE_TYPES}; "
                f"got {device!r}"
            )
        return hashlib.sha256(canonical_json({"recipe": RECIPE_VERSION, "spec": spec}).encode()).hexdigest()

    def path(self, key: str) -> Path:
        """Where the checkpoint of ``key`` lives."""
        return self.root / f"{key}.pt"

    def train_or_load(self, spec: dict[str, Any], model: nn.Module, train_fn: TrainFn) -> CacheResult:
        """Load the weights for ``spec`` into ``model`` if a valid checkpoint exists, else ``train_fn(model)``.

        After training, the weights (moved to the CPU) and the JSON-able history ``train_fn`` returned are
        written atomically. ``model`` must have the architecture ``spec`` describes.
        """
        key = self.key(spec)
        spec_json = canonical_json(spec)
        path = self.path(key)
        if path.exists():
            try:
                history = self._load(path, key, spec_json, model)
                return CacheResult(model, key, loaded=True, history=history, path=path)
            except _Rejected as rejected:
                warnings.warn(
                    f"checkpoint {path} rejected ({rejected}); retraining and overwriting it",
                    rejected.warning,
                    stacklevel=2,
                )
        history = train_fn(model)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "key": key,
            "spec_json": spec_json,
            "state_dict": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
            "history_json": canonical_json(history),
        }
        self._write(path, payload)
        return CacheResult(model, key, loaded=False, history=history, path=path)

    @staticmethod
    def _load(path: Path, key: str, spec_json: str, model: nn.Module) -> Any:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # any failure to unpickle means the file cannot be trusted
            first_line = (str(error).strip().splitlines() or [""])[0][:200]
            raise _Rejected(
                CorruptCheckpointWarning,
                f"unreadable by torch.load(weights_only=True): {type(error).__name__}: {first_line}",
            ) from error
        fields = ("format", "key", "spec_json", "state_dict", "history_json")
        if not isinstance(payload, dict) or any(name not in payload for name in fields):
            raise _Rejected(CorruptCheckpointWarning, f"not a checkpoint dict with fields {fields}")
        if payload["format"] != CHECKPOINT_FORMAT:
            raise _Rejected(MismatchedCheckpointWarning, f"format {payload['format']!r}, expected {CHECKPOINT_FORMAT}")
        if payload["key"] != key or payload["spec_json"] != spec_json:
            raise _Rejected(MismatchedCheckpointWarning, "it was written for a different spec")
        _check_state_dict(payload["state_dict"], model)
        model.load_state_dict(payload["state_dict"])
        return json.loads(payload["history_json"])

    def _write(self, path: Path, payload: dict[str, Any]) -> None:
        atomic_write(path, lambda handle: torch.save(payload, handle), binary=True)


def _check_state_dict(state_dict: Any, model: nn.Module) -> None:
    """Raise ``_Rejected`` unless ``state_dict`` has exactly the model's names, shapes and dtypes."""
    if not isinstance(state_dict, dict):
        raise _Rejected(CorruptCheckpointWarning, "state_dict is not a dict")
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise _Rejected(
            MismatchedCheckpointWarning,
            f"state_dict does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}",
        )
    for name, tensor in expected.items():
        stored = state_dict[name]
        if not isinstance(stored, torch.Tensor) or stored.shape != tensor.shape or stored.dtype != tensor.dtype:
            found = (tuple(stored.shape), stored.dtype) if isinstance(stored, torch.Tensor) else type(stored).__name__
            raise _Rejected(
                MismatchedCheckpointWarning,
                f"tensor {name!r}: stored {found}, model has {(tuple(tensor.shape), tensor.dtype)}",
            )
