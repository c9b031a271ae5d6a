"""Training jobs on one machine share its CPUs instead of each taking all of them.

Two sweep workers started on one 2-core machine, each with one torch thread per core, run 4 threads on 2
cores: OpenMP threads then wait for each other, and the sweep ran 4 times slower than one worker alone
(bench/scale_out.py). So each process that trains registers itself in a directory of the machine (per user)
with the CPUs it may use, and a job takes its CPUs divided by the number of live registered processes whose
CPUs overlap its own, its own ancestors not counted (under hydra/launcher=batched the sweep's process
registers and its launch process, a child, trains). A process stays registered until it ends (a sweep worker
between two trials is not gone); entries of ended processes are removed by whoever finds them. The count is
taken when a job starts: a run's thread count fixes the order of its float sums, so it must not change within
a run (and it is part of a shared-epochs key).
"""

import os
import tempfile
from pathlib import Path

from hydra_plugins.optuna_pruning_sweeper.processes import process_start_time
from src.sweep_process import is_ancestor

REGISTRY = Path(tempfile.gettempdir()) / f"steplr-training-jobs-{os.getuid()}"


def job_cpus() -> frozenset[int]:
    """The CPUs this process may run on (its affinity: taskset, a cpuset, SLURM's task/affinity)."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


class CpuShare:
    """This process's entry in the machine's registry: `<pid>.<start time>`, holding its CPUs."""

    def __init__(self, cpus: frozenset[int]) -> None:
        self.cpus = cpus
        pid = os.getpid()
        self.entry = REGISTRY / f"{pid}.{process_start_time(pid)}"

    def register(self) -> None:
        """Enter this process (again: its CPUs may have changed); it stays until the process ends."""
        try:
            REGISTRY.mkdir(exist_ok=True)
            self.entry.write_text(",".join(map(str, sorted(self.cpus))))
        except OSError:  # no writable temp dir: each job counts only itself
            pass

    def jobs_sharing_my_cpus(self) -> int:
        """Live registered processes (this one included, its ancestors not) whose CPUs overlap this one's;
        entries of ended processes are removed."""
        count = 1
        try:
            entries = [path for path in REGISTRY.iterdir() if path != self.entry]
        except OSError:
            return count
        for path in entries:
            pid, _, started = path.name.partition(".")
            try:
                if not pid.isdigit() or process_start_time(int(pid)) != started:
                    path.unlink(missing_ok=True)
                elif is_ancestor(int(pid), os.getpid()):
                    continue
                elif self.cpus & {int(cpu) for cpu in path.read_text().split(",") if cpu}:
                    count += 1
            except (OSError, ValueError):
                continue
        return count
