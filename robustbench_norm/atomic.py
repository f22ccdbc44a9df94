"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Callable


def atomic_write(path: Path, write: Callable[[IO], None], *, binary: bool = False) -> None:
    """Create or replace ``path`` with what ``write(handle)`` writes, atomically (temp file + ``os.replace``).

    The file keeps the mode of the file it replaces (new files: 0644).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
