"""The task's side of hydra/launcher=batched: defer a job's work, to be done together with others.

    if deferring():
        return defer(MyWork(cfg))      # MyWork.run_together(works, settings) does it later

`run_together` is a classmethod of the work's type, called once per type with every deferred work of the
batch (in job order) and the launcher's BatchSettings; it returns, per work, the job's return value or the
exception that ended it. On Linux this happens in the launcher's launch process (launch_process.py): works,
values and exceptions are pickled there and back (an exception that won't pickle arrives as a RuntimeError
with its text). There, a work that has a `prepare()` method has it called as soon as the work arrives, while
the sweep's process still runs the batch's later jobs: what each work can set up alone (opening its trial,
its log) is done then, on another core; prepare() leaves failures for run_together to report.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

_collected: ContextVar[list["Deferred"] | None] = ContextVar("batched_launcher_deferred", default=None)


@dataclass(frozen=True)
class BatchSettings:
    """What hydra.launcher sets for the work of a batch."""

    max_batch: int | None = None  # at most this many jobs' works done together (None: the work decides)
    processes: int | None = 1  # processes the works may be spread over (None: the work decides)


@dataclass(frozen=True)
class Deferred:
    """What the task function returns for a deferred job, until the launcher fills in its real value. A work
    with an `abandoned()` method has it called in the sweep's process when a Ctrl-C stops the batch."""

    work: Any

    def __repr__(self) -> str:
        return f"Deferred({type(self.work).__name__})"


def deferring() -> bool:
    """True inside a job of hydra/launcher=batched: the task may defer its work."""
    return _collected.get() is not None


def defer(work: Any) -> Deferred:
    collected = _collected.get()
    if collected is None:
        raise RuntimeError(
            "defer() is only possible inside a job of hydra/launcher=batched (see deferring())"
        )
    deferred = Deferred(work)
    collected.append(deferred)
    return deferred


@contextmanager
def collecting() -> Iterator[list[Deferred]]:
    """The launcher's side: collect what the jobs run inside this block defer."""
    collected: list[Deferred] = []
    token = _collected.set(collected)
    try:
        yield collected
    finally:
        _collected.reset(token)


def run_deferred(collected: list[Deferred], settings: BatchSettings) -> list[Any]:
    """Each deferred work's result (a value or an exception), in the order of `collected`."""
    by_type: dict[type, list[int]] = {}
    for index, deferred in enumerate(collected):
        by_type.setdefault(type(deferred.work), []).append(index)
    results: dict[int, Any] = {}
    for work_type, indices in by_type.items():
        outcomes = work_type.run_together([collected[i].work for i in indices], settings)
        results.update(zip(indices, outcomes, strict=True))
    return [results[index] for index in range(len(collected))]
