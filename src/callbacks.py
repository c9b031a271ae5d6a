"""Hydra callbacks of this app, registered under hydra.callbacks in conf/train.yaml.

Hydra creates a run's output directory (and writes .hydra/ into it) before it calls the task
function, so a check inside src.train.main comes too late to leave the disk alone: a typo would
leave an empty run directory behind, or overwrite the .hydra/ of the existing run it was pointed
at. This callback checks the config, and the directory a run or sweep is about to write, first; and it enters
a process that will train into the machine's CPU share (src/cpu_share.py) before its first job.
"""

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from src.config import validate
from src.cpu_share import CpuShare, job_cpus
from src.errors import UserInputError
from src.run_record import METRICS_JSON

IN_PROCESS_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
# The sweeper that numbers its jobs after the runs already in its sweep directory (it never overwrites one).
RESUMING_SWEEPER = "hydra_plugins.optuna_pruning_sweeper.sweeper.PruningOptunaSweeper"


class DirectoryInUse(UserInputError):
    pass


def check_run_dir(config: DictConfig) -> None:
    """A run never writes into a directory that holds another run's results (unless overwrite=true)."""
    run_dir = Path(config.hydra.run.dir)
    if (run_dir / METRICS_JSON).exists() and not config.get("overwrite"):
        raise DirectoryInUse(
            f"hydra.run.dir={run_dir} holds a finished run ({METRICS_JSON}): choose another directory, "
            "or add overwrite=true to replace it"
        )


def check_sweep_dir(config: DictConfig) -> None:
    """Sweepers that number their jobs from 0 would overwrite the runs of a reused sweep directory."""
    sweep_dir = Path(config.hydra.sweep.dir)
    if config.hydra.sweeper.get("_target_") == RESUMING_SWEEPER or config.get("overwrite"):
        return
    if sweep_dir.is_dir() and any(sweep_dir.glob(f"*/{METRICS_JSON}")):
        raise DirectoryInUse(
            f"hydra.sweep.dir={sweep_dir} holds the runs of another sweep: choose another directory, "
            "or add overwrite=true to replace them"
        )


class CheckConfigFirst(Callback):
    """Check the composed config, and where it will write, before Hydra writes anything.

    A bad value stops a run, or a whole sweep (any sweeper, any launcher), with one line on stderr and
    exit code 2. In a sweep this is the sweep's own config (fixed values applied, swept keys at their
    defaults); what the sweeper chooses for each job is checked by the job (src.train.main). Hydra
    turns a callback's exceptions into warnings, so the stop is a SystemExit.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, check_run_dir)
        CpuShare(job_cpus()).register()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, check_sweep_dir)
        if config.hydra.launcher.get("_target_") == IN_PROCESS_LAUNCHER:
            # This process will train the jobs: other workers starting now count it from their first job.
            CpuShare(job_cpus()).register()

    @staticmethod
    def _check(config: DictConfig, check_directory: Any) -> None:
        try:
            validate(config)
            check_directory(config)
        except UserInputError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
