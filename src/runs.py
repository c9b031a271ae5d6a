"""Run directories on disk, read back without torch: what `python -m src.compare` lists.

A run directory holds metrics.json and Hydra's .hydra/ (written by src.train). Anything broken
(no metrics.json, malformed JSON, a truncated metrics.csv, an empty directory) becomes one warning
naming the directory; the other runs are still read.
"""

import csv
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from src.run_record import HYDRA_DIR, METRICS_CSV, METRICS_JSON

YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
METRIC_KEYS = ("best_val_acc", "val_acc", "test_acc", "epochs_completed", "wall_time_s")
# What makes two runs comparable: the same data, model and epoch budget.
COMPARABILITY_KEYS = ("data_source", "n_train", "n_val", "n_test", "model", "trainer.epochs")
# Config keys that say where and how a run went, not what it trained: never shown as a difference
# between runs, never what sets two settings apart.
OPERATIONAL_KEYS = (
    "data.root",
    "data.download",
    "data.offline_fallback",
    "logger.name",
    "overwrite",
    "trainer.device",
    "trainer.num_threads",
    "trainer.prefix_cache",
)


@dataclass
class Run:
    directory: Path
    metrics: dict[str, Any]
    params: dict[str, Any]
    epochs: list[dict[str, float]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.metrics.get("status", "unknown"))

    def value(self, key: str) -> Any:
        """A metric (metrics.json), a hyperparameter (dotted config key) or `status`/`run`."""
        if key == "run":
            return str(self.directory)
        if key in self.metrics:
            return self.metrics[key]
        return self.params.get(key)

    def comparability(self) -> tuple:
        return tuple(self.value(key) for key in COMPARABILITY_KEYS)


def flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    """The composed config as dotted keys; a group's _target_ becomes the group's class name."""
    flat: dict[str, Any] = {}

    def visit(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_partial_":
                    continue
                if key == "_target_":
                    flat[prefix] = str(value).rsplit(".", 1)[-1]
                else:
                    visit(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            flat[prefix] = node if not isinstance(node, list) else str(node)

    visit("", config)
    return flat


def find_run_directories(roots: Iterable[Path]) -> tuple[list[Path], list[str]]:
    """Directories that look like runs (.hydra/ or metrics.json), and warnings for empty ones."""
    found, warnings = [], []
    for root in roots:
        if not root.is_dir():
            warnings.append(f"{root}: no such directory")
            continue
        for current, dirnames, filenames in os.walk(root):
            path = Path(current)
            if HYDRA_DIR in dirnames or METRICS_JSON in filenames:
                found.append(path)
                dirnames.clear()
            elif not dirnames and not filenames:
                warnings.append(f"{path}: empty directory, no run in it")
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return found, warnings


def read_epochs(path: Path) -> tuple[list[dict[str, float]], str | None]:
    """The complete rows of metrics.csv, and a warning when the file is truncated or unreadable."""
    if not path.exists():
        return [], None
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        for line_number, row in enumerate(reader, start=2):
            try:
                rows.append({key: float(value) for key, value in row.items()})
            except (TypeError, ValueError):
                return rows, f"{path.parent}: truncated metrics.csv (line {line_number} is incomplete)"
    return rows, None


def load_run(directory: Path) -> tuple[Run | None, list[str]]:
    metrics_path = directory / METRICS_JSON
    if not metrics_path.exists():
        return None, [f"{directory}: no metrics.json (the run crashed or is still running)"]
    try:
        metrics = json.loads(metrics_path.read_text())
        if not isinstance(metrics, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as error:
        return None, [f"{directory}: malformed metrics.json ({error})"]
    warnings = []
    config_path = directory / HYDRA_DIR / "config.yaml"
    params: dict[str, Any] = {}
    try:
        params = flatten_config(yaml.load(config_path.read_text(), Loader=YamlLoader) or {})
    except (OSError, yaml.YAMLError) as error:
        warnings.append(f"{directory}: unreadable .hydra/config.yaml ({type(error).__name__})")
    epochs, csv_warning = read_epochs(directory / METRICS_CSV)
    if csv_warning:
        warnings.append(csv_warning)
    return Run(directory, metrics, params, epochs), warnings


def load_runs(roots: Iterable[Path]) -> tuple[list[Run], list[str]]:
    directories, warnings = find_run_directories(roots)
    runs = []
    for directory in directories:
        run, run_warnings = load_run(directory)
        warnings += run_warnings
        if run is not None:
            runs.append(run)
    return runs, warnings
