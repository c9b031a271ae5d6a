"""Ctrl-C ends this project's commands (`python -m src.train`, `src.confirm`, `src.compare`) with one line
on stderr instead of a traceback, and SIGTERM (`kill PID`, `timeout`, a service manager or a SLURM time
limit stopping the command) ends them as Ctrl-C does.

What a Ctrl-C interrupted is logged already (a run's `interrupted: DIR`, a sweep's trials queued to run
again), and its files say so. Python still runs the atexit handlers (the batched launcher's stops its launch
process) and then ends the process by SIGINT, as for any uncaught KeyboardInterrupt, so that a shell loop
running the command stops too.

Python's own SIGTERM ends a process at once: a run left no metrics.json, a sweep's running trials stayed
RUNNING in its study until another sweep found its process gone, and the processes a batch trained in died
with it, their runs' files unwritten. Here SIGTERM does what the process's SIGINT handler does at that moment,
so every process of a sweep ends as it does on Ctrl-C, whether the signal reaches it alone or its whole
process group (as `timeout` sends it): the processes a batch trains in ignore any interruption after the first
while their trials write their files (interrupt_once), whichever signal comes first.
"""

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType

_terminated = False  # a SIGTERM arrived: the one line says so


def report_interrupts_in_one_line() -> None:
    """Call first in a command's __main__: the processes it forks (a batch's) inherit the SIGTERM handler."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            how = "(SIGTERM)" if terminated() else "(Ctrl-C)"
            print(f"interrupted: {error}" if str(error) else f"interrupted {how}", file=sys.stderr)
        else:
            previous(kind, error, traceback)

    sys.excepthook = hook
    stop_on_sigterm_as_on_ctrl_c()


def stop_on_sigterm_as_on_ctrl_c() -> None:
    """Install the SIGTERM handler in this process, unless another one is installed (submitit's jobs have
    their own)."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, on_sigterm)


def terminated() -> bool:
    """Whether this process has had a SIGTERM (else an interruption is Ctrl-C's)."""
    return _terminated


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Once: a process that is ending ignores a further SIGTERM (one sent to its group and one forwarded to
    it by its parent, as src.confirm forwards it to its reruns)."""
    global _terminated
    _terminated = True
    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # not SIG_IGN: see launch_process.ignored
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)  # Python's default_int_handler raises KeyboardInterrupt
        return
    # Ctrl-C is ignored (a command started in the background with `&` or nohup inherits that), or left to
    # the system: SIGTERM still stops the command.
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back until the block ends, then take the first as this process would have.
    For imports of native libraries: a KeyboardInterrupt raised inside torch's import was sometimes lost (an
    import that catches everything) or ended the process with SIGABRT. Only Python handlers are held; an
    ignored or default signal stays so."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
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
