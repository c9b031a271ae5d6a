"""Run directories on disk, read back without torch: what `python -m src.compare` lists.

A run directory holds metrics.json and Hydra's .hydra/ (written by src.train). Anything broken
(no metrics.json, malformed JSON, a truncated metrics.csv, an empty directory) becomes one warning
naming the directory; the other runs are still read.
"""

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from src.run_record import (
    DATA_SIZES,
    HYDRA_DIR,
    LR_STEPS,
    METRICS_CSV,
    METRICS_JSON,
    NUMERIC_SUMMARY,
    SWEEP_CONFIG,
    Column,
    Summary,
    class_name,
)

YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# The metrics.json values compare's table shows.
METRIC_KEYS = (
    Summary.BEST_VAL_ACC,
    Summary.VAL_ACC,
    Summary.TEST_ACC,
    Summary.EPOCHS_COMPLETED,
    Summary.WALL_TIME_S,
)
# Far above what a run writes (metrics.json and config.yaml: a few kB; metrics.csv: ~100 bytes an epoch).
MAX_JSON_BYTES = 1_000_000
MAX_CSV_BYTES = 50_000_000
# What makes two runs comparable: the same data, model and epoch budget.
COMPARABILITY_KEYS = (Summary.DATA_SOURCE, *DATA_SIZES, "model", "trainer.epochs")
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


# The config group of the files src.confirm reruns a setting from (`+confirm=setting-<id>`): it names the
# rerun's config file, not what it trained.
RERUN_GROUP = "confirm"
# Where the schedule families' preset writes each family's search space (src/schedule_families.py).
FAMILIES_KEY = "schedule_families"
# Overrides that say where and how a run went, not what it trained: left out of what names its setting.
NOT_SETTING_OVERRIDES = (
    f"{RERUN_GROUP}=",
    f"{FAMILIES_KEY}.",
    "data.",
    "logger",
    "hparams_search",
    "overwrite",
    "prune_from",
    "optimized_metric",
    *OPERATIONAL_KEYS,
)


def setting_overrides(overrides: Iterable[str]) -> list[str]:
    """The task overrides that set what a run trained (its TensorBoard name, compare --best-per)."""
    return [o for o in overrides if not o.lstrip("+~").startswith(NOT_SETTING_OVERRIDES)]


@dataclass
class Run:
    directory: Path
    metrics: dict[str, Any]
    params: dict[str, Any]
    epochs: list[dict[str, float]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.metrics.get(Summary.STATUS, "unknown"))

    def value(self, key: str) -> Any:
        """A metric (metrics.json), a hyperparameter (dotted config key) or `status`/`run`."""
        if key == "run":
            return str(self.directory)
        if key in self.metrics:
            return self.metrics[key]
        return self.params.get(key)

    def has(self, key: str) -> bool:
        """value(key) names something this run records (its value may still be None: a failed run's)."""
        return key == "run" or key in self.metrics or key in self.params

    def comparability(self) -> tuple:
        values = (self.value(key) for key in COMPARABILITY_KEYS)
        return tuple(repr(v) if isinstance(v, list | dict) else v for v in values)  # hashable


def flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    """The composed config as dotted keys; a group's _target_ becomes the group's class name."""
    flat: dict[str, Any] = {}

    def visit(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_partial_":
                    continue
                if key == "_target_":
                    flat[prefix] = class_name(value)
                else:
                    visit(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            flat[prefix] = node if not isinstance(node, list) else str(node)

    visit("", config)
    return flat


def resolved_interpolations(
    config: dict[str, Any], params: dict[str, Any], metrics: dict[str, Any]
) -> dict[str, Any]:
    """The params Hydra saved as interpolations (`total_steps: ${steps.total}`), resolved in the run's config
    with the steps it filled in from its data (metrics.json; for a run from before it recorded them, its
    recorded hyperparameters). One that cannot be resolved stays as written."""
    interpolated = [key for key, value in params.items() if isinstance(value, str) and "${" in value]
    if not interpolated:
        return {}
    from omegaconf import Container, OmegaConf  # only here: most runs have none, and compare stays fast
    from omegaconf.errors import OmegaConfBaseException

    steps = metrics.get(Summary.STEPS)
    if isinstance(steps, dict) and isinstance(config.get("steps"), dict):
        config = {**config, "steps": {**config["steps"], **steps}}
    recorded = metrics.get(Summary.HYPERPARAMETERS)
    recorded = recorded if isinstance(recorded, dict) else {}
    try:
        conf = OmegaConf.create(config)
    except OmegaConfBaseException:
        return {}
    resolved: dict[str, Any] = {}
    for key in interpolated:
        try:
            value = OmegaConf.select(conf, key, throw_on_resolution_failure=True)
            if isinstance(value, Container):
                value = str(OmegaConf.to_container(value, resolve=True))
        except OmegaConfBaseException:
            value = None
        if value is None:
            value = recorded.get(key)
        if value is not None:
            resolved[key] = value
    return resolved


def in_number_order(name: str) -> list[Any]:
    """A sort key that puts a sweep's job directories in the order of their numbers: 2 before 10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def find_run_directories(roots: Iterable[Path]) -> tuple[list[Path], list[str]]:
    """Directories that look like runs (.hydra/ or metrics.json); warnings for empty or unreadable ones. An
    empty directory in a sweep directory (Hydra's multirun.yaml beside it) is passed over: a job of a running
    sweep that has not started yet (the sweeper makes its jobs' directories before it launches them,
    hydra_plugins/optuna_pruning_sweeper/job_dirs.py). A run under two of the roots (`multirun/ multirun/x`,
    a link) is found once: listed twice, it counted twice in --over-seeds' statistics."""
    found, warnings, seen = [], [], set()
    for root in roots:
        if not root.is_dir():
            warnings.append(f"{root}: {'not a directory' if root.exists() else 'no such directory'}")
            continue

        def unreadable(error: OSError) -> None:
            warnings.append(f"{error.filename}: cannot be read ({error.strerror}), skipped")

        for current, dirnames, filenames in os.walk(root, onerror=unreadable):
            path = Path(current)
            if HYDRA_DIR in dirnames or METRICS_JSON in filenames:
                if (real := path.resolve()) not in seen:
                    seen.add(real)
                    found.append(path)
                dirnames.clear()
            elif not dirnames and not filenames and not (path.parent / SWEEP_CONFIG).is_file():
                warnings.append(f"{path}: empty directory, no run in it")
            dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=in_number_order)
    return found, warnings


class UnreadableFile(Exception):
    """A run file that cannot be what the run wrote; the message says why."""


def read_small_text(path: Path, limit: int) -> str:
    """A run file's text, refused unless it is a readable UTF-8 file of at most `limit` bytes (a run writes
    a few kilobytes: a 300 MB metrics.json once took compare 22 s and 4.8 GB to read)."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise UnreadableFile("not a file")
        if size > limit:
            raise UnreadableFile(f"{size / 1e6:.0f} MB, larger than any run writes")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableFile("not UTF-8 text") from None
    except OSError as error:
        raise UnreadableFile(error.strerror or type(error).__name__) from None


def read_epochs(path: Path) -> tuple[list[dict[str, float]], str | None]:
    """The complete rows of metrics.csv, and a warning when the file is truncated or unreadable."""
    if not path.exists():
        return [], None
    try:
        text = read_small_text(path, MAX_CSV_BYTES)
    except UnreadableFile as error:
        return [], f"{path.parent}: unreadable {METRICS_CSV} ({error})"
    rows = []
    for line_number, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        try:
            rows.append({key: float(value) for key, value in row.items()})
        except (TypeError, ValueError):
            return rows, f"{path.parent}: truncated {METRICS_CSV} (line {line_number} is incomplete)"
    return rows, None


def read_step_lrs(directory: Path) -> list[float]:
    """A per-step schedule's learning rate at each optimizer step (lr_steps.csv); [] when the run has none
    or it cannot be read (the epoch rows then draw the schedule)."""
    path = directory / LR_STEPS
    if not path.exists():
        return []
    try:
        return [
            float(row[Column.LR]) for row in csv.DictReader(io.StringIO(read_small_text(path, MAX_CSV_BYTES)))
        ]
    except (UnreadableFile, KeyError, TypeError, ValueError):
        return []


def checked_metrics(metrics: dict[str, Any], directory: Path) -> tuple[dict[str, Any], list[str]]:
    """metrics.json with every value the table ranks by that is not a number left out, with a warning."""
    bad = [
        key
        for key in NUMERIC_SUMMARY
        if key in metrics
        and metrics[key] is not None
        and (
            isinstance(metrics[key], bool)
            or not isinstance(metrics[key], int | float)
            or math.isnan(metrics[key])  # json reads NaN, which no run writes and no sort can place
        )
    ]
    warnings = [
        f"{directory}: {METRICS_JSON} has {key}={metrics[key]!r}, not a number: left out" for key in bad
    ]
    return {k: (None if k in bad else v) for k, v in metrics.items()}, warnings


def load_run(directory: Path) -> tuple[Run | None, list[str]]:
    metrics_path = directory / METRICS_JSON
    if not os.path.lexists(metrics_path):
        return None, [f"{directory}: no metrics.json (the run crashed or is still running)"]
    try:
        metrics = json.loads(read_small_text(metrics_path, MAX_JSON_BYTES))
        if not isinstance(metrics, dict):
            raise ValueError("not a JSON object")
    except UnreadableFile as error:
        return None, [f"{directory}: unreadable {METRICS_JSON} ({error})"]
    except ValueError as error:
        return None, [f"{directory}: malformed {METRICS_JSON} ({error})"]
    metrics, warnings = checked_metrics(metrics, directory)
    config_path = directory / HYDRA_DIR / "config.yaml"
    params: dict[str, Any] = {}
    try:
        config = yaml.load(read_small_text(config_path, MAX_JSON_BYTES), Loader=YamlLoader) or {}
        config = config if isinstance(config, dict) else {}
        params = flatten_config(config)
        params.update(resolved_interpolations(config, params, metrics))
    except (UnreadableFile, yaml.YAMLError) as error:
        warnings.append(f"{directory}: unreadable {HYDRA_DIR}/config.yaml ({error})")
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
