"""Where each job will write.

When hydra.sweep.subdir names the job's number (the default `${hydra.job.num}`, or `trial_${hydra.job.num}`),
each batch's job numbers are claimed before its jobs are launched: each job's directory is made with
os.mkdir, which exactly one of several processes succeeds in, so workers that share a sweep directory
(`hydra.sweep.dir=multirun/mine` given to each) never write into one another's runs. A batch takes the
first consecutive numbers whose directories it could make, after the highest already there
(NumberedDirectories).

When hydra.sweep.subdir does not name the job's number:
`hydra.sweep.subdir=step_${scheduler.step_size}` puts two trials that draw the same step_size (5 values, 20
trials) into one directory: Hydra writes the second's .hydra/ over the first's, and its results replace the
first's, while the study keeps both trials. Before jobs are launched, each one's subdir is resolved as Hydra
will resolve it (the sweep's config with the job's values), and a directory two jobs share, or one that
already holds a run, is named in one line. The sweeper checks each batch; this app's check of a plain grid
(src/callbacks.py) checks its jobs before the first runs.
"""

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.batched_launcher.composing import apply_value_override

# A subdir naming one of these differs between any two jobs by construction (override_dirname is resolved
# from the job's overrides inside Hydra's run_job only, so it cannot be told here).
DISTINCT_OR_UNKNOWN = ("job.num", "job.id", "override_dirname")
# Launchers' classes, as their configs' _target_ names them.
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
JOBLIB_LAUNCHER = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
BATCHED_LAUNCHER = "hydra_plugins.batched_launcher.launcher.BatchedLauncher"
# Launchers none of whose jobs can start once launch() has returned or raised (they run in this process, or in
# processes that end with it): a stopped batch's claimed directories that no job wrote into can be given back.
# A job of another launcher may start later (submitit's SLURM jobs go on after the sweep stops;
# hydra/launcher=slurm cancels them, but one may be starting as it does) and write into its directory, which
# must then still be its own.
LAUNCHERS_ENDING_THEIR_JOBS = (BASIC_LAUNCHER, JOBLIB_LAUNCHER, BATCHED_LAUNCHER)
JOB_NUMBER = re.compile(r"\$\{hydra[.:]job\.num\}")  # in hydra.sweep.subdir, as Hydra's default writes it


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


@dataclass(frozen=True)
class NumberedDirectories:
    """The jobs' directories when the last part of hydra.sweep.subdir is the job's number between fixed text:
    `<sweep dir>/<prefix><number><suffix>`."""

    parent: Path
    prefix: str
    suffix: str

    @classmethod
    def of(cls, config: DictConfig) -> "NumberedDirectories | None":
        """None when the subdir holds anything else that varies, or the number more than once or not in its
        last part."""
        parts = JOB_NUMBER.split(subdir_as_written(config))
        if len(parts) != 2 or any("${" in part for part in parts) or "/" in parts[1]:
            return None
        folder, _, prefix = parts[0].rpartition("/")
        return cls(Path(str(config.hydra.sweep.dir)) / folder, prefix, parts[1])

    def of_job(self, number: int) -> Path:
        return self.parent / f"{self.prefix}{number}{self.suffix}"

    def next_number(self) -> int:
        """The first job number after those of the directories already there: a sweep directory used again
        keeps its runs, and its new ones follow them."""
        pattern = re.compile(f"{re.escape(self.prefix)}([0-9]+){re.escape(self.suffix)}")
        names = [p.name for p in self.parent.iterdir()] if self.parent.is_dir() else []
        return max((int(m[1]) for name in names if (m := pattern.fullmatch(name))), default=-1) + 1

    def claim(self, first: int, count: int) -> int:
        """The first of `count` consecutive job numbers, from `first` on, whose directories this process
        made (they are its jobs' own, whoever else writes into the sweep directory)."""
        self.parent.mkdir(parents=True, exist_ok=True)
        start = first
        while True:
            made: list[Path] = []
            for number in range(start, start + count):
                directory = self.of_job(number)
                try:
                    directory.mkdir()
                except FileExistsError:
                    for own in made:  # still empty: nobody but this process writes there
                        own.rmdir()
                    start = number + 1
                    break
                made.append(directory)
            else:
                return start

    def release_unused(self, first: int, count: int, launcher: object) -> None:
        """Remove the claimed directories no job wrote into (a batch stopped before its jobs ran), when none
        of the launcher's jobs can still start."""
        if f"{type(launcher).__module__}.{type(launcher).__qualname__}" not in LAUNCHERS_ENDING_THEIR_JOBS:
            return
        for number in range(first, first + count):
            try:
                self.of_job(number).rmdir()
            except OSError:  # a job's run is there (or it is gone)
                continue


def first_job_number(sweep_dir: Path, numbered: NumberedDirectories | None) -> int:
    """Where a sweep's job numbers start: after the numbered directories already in the sweep directory (its
    jobs' own pattern when they are numbered, else the all-digit names)."""
    return (numbered or NumberedDirectories(sweep_dir, "", "")).next_number()
