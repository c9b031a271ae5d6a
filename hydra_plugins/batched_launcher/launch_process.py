"""The batched launcher's deferred work runs in a process forked when the sweep starts (Linux): its launch
process.

What that work imports (this app's: torch, 1 to 3 s, without torch._dynamo, src/dynamo_on_demand.py; the
study's database libraries) then loads on another core while the sweeper opens its
study, asks its trials and Hydra runs each job's side in the sweep's process, instead of after them:
hydra.launcher.preload names it. It is imported with the garbage collector paused, then frozen (collector.py).
An app's entrypoint can start it sooner, before Hydra composes the config (launcher.start_before_hydra): the
launcher's setup then adopts it and sends it what it would have inherited from the sweep's process at setup
(Inheritance). Once that is loaded, the launcher hands it each deferred work (deferral.py) as soon as the
work's job has run, and the work prepares itself there while the sweep's process runs the batch's later jobs;
then it runs the batch and sends back the outcomes. The sweep's process never imports what the work does.

- Ctrl-C reaches it from the terminal and, forwarded, from the sweep's process: it ends the batch once (its
  trials end as interrupted, their files written), sends that back and leaves.
- Killed alone during a batch, the batch is lost, as the sweep's own process would lose it: run() raises a
  ChildProcessError naming how it ended, and the sweep ends as a killed one does (and resumes so). Ended
  between batches, it is reaped with a warning and the launcher trains the next batches in its own process.
- The sweep's process ending: once its sweeper launches no more batches (BatchedLauncher.sweep_ended), or at
  its normal end, it kills it (nothing runs between batches), and reaps it at its exit; killed between
  batches, the pipe closes and it leaves; during a batch, the deferred work's own watch stops it
  (src/sweep_process.py).
"""

import atexit
import contextlib
import importlib
import logging
import os
import pickle
import signal
import sys
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import configure_log, setup_globals

from .collector import imports_without_collector
from .deferral import BatchSettings, Deferred

log = logging.getLogger(__name__)

Work = Callable[[list[Deferred], BatchSettings], list[Any]]
SEND_INHERITANCE, SEND_WORK, SEND_RUN = "inheritance", "work", "run"
REPLY_READY, REPLY_OUTCOMES, REPLY_RAISED = "ready", "outcomes", "raised"


def transferable(outcome: Any) -> Any:
    """The outcome, or for an exception that would not survive pickling, a RuntimeError saying what it was."""
    if not isinstance(outcome, BaseException):
        return outcome
    try:
        pickle.loads(pickle.dumps(outcome))
        return outcome
    except Exception:
        return RuntimeError(f"{type(outcome).__name__}: {outcome}")


def how_it_ended(status: int) -> str:
    """A waitpid status in words."""
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


# Signals an app may take as Ctrl-C (src/interrupts.py does): ignored, as a second Ctrl-C is, once a batch is
# interrupted
LATER_STOPS = (signal.SIGTERM, signal.SIGHUP)


def interrupt_once(signum: int, frame: Any) -> None:
    """SIGINT handler of a process that trials train in: Ctrl-C reaches it twice (from the terminal, and
    forwarded by its parent); the second must not break off the files the first one has the trials write.
    A SIGTERM or SIGHUP that the command handles as Ctrl-C (src/interrupts.py) is such a second one too."""
    for signum in (signal.SIGINT, *LATER_STOPS):
        signal.signal(signum, ignored)
    raise KeyboardInterrupt


def ignored(signum: int, frame: Any) -> None:
    """A handler that does nothing. Not SIG_IGN: a signal that has arrived but whose handler has not run yet
    (the second of two sent together) would then raise "OSError: Signal 15 ignored due to race condition"."""


def send_signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


@dataclass(frozen=True)
class Inheritance:
    """What a launch process started before Hydra is sent when the launcher adopts it: what one forked at
    the launcher's setup inherits from the sweep's process. Its environment (the sweep's callbacks name the
    sweep's process there, src/sweep_process.py), working directory, Hydra's config and resolvers, the
    logging the launcher configures, and the modules hydra.launcher.preload names."""

    environ: dict[str, str]
    cwd: str
    hydra_config: Any
    hydra_logging: Any
    verbose: Any
    execution_whitelist: Any
    preload: list[str]

    def take(self, environ_at_fork: dict[str, str]) -> None:
        """Become as if forked now: the environment the sweep's process changed since the fork is changed
        alike (what this process's imports set stays)."""
        for name in environ_at_fork.keys() - self.environ.keys():
            os.environ.pop(name, None)
        os.environ.update({k: v for k, v in self.environ.items() if environ_at_fork.get(k) != v})
        os.chdir(self.cwd)
        HydraConfig.instance().cfg = self.hydra_config
        setup_globals()
        configure_log(self.hydra_logging, self.verbose, execution_whitelist=self.execution_whitelist)
        _import_quietly(self.preload)


