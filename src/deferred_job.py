"""A job's training, deferred under hydra/launcher=batched: what the sweep's process records of the job.

The task defers here, after Hydra has made the job's directory, .hydra/ and log, without importing torch:
the launcher hands the batch's deferred jobs to its launch process, forked when the sweep started, which has
imported torch meanwhile (hydra_plugins/batched_launcher/launch_process.py). So a DeferredJob is
picklable: the job's config, its Hydra config and environment (which trial it is), and its log files.
There, `run_together` makes each job a BatchedRun in the job's own Hydra config and environment, as run_job
set them, and trains the batch (src/batched_runs.py).
"""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import env_override
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hydra_plugins.batched_launcher.deferral import BatchSettings, Deferred, defer
from src.config import values_as_written


@dataclass(frozen=True)
class LogFile:
    """A file the job's log lines go to (Hydra's file handler while the job runs)."""

    path: str
    formatter: logging.Formatter | None


def resolve_hydra_values(cfg: DictConfig) -> None:
    """Resolve, in the job's config, each value that reads Hydra's config (`trainer.seed=${hydra:job.num}`,
    the preset's `${hydra:sweep.dir}/.prefix_cache`) now, while run_job has set Hydra's config to this
    job's. Where the batch trains, Hydra's config is the last job's that was set: two jobs of that seed
    would both train with the last one's. The config is the job's own (run_job copied it for the task)."""
    places = [key for key, raw in values_as_written(cfg) if isinstance(raw, str) and "${hydra:" in raw]
    with read_write(cfg), open_dict(cfg):
        for place in places:
            OmegaConf.update(cfg, place, OmegaConf.select(cfg, place), merge=False)


@dataclass
class DeferredJob:
    cfg: DictConfig
    hydra: DictConfig  # HydraConfig's config while the job ran
    log_files: list[LogFile]
    started: float = field(default_factory=time.perf_counter)
    opened: Any = field(default=None, init=False, repr=False)  # its BatchedRun or why it failed, once opened

    @classmethod
    def for_this_job(cls, cfg: DictConfig) -> Deferred:
        log_files = [
            LogFile(handler.baseFilename, handler.formatter)
            for handler in logging.getLogger().handlers
            if isinstance(handler, logging.FileHandler)
        ]
        resolve_hydra_values(cfg)  # Hydra's config is this job's only until the next job's
        return defer(cls(cfg, HydraConfig.instance().cfg, log_files))  # run_job gave the job its own config

    @contextmanager
    def as_running(self) -> Iterator[None]:
        """Hydra's config and the environment as run_job set them for this job (HydraConfig stays set after,
        as after a job of the basic launcher)."""
        HydraConfig.instance().cfg = self.hydra
        with env_override(self.hydra.hydra.job.env_set):
            yield

    def prepare(self) -> None:
        """Open the job's run and load its data as soon as it reaches the launch process, while the sweep's
        process runs the batch's later jobs (deferral.py)."""
        self.opened = self._open()
        if not isinstance(self.opened, Exception):
            self.opened.load_data_and_check_early()

    def _open(self) -> Any:
        """The job's BatchedRun, or the exception that kept its trial from opening (this job fails alone)."""
        from src.batched_runs import BatchedRun

        try:
            return BatchedRun.for_job(self)
        except Exception as error:
            return error

    def abandoned(self) -> None:
        """Called in the sweep's process when its batch stopped (Ctrl-C, SIGTERM, SIGHUP) before this job's
        run began (its launch process still importing torch): the job's directory holds Hydra's files only,
        which compare would report as a crashed run, and goes (a run that began keeps its own)."""
        from src.directories import discard_if_never_started

        discard_if_never_started(Path(self.hydra.hydra.runtime.output_dir), in_date_directory=False)

    @classmethod
    def run_together(cls, jobs: list["DeferredJob"], settings: BatchSettings) -> list[Any]:
        """Each job's value for the sweeper, or the exception that ended it."""
        from src.batched_runs import BatchedRun

        outcomes: dict[int, Any] = {}
        runs: dict[int, BatchedRun] = {}
        for index, job in enumerate(jobs):
            opened = job.opened if job.opened is not None else job._open()
            if isinstance(opened, Exception):
                outcomes[index] = opened
            else:
                runs[index] = opened
        trained = BatchedRun.run_together(list(runs.values()), settings)
        outcomes.update(zip(runs, trained, strict=True))
        return [outcomes[index] for index in range(len(jobs))]
