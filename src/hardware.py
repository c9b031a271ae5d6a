"""Where a run computes: the device and how many CPU threads torch may use."""

import os

import torch
from hydra.core.hydra_config import HydraConfig

from src.cpu_share import CpuShare, job_cpus
from src.errors import ConfigError


def cpu_identity() -> str:
    """The CPU model and the vector instructions torch uses on it: what can change float results between
    machines (another kernel, another summation order), so shared epochs are never reused across them."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model
            )
    except OSError:
        pass
    return f"{model} ({torch.backends.cpu.get_cpu_capability()})"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device", name, "auto or cpu: this machine has no CUDA device")
    return torch.device(name)


def cpus_given() -> int:
    """How many CPUs this process was given, not the node's: its CPU affinity (taskset, a cpuset, SLURM's
    task/affinity) and, inside a SLURM job, SLURM_CPUS_PER_TASK."""
    cpus = len(job_cpus())
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm_cpus.isdigit() and int(slurm_cpus) > 0:
        cpus = min(cpus, int(slurm_cpus))
    return max(1, cpus)


def parallel_jobs() -> int:
    """How many jobs of this sweep share this process's CPUs (1 unless the launcher is joblib)."""
    hydra = HydraConfig.get()
    launcher = hydra.get("launcher") or {}
    if "joblib" not in str(launcher.get("_target_", "")):
        return 1
    n_jobs = launcher.get("n_jobs") or 1
    workers = n_jobs if n_jobs > 0 else max(1, cpus_given() + 1 + n_jobs)  # joblib: -1 means every core
    asked_at_once = (hydra.get("sweeper") or {}).get("n_jobs")
    return min(workers, asked_at_once) if asked_at_once else workers


def threads_for_this_job(num_threads: int | None, share: CpuShare) -> int:
    """trainer.num_threads when set, else the CPUs this job was given, shared evenly among the jobs that
    train on them: the sweep's parallel jobs, and any other training job on this machine (share)."""
    if num_threads is not None:
        return num_threads
    return max(1, cpus_given() // max(parallel_jobs(), share.jobs_sharing_my_cpus()))
