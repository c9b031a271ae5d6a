"""Training runs in-process (many short runs) and their metrics.csv."""

import csv
from pathlib import Path

from helpers.cli import compose_run, tiny_data_overrides
from src.run import train


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


TIMING = {"train_time_s", "epoch_time_s"}


def rows_without_timing(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv without the columns that measure time (the rest must be reproducible)."""
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_rows(run_dir)]


def train_tiny(tiny_mnist: Path, run_dir: Path, *overrides: str) -> float:
    return train(compose_run([*tiny_data_overrides(tiny_mnist), *overrides], run_dir))
