"""A stacked group's trials spread over processes (hydra.launcher.processes): more cores for small models.

A stacked step of small models is mostly many small operations, one after another, which a second thread
barely speeds up; two processes each training half the trials with one thread do (bench/
stacked_step_processes.py). This process trains the first part; each other part trains in a child forked
from it, which starts with everything the group needs already loaded (torch, the data, the model).

A child:
- uses `threads` threads (set before its first operation: the parent's thread pool does not survive a fork);
- opens its own connections to the study (hydra_plugins/optuna_pruning_sweeper/storage.py disposes, in a
  forked child, the connections the parent opened);
- stops as a job in a child of the sweep does when the sweep's process ends (src/sweep_process.py): its
  trials end as interrupted, their files written;
- hands its trials' outcomes (a value or an exception) back through a pipe, then leaves with os._exit.
A child that dies without handing them back (killed, out of memory) fails each of its trials with a
ChildProcessError naming how it ended; the other parts go on.
"""

import logging
import os
import pickle
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from hydra_plugins.batched_launcher.launch_process import (
    how_it_ended,
    interrupt_once,
    send_signal,
    transferable,
)
from src.sweep_process import stopped_when_sweep_process_ends

log = logging.getLogger(__name__)
Item = TypeVar("Item")


def split(items: Sequence[Item], processes: int, least: int = 2) -> list[list[Item]]:
    """At most `processes` parts of near-equal size, each of at least `least` items (one part when the
    items are fewer than 2 x least)."""
    count = max(1, min(processes, len(items) // least))
    base, extra = divmod(len(items), count)
    parts, start = [], 0
    for index in range(count):
        size = base + (index < extra)
        parts.append(list(items[start : start + size]))
        start += size
    return parts


def in_processes(
    parts: list[list[Item]], work: Callable[[list[Item]], list[Any]], threads: int
) -> list[list[Any]]:
    """work(part) for every part: the first here, each other one in a child process (here too, after the
    first, when no process can be started); each part's outcomes (a value or the exception that ended the
    item). Every process uses `threads` threads meanwhile."""
    children, here = [], [0]
    sys.stdout.flush()
    sys.stderr.flush()
    for index, part in enumerate(parts[1:], start=1):
        try:
            children.append((index, *_start_child(part, work, threads)))
        except OSError as error:  # no memory or process slot left for a fork
            log.warning("%d trials train in this process: no process could be started (%s)", len(part), error)
            here.append(index)
    results: dict[int, list[Any]] = {}
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for index in here:
            results[index] = work(parts[index])
    except BaseException:
        for _, pid, _ in children:  # Ctrl-C or a crash here: the children end their trials too
            send_signal(pid, signal.SIGINT)
        _collect(children, parts)
        raise
    finally:
        torch.set_num_threads(threads_before)
    results.update(_collect(children, parts))
    return [results[index] for index in range(len(parts))]


def _start_child(part: list[Any], work: Callable[[list[Any]], list[Any]], threads: int) -> tuple[int, int]:
    """(pid, the pipe's end its outcomes come from)."""
    readable, writable = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(readable)
        os.close(writable)
        raise
    if pid == 0:
        os.close(readable)
        _child(part, work, threads, writable)
    os.close(writable)
    return pid, readable


def _child(part: list[Any], work: Callable[[list[Any]], list[Any]], threads: int, writable: int) -> None:
    status, outcomes = 1, None
    try:
        signal.signal(signal.SIGINT, interrupt_once)
        torch.set_num_threads(threads)
        with stopped_when_sweep_process_ends():
            outcomes = [transferable(outcome) for outcome in work(part)]
        status = 0
    except BaseException as error:  # the whole part ended (each trial has written its files)
        outcomes = transferable(error)
    finally:
        try:
            with os.fdopen(writable, "wb") as pipe:
                pickle.dump(outcomes, pipe)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def _collect(children: list[tuple[int, int, int]], parts: list[list[Any]]) -> dict[int, list[Any]]:
    """Each child's outcomes (by the index of its part), once it has ended."""
    results = {}
    for index, pid, readable in children:
        size = len(parts[index])
        with os.fdopen(readable, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
        outcomes = pickle.loads(data) if data else None
        if isinstance(outcomes, list) and len(outcomes) == size:
            results[index] = outcomes
            continue
        if not isinstance(outcomes, BaseException):
            ended = how_it_ended(status) + ("" if os.WIFSIGNALED(status) else " without its trials' outcomes")
            outcomes = ChildProcessError(
                f"the process training {size} of the batch's trials (pid {pid}) {ended}"
            )
            log.error("%s", outcomes)
        results[index] = [outcomes] * size
    return results
