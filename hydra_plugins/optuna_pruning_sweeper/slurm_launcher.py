"""hydra/launcher=slurm: submitit's SLURM launcher, with the batch's job array cancelled when the sweep stops.

Stopped by Ctrl-C, SIGTERM or SIGHUP, or ended by the launcher's own failure, the sweep gives the batch's
trials up and queues them again (sweeper.py), but submitit left the array in SLURM: its running jobs failed at
their next report (the trial had ended), and its pending ones started later, to fail the same way (a sweep
stopped while its array waited for resources left it queued for good). The launcher cancels the array with
scancel, which sends a running job SIGTERM: it ends as interrupted, its run's files written. Then the
interruption (or failure) goes on as before.

While the batch runs, a job that SLURM keeps pending for a reason that does not pass by itself (it asks for
more CPUs than a node of its partition has: `PartitionConfig`) is named in a warning; the sweep used to wait
without a word.
"""

import logging
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn

try:  # hydra-submitit-launcher is the optional [cluster] dependency; Hydra's plugin scan imports this module
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # pragma: no cover
    SlurmLauncher = None

log = logging.getLogger(__name__)


def entries(folder: Path) -> set[str]:
    """The names in submitit's folder; none before it is made."""
    return {path.name for path in folder.iterdir()} if folder.is_dir() else set()


def submitted_arrays(folder: Path, before: set[str]) -> list[str]:
    """The SLURM job ids of the arrays whose tasks' folders (submitit's `%j`: `ARRAY_TASK`), or files in one
    folder (`ARRAY_TASK_submitted.pkl`), are new."""
    names = entries(folder) - before
    return sorted({name.split("_")[0] for name in names if name.split("_")[0].isdigit()})


def cancel(arrays: list[str]) -> None:
    if not arrays:
        return
    try:
        done = subprocess.run(["scancel", *arrays], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning(f"Could not cancel SLURM jobs {', '.join(arrays)}: {error}")
        return
    if done.returncode != 0:
        log.warning(f"scancel {' '.join(arrays)}: {done.stderr.strip()}")
    else:
        log.info(f"Cancelled the batch's SLURM jobs: {', '.join(arrays)}")


# squeue's reasons (`%r`) for a pending job that cannot start as things are: it asks for more than its
# partition, account or QOS allows, or for nodes or a partition that are not there.
CANNOT_START = (
    "PartitionConfig",
    "PartitionTimeLimit",
    "PartitionNodeLimit",
    "PartitionDown",
    "PartitionInactive",
    "BadConstraints",
    "ReqNodeNotAvail",
    "InvalidAccount",
    "InvalidQOS",
    "QOSMax",
    "AssocMax",
)
WATCH_SECONDS = 5.0


def jobs_that_cannot_start(arrays: list[str]) -> dict[str, str]:
    """The pending tasks of these arrays that cannot start, with squeue's reason; none when squeue fails."""
    try:
        done = subprocess.run(
            ["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i %T %r"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    stuck = {}
    for line in done.stdout.splitlines():
        job, state, reason = (line.split(maxsplit=2) + ["", ""])[:3]
        if state == "PENDING" and reason.startswith(CANNOT_START):
            stuck[job] = reason
    return stuck


class StuckJobsWatch(threading.Thread):
    """Warns, once for each reason, of the batch's jobs that SLURM keeps pending for a reason that does not
    pass by itself, while the launcher waits for their results."""

    def __init__(self, folder: Path, before: set[str]) -> None:
        super().__init__(daemon=True, name="slurm-stuck-jobs")
        self.folder, self.before = folder, before
        self.stopped = threading.Event()
        self.told: set[str] = set()

    def run(self) -> None:
        while not self.stopped.wait(WATCH_SECONDS):
            if not (arrays := submitted_arrays(self.folder, self.before)):
                continue
            by_reason: dict[str, list[str]] = {}
            for job, reason in jobs_that_cannot_start(arrays).items():
                by_reason.setdefault(reason, []).append(job)
            for reason, jobs in by_reason.items():
                if reason not in self.told:
                    self.told.add(reason)
                    log.warning(
                        f"SLURM keeps job {', '.join(jobs)} pending: {reason}, which does not pass by itself "
                        "(it asks for more than its partition, account or QOS allows, or for nodes or a "
                        "partition that are not available: see hydra.launcher.partition, cpus_per_task, "
                        "mem_gb, timeout_min); Ctrl-C stops the sweep and cancels its jobs"
                    )


if SlurmLauncher is not None:

    class StoppableSlurmLauncher(SlurmLauncher):
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            folder = Path(str(self.params["submitit_folder"]))
            if "%j" in folder.name:  # a folder per job (ours): they appear beside each other
                folder = folder.parent
            before = entries(folder)
            watch = StuckJobsWatch(folder, before)
            watch.start()
            try:
                return super().launch(job_overrides, initial_job_idx)
            except BaseException:  # stopped, or a job's failure ends the sweep: its trials are queued again
                cancel(submitted_arrays(folder, before))
                raise
            finally:
                watch.stopped.set()
