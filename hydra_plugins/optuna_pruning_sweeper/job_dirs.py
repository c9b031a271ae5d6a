"""Where each job of a batch will write, when hydra.sweep.subdir does not name the job's number.

`hydra.sweep.subdir=step_${scheduler.step_size}` puts two trials that draw the same step_size (5 values, 20
trials) into one directory: Hydra writes the second's .hydra/ over the first's, and its results replace the
first's, while the study keeps both trials. Before a batch is launched, each job's subdir is resolved as Hydra
will resolve it (the sweep's config with the job's values and number), and a directory two jobs share, or one
that already holds a run, stops the sweep in one line.
"""

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

# A subdir naming one of these differs between any two jobs by construction (override_dirname is resolved
# from the job's overrides inside Hydra's run_job only, so it cannot be told here).
DISTINCT_OR_UNKNOWN = ("job.num", "job.id", "override_dirname")


def shared_directory(
    config: DictConfig,
    first_number: int,
    job_overrides: Sequence[Sequence[str]],
    is_group: Callable[[str], bool],
) -> str | None:
    """Why the batch cannot be launched: a directory two of its jobs, or a job and an earlier run, would
    write into; None when each job has a directory of its own, or when its subdir cannot be resolved here
    (the jobs choose different options of a config group, or a value the config cannot take)."""
    written = str(config.hydra.sweep._get_node("subdir")._value())
    if any(name in written for name in DISTINCT_OR_UNKNOWN):
        return None
    parser = OverridesParser.create()
    parsed = [parser.parse_overrides(list(overrides)) for overrides in job_overrides]
    if len({tuple(o.input_line for o in job if is_group(o.key_or_group)) for job in parsed}) > 1:
        return None  # composed from different options: only Hydra's composition can tell
    sweep_dir = Path(str(config.hydra.sweep.dir))
    job_config = copy.deepcopy(config)  # the sweep's config holds the options every job chooses
    jobs_by_subdir: dict[str, int] = {}
    for number, overrides in enumerate(parsed, start=first_number):
        try:
            for override in overrides:  # the values, as Hydra applies a value override
                if not override.is_hydra_override() and not is_group(override.key_or_group):
                    force_add = override.is_add() or override.is_force_add()
                    OmegaConf.update(job_config, override.key_or_group, override.value(), force_add=force_add)
            with read_write(job_config.hydra.job), open_dict(job_config.hydra.job):
                job_config.hydra.job.num, job_config.hydra.job.id = number, str(number)
            subdir = str(OmegaConf.select(job_config, "hydra.sweep.subdir"))
        except Exception:  # the job itself says what is wrong with its values
            return None
        directory = sweep_dir / subdir
        what = f"hydra.sweep.subdir={written!r} gives job {number}"
        allowed = "a name that differs between the trials (the default is ${hydra.job.num})"
        if subdir in jobs_by_subdir:
            return f"{what} the directory of job {jobs_by_subdir[subdir]}, {directory}: {allowed}"
        if directory.is_dir() and any(directory.iterdir()):
            return f"{what} {directory}, which holds another run: {allowed}"
        jobs_by_subdir[subdir] = number
    return None
