"""python -m src.train [overrides]: one training run, or under --multirun one job of a sweep.

The config is checked before torch is imported: a bad value fails in a fraction of a second, and the
parent process of a joblib sweep (which only runs the sweeper) never loads torch, nor does the sweep's process
under hydra/launcher=batched (its jobs defer their training, src/deferred_job.py). The run's or the sweep's
config is checked even before Hydra writes anything (src.callbacks.CheckConfigFirst); each job's, with the
values its sweeper chose, here.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from hydra_plugins.batched_launcher.collector import imports_without_collector
from hydra_plugins.batched_launcher.deferral import deferring
from hydra_plugins.batched_launcher.launcher import start_before_hydra
from hydra_plugins.optuna_pruning_sweeper.child_jobs import JobInterrupted, interrupts_held
from src.command_line import check_command_line
from src.config import EXECUTION_WHITELIST, validate
from src.deferred_job import DeferredJob
from src.directories import TIMESTAMP, discard_if_never_started
from src.errors import TrainingDiverged, UserInputError, is_disk_full
from src.fast_exit import run_then_exit
from src.interrupts import report_interrupts_in_one_line
from src.sweep_process import stopped_when_sweep_process_ends


@hydra.main(config_path="../conf", config_name="train", execution_whitelist=EXECUTION_WHITELIST)
def main(cfg: DictConfig) -> float:
    try:
        validate(cfg)
        if deferring():  # hydra/launcher=batched: trained with the batch's other jobs, in its launch process
            return DeferredJob.for_this_job(cfg)
        # A joblib worker's job takes Ctrl-C, SIGTERM and SIGHUP as its run does from here, its imports
        # included: before, one that came while they ran ended the worker (SIGTERM, SIGHUP) or aborted the
        # batch (Ctrl-C), and left the job's directory with no outcome
        with stopped_when_sweep_process_ends():
            # The run's libraries (torch, and torch._dynamo, which torch's optimizers import as they are
            # made), imported without the garbage collector walking their objects over and over: 0.6 s sooner.
            with imports_without_collector(), interrupts_held():
                import torch._dynamo  # noqa: F401

                from src.run import train

            return train(cfg)
    except (UserInputError, TrainingDiverged) as error:
        if HydraConfig.get().mode == RunMode.RUN:
            # A single run: one clear line and a non-zero exit instead of a traceback.
            print(f"error: {error}", file=sys.stderr)
            if isinstance(error, UserInputError):
                discard_this_run_if_never_started()
            sys.exit(2 if isinstance(error, UserInputError) else 1)
        raise  # in a sweep, the sweeper records the job as failed and goes on
    # Ctrl-C or SIGTERM before the run began (importing torch, reading the data), or a joblib worker's job
    # refused after an interruption: else a directory with no outcome, which compare warns of as a crash
    except (KeyboardInterrupt, JobInterrupted):
        discard_this_run_if_never_started()
        raise
    except OSError as error:
        if HydraConfig.get().mode != RunMode.RUN or not is_disk_full(error):
            raise
        print(f"error: the run stopped, its file system is full: {error}", file=sys.stderr)
        sys.exit(1)


def discard_this_run_if_never_started() -> None:
    """This job's directory, when it holds only what Hydra wrote (src.directories.discard_if_never_started);
    a single run's date directory too, when made for it and now empty."""
    hydra_config = HydraConfig.get()
    run_dir_as_written = str(hydra_config.run._get_node("dir")._value())
    discard_if_never_started(
        Path(hydra_config.runtime.output_dir),
        in_date_directory=hydra_config.mode == RunMode.RUN and run_dir_as_written.endswith(TIMESTAMP),
    )


if __name__ == "__main__":
    report_interrupts_in_one_line()
    # hydra/launcher=batched on the command line: its launch process starts importing torch now, while the
    # command line is checked (0.5 s: Hydra's plugins are found) and Hydra composes; a bad one stops it
    start_before_hydra(sys.argv[1:])
    try:
        with imports_without_collector():  # finding Hydra's plugins imports Optuna and SQLAlchemy: 0.15 s
            check_command_line(sys.argv[1:])
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    run_then_exit(main)
