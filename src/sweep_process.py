"""A job that runs in a child process of its sweep stops when the sweep's process ends.

joblib's workers (and submitit's local jobs) are child processes of the sweep. Killed, the sweep leaves
them training for the rest of their trial, for nobody: their results would go to a study whose worker is
gone. So the sweep names its process in the environment its children inherit, and a job started in a
descendant of that process watches it and interrupts itself (as Ctrl-C would: status `interrupted`, files
written) once it has ended. A job in the sweep's own process (the basic launcher), or one that is no
descendant of it (a SLURM job, a run started by hand), is not watched: `nohup` and clusters keep working.
A watched job takes SIGTERM (and SIGHUP) as its Ctrl-C (src/interrupts.py): a joblib worker ignores them
while its sweep's process lives, and ends as interrupted once that process has.
"""

import _thread
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator

from hydra_plugins.optuna_pruning_sweeper.processes import process_start_time, read_text
from src.interrupts import STOP_SIGNALS, keep_interruptions_raised_in_finalizers, stop_on_signals_as_on_ctrl_c

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


@contextlib.contextmanager
def stopped_when_sweep_process_ends() -> Iterator[None]:
    """Run a job; if it runs in a descendant of its sweep's process, interrupt it once that process ends,
    and end this process after the job has written its files (nobody will give it another job)."""
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
    ended, job_done = threading.Event(), threading.Event()
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, *STOP_SIGNALS)}
    stop_on_signals_as_on_ctrl_c()  # else a joblib worker dies at once of a SIGTERM sent to the sweep's group
    keep_interruptions_raised_in_finalizers()  # joblib's workers start afresh: not from src.train's __main__
    if handlers[signal.SIGINT] is signal.SIG_IGN:
        # joblib's workers ignore Ctrl-C (their sweep handles it); they still do while the sweep lives.
        signal.signal(signal.SIGINT, lambda signum, frame: stop_if(ended))
    watcher = threading.Thread(
        target=watch, args=(int(pid_text), started, ended, job_done), name=WATCH_THREAD, daemon=True
    )
    watcher.start()
    try:
        yield
    finally:
        job_done.set()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if ended.is_set():
            logging.shutdown()
            os._exit(130)  # as after Ctrl-C


def stop_if(ended: threading.Event) -> None:
    if ended.is_set():
        raise KeyboardInterrupt("the sweep's process ended")


def watch(sweep_pid: int, started: str, ended: threading.Event, job_done: threading.Event) -> None:
    while process_start_time(sweep_pid) == started:
        if job_done.wait(POLL_SECONDS):
            return
    log.warning("the sweep's process %d ended: stopping this job", sweep_pid)
    ended.set()
    _thread.interrupt_main()
