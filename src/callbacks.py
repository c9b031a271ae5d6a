"""Hydra callbacks of this app, registered under hydra.callbacks in conf/train.yaml.

Hydra creates a run's output directory (and writes .hydra/ into it) before it calls the task
function, so a check inside src.train.main comes too late to leave the disk alone: a typo would
leave an empty run directory behind, or overwrite the .hydra/ of the existing run it was pointed
at. This callback checks the config, and the directory a run or sweep is about to write, first; and it enters
a process that will train into the machine's CPU share (src/cpu_share.py) before its first job.
"""

import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from hydra_plugins.batched_launcher.launcher import is_count, is_module_list
from hydra_plugins.optuna_pruning_sweeper.disk import unwritable_reason
from hydra_plugins.optuna_pruning_sweeper.job_dirs import (
    BASIC_LAUNCHER,
    BATCHED_LAUNCHER,
    shared_directory,
    subdir_as_written,
)
from src import conf_files
from src.config import validate
from src.cpu_share import CpuShare, job_cpus
from src.directories import discard_if_never_started
from src.errors import ConfigError, UserInputError
from src.grid_jobs import BASIC_SWEEPER, grid_jobs, numbered_as_job
from src.mnist_files import training_images
from src.run_record import METRICS_JSON
from src.sweep_process import name_sweep_process

# Launchers that train every job in the sweep's own process.
IN_PROCESS_LAUNCHERS = (BASIC_LAUNCHER, BATCHED_LAUNCHER)
# The sweeper that numbers its jobs after the runs already in its sweep directory (it never overwrites one).
RESUMING_SWEEPER = "hydra_plugins.optuna_pruning_sweeper.sweeper.PruningOptunaSweeper"


class DirectoryInUse(UserInputError):
    pass


def check_writable(key: str, directory: Path) -> None:
    if reason := unwritable_reason(directory):
        raise DirectoryInUse(f"{key}={directory} cannot be written: {reason}")


def check_not_empty(key: str, value: object) -> None:
    """An empty directory setting (an unset shell variable: `hydra.run.dir=$OUT`) would write into the
    current directory, among the project's files; `.` says so on purpose."""
    if not str(value).strip():
        raise ConfigError(key, value, "a directory (. for the current one)")


def check_sweep_subdir(config: DictConfig) -> None:
    """Each job of a sweep writes into hydra.sweep.subdir: without an interpolation (`same`, or empty) every
    job would write into one directory and each would overwrite the one before it (with one, the jobs'
    resolved subdirs are compared: hydra_plugins/optuna_pruning_sweeper/job_dirs.py)."""
    subdir = subdir_as_written(config)
    if "${" not in subdir:
        raise ConfigError(
            "hydra.sweep.subdir",
            subdir,
            "a directory name that differs between the sweep's runs, through an interpolation (the default "
            "${hydra.job.num}, or e.g. seed_${trainer.seed})",
        )


def check_run_dir(config: DictConfig) -> None:
    """A run never writes into a directory that holds another run's results (unless overwrite=true), nor
    into one it cannot write."""
    check_not_empty("hydra.run.dir", config.hydra.run.dir)
    run_dir = Path(config.hydra.run.dir)
    check_writable("hydra.run.dir", run_dir)
    if (run_dir / METRICS_JSON).exists() and not config.get("overwrite"):
        raise DirectoryInUse(
            f"hydra.run.dir={run_dir} holds a finished run ({METRICS_JSON}): choose another directory, "
            "or add overwrite=true to replace it"
        )


def check_sweep_dir(config: DictConfig) -> None:
    """Sweepers that number their jobs from 0 would overwrite the runs of a reused sweep directory."""
    check_not_empty("hydra.sweep.dir", config.hydra.sweep.dir)
    check_sweep_subdir(config)
    sweep_dir = Path(config.hydra.sweep.dir)
    check_writable("hydra.sweep.dir", sweep_dir)
    if config.hydra.sweeper.get("_target_") == RESUMING_SWEEPER or config.get("overwrite"):
        return
    if sweep_dir.is_dir() and any(sweep_dir.glob(f"*/{METRICS_JSON}")):
        raise DirectoryInUse(
            f"hydra.sweep.dir={sweep_dir} holds the runs of another sweep: choose another directory, "
            "or add overwrite=true to replace them"
        )


