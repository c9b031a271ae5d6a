"""Where a sweep and its jobs take Ctrl-C, SIGTERM and SIGHUP (src/interrupts.py makes the latter two act
as Ctrl-C): interrupts_held, around work that must not be broken off in its middle (a study's database
access, torch's import); interruptions_kept_as_such, around a whole sweep; and, below, a batch whose jobs
run in child processes of the sweep's process (joblib's workers).

The jobs stop on their own (they got the signal too, from the terminal or with their process group), write
their runs' files and end with JobInterrupted; the sweep waits for that, then stops as it would have at
once. Raised at once, the sweep's KeyboardInterrupt made joblib abort the batch, and loky SIGKILLed the
workers while they wrote their files: in 4 of 10 tries a run was left without metrics.json. A signal that
reached the sweep's process alone (`kill PID`) is passed on to its children as SIGTERM, which the jobs take
as Ctrl-C (loky's resource tracker ignores it). A second Ctrl-C or SIGTERM stops the sweep at once. A
SIGHUP after the first interruption does not: it is the terminal hanging up, not someone insisting. A shell
killed with its command (SIGTERM to the terminal's foreground process group, as `kill -TERM -PGID` sends it)
ends first, and the kernel then sends SIGHUP to the group. Taken as a second interruption, it aborted the
batch as above: a run lost its files in 3 to 5 of 10 such stops.
"""

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .processes import read_text

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class JobInterrupted(Exception):
    """Raised by a job stopped by Ctrl-C (or SIGTERM, SIGHUP) in a process of its own (a joblib worker), once
    its run has written its files. An Exception, not a KeyboardInterrupt: the launcher hands it back as the
    job's outcome, where a KeyboardInterrupt made joblib abort the batch and loky SIGKILL the other workers
    while they still wrote theirs. The sweep fails its trial as interrupted and queues it to run again."""


@contextlib.contextmanager
def interruptions_passed_to_child_jobs(launcher: Any) -> Iterator[None]:
    """Around launcher.launch(): hold an interruption until the launcher returns (see the module)."""
    from .job_dirs import JOBLIB_LAUNCHER  # (loaded by the sweeper; a job imports this module for the above)

    name = f"{type(launcher).__module__}.{type(launcher).__qualname__}"
    if name != JOBLIB_LAUNCHER or threading.current_thread() is not threading.main_thread():
        yield
        return
    start_resource_trackers_deaf_to_hangups()
    previous = {signum: signal.getsignal(signum) for signum in HELD_SIGNALS}
    arrived: list[int] = []

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def hold(signum: int, frame: Any) -> None:
        if arrived and signum == signal.SIGHUP:
            return  # the terminal hanging up after the first: see the module
        arrived.append(signum)
        if len(arrived) == 1:
            signal_children(signal.SIGTERM)
            return
        restore()  # a second one: stop now
        previous[arrived[0]](arrived[0], frame)

    for signum, handler in previous.items():
        if callable(handler):
            signal.signal(signum, hold)
    try:
        yield
    finally:
        restore()
        if len(arrived) == 1:
            handler = previous[arrived[0]]
            assert callable(handler)
            handler(arrived[0], None)  # as this process would have taken it (a KeyboardInterrupt)


def start_resource_trackers_deaf_to_hangups() -> None:
    """Start this process's resource trackers (loky's and multiprocessing's: processes that clean up after
    joblib's workers), if they are not running yet, with SIGHUP blocked, which they keep. They ignore SIGINT
    and SIGTERM, but a hang-up (or SIGHUP to the sweep's process group) killed them; each was started again,
    and the new one printed a KeyError traceback for each resource let go: some twenty after
    `interrupted (SIGHUP)`, 8 of 10 times. Called in the sweep's process and in each joblib worker."""
    import multiprocessing.resource_tracker

    trackers = [multiprocessing.resource_tracker.ensure_running]
    with contextlib.suppress(ImportError):  # (another joblib: its tracker as it comes)
        from joblib.externals.loky.backend import resource_tracker

        trackers.append(resource_tracker.ensure_running)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})  # a SIGHUP meanwhile: taken after
    try:
        for ensure_running in trackers:
            ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def signal_children(signum: int) -> None:
    """Send signum to each child process of this one (of any of its threads: loky's may start workers)."""
    for tasks in Path(f"/proc/{os.getpid()}/task").iterdir():
        for child in (read_text(str(tasks / "children")) or "").split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signum)


# The interruptions the running sweep has taken (interruptions_kept_as_such notes them)
ARRIVED: list[int] = []


def interruption_arrived() -> bool:
    """Whether the running sweep has been interrupted: an error then is the interruption's doing."""
    return bool(ARRIVED)


@contextlib.contextmanager
def interruptions_kept_as_such() -> Iterator[None]:
    """Around a sweep: an error that ends it after an interruption arrived (Ctrl-C, or SIGTERM or SIGHUP,
    which src/interrupts.py takes as Ctrl-C) ends it as that interruption, a KeyboardInterrupt. Raised in
    the middle of a library's work, a KeyboardInterrupt sometimes became another error there (OmegaConf, as
    Hydra composed a job's config: "'NoneType' object has no attribute '_invalidate_flags_cache'"), and the
    command printed that, with a traceback, and exited 1 instead of `interrupted (Ctrl-C)` (2 of 16 Ctrl-Cs
    at random moments of a sweep). The trials are given up as interrupted either way."""
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        yield
        return
    ARRIVED.clear()

    def noted(signum: int, frame: Any) -> None:
        ARRIVED.append(signum)
        previous(signum, frame)

    signal.signal(signal.SIGINT, noted)
    try:
        yield
    except Exception as error:
        if ARRIVED:
            raise KeyboardInterrupt from error
        raise
    finally:
        if signal.getsignal(signal.SIGINT) is noted:
            signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP back until the block ends, then take the first as this process would
    have. Only Python handlers are held; an ignored or default signal stays so. For:
    - a sweep's accesses to its study as it asks a batch's trials and tells their outcomes: a Ctrl-C there
      left trials RUNNING (until a later sweep found this one gone), or became an error of SQLAlchemy's;
    - imports of native libraries: a KeyboardInterrupt raised inside torch's import was sometimes lost (an
      import that catches everything) or ended the process with SIGABRT;
    - a run's accesses to its study (a few milliseconds; at most the database's busy timeout while another
      worker holds its lock): raised inside SQLAlchemy, the KeyboardInterrupt became the AssertionError of
      a transaction's cleanup, and a sweep took the Ctrl-C for one failed trial and ran on (1 in 100 Ctrl-Cs
      in a loop), or it left the thread's session unusable for the run's last write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in HELD_SIGNALS}
    for signum, handler in previous.items():
        if callable(handler):
            signal.signal(signum, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            handler = previous[held[0]]
            assert callable(handler)
            handler(held[0], None)