class Channel:
    """One end of the pipe between the sweep's process and its launch process; messages are pickled and
    compressed. A work is 43 KB pickled (its job's config and Hydra's), 9 KB compressed (0.3 ms), and the
    pipe holds about 200 KB: uncompressed, the works of the jobs run before the launch process was ready
    (a dozen) filled it, and the sweep's process waited in its send while the launch process prepared them
    one by one (0.1 to 0.3 s) instead of running its next jobs."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def send(self, message: Any) -> None:
        self.connection.send_bytes(zlib.compress(pickle.dumps(message), 1))

    def recv(self) -> Any:
        return pickle.loads(zlib.decompress(self.connection.recv_bytes()))

    def poll(self) -> bool:
        return self.connection.poll()

    def close(self) -> None:
        self.connection.close()


_started: list["LaunchProcess"] = []  # by this process


def stop_launch_processes() -> None:
    """Stop this process's launch processes, as its exit does (nothing runs in them between batches): for an
    app that leaves with os._exit once its sweep has returned, which a live child would keep it from
    (src/fast_exit.py; that saves the interpreter's teardown, 0.3 s)."""
    while _started:
        _started.pop().stop()


atexit.register(stop_launch_processes)  # at this process's exit


class LaunchProcess:
    """The process the launcher's deferred work runs in (forked here, now); run() sends it one batch's.
    `to_be_adopted`: started before Hydra, it waits for adopt() before it takes any work."""

    def __init__(self, work: Work, preload: Sequence[str], to_be_adopted: bool = False) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        here, there = (Channel(end) for end in Pipe())
        pid = os.fork()
        if pid == 0:
            here.close()
            _serve(there, work, preload, to_be_adopted)
        there.close()
        self.pid: int | None = pid
        self._killed: int | None = None  # ended by end(), not reaped yet
        self._connection = here
        self._ready = False  # it has loaded what it preloads and prepares each work it is handed at once
        self._handed_over = 0  # works of the batch it already has
        _started.append(self)

    @property
    def alive(self) -> bool:
        """Still there to train a batch; one that has ended (killed while waiting) is reaped, with a warning:
        the launcher then trains its batches in the sweep's process."""
        if self.pid is None:
            return False
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return True
        self._handed_over = 0
        log.warning(
            "the launch process (pid %d) %s: batches train in this process", self.pid, how_it_ended(status)
        )
        self.pid = None
        self._connection.close()
        return False

    def adopt(self, inheritance: Inheritance) -> bool:
        """Send a process started to be adopted what it inherits; False if it can no longer take it (it has
        ended, or the inheritance cannot be pickled): it is then stopped, and the launcher forks another."""
        try:
            self._connection.send((SEND_INHERITANCE, inheritance))
            return True
        except Exception as error:
            log.debug("the launch process started before Hydra cannot be adopted (%s)", error)
            self.stop()
            return False

    def hand_over(self, collected: list[Deferred]) -> None:
        """Send the batch's works collected so far that it has not got yet, once it has loaded what it
        preloads (before, they go with run()): it prepares each (deferral.py) while this process runs the
        batch's later jobs. Ended meanwhile, nothing is sent: run() or the launcher finds out."""
        if self.pid is None:
            return
        try:
            if not self._ready and self._connection.poll():  # nothing but that is sent between batches
                kind, _ = self._connection.recv()
                self._ready = kind == REPLY_READY
            if self._ready:
                for deferred in collected[self._handed_over :]:
                    self._connection.send((SEND_WORK, deferred))
                    self._handed_over += 1
        except (EOFError, OSError):
            return

    def run(self, collected: list[Deferred], settings: BatchSettings) -> list[Any]:
        """work(collected, settings) there: each deferred work's outcome (a value or an exception)."""
        assert self.pid is not None
        try:
            for deferred in collected[self._handed_over :]:
                self._connection.send((SEND_WORK, deferred))
            self._connection.send((SEND_RUN, settings))
            kind, payload = self._reply()
        except (EOFError, OSError):
            raise self._lost() from None
        except KeyboardInterrupt:
            send_signal(self.pid, signal.SIGINT)  # Ctrl-C sent to this process alone reaches the batch too
            with contextlib.suppress(EOFError, OSError):
                self._reply()  # its trials end as interrupted and write their files first
            raise
        finally:
            self._handed_over = 0
        if kind == REPLY_RAISED:
            raise payload
        return payload

    def _reply(self) -> tuple[str, Any]:
        """The next reply that is not the one saying it has loaded what it preloads."""
        kind, payload = self._connection.recv()
        if kind == REPLY_READY:
            self._ready = True
            kind, payload = self._connection.recv()
        return kind, payload

    def _lost(self) -> ChildProcessError:
        """The process ended during a batch: reaped, and the error that fails the batch."""
        assert self.pid is not None
        pid, self.pid = self.pid, None
        _, status = os.waitpid(pid, 0)
        return ChildProcessError(f"the process running the batch's jobs (pid {pid}) {how_it_ended(status)}")

    def end(self) -> None:
        """End the process without waiting for it (nothing runs in it between batches): the kernel tears it
        down (0.06 s with torch loaded) while this process goes on; stop() reaps it."""
        if self.pid is None:
            return
        self._killed, self.pid = self.pid, None
        self._connection.close()
        send_signal(self._killed, signal.SIGKILL)
        log.debug("ended the launch process (pid %d)", self._killed)

    def stop(self) -> None:
        """End the process (at the sweep's end) and reap it."""
        self.end()
        killed, self._killed = self._killed, None
        if killed is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(killed, 0)


def _serve(connection: Channel, work: Work, preload: Sequence[str], to_be_adopted: bool) -> NoReturn:
    """The launch process: import `preload` (adopted: take what it inherits), then run every batch it is
    sent, until the sweep ends."""
    code = 0
    environ_at_fork = dict(os.environ)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _import_quietly(preload)
        if to_be_adopted:
            try:
                kind, inheritance = connection.recv()
            except EOFError:  # the sweep's process ended, or went on without it
                return
            assert kind == SEND_INHERITANCE, kind
            inheritance.take(environ_at_fork)
        connection.send((REPLY_READY, None))
        collected: list[Deferred] = []
        arrived: deque[tuple[str, Any]] = deque()  # received, not yet taken
        while True:
            try:
                kind, payload = arrived.popleft() if arrived else connection.recv()
            except EOFError:  # the sweep's process has ended
                break
            if kind == SEND_WORK:
                collected.append(payload)
                arrived.extend(_waiting(connection))
                _prepare(payload)
                continue
            settings, batch, collected = payload, collected, []
            stop_handlers = {signum: signal.getsignal(signum) for signum in LATER_STOPS}
            signal.signal(signal.SIGINT, interrupt_once)
            try:
                reply: tuple[str, Any] = (
                    REPLY_OUTCOMES,
                    [transferable(o) for o in work(batch, settings)],
                )
            except BaseException as error:
                reply = (REPLY_RAISED, transferable(error))
            try:
                connection.send(reply)
            except Exception as error:  # a value that cannot be pickled
                connection.send((REPLY_RAISED, RuntimeError(f"the batch's outcomes cannot be sent: {error}")))
            if isinstance(reply[1], KeyboardInterrupt):
                code = 130
                break
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for signum, handler in stop_handlers.items():
                signal.signal(signum, handler)
    except KeyboardInterrupt:  # Ctrl-C between batches: the sweep's process stops too
        code = 130
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _waiting(connection: Channel) -> list[tuple[str, Any]]:
    """The messages the sweep's process has sent that are waiting in the pipe, taken out before a work is
    prepared, so that the pipe has room for the next (see Channel). Should the pipe close, what was read is
    kept and the next read finds the end."""
    waiting = []
    with contextlib.suppress(EOFError, OSError):
        while connection.poll():
            waiting.append(connection.recv())
    return waiting


def _prepare(deferred: Deferred) -> None:
    """The work's prepare(), if it has one (deferral.py); should it fail, run_together meets the failure."""
    prepare = getattr(deferred.work, "prepare", None)
    if prepare is not None:
        try:
            prepare()
        except Exception as error:
            log.warning("preparing %r failed (%s): it is left to the batch's run", deferred, error)


def _import_quietly(preload: Sequence[str]) -> None:
    """Import the modules, without what they log below WARNING while imported: the sweep's log is
    configured at INFO, and what a module says about its own setup (alembic: `setup plugin ...`, one line per
    plugin) is noise there. A job importing it itself would run before that logging is set up."""
    logging.disable(logging.INFO)
    try:
        with imports_without_collector():  # collector.py: 0.5 to 1 s faster
            for module in preload:
                try:
                    importlib.import_module(module)
                except ImportError as error:
                    log.warning(
                        "hydra.launcher.preload: %s (the jobs import what they need themselves)", error
                    )
    finally:
        logging.disable(logging.NOTSET)
