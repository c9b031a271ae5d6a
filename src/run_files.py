"""The files each run leaves in its output directory, always written atomically (write, then rename).

metrics.csv  one row per finished epoch (rewritten after each epoch, so a crash keeps what finished)
metrics.json the run's outcome: status, final and best metrics, data source, sizes, overrides
lr_steps.csv a per-step schedule's lr at each optimizer step (written when the run ends)
model.pt     the final weights (state_dict)
"""

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from src.atomic_files import write_atomically, write_text_atomically
from src.run_record import LR_STEPS, METRICS_CSV, METRICS_JSON, WEIGHTS, EpochRecord

CSV_COLUMNS = list(EpochRecord.__dataclass_fields__)


def write_epochs(run_dir: Path, records: Sequence[EpochRecord]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow(record.as_row())
    write_text_atomically(run_dir / METRICS_CSV, buffer.getvalue())


def write_step_lrs(run_dir: Path, step_lrs: Sequence[float]) -> None:
    """lr_steps.csv, once at the end of the run (metrics.csv has each epoch's first and last rate)."""
    rows = "".join(f"{step},{lr!r}\n" for step, lr in enumerate(step_lrs, start=1))
    write_text_atomically(run_dir / LR_STEPS, "step,lr\n" + rows)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_text_atomically(run_dir / METRICS_JSON, json.dumps(summary, indent=2) + "\n")


def save_weights(run_dir: Path, model: nn.Module) -> None:
    write_atomically(run_dir / WEIGHTS, lambda f: torch.save(model.state_dict(), f))
