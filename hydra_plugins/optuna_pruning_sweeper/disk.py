"""Whether a directory can take a run's files, asked before anything is written into it (standard library)."""

import os
import shutil
from pathlib import Path

# Far more than a run's own files (config, log, metrics: tens of kB), far less than any working disk has.
MIN_FREE_BYTES = 1 << 20


def nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def unwritable_reason(directory: Path) -> str | None:
    """Why files cannot be written into `directory` (created if need be), or None when they can."""
    existing = nearest_existing(directory)
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable (read-only file system or permissions)"
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        return (
            f"its file system has {free // 1024} kB free, less than the {MIN_FREE_BYTES >> 20} MB a run needs"
        )
    return None
