"""Default run and sweep directories that no other process shares, still sorted by time.

Hydra's default `${now:%H-%M-%S}` gives two runs (or two sweep workers) started in the same second one
directory, and the second overwrites the first's files. `${unique_timestamp:}` adds milliseconds and the
host and process id: `2026-11-25/13-42-52.481_node07-4242`. It is computed once per process, and Hydra
copies the value to every job's config, so all jobs of a sweep (joblib or SLURM workers included) agree.
"""

import contextlib
import logging
import os
import shutil
import socket
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from src.run_record import HYDRA_DIR

RESOLVER = "unique_timestamp"
TIMESTAMP = "${" + RESOLVER + ":}"  # as a directory setting writes it (a date directory, then the time)
HOST_CHARS = 16


def unique_timestamp() -> str:
    now = datetime.now()
    host = socket.gethostname().split(".")[0][:HOST_CHARS] or "host"
    return f"{now:%Y-%m-%d}/{now:%H-%M-%S}.{now.microsecond // 1000:03d}_{host}-{os.getpid()}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_resolver(RESOLVER, unique_timestamp, use_cache=True)


def discard_if_never_started(run_dir: Path, in_date_directory: bool) -> None:
    """Remove a run directory that holds nothing but what Hydra wrote before the run (.hydra/, the log):
    input found bad only once the run read it (a corrupt data file) leaves no empty run behind. Its parent
    goes too when it is the date directory `${unique_timestamp:}` made for it and nothing else is there;
    a parent the user named (`hydra.run.dir=mine/run1`) stays."""
    if run_dir.is_dir() and all(p.name == HYDRA_DIR or p.suffix == ".log" for p in run_dir.iterdir()):
        close_logs_in(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        if in_date_directory:
            with contextlib.suppress(OSError):  # not empty: other runs of that day
                run_dir.parent.rmdir()


def close_logs_in(run_dir: Path) -> None:
    """Close and detach the log handlers writing into run_dir (Hydra's job log), before it is removed: a sweep
    whose process ran the job (basic launcher) logs on, and such a handler would open the file again."""
    inside = run_dir.resolve()
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in list(getattr(logger, "handlers", [])):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(inside):
                handler.close()
                logger.removeHandler(handler)
