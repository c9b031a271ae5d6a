"""Where each job will write, when hydra.sweep.subdir does not name the job's number.

`hydra.sweep.subdir=step_${scheduler.step_size}` puts two trials that draw the same step_size (5 values, 20
trials) into one directory: Hydra writes the second's .hydra/ over the first's, and its results replace the
first's, while the study keeps both trials. Before jobs are launched, each one's subdir is resolved as Hydra
will resolve it (the sweep's config with the job's values), and a directory two jobs share, or one that
already holds a run, is named in one line. The sweeper checks each batch; this app's check of a plain grid
(src/callbacks.py) checks its jobs before the first runs.
"""

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.batched_launcher.composing import apply_value_override

# A subdir naming one of these differs between any two jobs by construction (override_dirname is resolved
# from the job's overrides inside Hydra's run_job only, so it cannot be told here).
DISTINCT_OR_UNKNOWN = ("job.num", "job.id", "override_dirname")


def subdir_as_written(config: DictConfig) -> str:
    """hydra.sweep.subdir before Hydra resolves it for each job."""
    return str(config.hydra.sweep._get_node("subdir")._value())


def resolved_by_job(config: DictConfig) -> bool:
    """Whether jobs' subdirs have to be resolved to be told apart."""
    return not any(name in subdir_as_written(config) for name in DISTINCT_OR_UNKNOWN)


def shared_directory(
    config: DictConfig,
    jobs: Sequence[tuple[int, Sequence[str]]],
    is_group: Callable[[str], bool],
    runs_there_count: bool = True,
) -> str | None:
    """Why the jobs (number, overrides) cannot be launched: a directory two of them would write into, or
    (runs_there_count) one that already holds a run; None when each has a directory of its own, or when the
    subdirs cannot be resolved here (the jobs choose different options of a config group, or a value the
    config cannot take, which the job itself reports)."""
    if not resolved_by_job(config):
        return None
    parser = OverridesParser.create()
    parsed = [(number, parser.parse_overrides(list(overrides))) for number, overrides in jobs]
    if len({tuple(o.input_line for o in job if is_group(o.key_or_group)) for _, job in parsed}) > 1:
        return None  # composed from different options: only Hydra's composition can tell
    written = subdir_as_written(config)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    job_config = copy.deepcopy(config)  # the sweep's config holds the options every job chooses
    claimed: dict[str, tuple[int, list[str]]] = {}
    for number, overrides in parsed:
        values = [o for o in overrides if not o.is_hydra_override() and not is_group(o.key_or_group)]
        try:
            for override in values:
                apply_value_override(job_config, override, override.value())
            subdir = str(OmegaConf.select(job_config, "hydra.sweep.subdir"))
        except Exception:
            return None
        lines = [o.input_line for o in values]
        directory = sweep_dir / subdir
        gives = f"hydra.sweep.subdir={written!r} gives job {number}"
        allowed = "a name that differs between the jobs (the default is ${hydra.job.num})"
        if subdir in claimed:
            other, other_lines = claimed[subdir]
            mine = " ".join(line for line in lines if line not in other_lines)
            theirs = " ".join(line for line in other_lines if line not in lines)
            return f"{gives} ({mine}) the directory of job {other} ({theirs}), {directory}: {allowed}"
        if runs_there_count and directory.is_dir() and any(directory.iterdir()):
            return f"{gives} {directory}, which holds another run: {allowed}"
        claimed[subdir] = (number, lines)
    return None
