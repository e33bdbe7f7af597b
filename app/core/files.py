"""Files the gateway watches and writes: the registry, the keys file, measured footprints."""

from __future__ import annotations

import os
from pathlib import Path


def file_mtime(path: Path | None) -> float:
    """A watched file's modification time (0.0 when it is missing): what the registry and keys watchers compare."""
    try:
        return os.stat(path).st_mtime_ns / 1e9 if path is not None else 0.0
    except OSError:
        return 0.0
