"""Many sweeper processes (workers) on one study: who runs a trial, and finding the trials of dead workers.

Each worker records on every trial it asks which process it is, and a heartbeat while the trial runs
(a background thread, every heartbeat_interval seconds). A trial is given up only when its worker is
certainly gone:

- its heartbeat is older than grace_period: the worker was killed, hung, or its machine was lost.
  RDB storages (SQLite, PostgreSQL, MySQL) use Optuna's own heartbeat table, timed by the database's
  clock. Journal storages have none: there the heartbeat is a trial attribute holding the worker's
  wall-clock time, so the machines' clocks must agree to well within grace_period;
- or its worker ran on this machine and its process has ended (no need to wait for the grace period).

Such a trial is marked FAIL with the reason (`fail_reason`, `interrupted: true`: it does not count
toward n_trials) and its parameters are queued once to run again, as Optuna's
RetryHeartbeatStaleTrialCallback(max_retry=1) does. A trial of a live worker is never touched. A trial
whose job had ended and recorded how (trial_bridge.job_end) before its worker could tell the study gets
that outcome instead: its run is not lost, nor trained again.
"""

import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from .processes import process_start_time, read_text
from .storage import set_trial_attrs
from .trial_bridge import JOB_END

log = logging.getLogger(__name__)

# Trial attributes (user attributes are shown by optuna-dashboard; system ones are bookkeeping).
WORKER = "worker"  # user attr: host:pid of the sweeper process that asked the trial
INTERRUPTED = "interrupted"  # user attr: failed because its worker died, not on its own
FAIL_REASON = "fail_reason"  # user attr
RETRY_OF = "retry_of"  # user attr: the number of the trial whose parameters this one runs again
WORKER_PROCESS = "worker_process"  # system attr: what tells whether the worker's process still lives
HEARTBEAT = "heartbeat"  # system attr: wall-clock time of the last heartbeat (journal storages only)
# Optuna's own retry bookkeeping (RetryHeartbeatStaleTrialCallback.retried_trial_number reads it).
FAILED_TRIAL, RETRY_HISTORY = "failed_trial", "retry_history"
# System attributes a re-queued trial keeps: its grid point, for the GridSampler.
KEPT_ON_RETRY = ("grid_id", "search_space")
MAX_RETRY = 1


@dataclass(frozen=True)
class Worker:
    host: str
    pid: int
    boot_id: str  # which boot of which machine: pids are unique only within one
    started: str  # the process's start time: pids are reused

    @classmethod
    def this_process(cls) -> "Worker":
        pid = os.getpid()
        boot_id = (read_text("/proc/sys/kernel/random/boot_id") or "").strip()
        return cls(socket.gethostname(), pid, boot_id, process_start_time(pid) or "")

    @property
    def label(self) -> str:
        return f"{self.host}:{self.pid}"

    def as_attr(self) -> str:
        return f"{self.boot_id}/{self.pid}/{self.started}"

    @classmethod
    def from_attrs(cls, user_attrs: dict, system_attrs: dict) -> "Worker | None":
        try:
            boot_id, pid, started = str(system_attrs[WORKER_PROCESS]).split("/")
            return cls(str(user_attrs.get(WORKER, "")).rsplit(":", 1)[0], int(pid), boot_id, started)
        except (KeyError, ValueError):
            return None

    def has_ended(self) -> bool:
        """True only when this worker ran on this machine (since its last boot) and its process is gone."""
        here = Worker.this_process()
        if not self.boot_id or self.boot_id != here.boot_id or self.host != here.host:
            return False
        return process_start_time(self.pid) != self.started


def claim(
    study: optuna.Study, trial: optuna.Trial, worker: Worker, fixed_values: dict[str, Any] | None = None
) -> None:
    """Record on a freshly asked trial which worker runs it, and the sweep's fixed values (user attributes,
    one transaction)."""
    set_trial_attrs(
        study._storage,
        trial._trial_id,
        {**(fixed_values or {}), WORKER: worker.label},
        {WORKER_PROCESS: worker.as_attr()},
    )


# Held while a heartbeat thread writes to the study. A fork (hydra/launcher=batched with processes > 1)
# waits for it: a child must not start while another thread of its parent is inside the database library
# (SQLite's and the drivers' own locks would stay taken in the child).
_writing = threading.Lock()
os.register_at_fork(
    before=_writing.acquire, after_in_parent=_writing.release, after_in_child=_writing.release
)


class Heartbeats:
    """A background thread that records a heartbeat for each trial this worker runs.

    Use as a context manager; add() a trial as soon as it is asked (its first heartbeat is recorded at
    once, so it is never mistaken for a trial without heartbeats) and discard() it once it is told.
    """

    def __init__(self, storage: BaseStorage, interval: float) -> None:
        self.storage = storage
        self.interval = interval
        self._trial_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optuna-heartbeats", daemon=True)

    def __enter__(self) -> "Heartbeats":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def add(self, trial_id: int) -> None:
        self._beat(trial_id)
        with self._lock:
            self._trial_ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._trial_ids.discard(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                trial_ids = list(self._trial_ids)
            for trial_id in trial_ids:
                try:
                    with _writing:
                        self._beat(trial_id)
                except UpdateFinishedTrialError:
                    self.discard(trial_id)
                except Exception as error:  # a database hiccup: the next beat may get through
                    log.warning(f"Heartbeat of trial id {trial_id} not recorded: {error}")

    def _beat(self, trial_id: int) -> None:
        if is_heartbeat_enabled(self.storage):
            self.storage.record_heartbeat(trial_id)
        else:
            self.storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())


