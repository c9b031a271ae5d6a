"""Ctrl-C ends this project's commands (`python -m src.train`, `src.confirm`, `src.compare`) with one line
on stderr instead of a traceback.

What a Ctrl-C interrupted is logged already (a run's `interrupted: DIR`, a sweep's trials queued to run
again), and its files say so. Python still runs the atexit handlers (the batched launcher's stops its launch
process) and then ends the process by SIGINT, as for any uncaught KeyboardInterrupt, so that a shell loop
running the command stops too.
"""

import sys
from types import TracebackType


def report_interrupts_in_one_line() -> None:
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            print(f"interrupted: {error}" if str(error) else "interrupted (Ctrl-C)", file=sys.stderr)
        else:
            previous(kind, error, traceback)

    sys.excepthook = hook
