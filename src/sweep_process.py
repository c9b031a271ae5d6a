"""A job that runs in a child process of its sweep stops when the sweep's process ends.

joblib's workers (and submitit's local jobs) are child processes of the sweep. Killed, the sweep leaves
them training for the rest of their trial, for nobody: their results would go to a study whose worker is
gone. So the sweep names its process in the environment its children inherit, and a job started in a
descendant of that process watches it and interrupts itself (as Ctrl-C would: status `interrupted`, files
written) once it has ended. A job in the sweep's own process (the basic launcher), or one that is no
descendant of it (a SLURM job, a run started by hand), is not watched: `nohup` and clusters keep working.
A watched job takes Ctrl-C, SIGTERM and SIGHUP (src/interrupts.py) as a run does, once, and then ends with
JobInterrupted, an Exception, for its launcher to hand back to the sweep (which waits for it, see
hydra_plugins/optuna_pruning_sweeper/child_jobs.py).
"""

import _thread
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from hydra_plugins.optuna_pruning_sweeper.child_jobs import (
    JobInterrupted,
    start_resource_trackers_deaf_to_hangups,
)
from hydra_plugins.optuna_pruning_sweeper.processes import process_start_time, read_text
from src.interrupts import (
    interruption_name,
    keep_interruptions_raised_in_finalizers,
    stop_on_signals_as_on_ctrl_c,
)

SWEEP_PROCESS_ENV = "STEPLR_SWEEP_PROCESS"  # "<pid>.<start time>" of the process that runs the sweeper
WATCH_THREAD = "sweep-process-watch"
POLL_SECONDS = 1.0

log = logging.getLogger(__name__)


def name_sweep_process() -> None:
    """Called in the sweep's process before it launches anything: its children inherit the name."""
    pid = os.getpid()
    os.environ[SWEEP_PROCESS_ENV] = f"{pid}.{process_start_time(pid)}"


def parent_pid(pid: int) -> int | None:
    stat = read_text(f"/proc/{pid}/stat")
    return int(stat.rsplit(")", 1)[-1].split()[1]) if stat else None


def is_ancestor(ancestor: int, pid: int) -> bool:
    while pid > 1:
        pid = parent_pid(pid) or 0
        if pid == ancestor:
            return True
    return False


_interrupted = False  # this worker had Ctrl-C (or SIGTERM, SIGHUP): each job it gets from now on ends at once


@contextlib.contextmanager
def stopped_when_sweep_process_ends() -> Iterator[None]:
    """Run a job; if it runs in a descendant of its sweep's process, interrupt it once that process ends,
    and end this process after the job has written its files (nobody will give it another job).

    Such a job takes the first Ctrl-C (or SIGTERM, SIGHUP) as a run does, and then ends with JobInterrupted.
    Its worker remembers it: a job it gets afterwards (the sweep waits for the jobs it had launched, also
    those still queued, child_jobs.py) ends at once, as does one it gets after an interruption that reached
    it between jobs."""
    pid_text, _, started = os.environ.get(SWEEP_PROCESS_ENV, "").partition(".")
    watched = (
        pid_text.isdigit()
        and is_ancestor(int(pid_text), os.getpid())
        # the interruption is a signal handler, which only the main thread can install
        and threading.current_thread() is threading.main_thread()
    )
    if not watched:
        yield
        return
    if _interrupted:
        raise JobInterrupted(f"its worker was interrupted ({interruption_name()}) before the job began")
    ended, job_done = threading.Event(), threading.Event()
    stop_on_signals_as_on_ctrl_c()  # else a joblib worker dies at once of a SIGTERM sent to the sweep's group
    keep_interruptions_raised_in_finalizers()  # joblib's workers start afresh: not from src.train's __main__

    def interrupt_once(signum: int, frame: FrameType | None) -> None:
        """Ctrl-C, or SIGTERM or SIGHUP taken as Ctrl-C (the first of them): further ones must not break
        off the files the run writes for the first."""
        remember_interruption(signum, frame)
        signal.signal(signal.SIGINT, remember_interruption)
        raise KeyboardInterrupt("the sweep's process ended" if ended.is_set() else "")

    signal.signal(signal.SIGINT, interrupt_once)
    watcher = threading.Thread(
        target=watch, args=(int(pid_text), started, ended, job_done), name=WATCH_THREAD, daemon=True
    )
    watcher.start()
    try:
        yield
    except KeyboardInterrupt:
        if ended.is_set():
            raise
        # joblib hands it back as the job's outcome, without aborting the other jobs (child_jobs.py)
        raise JobInterrupted(f"the run stopped ({interruption_name()})") from None
    finally:
        job_done.set()
        signal.signal(signal.SIGINT, remember_interruption)  # between jobs (SIGTERM, SIGHUP come here too)
        if ended.is_set():
            logging.shutdown()
            os._exit(130)  # as after Ctrl-C


def remember_interruption(signum: int, frame: FrameType | None) -> None:
    global _interrupted
    _interrupted = True


def remember_interruptions_until_the_first_job_runs() -> None:
    """In a joblib worker, as its first job arrives (unpickling the job imports this module): Ctrl-C,
    SIGTERM or SIGHUP are remembered until the job's function runs, which then ends at once with
    JobInterrupted, its directory removed. Hydra makes that directory in between; there, Ctrl-C raised a
    KeyboardInterrupt outside any job (joblib aborted the batch, and loky SIGKILLed the other workers while
    they wrote their runs' files), and SIGTERM or SIGHUP ended the worker: the directory stayed with
    Hydra's files only (1 of 3 hang-ups as the jobs began)."""
    multiprocessing = sys.modules.get("multiprocessing")  # loaded in a worker: loky runs it
    process = multiprocessing.current_process() if multiprocessing is not None else None
    in_a_worker = type(process).__name__ == "LokyProcess" and SWEEP_PROCESS_ENV in os.environ
    if not in_a_worker or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, remember_interruption)
    stop_on_signals_as_on_ctrl_c()  # SIGTERM and SIGHUP as that Ctrl-C
    start_resource_trackers_deaf_to_hangups()


def watch(sweep_pid: int, started: str, ended: threading.Event, job_done: threading.Event) -> None:
    while process_start_time(sweep_pid) == started:
        if job_done.wait(POLL_SECONDS):
            return
    log.warning("the sweep's process %d ended: stopping this job", sweep_pid)
    ended.set()
    _thread.interrupt_main()


remember_interruptions_until_the_first_job_runs()
