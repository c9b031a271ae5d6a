"""The files each run leaves in its output directory, always written atomically (write, then rename).

metrics.csv  one row per finished epoch (rewritten after each epoch, so a crash keeps what finished)
metrics.json the run's outcome: status, final and best metrics, data source, sizes, overrides
model.pt     the final weights (state_dict)
"""

import csv
import io
import json
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from src.loop import EpochRecord
from src.run_record import METRICS_CSV, METRICS_JSON, WEIGHTS

CSV_COLUMNS = list(EpochRecord.__dataclass_fields__)


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
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda f: f.write(text.encode()))


def write_epochs(run_dir: Path, records: Sequence[EpochRecord]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow(record.as_row())
    write_text_atomically(run_dir / METRICS_CSV, buffer.getvalue())


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_text_atomically(run_dir / METRICS_JSON, json.dumps(summary, indent=2) + "\n")


def save_weights(run_dir: Path, model: nn.Module) -> None:
    write_atomically(run_dir / WEIGHTS, lambda f: torch.save(model.state_dict(), f))
