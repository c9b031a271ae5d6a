"""Ctrl-C ends this project's commands (`python -m src.train`, `src.confirm`, `src.compare`) with one line
on stderr instead of a traceback, and SIGTERM (`kill PID`, `timeout`, a service manager or a SLURM time
limit stopping the command) and SIGHUP (the terminal closed, an ssh connection dropped) end them as Ctrl-C
does. A command started with `nohup` ignores SIGHUP as before.

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

SIGHUP did the same as SIGTERM did, and a hung-up terminal sends it to the whole foreground process group.
Both are STOP_SIGNALS, handled alike; the one line names the signal.

A KeyboardInterrupt that Python raises while a finalizer runs (a weakref callback, a __del__: garbage
collection may run one at any line) cannot propagate: Python printed "Exception ignored in ..." and went on,
and a sweep stopped by Ctrl-C ran its remaining jobs to the end. Such an interruption is raised again at the
next line of ordinary code (redeliver_lost_interruption).
"""

import _thread
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

# Handled as Ctrl-C, where Python's default would end the process at once
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_stopped_by: str | None = None  # the name of the first of them that arrived: the one line says so


def report_interrupts_in_one_line() -> None:
    """Call first in a command's __main__: the processes it forks (a batch's) inherit the handlers."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            how = interruption_name()
            print(f"interrupted: {error}" if str(error) else f"interrupted ({how})", file=sys.stderr)
        else:
            previous(kind, error, traceback)

    sys.excepthook = hook
    keep_interruptions_raised_in_finalizers()
    stop_on_signals_as_on_ctrl_c()


def keep_interruptions_raised_in_finalizers() -> None:
    """Install redeliver_lost_interruption as sys.unraisablehook (once: it wraps the hook it finds)."""
    previous = sys.unraisablehook
    if getattr(previous, "redelivers_interruptions", False):
        return

    def hook(unraisable: "sys.UnraisableHookArgs") -> None:
        global _in_unraisable_hook
        _in_unraisable_hook = True
        try:
            redelivered = redeliver_lost_interruption(unraisable.exc_value)
        finally:
            _in_unraisable_hook = False
        if not redelivered:
            previous(unraisable)

    hook.redelivers_interruptions = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


_lost: KeyboardInterrupt | None = None  # raised in a finalizer: to be raised again
_handler_before_loss: signal.Handlers | Callable[[int, FrameType | None], Any] | None = None
_in_unraisable_hook = False


def interruption_behind(error: BaseException) -> KeyboardInterrupt | None:
    """The interruption an error was raised while handling, if any: cut short by Ctrl-C (or SIGTERM, SIGHUP),
    a library's clean-up fails on the half-done work (torch.save's zip writer: "unexpected pos 2560 vs 2454"),
    and that error is what reaches the run."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def redeliver_lost_interruption(error: BaseException | None) -> bool:
    """If what a finalizer could not raise is an interruption of this process's main thread, raise it again
    there at its first line of Python after the finalizer, whatever SIGINT's handler is by then (one that
    ignores a second Ctrl-C, as interrupt_once installs, would otherwise drop it). True when so: nothing is
    printed. Lost in a finalizer again, it comes back here.

    A thread sends the SIGINT that raises it once this hook has returned: sent from here, Python would run
    the handler at its next check, still in the hook, whose exceptions are lost too."""
    global _lost, _handler_before_loss
    if not isinstance(error, KeyboardInterrupt) or threading.current_thread() is not threading.main_thread():
        return False
    if _lost is None:
        _handler_before_loss = signal.getsignal(signal.SIGINT)
    _lost = error
    signal.signal(signal.SIGINT, raise_lost_interruption)
    try:
        threading.Thread(target=interrupt_main_after_hook, name="lost-interruption", daemon=True).start()
    except RuntimeError:  # no new thread: the interpreter is shutting down
        return False
    return True


def interrupt_main_after_hook() -> None:
    while _in_unraisable_hook:
        time.sleep(0.001)
    if _lost is not None:  # (a Ctrl-C meanwhile raised it)
        _thread.interrupt_main(signal.SIGINT)


def raise_lost_interruption(signum: int, frame: FrameType | None) -> None:
    """SIGINT's handler while a lost interruption waits to be raised again."""
    global _lost
    if _in_unraisable_hook or _lost is None:  # a Ctrl-C meanwhile: the thread's SIGINT will raise it
        return
    error, _lost = _lost, None
    before = _handler_before_loss
    signal.signal(signal.SIGINT, signal.SIG_DFL if before is None else before)
    raise error


def stop_on_signals_as_on_ctrl_c() -> None:
    """Install on_stop_signal for each of STOP_SIGNALS that this process leaves to Python's default
    (submitit's jobs have a SIGTERM handler of their own; `nohup` ignores SIGHUP)."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, on_stop_signal)


def terminated() -> bool:
    """Whether this process has had a SIGTERM or SIGHUP (else an interruption is Ctrl-C's)."""
    return _stopped_by is not None


def interruption_name() -> str:
    """What interrupted this process: SIGTERM, SIGHUP, else Ctrl-C."""
    return _stopped_by or "Ctrl-C"


def on_stop_signal(signum: int, frame: FrameType | None) -> None:
    """Once: a process that is ending ignores a further SIGTERM or SIGHUP (one sent to its group and one
    forwarded to it by its parent, as src.confirm forwards SIGTERM to its reruns)."""
    global _stopped_by
    _stopped_by = signal.Signals(signum).name
    for stop_signal in STOP_SIGNALS:
        if signal.getsignal(stop_signal) is on_stop_signal:
            signal.signal(stop_signal, lambda signum, frame: None)  # not SIG_IGN: see launch_process.ignored
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)  # Python's default_int_handler raises KeyboardInterrupt
        return
    # Ctrl-C is ignored (a command started in the background with `&` or nohup inherits that), or left to
    # the system: SIGTERM or SIGHUP still stops the command.
    raise KeyboardInterrupt
