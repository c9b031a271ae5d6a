"""Default run and sweep directories that no other process shares, still sorted by time.

Hydra's default `${now:%H-%M-%S}` gives two runs (or two sweep workers) started in the same second one
directory, and the second overwrites the first's files. `${unique_timestamp:}` adds milliseconds and the
host and process id: `2026-11-25/13-42-52.481_node07-4242`. It is computed once per process, and Hydra
copies the value to every job's config, so all jobs of a sweep (joblib or SLURM workers included) agree.
"""

import os
import socket
from datetime import datetime

from omegaconf import OmegaConf

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