def stale_trial_ids(study: optuna.Study, running: list[FrozenTrial], grace_period: float) -> set[int]:
    """The running trials whose last heartbeat is older than the grace period."""
    storage = study._storage
    if is_heartbeat_enabled(storage):
        return set(storage._get_stale_trial_ids(study._study_id))
    now = time.time()
    return {
        t._trial_id
        for t in running
        if isinstance(t.system_attrs.get(HEARTBEAT), int | float)
        and now - t.system_attrs[HEARTBEAT] > grace_period
    }


def why_dead(trial: FrozenTrial, stale: set[int], grace_period: float) -> str | None:
    """Why a RUNNING trial's worker is known to be gone, or None when it may be alive."""
    worker = Worker.from_attrs(trial.user_attrs, trial.system_attrs)
    label = worker.label if worker else "unknown"
    if trial._trial_id in stale:
        return (
            f"stale heartbeat: its worker {label} recorded none for more than {grace_period:g} s "
            "(killed, hung or lost)"
        )
    if worker is not None and worker.has_ended():
        return f"interrupted: its worker {label} ended while the trial ran"
    return None


def tell(study: optuna.Study, trial: optuna.Trial | int, **outcome: Any) -> None:
    """study.tell(), where the GridSampler's end-of-grid study.stop() (an error outside optimize()) is
    harmless: the trial is stored before it is raised."""
    try:
        study.tell(trial, **outcome)
    except RuntimeError as error:
        if "Study.stop" not in str(error):
            raise


def end_dead_trials(study: optuna.Study, grace_period: float) -> list[int]:
    """End the running trials of dead workers (give_up); the numbers of the trials ended here."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    stale = stale_trial_ids(study, running, grace_period)
    failed = []
    for trial in running:
        reason = why_dead(trial, stale, grace_period)
        if reason is not None and give_up(study, trial, reason):
            failed.append(trial.number)
    return failed


def give_up(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """End a trial whose worker will not tell the study its outcome: the outcome its job recorded as it
    ended, if it did; else FAIL as interrupted, with the reason, and queued to run again (once). False when
    it had finished meanwhile or another worker ended it first."""
    if (outcome := recorded_outcome(study, trial)) is not None:
        return tell_recorded(study, trial, outcome, reason)
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
        storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, reason)
        if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    log.warning(f"Trial {trial.number} failed: {reason}")
    requeue(study, storage.get_trial(trial._trial_id))
    return True


def recorded_outcome(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any] | None:
    """study.tell's arguments for the outcome the trial's job recorded (trial_bridge.job_end); None when
    it recorded none, or none the study can take."""
    ended = trial.system_attrs.get(JOB_END)
    if not isinstance(ended, dict):
        return None
    if ended.get("state") == TrialState.COMPLETE.name:
        values = ended.get("values")
        if (
            isinstance(values, list)
            and len(values) == len(study.directions)
            and all(isinstance(v, int | float) and math.isfinite(v) for v in values)
        ):
            return {"values": values}
        return None
    if ended.get("state") in (TrialState.PRUNED.name, TrialState.FAIL.name):
        return {"state": TrialState[ended["state"]]}
    return None


def tell_recorded(study: optuna.Study, trial: FrozenTrial, outcome: dict[str, Any], reason: str) -> bool:
    """Tell the study the outcome a trial's job recorded, as its worker would have; False when the trial
    had been ended meanwhile."""
    failed = outcome.get("state") == TrialState.FAIL
    try:
        if failed:
            failure = trial.system_attrs[JOB_END].get("reason") or "the job failed"
            study._storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, failure)
        tell(study, trial.number, **outcome)
    except (UpdateFinishedTrialError, ValueError):  # ValueError: it is no longer RUNNING
        return False
    state = "completed" if "values" in outcome else outcome["state"].name.lower()
    value = f" with {', '.join(f'{v:g}' for v in outcome['values'])}" if "values" in outcome else ""
    log.warning(
        f"Trial {trial.number} {state}{value}, as its job recorded before its worker could tell the study "
        f"({reason})"
    )
    return True


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue the parameters of a trial that did not finish, unless it already was a retry."""
    history = [*trial.system_attrs.get(RETRY_HISTORY, []), trial.number]
    if not trial.params:
        log.warning(f"Trial {trial.number} is not queued again: it has no searched values to run again")
        return
    if len(history) > MAX_RETRY:
        log.warning(f"Trial {trial.number} is not queued again: it already was a retry of {history[0]}")
        return
    system_attrs = {
        "fixed_params": trial.params,
        FAILED_TRIAL: history[0],
        RETRY_HISTORY: history,
        **{key: trial.system_attrs[key] for key in KEPT_ON_RETRY if key in trial.system_attrs},
    }
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING, system_attrs=system_attrs, user_attrs={RETRY_OF: trial.number}
        )
    )
    log.warning(f"Trial {trial.number}'s parameters are queued to run again")