def check_sweep_dir_and_launcher(config: DictConfig) -> None:
    check_sweep_dir(config)
    check_objective(config)
    launcher = config.hydra.launcher
    if launcher.get("_target_") == BATCHED_LAUNCHER:
        max_batch = launcher.get("max_batch")
        if max_batch is not None and not is_count(max_batch):
            raise ConfigError(
                "hydra.launcher.max_batch", max_batch, "an integer >= 1, or null (as many as fit)"
            )
        processes = launcher.get("processes")
        if processes is not None and not is_count(processes):
            raise ConfigError(
                "hydra.launcher.processes", processes, "an integer >= 1, or null (one per CPU thread)"
            )
        preload = launcher.get("preload")
        if not is_module_list(preload):
            raise ConfigError("hydra.launcher.preload", preload, "a list of module names, e.g. [torch]")
    check_slurm_time_limit(launcher)


def check_slurm_time_limit(launcher: DictConfig) -> None:
    """submitit signals a SLURM job signal_delay_s before its time limit, and the job, which has no checkpoint
    to be requeued from, fails there. A limit no longer than that delay failed every trial as it started,
    with submitit's "Job not requeued because: timed-out too many times"."""
    if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        return
    limit, delay = launcher.get("timeout_min"), launcher.get("signal_delay_s")
    if is_count(limit) and isinstance(delay, int) and limit * 60 <= delay:
        raise ConfigError(
            "hydra.launcher.timeout_min",
            limit,
            f"more than hydra.launcher.signal_delay_s={delay} seconds (submitit ends a job that long before "
            "its time limit: every trial would fail as it starts)",
        )


def check_objective(config: DictConfig) -> None:
    """An Optuna sweep of these runs maximizes the one value each returns, an accuracy (optimized_metric).
    `direction=minimize` used to pick the worst run as best, and a list of directions (which the sweeper
    takes for several objectives) failed every trial: Optuna takes no per-epoch report then."""
    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != RESUMING_SWEEPER:
        return
    direction = sweeper.get("direction")
    if direction != "maximize" and list(direction or []) != ["maximize"]:
        shown = direction if isinstance(direction, str) else f"[{', '.join(map(str, direction or []))}]"
        raise ConfigError(
            "hydra.sweeper.direction",
            shown,
            f"maximize (each run returns one value, optimized_metric={config.optimized_metric}, an accuracy)",
        )


def check_machine_and_data(config: DictConfig) -> None:
    """What the composed config asks of this machine and its files, when it can be told without loading
    anything: a data.root that is a file, a CUDA device that isn't there, a data.val_size the training file
    cannot hold. Deeper problems (a corrupt file) are found when the run reads the data."""
    check_not_empty("data.root", config.data.root)
    root = Path(to_absolute_path(config.data.root))
    if root.exists() and not root.is_dir():
        raise ConfigError("data.root", str(config.data.root), f"a directory ({root} is a file)")
    if config.trainer.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("trainer.device", "cuda", "auto or cpu: this machine has no CUDA device")
    cache = config.trainer.get("prefix_cache")  # made by a run at its first epoch: there, a traceback
    if cache and (reason := unwritable_reason(Path(to_absolute_path(str(cache))))):
        raise ConfigError("trainer.prefix_cache", str(cache), f"a directory that can be written ({reason})")
    count = training_images(root)
    if count is not None and not 0 < config.data.val_size < count:
        raise ConfigError(
            "data.val_size",
            config.data.val_size,
            f"between 1 and {count - 1} (the training set in {root} has {count})",
        )


def stop_with(error: UserInputError) -> NoReturn:
    """One line on stderr, exit code 2 (Hydra turns a callback's exceptions into warnings)."""
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(2) from None


