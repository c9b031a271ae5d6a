"""Files written whole or not at all: into a temporary sibling, flushed, then renamed over the target.

Torch-free, for the writers of run files (src/run_files.py) and of reports (compare, confirm).
"""

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through `write` into a temporary sibling of its own (two processes may write the same
    path), flush it to disk, then rename it over `path`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None:  # named by its file, not the temporary's
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda f: f.write(text.encode()))
