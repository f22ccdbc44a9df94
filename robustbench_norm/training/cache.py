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
``{"format": 2, "key", "spec_json", "state_dict", "history_json", "checksum"}``. ``checksum`` is the
SHA-256 of everything else (:func:`content_checksum`: key, spec, history, and every tensor's name, dtype,
shape and bytes); ``torch.load`` itself checks none of it (one flipped byte inside a tensor loads as a
different weight). A file is never trusted when it does not load, lacks a field, was written for another
spec, fails its checksum, does not fit the model, or holds a non-finite weight or buffer (what a damaged
file or a diverged training leaves; the predictions of such a model collapse): a
:class:`CorruptCheckpointWarning` or :class:`MismatchedCheckpointWarning` names the file and the reason,
and the model is retrained and the file overwritten.

Training output is never cached unless finite: weights or buffers with NaN/inf after ``train_fn`` raise
:class:`~robustbench_norm.training.trainer.TrainingDiverged` naming the tensor. Training is never lost to
the cache either: the root must be writable *before* training starts (:meth:`CheckpointCache.check_writable`
creates it and writes a probe file, else :class:`CacheNotWritableError` names the folder and how to choose
another), and a write that still fails afterwards (disk full) is a :class:`CheckpointNotSavedWarning`, the
trained model being returned all the same. Writes go to a temporary file in the same directory, then
``os.replace``: a reader sees the old file or the new one, never half of one; temporary files of killed writers
are swept by later writes (:mod:`robustbench_norm.atomic`).

A key is trained once even when several processes ask for it at once (two sweeps, two xdist workers):
training holds an exclusive ``fcntl.flock`` on the sibling lock file ``.<key>.pt.lock``
(:func:`robustbench_norm.results.store.locked`) and looks for the checkpoint again once it holds the lock, so
a process that waited loads what the first one wrote. The kernel releases the lock of a killed process. A
valid checkpoint is loaded without the lock (a read-only cache needs none).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from robustbench_norm.atomic import TEMP_SUFFIX, atomic_write
from robustbench_norm.results.store import locked
from robustbench_norm.training.trainer import TrainingDiverged

RECIPE_VERSION = "3"  # 3: converged quick recipes (training.recipes), mnist5k, local LCN, data fingerprints
CHECKPOINT_FORMAT = 2  # 2: content checksum
CHECKPOINT_FIELDS: tuple[str, ...] = ("format", "key", "spec_json", "state_dict", "history_json", "checksum")
DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda")

TrainFn = Callable[[nn.Module], "list[dict[str, Any]] | dict[str, Any] | None"]


class RejectedCheckpointWarning(UserWarning):
    """A cached checkpoint was not used (it is retrained and overwritten)."""


class CorruptCheckpointWarning(RejectedCheckpointWarning):
    """The checkpoint cannot be trusted: unreadable, a field missing, checksum mismatch, non-finite tensors."""


class MismatchedCheckpointWarning(RejectedCheckpointWarning):
    """The checkpoint is readable but belongs to another spec or does not fit the model."""


class CheckpointNotSavedWarning(UserWarning):
    """Training finished but its checkpoint could not be written (the trained model is still returned)."""