class CheckConfigFirst(Callback):
    """Check the composed config, and where it will write, before Hydra writes anything.

    A bad value stops a run, or a whole sweep (any sweeper, any launcher), with one line on stderr and
    exit code 2. In a sweep this is the sweep's own config (fixed values applied, swept keys at their
    defaults), and for a plain grid each job's (src/grid_jobs.py); what another sweeper chooses for each job
    is checked by the job (src.train.main). Hydra turns a callback's exceptions into warnings, so the stop is
    a SystemExit.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra sets its HydraConfig only as the run's job starts. Set here, a value such as the Optuna
        # presets' `${hydra:sweep.dir}/.prefix_cache` resolves; before, the check ended on it with Hydra's
        # warning, and a bad value was caught only after the run's directory was made.
        if not HydraConfig.initialized():
            HydraConfig.instance().set_config(config)
        self._check(config, check_run_dir)
        CpuShare(job_cpus()).register()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        grid = grid_jobs(config)  # a plain grid's jobs, each job's config as it will run
        first = next(grid, None)
        with numbered_as_job(0):  # the sweep's config, with the values a job's resolves to
            if first is None:
                self._check(config, check_sweep_dir_and_launcher)
            else:  # its values are the jobs' (the swept keys at their defaults are no job's: `steps.
                # warmup_epochs=6 trainer.epochs=8,9` was refused for the default of 5 epochs)
                self._check(config, check_sweep_dir_and_launcher, values=False)
        jobs = []
        for job in itertools.chain([first] if first else [], grid):
            with numbered_as_job(job.number):
                self._check(job.config)
            jobs.append((job.number, job.overrides))
        # the grid's directory was checked to hold no runs, unless overwrite=true replaces them
        if reason := shared_directory(config, jobs, conf_files.is_group, runs_there_count=False):
            stop_with(UserInputError(reason))
        name_sweep_process()
        if config.hydra.launcher.get("_target_") in IN_PROCESS_LAUNCHERS:
            # This process will train the jobs: other workers starting now count it from their first job.
            CpuShare(job_cpus()).register()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A plain grid whose jobs train in this process stops before a job when the file system its
        directory is on has filled up since the grid started (the Optuna sweeper checks before each batch).
        Before, the next job ended the grid with Hydra's traceback of a half-written `.hydra/`, or its
        training failed on its first metrics file. The job's directory, which Hydra has just made, goes."""
        hydra = config.hydra
        if hydra.mode != RunMode.MULTIRUN or hydra.sweeper.get("_target_") != BASIC_SWEEPER:
            return
        if hydra.launcher.get("_target_") != BASIC_LAUNCHER:
            return  # joblib and SLURM jobs run in processes of their own; a batch trains after them all
        if reason := unwritable_reason(Path(hydra.runtime.output_dir)):  # made by Hydra: absolute
            discard_if_never_started(Path(hydra.runtime.output_dir), in_date_directory=False)
            print(
                f"error: hydra.sweep.dir={hydra.sweep.dir} cannot be written: {reason}; the grid stopped "
                f"before job {hydra.job.num} (the jobs before it have their results)",
                file=sys.stderr,
            )
            raise SystemExit(1)

    @staticmethod
    def _check(
        config: DictConfig, check_directory: Callable[[DictConfig], None] | None = None, values: bool = True
    ) -> None:
        try:
            if values:
                validate(config)
            if check_directory is not None:
                check_directory(config)
            if values:
                check_machine_and_data(config)
        except UserInputError as error:
            stop_with(error)


class SummarizeSweep(Callback):
    """After an optuna_pruning sweep, this app's summary of its trials: epochs run, shared and saved by
    pruning, the best trial's test accuracy (src/sweep_summary.py; the sweeper plugin knows none of these)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.sweeper.get("_target_") == RESUMING_SWEEPER:
            from src.sweep_summary import summarize_sweep

            summarize_sweep(config)
