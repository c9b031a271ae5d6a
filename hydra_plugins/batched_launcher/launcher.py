"""hydra/launcher=batched: the basic launcher's jobs, their deferred work done together (see __init__)."""

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from .composing import JobComposer
from .deferral import BatchSettings, Deferred, collecting, run_deferred
from .job_run import run_job
from .launch_process import Inheritance, LaunchProcess

log = logging.getLogger(__name__)

# What the deferred work imports, loaded while the sweeper prepares the first batch: this app's batched
# training (with torch; it trains without torch._dynamo, src/dynamo_on_demand.py), and what Optuna imports
# when the launch process opens the study (SQLAlchemy's models; not alembic: storage.SetUpRDBStorage).
DEFAULT_PRELOAD = (
    "src.batched_runs",
    "optuna.storages._rdb.models",
)
NAME = "batched"  # hydra/launcher=batched
CHOOSING_THIS_LAUNCHER = f"hydra/launcher={NAME}"
MULTIRUN_FLAGS = ("-m", "--multirun")
_started_before_hydra: LaunchProcess | None = None


@dataclass
class BatchedLauncherConf:
    _target_: str = "hydra_plugins.batched_launcher.launcher.BatchedLauncher"
    # Typed Any: a bad value reaches the app's check (one line naming what is allowed), not OmegaConf's.
    # At most this many jobs trained together (null: as many as fit in memory, the task decides).
    max_batch: Any = None
    # Processes that train a batch's trials at once, each its share of the trials and of the CPU threads
    # (null: the task decides; ours: one per CPU thread of the job on Linux, 1 elsewhere or on a GPU).
    processes: Any = None
    # Modules the deferred work imports, loaded while the sweeper prepares the first batch (on Linux it runs
    # in a process forked when the sweep starts, launch_process.py). This app's: DEFAULT_PRELOAD.
    preload: Any = field(default_factory=lambda: list(DEFAULT_PRELOAD))


ConfigStore.instance().store(group="hydra/launcher", name=NAME, node=BatchedLauncherConf, provider=NAME)


def can_fork() -> bool:
    return sys.platform == "linux" and hasattr(os, "fork")


def start_before_hydra(argv: Sequence[str]) -> None:
    """For an app's entrypoint, before it hands the command line to Hydra (src/train.py): when that runs a
    multirun with this launcher (`--multirun` or `-m`, and `hydra/launcher=batched`), start the launch process
    now, on Linux, importing DEFAULT_PRELOAD while Hydra composes the config and the sweeper opens its study
    (0.5 to 0.8 s sooner than at setup). The launcher's setup adopts it. A launcher chosen in a config file is
    not known here: setup forks the process then, as without this call."""
    global _started_before_hydra
    chosen = CHOOSING_THIS_LAUNCHER in argv and any(flag in argv for flag in MULTIRUN_FLAGS)
    if chosen and _started_before_hydra is None and can_fork():
        _started_before_hydra = LaunchProcess(run_deferred, DEFAULT_PRELOAD, to_be_adopted=True)


def is_count(value: object) -> bool:
    """An integer >= 1 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def is_module_list(value: object) -> bool:
    """A list of module names (strings)."""
    return (
        isinstance(value, Sequence) and not isinstance(value, str) and all(isinstance(m, str) for m in value)
    )


class BatchedLauncher(Launcher):
    def __init__(
        self, max_batch: int | None = None, processes: int | None = None, preload: Sequence[str] = ()
    ) -> None:
        if max_batch is not None and not is_count(max_batch):
            raise ValueError(
                f"hydra.launcher.max_batch={max_batch!r} is not allowed: an integer >= 1 or null"
            )
        if processes is not None and not is_count(processes):
            raise ValueError(
                f"hydra.launcher.processes={processes!r} is not allowed: an integer >= 1 or null"
            )
        if not is_module_list(preload):
            raise ValueError(f"hydra.launcher.preload={preload!r} is not allowed: a list of module names")
        self.settings = BatchSettings(max_batch, processes)
        self.preload = list(preload)
        self.launch_process: LaunchProcess | None = None
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.composer: JobComposer | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.composer = JobComposer(hydra_context.config_loader, config)  # one for the sweep's batches
        if self.launch_process is None and can_fork():
            self.launch_process = self._adopted() or LaunchProcess(run_deferred, self.preload)

    def _adopted(self) -> LaunchProcess | None:
        """The launch process started before Hydra (start_before_hydra), given what it inherits; None if
        there is none or it can no longer take it."""
        global _started_before_hydra
        process, _started_before_hydra = _started_before_hydra, None
        if process is None:
            return None
        assert self.config is not None and self.hydra_context is not None
        inheritance = Inheritance(
            environ=dict(os.environ),
            cwd=os.getcwd(),
            hydra_config=HydraConfig.instance().cfg,
            hydra_logging=self.config.hydra.hydra_logging,
            verbose=self.config.hydra.verbose,
            execution_whitelist=self.hydra_context.execution_whitelist,
            preload=self.preload,
        )
        if not process.adopt(inheritance):
            return None
        log.debug("adopted the launch process started before Hydra (pid %s)", process.pid)
        return process

    def _configure_hydra_logging(self) -> None:
        assert self.config is not None and self.hydra_context is not None
        configure_log(
            self.config.hydra.hydra_logging,
            self.config.hydra.verbose,
            execution_whitelist=self.hydra_context.execution_whitelist,
        )

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        assert self.composer is not None
        self._configure_hydra_logging()
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs, trained together where they can be")
        runs: list[JobReturn] = []
        collected: list[Deferred] = []
        try:
            with collecting() as collected:
                for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
                    log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                    sweep_config = self.composer.compose(overrides)
                    with open_dict(sweep_config):
                        sweep_config.hydra.job.id = str(idx)
                        sweep_config.hydra.job.num = idx
                    runs.append(run_job(self.task_function, sweep_config, self.hydra_context))
                    self._configure_hydra_logging()
                    if self.launch_process is not None:
                        self.launch_process.hand_over(collected)
            results = self._run_deferred(collected)
        except KeyboardInterrupt:  # the launch process has ended the batch's runs (LaunchProcess.run)
            for deferred in collected:
                abandoned = getattr(deferred.work, "abandoned", None)  # its own clean-up, if it has one
                if abandoned is not None:
                    abandoned()
            raise
        position = {id(deferred): index for index, deferred in enumerate(collected)}
        for run in runs:
            if run.status is JobStatus.COMPLETED and isinstance(run._return_value, Deferred):
                outcome = results[position[id(run._return_value)]]
                run.status = JobStatus.FAILED if isinstance(outcome, BaseException) else JobStatus.COMPLETED
                run.return_value = outcome
        return runs

    def sweep_ended(self) -> None:
        """For a sweeper, once it launches no more batches (the optuna_pruning sweeper calls it): the launch
        process ends now, while the sweeper reports, rather than at this process's exit."""
        if self.launch_process is not None:
            self.launch_process.end()

    def _run_deferred(self, collected: list[Deferred]) -> list[Any]:
        if not collected:
            return []
        if self.launch_process is not None and self.launch_process.alive:
            return self.launch_process.run(collected, self.settings)
        return run_deferred(collected, self.settings)