class CacheNotWritableError(OSError):
    """The cache folder cannot be created or written (raised before any training)."""


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

    def check_writable(self) -> None:
        """Create ``root`` and write (then delete) a probe file in it; :class:`CacheNotWritableError` if that fails."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-probe.", suffix=TEMP_SUFFIX):
                pass
        except OSError as error:
            raise CacheNotWritableError(
                f"checkpoint cache folder {self.root} is not writable ({type(error).__name__}: {error}); "
                "choose another with --cache-dir DIR (pytest suites) or the ROBUSTBENCH_NORM_CACHE "
                "environment variable"
            ) from error

    def train_or_load(self, spec: dict[str, Any], model: nn.Module, train_fn: TrainFn) -> CacheResult:
        """Load the weights for ``spec`` into ``model`` if a valid checkpoint exists, else ``train_fn(model)``.

        Before training, the root must be writable (:meth:`check_writable`). Training holds the key's lock
        and starts only if the checkpoint is still missing or rejected once the lock is held (see the module
        docstring). After training, the weights (moved to the CPU; all finite, else :class:`TrainingDiverged`)
        and the JSON-able history ``train_fn`` returned are written atomically. ``model`` must have the
        architecture ``spec`` describes.
        """
        key = self.key(spec)
        spec_json = canonical_json(spec)
        path = self.path(key)
        if path.exists():
            try:
                history = self._load(path, key, spec_json, model)
                return CacheResult(model, key, loaded=True, history=history, path=path)
            except _Rejected:
                pass  # looked at again, and reported, under the lock
        self.check_writable()
        with locked(path):
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
            self._save(path, key, spec_json, model, history)
        return CacheResult(model, key, loaded=False, history=history, path=path)

    def _save(self, path: Path, key: str, spec_json: str, model: nn.Module, history: Any) -> None:
        """Write the trained weights (finite, else :class:`TrainingDiverged`); a failed write only warns."""
        state_dict = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
        bad = non_finite_tensor(state_dict)
        if bad is not None:
            raise TrainingDiverged(f"training left non-finite values (NaN or inf) in tensor {bad!r}; not cached")
        payload = {"format": CHECKPOINT_FORMAT, "key": key, "spec_json": spec_json, "state_dict": state_dict,
                   "history_json": canonical_json(history)}
        payload["checksum"] = content_checksum(payload)
        try:
            self._write(path, payload)
        except OSError as error:
            warnings.warn(f"checkpoint {path} not saved ({type(error).__name__}: {error}); the trained model "
                          "is used but will be retrained next time", CheckpointNotSavedWarning, stacklevel=3)

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
        if not isinstance(payload, dict) or "format" not in payload:
            raise _Rejected(CorruptCheckpointWarning, f"not a checkpoint dict with fields {CHECKPOINT_FIELDS}")
        if payload["format"] != CHECKPOINT_FORMAT:
            raise _Rejected(MismatchedCheckpointWarning, f"format {payload['format']!r}, expected {CHECKPOINT_FORMAT}")
        if any(name not in payload for name in CHECKPOINT_FIELDS):
            raise _Rejected(CorruptCheckpointWarning, f"not a checkpoint dict with fields {CHECKPOINT_FIELDS}")
        if payload["key"] != key or payload["spec_json"] != spec_json:
            raise _Rejected(MismatchedCheckpointWarning, "it was written for a different spec")
        _check_state_dict(payload["state_dict"], model)
        if payload["checksum"] != content_checksum(payload):
            raise _Rejected(CorruptCheckpointWarning, "content checksum mismatch: the file changed after writing")
        bad = non_finite_tensor(payload["state_dict"])
        if bad is not None:
            raise _Rejected(CorruptCheckpointWarning, f"tensor {bad!r} holds non-finite values (NaN or inf)")
        model.load_state_dict(payload["state_dict"])
        return json.loads(payload["history_json"])

    def _write(self, path: Path, payload: dict[str, Any]) -> None:
        atomic_write(path, lambda handle: torch.save(payload, handle), binary=True)


def content_checksum(payload: dict[str, Any]) -> str:
    """SHA-256 hex digest of a checkpoint's key, spec, history and tensors (name, dtype, shape, raw bytes).

    Tensors are hashed in sorted name order as contiguous CPU bytes, so the digest depends on the values
    alone, not on how ``torch.save`` laid them out in the file.
    """
    digest = hashlib.sha256()
    for name in ("key", "spec_json", "history_json"):
        digest.update(f"{name}={payload[name]}\n".encode())
    for name in sorted(payload["state_dict"]):
        tensor = payload["state_dict"][name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def non_finite_tensor(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The first name (sorted) of a floating-point or complex tensor with a NaN or inf value, else None."""
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            return name
    return None


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
