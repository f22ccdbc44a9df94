"""Provenance of a measurement: the machine, the package versions and the code's git commit.

Recorded in every :class:`~robustbench_norm.results.rows.ResultRow`, so that a number in a leaderboard
can be traced to what produced it (pytest-benchmark records the same trio as ``machine_info`` /
``commit_info``).

* ``device``: the device type, ``"cpu"`` or ``"cuda"`` (part of a row's key: weights trained on a GPU differ
  from CPU ones, so the two are never merged or averaged);
* ``hardware``: ``"cpu (x86_64, 2 cores)"`` or ``"cuda:0 (NVIDIA H100 80GB HBM3)"``;
* ``versions``: ``"python=3.11.7 torch=2.13.0+cpu numpy=2.4.6 robustbench_norm=0.1.0"``;
* ``git_commit``: ``git rev-parse --short HEAD`` of the checkout that holds this package, with
  ``"-dirty"`` appended when ``git status --porcelain`` lists a change outside ``leaderboards/``
  (result files written by the benchmark itself are not code changes); ``"unknown"`` when the package
  is not a tracked file of a git checkout (e.g. installed from a wheel) or git is not available.

Versions and commit are computed once per process (cached); git runs three times, each with a 10 s
timeout. torch is imported only when provenance is collected.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy

import robustbench_norm

if TYPE_CHECKING:
    import torch

RESULTS_DIRNAME = "leaderboards"


@dataclass(frozen=True)
class Provenance:
    """Where and with what code a measurement was taken (see the module docstring for the formats)."""

    device: str
    hardware: str
    versions: str
    git_commit: str

    def as_fields(self) -> dict[str, str]:
        """The four :class:`~robustbench_norm.results.rows.ResultRow` fields this fills in."""
        return {"device": self.device, "hardware": self.hardware, "versions": self.versions,
                "git_commit": self.git_commit}


def collect_provenance(device: torch.device) -> Provenance:
    """The :class:`Provenance` of measurements taken on ``device`` by this process (cached)."""
    return Provenance(str(device).split(":")[0], describe_device(device), package_versions(),
                      git_commit(_package_file()))


@lru_cache(maxsize=None)
def describe_device(device: torch.device) -> str:
    """A short human-readable description of ``device`` including the accelerator's model name."""
    import torch  # deferred: reading and publishing results does not need torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
    return str(device)


@lru_cache(maxsize=None)
def package_versions() -> str:
    """``"python=... torch=... numpy=... robustbench_norm=..."`` for this interpreter."""
    import torch
    python = ".".join(str(part) for part in sys.version_info[:3])
    return (f"python={python} torch={torch.__version__} numpy={numpy.__version__} "
            f"robustbench_norm={robustbench_norm.__version__}")


def _package_file() -> Path:
    return Path(robustbench_norm.__file__).resolve()


@lru_cache(maxsize=None)
def git_commit(tracked_file: Path) -> str:
    """Short commit of the checkout in which ``tracked_file`` is tracked (+ ``-dirty``), else ``"unknown"``."""
    directory = tracked_file.parent
    if _git(directory, "ls-files", "--error-unmatch", tracked_file.name) is None:
        return "unknown"
    commit = _git(directory, "rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    changes = _git(directory, "status", "--porcelain", "--", ":/", f":(top,exclude){RESULTS_DIRNAME}")
    return f"{commit}-dirty" if changes else commit


def _git(directory: Path, *args: str) -> str | None:
    """stdout of ``git -C directory args`` (stripped), or None when git fails or is missing."""
    try:
        done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
