"""The jobs of a plain grid (Hydra's basic sweeper), as configs, before the first one runs.

Hydra's basic sweeper runs every job of `--multirun scheduler.gamma=0.5,-1`, then ends the sweep with the
traceback of the job whose value was bad. Each job's config is the sweep's config with that job's values
applied as Hydra applies a value override; the callback that checks the sweep's config first
(src/callbacks.py) checks each of these too, so a bad value stops the grid in one line before anything runs,
and so does a hydra.sweep.subdir that two jobs resolve alike (each would replace the other's results:
hydra_plugins/optuna_pruning_sweeper/job_dirs.py).
"""

import itertools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hydra_plugins.batched_launcher.composing import apply_value_override
from src import conf_files

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# Up to this many jobs, every job of a grid is checked up front; beyond, the jobs that differ from the first
# in one key (each value of each key is checked, as are cross-key rules between those values and the first
# values of the other keys). Every job still checks its own config as it starts.
MAX_CHECKED_JOBS = 200


def swept_values(config: DictConfig) -> list[list[tuple[Override, object, str]]] | None:
    """Per swept key, (its override, each value, the job's override line for it), as the basic sweeper reads
    hydra.sweeper.params and the command line; None when a sweep changes what is composed (a config group,
    a package, a deletion) or sweeps over dicts or lists."""
    # As written: an override's text is not an interpolation (`trainer.seed=${hydra.job.num}` is refused
    # by the job's check; resolving the line itself failed on it, and Hydra took that for a warning)
    params = config.hydra.sweeper.get("params")
    params = OmegaConf.to_container(params, resolve=False) if params else {}
    task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    lines = [f"{key}={value}" for key, value in params.items()] + list(task)
    by_key: dict[str, Override] = {}  # in the sweeper's order: a key's place is its first, its value its last
    for override in OverridesParser.create().parse_overrides(lines):
        by_key[override.get_key_element()] = override
    sweeps = [o for o in by_key.values() if o.is_sweep_override()]
    if any(
        not o.is_discrete_sweep()
        or o.package is not None
        or o.is_delete()
        or o.is_list_extend()
        or "/" in o.key_or_group
        or conf_files.is_group(o.key_or_group)
        for o in sweeps
    ):
        return None
    values = [
        [
            (o, value, f"{o.get_key_element()}={text}")
            for value, text in zip(o.sweep_iterator(), o.sweep_string_iterator(), strict=True)
        ]
        for o in sweeps
    ]
    if any(isinstance(value, dict | list) for key_values in values for _, value, _ in key_values):
        return None  # Hydra merges such a value into the config: left to each job
    return values


def checked_combinations(values: list[list[tuple[Override, object, str]]]) -> Iterator[tuple[int, tuple]]:
    """(job number, combination): every combination of the swept values, numbered as the basic sweeper
    numbers its jobs, when there are at most MAX_CHECKED_JOBS, else those that differ from the first in one
    key."""
    sizes = [len(v) for v in values]
    if math.prod(sizes) <= MAX_CHECKED_JOBS:
        yield from enumerate(itertools.product(*values))
        return
    yield 0, tuple(v[0] for v in values)
    for position, key_values in enumerate(values):
        stride = math.prod(sizes[position + 1 :])  # the product's order: the last key varies fastest
        for index in range(1, len(key_values)):
            combination = tuple(v[index if k == position else 0] for k, v in enumerate(values))
            yield index * stride, combination


@dataclass
class GridJob:
    number: int  # as the basic sweeper numbers it
    overrides: tuple[str, ...]  # its swept values, as the basic sweeper writes its overrides
    config: DictConfig  # its task config (shared between the jobs: read it before taking the next job)


def grid_jobs(config: DictConfig) -> Iterator[GridJob]:
    """The jobs of a basic-sweeper grid over plain values (checked_combinations); none for another sweeper
    or a sweep over a config group. One copy of the task config is updated for each job in turn (every
    swept key is set each time)."""
    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return
    values = swept_values(config)
    if not values:
        return
    job = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])  # a task config
    for number, combination in checked_combinations(values):
        for override, value, _ in combination:
            apply_value_override(job, override, value)
        yield GridJob(number, tuple(line for _, _, line in combination), job)


@contextmanager
def numbered_as_job(number: int) -> Iterator[None]:
    """Hydra's config with hydra.job.num and .id a job's, as `${hydra:job.num}` reads them (a seed per job:
    `trainer.seed=${hydra:job.num}`); in the sweep's own config they are not set yet. Restored after."""
    job = HydraConfig.get().job
    before = (job._get_node("num")._value(), job._get_node("id")._value())  # "???" while not set
    with read_write(job), open_dict(job):
        job.num, job.id = number, str(number)
    try:
        yield
    finally:
        with read_write(job), open_dict(job):
            job.num, job.id = before
