"""Atomic file writes: a reader sees the old file or the new one, never half of one.

:func:`atomic_write` writes ``<folder>/.<name>.<random>.tmp`` and moves it over ``<folder>/<name>`` with
``os.replace``. A writer killed between the two (SIGKILL, power loss) leaves its temporary file behind;
later writes into the same folder remove such leftovers:

* :func:`atomic_write` removes every ``.*.tmp`` file of the folder whose last modification is older than
  :data:`STALE_TEMP_SECONDS` (a live writer keeps touching its file and replaces it within seconds, so an
  hour-old one belongs to a dead process). Files ending in ``.tmp`` that start with a dot are taken to be
  ours: do not keep files of your own named like that in a results or cache folder.
* A caller that holds the lock every writer of ``path`` takes (the result store, the baselines) knows
  that any temporary file of ``path`` is a leftover, whatever its age, and removes it at once with
  :func:`remove_temp_files` ``(path.parent, target=path.name, older_than=0)``.
"""

from __future__ import annotations

import glob
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import IO, Callable

TEMP_SUFFIX = ".tmp"
STALE_TEMP_SECONDS = 3600.0


def remove_temp_files(folder: Path, *, target: str | None = None,
                      older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete leftover temporary files of :func:`atomic_write` in ``folder``; the files deleted.

    ``target``: only those of that file name (``.<target>.*.tmp``), else every ``.*.tmp``; ``older_than``:
    only those last modified at least that many seconds ago. A file that vanishes meanwhile (another
    process swept it) is skipped.
    """
    prefix = f".{target}." if target is not None else "."
    cutoff = time.time() - older_than
    removed = []
    for candidate in folder.glob(f"{glob.escape(prefix)}*{TEMP_SUFFIX}") if folder.is_dir() else ():
        try:
            if candidate.is_file() and candidate.stat().st_mtime <= cutoff:
                candidate.unlink()
                removed.append(candidate)
        except FileNotFoundError:
            continue
    return removed


def atomic_write(path: Path, write: Callable[[IO], None], *, binary: bool = False) -> None:
    """Create or replace ``path`` with what ``write(handle)`` writes, atomically (temp file + ``os.replace``).

    The file keeps the mode of the file it replaces (new files: 0644). Stale temporary files in the
    folder are removed first (see the module docstring).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_temp_files(path.parent)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(descriptor, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644)
        with os.fdopen(descriptor, "wb" if binary else "w", **({} if binary else {"newline": ""})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
