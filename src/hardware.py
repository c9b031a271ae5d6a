"""Where a run computes: the device and how many CPU threads torch may use."""

import os

import torch
from hydra.core.hydra_config import HydraConfig

from src.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device", name, "auto or cpu: this machine has no CUDA device")
    return torch.device(name)


def parallel_jobs() -> int:
    """How many jobs of this sweep run at once on this machine (1 unless the launcher is joblib)."""
    hydra = HydraConfig.get()
    launcher = hydra.get("launcher") or {}
    if "joblib" not in str(launcher.get("_target_", "")):
        return 1
    cores = os.cpu_count() or 1
    n_jobs = launcher.get("n_jobs") or 1
    workers = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib: -1 means every core
    asked_at_once = (hydra.get("sweeper") or {}).get("n_jobs")
    return min(workers, asked_at_once) if asked_at_once else workers


def threads_for_this_job(num_threads: int | None) -> int:
    """trainer.num_threads when set, else the cores shared evenly among parallel jobs."""
    if num_threads is not None:
        return num_threads
    return max(1, (os.cpu_count() or 1) // parallel_jobs())
